// Preloaded into the Portkey gateway (`node -r bench/loopback.cjs ...`): its start script
// listens on every interface and has no option for the address, so every server.listen()
// in the process is bound to 127.0.0.1.  The bench sends traffic on the loopback only.
"use strict";
const net = require("net");
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (args.length && typeof args[0] === "object" && args[0] !== null && !Array.isArray(args[0])) {
    args[0] = Object.assign({}, args[0], { host: "127.0.0.1" });
  } else if (typeof args[0] === "number" || typeof args[0] === "string") {
    if (args.length < 2 || typeof args[1] !== "string") {
      if (args.length >= 2 && (args[1] === undefined || args[1] === null)) {
        args[1] = "127.0.0.1";
      } else {
        args.splice(1, 0, "127.0.0.1");
      }
    } else {
      args[1] = "127.0.0.1";
    }
  }
  return listen.apply(this, args);
};
