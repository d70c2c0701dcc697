-- wrk script: sends one fixed request (method, headers, body) read from a spec file, and
-- prints a machine-readable summary line ("WRKJSON {...}") when the run is done.
--
--   wrk -t1 -c50 -d5s -s bench/post.lua http://127.0.0.1:PORT/path -- SPECFILE
--
-- SPECFILE: first line the method; then "Name: value" header lines; an empty line; the body.
-- The URL's path is the request path.  Content-Length is added by wrk.format.

local req

function init(args)
  local f = assert(io.open(args[1], "rb"))
  local s = f:read("*a")
  f:close()
  local head, body = s:match("^(.-)\n\n(.*)$")
  if head == nil then
    head, body = s, nil
  end
  local method
  local headers = {}
  for line in head:gmatch("[^\n]+") do
    if method == nil then
      method = line
    else
      local k, v = line:match("^([^:]+):%s*(.-)%s*$")
      if k then headers[k] = v end
    end
  end
  if body == "" then body = nil end
  req = wrk.format(method, nil, headers, body)
end

function request()
  return req
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect_errors":%d,"read_errors":%d,' ..
    '"write_errors":%d,"status_errors":%d,"timeout_errors":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
