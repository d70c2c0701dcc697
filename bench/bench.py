"""fproxy's benchmark: fproxy against nginx directly and its peers, on this machine, as ratios.

Started by ``bench/run.sh`` (which installs what is missing); runnable on its own once nginx,
wrk and the repository's ``.venv`` exist.  Everything listens on 127.0.0.1; every load loop is
bounded in count and time; every process started here is stopped here (by its own id).

What runs:

* nginx (generated config in a temp dir) is the fake upstream: a fixed chat.completion JSON,
  a static 50-chunk SSE stream, and the same two in Anthropic's shape, each at its own base
  path (nginx cannot look at the body);
* ``paced_server.py`` serves streams whose timing matters (paced, big, idle);
* the targets -- nginx directly (the floor), fproxy (one process; two workers when
  ``twistd fproxy --workers`` exists), and optionally LiteLLM (1 and 2 workers) and the
  Portkey gateway -- run side by side and are measured alternately, A B A B ..., ``--rounds``
  times, with wrk (throughput, latency) and ``stream_client.py`` (first byte, paced streams);
* CPU per request from /proc/PID/stat (utime+stime of the target's process tree over a run),
  memory from sampling VmRSS of the tree (and VmHWM);
* fproxy's memory scenarios, each on a fresh fproxy process: 200 concurrent paced streams,
  N concurrent idle streams, one slow reader.

The result: one table (medians over rounds) with ratios to nginx and to the peers, the
goals of issue 7 met or not, every round's raw figures, written as Markdown to the work dir
(``report.md``) and printed; raw data in ``results.json``.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import fixtures  # noqa: E402

CLIENT_KEY = "sk-bench-client"
UPSTREAM_KEY = "sk-bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")
HOST = "127.0.0.1"

# The peer figures (same machine, earlier run): used only when a peer was not run here.
REFERENCE = {
    "litellm1": {"rps": 109.0, "cpu": 9.2, "c1_p50": 10.8, "c1_p99": 15.0, "sps": 20.0, "ttfb": 12.4, "rss": 490.0},
    "litellm2": {"rps": 214.0, "cpu": 8.7, "c1_p50": 10.5, "c1_p99": 15.7, "sps": 35.0, "ttfb": 13.6, "rss": 1246.0},
    "portkey": {"rps": 1062.0, "cpu": 1.05, "c1_p50": 0.78, "c1_p99": 6.7, "sps": 651.0, "ttfb": 27.3, "rss": 247.0},
}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ==================================================================== plan
@dataclass
class Plan:
    rounds: int = 3
    warm: float = 1.0
    d50: float = 5.0  # non-stream, 50 connections
    d1: float = 3.0  # non-stream, 1 connection
    dstream: float = 5.0  # 50-chunk SSE, 50 connections
    dtrans: float = 3.0  # each Anthropic / translated scenario
    ttfb_count: int = 40  # sequential 5-chunk paced streams (first byte)
    paced_count: int = 3  # sequential 50 x 20 ms paced streams (full time)
    paced_chunks: int = 50
    paced_ms: int = 20
    many_paced: int = 200
    many_paced_chunks: int = 50
    many_paced_ms: int = 100
    idle_n: int = 5000
    idle_hold: float = 5.0
    slow_seconds: float = 30.0
    slow_bytes: int = 10 * 1024 * 1024
    profile_seconds: float = 10.0

    @classmethod
    def quick(cls) -> Plan:
        return cls(rounds=1, warm=0.5, d50=2.0, d1=2.0, dstream=2.0, dtrans=1.5, ttfb_count=15, paced_count=1,
                   many_paced=200, many_paced_chunks=20, many_paced_ms=50, idle_n=1000, idle_hold=2.0,
                   slow_seconds=8.0, profile_seconds=5.0)


# ==================================================================== /proc
def _ppid_map() -> dict[int, int]:
    out: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
            out[int(name)] = int(data[data.rindex(b")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return out


def proc_tree(root: int) -> list[int]:
    """``root`` and all its descendants."""
    ppids = _ppid_map()
    kids: dict[int, list[int]] = {}
    for pid, ppid in ppids.items():
        kids.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        if p in ppids or p == root:
            out.append(p)
        todo.extend(kids.get(p, ()))
    return out


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                data = f.read()
            fields = data[data.rindex(b")") + 2:].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, ValueError, IndexError):
            continue
    return total / CLK_TCK


def status_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


class Sampler(threading.Thread):
    """Samples VmRSS of each watched process tree every 100 ms; keeps the peaks."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.lock = threading.Lock()
        self.roots: dict[str, int] = {}
        self.trees: dict[str, list[int]] = {}
        self.peak_sum: dict[str, int] = {}
        self.peak_proc: dict[str, int] = {}
        self.last: dict[str, int] = {}
        self.stopped = threading.Event()

    def watch(self, key: str, root: int) -> None:
        with self.lock:
            self.roots[key] = root
            self.trees[key] = proc_tree(root)
            self.peak_sum[key] = 0
            self.peak_proc[key] = 0

    def unwatch(self, key: str) -> None:
        with self.lock:
            self.roots.pop(key, None)

    def sample(self, key: str) -> int:
        """VmRSS (kB) of the tree now."""
        with self.lock:
            pids = list(self.trees.get(key, ()))
        return sum(status_kb(p, "VmRSS") for p in pids)

    def run(self) -> None:
        n = 0
        while not self.stopped.wait(0.1):
            n += 1
            with self.lock:
                roots = dict(self.roots)
            for key, root in roots.items():
                if n % 20 == 0:
                    tree = proc_tree(root)
                    with self.lock:
                        self.trees[key] = tree
                with self.lock:
                    pids = list(self.trees.get(key, ()))
                sizes = [status_kb(p, "VmRSS") for p in pids]
                total = sum(sizes)
                with self.lock:
                    self.last[key] = total
                    self.peak_sum[key] = max(self.peak_sum.get(key, 0), total)
                    self.peak_proc[key] = max(self.peak_proc.get(key, 0), max(sizes, default=0))


# ==================================================================== processes
class Proc:
    """A child process in its own session; stopped by its own process group id."""

    def __init__(self, name: str, argv: list[str], logdir: str, env: dict[str, str] | None = None,
                 cwd: str | None = None) -> None:
        self.name = name
        self.log_path = os.path.join(logdir, f"{name}.log")
        self.log = open(self.log_path, "wb")
        self.p = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                  start_new_session=True)
        self.pid = self.p.pid

    def alive(self) -> bool:
        return self.p.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self.p.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.p.wait(5)
        self.log.close()

    def tail(self, n: int = 15) -> str:
        try:
            with open(self.log_path, "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
            return "\n".join(lines[-n:])
        except OSError:
            return ""


PROCS: list[Proc] = []


def start(name: str, argv: list[str], logdir: str, **kw: Any) -> Proc:
    p = Proc(name, argv, logdir, **kw)
    PROCS.append(p)
    return p


def stop_all() -> None:
    for p in reversed(PROCS):
        try:
            p.stop()
        except Exception as e:  # noqa: BLE001 - best effort at exit
            log(f"stopping {p.name}: {e}")
    PROCS.clear()


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_http(port: int, path: str, timeout: float, proc: Proc | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            return False
        try:
            c = http.client.HTTPConnection(HOST, port, timeout=2)
            c.request("GET", path)
            r = c.getresponse()
            r.read()
            c.close()
            if r.status < 500:
                return True
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(0.2)
    return False


def tool_version(argv: list[str]) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=20)
        text = (r.stdout + r.stderr).strip().splitlines()
        return text[0].strip() if text else "?"
    except (OSError, subprocess.TimeoutExpired):
        return "?"


# ==================================================================== requests
@dataclass
class Spec:
    path: str
    port: int
    headers: dict[str, str]
    body: bytes
    check: Callable[[bytes], str | None]
    method: str = "POST"
    _files: dict[str, str] = field(default_factory=dict)

    def wrk_file(self, workdir: str) -> str:
        if "wrk" not in self._files:
            fd, path = tempfile.mkstemp(prefix="wrk-", suffix=".txt", dir=workdir)
            head = self.method + "\n" + "".join(f"{k}: {v}\n" for k, v in self.headers.items())
            os.write(fd, head.encode() + b"\n" + self.body)
            os.close(fd)
            self._files["wrk"] = path
        return self._files["wrk"]

    def json_file(self, workdir: str) -> str:
        if "json" not in self._files:
            fd, path = tempfile.mkstemp(prefix="spec-", suffix=".json", dir=workdir)
            os.write(fd, json.dumps({"host": HOST, "port": self.port, "method": self.method, "path": self.path,
                                     "headers": self.headers, "body": self.body.decode()}).encode())
            os.close(fd)
            self._files["json"] = path
        return self._files["json"]

    def url(self) -> str:
        return f"http://{HOST}:{self.port}{self.path}"

    def sanity(self) -> str | None:
        """None when one request gets the right answer; else what was wrong."""
        try:
            c = http.client.HTTPConnection(HOST, self.port, timeout=30)
            c.request(self.method, self.path, body=self.body, headers=self.headers)
            r = c.getresponse()
            raw = r.read()
            c.close()
        except (OSError, http.client.HTTPException) as e:
            return f"{type(e).__name__}: {e}"
        if r.status != 200:
            return f"HTTP {r.status}: {raw[:300].decode('utf-8', 'replace')}"
        return self.check(raw)


OAI_JSON = {"Content-Type": "application/json"}


def oai_headers(key: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**OAI_JSON, "Authorization": f"Bearer {key}", **(extra or {})}


def anth_headers(key: str) -> dict[str, str]:
    return {**OAI_JSON, "x-api-key": key, "anthropic-version": "2023-06-01"}


def chat_check(raw: bytes) -> str | None:
    return fixtures.check_openai_json(raw)


def sse_check(n: int) -> Callable[[bytes], str | None]:
    return lambda raw: fixtures.check_openai_sse(raw, n)


def anth_sse_check(n: int) -> Callable[[bytes], str | None]:
    return lambda raw: fixtures.check_anthropic_sse(raw, n)


SCENARIOS_MAIN = ("chat", "stream", "ttfb", "paced")
SCENARIOS_TRANSLATED = ("anth_chat", "anth_stream", "oa2an_chat", "oa2an_stream", "an2oa_chat", "an2oa_stream")
TRANSLATED_LABELS = {
    "anth_chat": "Anthropic passthrough, non-stream",
    "anth_stream": "Anthropic passthrough, 50-chunk stream",
    "oa2an_chat": "OpenAI client -> Anthropic upstream, non-stream",
    "oa2an_stream": "OpenAI client -> Anthropic upstream, 50-chunk stream",
    "an2oa_chat": "Anthropic client -> OpenAI upstream, non-stream",
    "an2oa_stream": "Anthropic client -> OpenAI upstream, 50-chunk stream",
}
# which OpenAI passthrough scenario each translated one is compared with (CPU per request)
TRANSLATED_BASE = {"anth_chat": "chat", "anth_stream": "stream", "oa2an_chat": "chat", "oa2an_stream": "stream",
                   "an2oa_chat": "chat", "an2oa_stream": "stream"}


@dataclass
class Env:
    work: str
    nginx_port: int
    paced_port: int
    plan: Plan
    upstream_pids: list[int] = field(default_factory=list)  # nginx and the paced server

    def paced_base(self, n: int, ms: int) -> str:
        return f"http://{HOST}:{self.paced_port}/paced/{n}/{ms}/v1"


# ==================================================================== targets
@dataclass
class Target:
    key: str
    label: str
    specs: dict[str, Spec]
    proc: Proc | None = None
    pid: int = 0
    peer: bool = False
    sanity: dict[str, str | None] = field(default_factory=dict)
    skipped: str | None = None
    idle_rss_kb: int = 0

    def ok(self, scenario: str) -> bool:
        return scenario in self.specs and self.sanity.get(scenario, "not checked") is None


def openai_specs(port: int, path_of: Callable[[str], str], model_of: Callable[[str], str],
                 headers: Callable[[str], dict[str, str]], plan: Plan) -> dict[str, Spec]:
    """The four OpenAI-client scenarios for one target."""
    return {
        "chat": Spec(path_of("chat"), port, headers("chat"), fixtures.openai_request(model_of("chat"), False),
                     chat_check),
        "stream": Spec(path_of("stream"), port, headers("stream"), fixtures.openai_request(model_of("stream"), True),
                       sse_check(50)),
        "ttfb": Spec(path_of("ttfb"), port, headers("ttfb"), fixtures.openai_request(model_of("ttfb"), True),
                     sse_check(5)),
        "paced": Spec(path_of("paced"), port, headers("paced"), fixtures.openai_request(model_of("paced"), True),
                      sse_check(plan.paced_chunks)),
    }


def nginx_target(env: Env, proc: Proc) -> Target:
    paths = {"chat": "/v1/chat/completions", "stream": "/stream/v1/chat/completions"}
    plan = env.plan

    def port_of(s: str) -> int:
        return env.nginx_port if s in paths else env.paced_port

    specs = {}
    for s, spec in openai_specs(0, lambda s: paths.get(s) or (
            "/paced/5/10/v1/chat/completions" if s == "ttfb"
            else f"/paced/{plan.paced_chunks}/{plan.paced_ms}/v1/chat/completions"),
            lambda s: f"gpt-{s}", lambda s: oai_headers(UPSTREAM_KEY), plan).items():
        spec.port = port_of(s)
        specs[s] = spec
    specs["anth_chat"] = Spec("/anth/v1/messages", env.nginx_port, anth_headers(UPSTREAM_KEY),
                              fixtures.anthropic_request("claude-bench", False), fixtures.check_anthropic_json)
    specs["anth_stream"] = Spec("/anthstream/v1/messages", env.nginx_port, anth_headers(UPSTREAM_KEY),
                                fixtures.anthropic_request("claude-stream", True), anth_sse_check(50))
    return Target("nginx", "nginx direct", specs, proc, proc.pid)


FPROXY_MODELS = {"chat": "gpt-bench", "stream": "gpt-stream", "ttfb": "gpt-ttfb", "paced": "gpt-paced"}


def fproxy_config(env: Env) -> str:
    """The bench's fproxy config: one provider per upstream base path (nginx cannot read bodies)."""
    plan = env.plan
    ng = f"http://{HOST}:{env.nginx_port}"
    providers = [
        ("chat", "openai-chat", f"{ng}/v1", "gpt-bench"),
        ("stream", "openai-chat", f"{ng}/stream/v1", "gpt-stream"),
        ("ttfb", "openai-chat", env.paced_base(5, 10), "gpt-ttfb"),
        ("paced", "openai-chat", env.paced_base(plan.paced_chunks, plan.paced_ms), "gpt-paced"),
        ("many", "openai-chat", env.paced_base(plan.many_paced_chunks, plan.many_paced_ms), "gpt-many"),
        ("idle", "openai-chat", f"http://{HOST}:{env.paced_port}/idle/120/v1", "gpt-idle"),
        ("big", "openai-chat", f"http://{HOST}:{env.paced_port}/big/{plan.slow_bytes}/v1", "gpt-big"),
        ("anth", "anthropic", f"{ng}/anth", "claude-bench"),
        ("anthstream", "anthropic", f"{ng}/anthstream", "claude-stream"),
    ]
    out = [
        "# generated by bench/bench.py",
        "[server]",
        f'listen = ["tcp:0:interface={HOST}"]   # replaced by --listen',
        "",
        "[access]",
        f'keys = ["{CLIENT_KEY}"]',
        "",
        "[store]",
        f'url = "sqlite:{os.path.join(env.work, "fproxy.db")}"',
        "",
    ]
    for name, dialect, base, model in providers:
        out += ["[[provider]]", f'name = "{name}"', f'dialect = "{dialect}"', f'base_url = "{base}"',
                f'keys = ["{UPSTREAM_KEY}"]', f'models = ["{model}"]', ""]
    path = os.path.join(env.work, "fproxy.toml")
    with open(path, "w") as f:
        f.write("\n".join(out))
    return path


def fproxy_specs(port: int, plan: Plan) -> dict[str, Spec]:
    specs = openai_specs(port, lambda s: "/v1/chat/completions", lambda s: FPROXY_MODELS[s],
                         lambda s: oai_headers(CLIENT_KEY), plan)
    a, o = anth_headers(CLIENT_KEY), oai_headers(CLIENT_KEY)
    specs["anth_chat"] = Spec("/v1/messages", port, a, fixtures.anthropic_request("claude-bench", False),
                              fixtures.check_anthropic_json)
    specs["anth_stream"] = Spec("/v1/messages", port, a, fixtures.anthropic_request("claude-stream", True),
                                anth_sse_check(50))
    specs["oa2an_chat"] = Spec("/v1/chat/completions", port, o, fixtures.openai_request("claude-bench", False),
                               chat_check)
    specs["oa2an_stream"] = Spec("/v1/chat/completions", port, o, fixtures.openai_request("claude-stream", True),
                                 sse_check(50))
    specs["an2oa_chat"] = Spec("/v1/messages", port, a, fixtures.anthropic_request("gpt-bench", False),
                               fixtures.check_anthropic_json)
    specs["an2oa_stream"] = Spec("/v1/messages", port, a, fixtures.anthropic_request("gpt-stream", True),
                                 anth_sse_check(50))
    specs["many"] = Spec("/v1/chat/completions", port, o, fixtures.openai_request("gpt-many", True),
                         sse_check(plan.many_paced_chunks))
    specs["idle"] = Spec("/v1/chat/completions", port, o, fixtures.openai_request("gpt-idle", True),
                         lambda raw: None)
    specs["big"] = Spec("/v1/chat/completions", port, o, fixtures.openai_request("gpt-big", True), lambda raw: None)
    return specs


def twistd_argv(config: str, port: int, workers: int | None) -> list[str]:
    argv = [os.path.join(REPO, ".venv", "bin", "twistd"), "-n", "--pidfile=", "fproxy", "--config", config,
            "--listen", f"tcp:{port}:interface={HOST}:backlog=1024"]
    if workers:
        argv += ["--workers", str(workers)]
    return argv


def fproxy_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def start_fproxy(env: Env, name: str, config: str, workers: int | None = None) -> tuple[Proc, int]:
    port = free_port()
    p = start(name, twistd_argv(config, port, workers), env.work, env=fproxy_env(), cwd=REPO)
    return p, port


def workers_supported() -> bool:
    try:
        r = subprocess.run([os.path.join(REPO, ".venv", "bin", "twistd"), "fproxy", "--help"], capture_output=True,
                           text=True, timeout=60, env=fproxy_env(), cwd=REPO)
        return "--workers" in r.stdout
    except (OSError, subprocess.TimeoutExpired):
        return False


# ---- LiteLLM
def litellm_config(env: Env) -> str:
    plan = env.plan
    ng = f"http://{HOST}:{env.nginx_port}"
    models = [("gpt-bench", f"{ng}/v1"), ("gpt-stream", f"{ng}/stream/v1"), ("gpt-ttfb", env.paced_base(5, 10)),
              ("gpt-paced", env.paced_base(plan.paced_chunks, plan.paced_ms))]
    lines = ["model_list:"]
    for name, base in models:
        lines += [f"  - model_name: {name}", "    litellm_params:", f"      model: openai/{name}",
                  f"      api_base: {base}", f"      api_key: {UPSTREAM_KEY}"]
    lines += ["general_settings:", f"  master_key: {CLIENT_KEY}", "litellm_settings:", "  drop_params: true",
              "  telemetry: false", ""]
    path = os.path.join(env.work, "litellm.yaml")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path


def litellm_target(env: Env, binary: str, workers: int) -> Target:
    port = free_port()
    cfg = litellm_config(env)
    e = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_LOG="ERROR", LITELLM_TELEMETRY="False",
             NO_DOCS="True", DISABLE_ADMIN_UI="True")
    p = start(f"litellm{workers}", [binary, "--config", cfg, "--host", HOST, "--port", str(port),
                                    "--num_workers", str(workers)], env.work, env=e, cwd=env.work)
    specs = openai_specs(port, lambda s: "/v1/chat/completions", lambda s: FPROXY_MODELS[s],
                         lambda s: oai_headers(CLIENT_KEY), env.plan)
    return Target(f"litellm{workers}", f"LiteLLM {workers}w", specs, p, p.pid, peer=True)


# ---- Portkey
def portkey_target(env: Env, folder: str) -> Target:
    port = free_port()
    script = os.path.join(folder, "node_modules", "@portkey-ai", "gateway", "build", "start-server.js")
    e = dict(os.environ, NODE_ENV="production")
    p = start("portkey", ["node", "-r", os.path.join(HERE, "loopback.cjs"), script, f"--port={port}", "--headless"],
              env.work, env=e, cwd=folder)
    plan = env.plan
    ng = f"http://{HOST}:{env.nginx_port}"
    hosts = {"chat": f"{ng}/v1", "stream": f"{ng}/stream/v1", "ttfb": env.paced_base(5, 10),
             "paced": env.paced_base(plan.paced_chunks, plan.paced_ms)}
    specs = openai_specs(port, lambda s: "/v1/chat/completions", lambda s: FPROXY_MODELS[s],
                         lambda s: oai_headers(UPSTREAM_KEY, {"x-portkey-provider": "openai",
                                                              "x-portkey-custom-host": hosts[s]}), plan)
    return Target("portkey", "Portkey", specs, p, p.pid, peer=True)


# ==================================================================== measuring
_WRK = re.compile(r"^WRKJSON (\{.*\})$", re.M)


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat.  Busy is user, nice
    and system time: interrupt time is left out, as no process is charged with it."""
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    return (vals[0] + vals[1] + vals[2]) / CLK_TCK, sum(vals[:8]) / CLK_TCK


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_wrk(spec: Spec, env: Env, conns: int, seconds: float, root: int) -> dict[str, Any]:
    """One wrk run; also how much CPU *other* processes on the machine took meanwhile (noise)."""
    pids = proc_tree(root)
    ups = [p for r in env.upstream_pids if r != root for p in proc_tree(r)]
    c0 = cpu_seconds(pids)
    u0, k0, (b0, _) = cpu_seconds(ups), children_cpu(), machine_cpu()
    me0 = time.process_time()
    argv = ["wrk", "-t1", f"-c{conns}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
            "-s", os.path.join(HERE, "post.lua"), spec.url(), "--", spec.wrk_file(env.work)]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    pids = sorted(set(pids) | set(proc_tree(root)))
    c1 = cpu_seconds(pids)
    u1, k1, (b1, _) = cpu_seconds(ups), children_cpu(), machine_cpu()
    me1 = time.process_time()
    wall = seconds
    m = _WRK.search(r.stdout)
    if not m:
        raise RuntimeError(f"wrk printed no summary: {r.stdout[-300:]} {r.stderr[-300:]}")
    w = json.loads(m.group(1))
    n = w["requests"]
    errors = w["connect_errors"] + w["read_errors"] + w["write_errors"] + w["status_errors"] + w["timeout_errors"]
    return {
        "requests": n, "rps": n / (w["duration_us"] / 1e6), "p50": w["p50_us"] / 1000, "p90": w["p90_us"] / 1000,
        "p99": w["p99_us"] / 1000, "max": w["max_us"] / 1000, "errors": errors,
        "cpu_ms": (c1 - c0) * 1000 / n if n else None, "cpu_s": c1 - c0,
        # cores used by processes that are neither the target, its upstream, wrk nor the bench
        "foreign_cores": round(max(0.0, (b1 - b0) - (c1 - c0) - (u1 - u0) - (k1 - k0) - (me1 - me0)) / wall, 3),
    }


def run_client(args: list[str], timeout: float, on_ready: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Runs stream_client.py; ``on_ready`` is called with its READY line (while it holds)."""
    argv = [sys.executable, os.path.join(HERE, "stream_client.py")] + args
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    result: dict[str, Any] = {}
    deadline = time.monotonic() + timeout
    timer = threading.Timer(timeout, p.kill)
    timer.start()
    try:
        assert p.stdout is not None
        for line in p.stdout:
            if line.startswith("READY") and on_ready is not None:
                on_ready(line.strip())
            elif line.startswith("RESULT "):
                result = json.loads(line[7:])
        p.wait(max(1.0, deadline - time.monotonic()))
    finally:
        timer.cancel()
        if p.poll() is None:
            p.kill()
    if not result:
        err = p.stderr.read() if p.stderr else ""
        raise RuntimeError(f"stream client failed: {err[-400:]}")
    return result


def med(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def measure(t: Target, env: Env, rnd: int) -> dict[str, Any]:
    plan = env.plan
    out: dict[str, Any] = {}

    def guard(name: str, fn: Callable[[], Any]) -> None:
        try:
            out[name] = fn()
        except Exception as e:  # noqa: BLE001 - one failed measurement must not end the run
            out[name] = {"error": f"{type(e).__name__}: {e}"[:300]}
            log(f"  {t.label}: {name} failed: {out[name]['error']}")

    if t.ok("chat"):
        if plan.warm:
            guard("warm", lambda: run_wrk(t.specs["chat"], env, 50, plan.warm, t.pid))
        guard("chat_c50", lambda: run_wrk(t.specs["chat"], env, 50, plan.d50, t.pid))
        guard("chat_c1", lambda: run_wrk(t.specs["chat"], env, 1, plan.d1, t.pid))
    if t.ok("stream"):
        guard("stream_c50", lambda: run_wrk(t.specs["stream"], env, 50, plan.dstream, t.pid))
    if t.ok("ttfb"):
        guard("ttfb", lambda: run_client(["seq", "--spec", t.specs["ttfb"].json_file(env.work), "--count",
                                          str(plan.ttfb_count), "--time-limit", "30"], 60))
    if t.ok("paced"):
        guard("paced", lambda: run_client(["seq", "--spec", t.specs["paced"].json_file(env.work), "--count",
                                           str(plan.paced_count), "--time-limit", "60"], 90))
    for s in SCENARIOS_TRANSLATED:
        if t.ok(s):
            guard(s, lambda s=s: run_wrk(t.specs[s], env, 50, plan.dtrans, t.pid))
    summary = []
    for k in ("chat_c50", "stream_c50"):
        v = out.get(k) or {}
        if "rps" in v:
            summary.append(f"{k} {fmt(v['rps'])}/s cpu {fmt(v['cpu_ms'], 3)} ms, {v['errors']} errors")
    log(f"  round {rnd + 1} {t.label}: " + ", ".join(summary))
    return out


# ==================================================================== memory scenarios
def memory_scenarios(env: Env, config: str, sampler: Sampler) -> dict[str, Any]:
    plan = env.plan
    res: dict[str, Any] = {}

    def fresh(name: str) -> tuple[Proc, int, dict[str, Spec]] | None:
        p, port = start_fproxy(env, name, config)
        if not wait_http(port, "/health", 60, p):
            log(f"{name}: fproxy did not start: {p.tail()}")
            p.stop()
            return None
        return p, port, fproxy_specs(port, plan)

    # 200 concurrent paced streams
    log(f"memory: {plan.many_paced} concurrent paced streams ({plan.many_paced_chunks} x {plan.many_paced_ms} ms)")
    direct = Spec(f"/paced/{plan.many_paced_chunks}/{plan.many_paced_ms}/v1/chat/completions", env.paced_port,
                  oai_headers(UPSTREAM_KEY), fixtures.openai_request("gpt-many", True), sse_check(plan.many_paced_chunks))
    try:
        res["many_paced_direct"] = run_client(["many", "--spec", direct.json_file(env.work), "--n",
                                               str(plan.many_paced), "--read-all", "--connect-concurrency", "100",
                                               "--time-limit", "120"], 150)
    except RuntimeError as e:
        res["many_paced_direct"] = {"error": str(e)}
    got = fresh("fproxy-mem-paced")
    if got:
        p, port, specs = got
        try:
            err = specs["many"].sanity()
            if err:
                res["many_paced"] = {"error": f"failed sanity check: {err}"}
            else:
                sampler.watch("mem-paced", p.pid)
                time.sleep(0.5)
                before = sampler.sample("mem-paced")
                r = run_client(["many", "--spec", specs["many"].json_file(env.work), "--n", str(plan.many_paced),
                                "--read-all", "--connect-concurrency", "100", "--time-limit", "120"], 150)
                time.sleep(0.3)
                res["many_paced"] = {**r, "rss_before_kb": before, "rss_peak_kb": sampler.peak_sum["mem-paced"],
                                     "hwm_kb": status_kb(p.pid, "VmHWM"),
                                     "expected_ms": (plan.many_paced_chunks - 1) * plan.many_paced_ms}
                sampler.unwatch("mem-paced")
        finally:
            p.stop()

    # N concurrent idle streams
    log(f"memory: {plan.idle_n} concurrent idle streams, held {plan.idle_hold:g} s")
    got = fresh("fproxy-mem-idle")
    if got:
        p, port, specs = got
        try:
            sampler.watch("mem-idle", p.pid)
            time.sleep(0.5)
            before = sampler.sample("mem-idle")
            at_ready: dict[str, Any] = {}

            def ready(line: str) -> None:
                at_ready["line"] = line
                at_ready["rss_kb"] = sampler.sample("mem-idle")

            r = run_client(["many", "--spec", specs["idle"].json_file(env.work), "--n", str(plan.idle_n),
                            "--hold", str(plan.idle_hold), "--connect-concurrency", "200", "--time-limit", "120"],
                           180, ready)
            time.sleep(0.3)
            res["idle"] = {**r, "rss_before_kb": before, "rss_peak_kb": sampler.peak_sum["mem-idle"],
                           "rss_ready_kb": at_ready.get("rss_kb"), "hwm_kb": status_kb(p.pid, "VmHWM"),
                           "fds_note": f"RLIMIT_NOFILE={resource.getrlimit(resource.RLIMIT_NOFILE)}"}
            sampler.unwatch("mem-idle")
        finally:
            p.stop()

    # one slow reader
    log(f"memory: slow reader, {plan.slow_bytes // (1024 * 1024)} MB stream read at 1 KB/s for "
        f"{plan.slow_seconds:g} s")
    got = fresh("fproxy-mem-slow")
    if got:
        p, port, specs = got
        try:
            # warm the process first (imports, pools), so the growth is the stream's alone
            specs["chat"].sanity()
            sampler.watch("mem-slow", p.pid)
            time.sleep(0.5)
            before = sampler.sample("mem-slow")
            series: list[tuple[float, int]] = []
            stop = threading.Event()

            def track() -> None:
                t0 = time.monotonic()
                while not stop.wait(1.0):
                    series.append((round(time.monotonic() - t0, 1), sampler.sample("mem-slow")))

            th = threading.Thread(target=track, daemon=True)
            th.start()
            r = run_client(["slow", "--spec", specs["big"].json_file(env.work), "--rate", "1024", "--seconds",
                            str(plan.slow_seconds), "--rcvbuf", "16384"], plan.slow_seconds + 60)
            stop.set()
            th.join()
            stats = {}
            try:
                c = http.client.HTTPConnection(HOST, env.paced_port, timeout=5)
                c.request("GET", "/stats")
                stats = json.loads(c.getresponse().read())
            except (OSError, ValueError, http.client.HTTPException):
                pass
            peak = sampler.peak_sum["mem-slow"]
            res["slow"] = {**r, "rss_before_kb": before, "rss_peak_kb": peak, "growth_kb": peak - before,
                           "upstream_bytes_written": stats.get("big_bytes"), "rss_series": series[::5]}
            sampler.unwatch("mem-slow")
        finally:
            p.stop()
    return res


# ==================================================================== profile
def profile_fproxy(env: Env, config: str) -> dict[str, Any]:
    """py-spy on a fresh fproxy under the non-stream c50 load: the top frames, self and total."""
    pyspy = shutil.which("py-spy") or os.path.join(REPO, ".venv", "bin", "py-spy")
    if not os.path.exists(pyspy):
        return {"error": "py-spy is not installed (run.sh --profile installs it into .venv)"}
    p, port = start_fproxy(env, "fproxy-profile", config)
    try:
        if not wait_http(port, "/health", 60, p):
            return {"error": "fproxy did not start"}
        spec = fproxy_specs(port, env.plan)["chat"]
        run_wrk(spec, env, 50, 1, p.pid)
        raw = os.path.join(env.work, "profile.txt")
        svg = os.path.join(env.work, "profile.svg")
        secs = int(env.plan.profile_seconds)
        spy = subprocess.Popen([pyspy, "record", "--pid", str(p.pid), "--duration", str(secs), "--rate", "250",
                                "--format", "raw", "--output", raw, "--nonblocking"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        time.sleep(0.5)
        w = run_wrk(spec, env, 50, secs, p.pid)
        spy.wait(secs + 60)
        subprocess.run([pyspy, "record", "--pid", str(p.pid), "--duration", "2", "--format", "flamegraph",
                        "--output", svg, "--nonblocking"], capture_output=True, timeout=60)
        return {"wrk": w, **summarize_profile(raw), "raw": raw, "svg": svg}
    finally:
        p.stop()


def summarize_profile(path: str, top: int = 15) -> dict[str, Any]:
    """Collapsed stacks -> top frames by own time and by total (inclusive) time."""
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    threads: dict[str, int] = {}
    by_file: dict[str, int] = {}
    total = 0
    try:
        with open(path) as f:
            lines = f.readlines()
    except OSError as e:
        return {"error": str(e)}
    for line in lines:
        stack, _, n = line.rstrip("\n").rpartition(" ")
        if not stack or not n.isdigit():
            continue
        k = int(n)
        total += k
        frames = stack.split(";")
        root = "worker threads (thread pool: store, DNS, ...)" if "threading.py" in frames[0] else "reactor thread"
        threads[root] = threads.get(root, 0) + k
        leaf = frames[-1]
        own[leaf] = own.get(leaf, 0) + k
        m = re.search(r"\(([^:()]+)(?::\d+)?\)$", leaf)
        src = m.group(1) if m else leaf
        by_file[src] = by_file.get(src, 0) + k
        for fr in set(frames):
            if not any(g in fr for g in GENERIC_FRAMES):
                incl[fr] = incl.get(fr, 0) + k

    def rows(d: dict[str, int]) -> list[tuple[float, str]]:
        return [(round(100.0 * v / total, 1), k) for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:top]]

    return {"samples": total, "top_self": rows(own) if total else [], "top_total": rows(incl) if total else [],
            "threads": {k: round(100.0 * v / total, 1) for k, v in threads.items()} if total else {},
            "top_files": rows(by_file) if total else []}


# frames on every stack (reactor loop, twistd runner, thread bootstrap): left out of the
# total-time ranking, which is meant to show where the work is
GENERIC_FRAMES = ("twisted/python/context.py", "twisted/python/log.py", "twisted/application/app.py",
                  "twisted/scripts/", "twisted/internet/base.py", "epollreactor.py", "posixbase.py", "(twistd:",
                  "threading.py", "twisted/_threads/", "twisted/python/threadpool.py", "tcp.py:", "abstract.py",
                  "twisted/internet/defer.py", "twisted/python/failure.py", "twisted/internet/task.py",
                  "_newclient.py:1", "protocols/basic.py", "twisted/web/http.py")


# ==================================================================== report
def fmt(v: float | None, digits: int = 2, unit: str = "") -> str:
    if v is None:
        return "n/a"
    if abs(v) >= 1000:
        return f"{v:,.0f}{unit}"
    if abs(v) >= 100:
        return f"{v:.0f}{unit}"
    return f"{v:.{digits}f}{unit}"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "n/a"
    r = a / b
    return f"{r:.3g}x" if r < 100 else f"{r:,.0f}x"


@dataclass
class Summary:
    """Medians over rounds, per target and metric (None: not measured / failed sanity)."""

    values: dict[str, dict[str, float | None]]
    na: dict[str, dict[str, str]]


METRICS = [
    # key, label, unit, better
    ("rps", "requests/s, non-stream, 50 connections", "", "higher"),
    ("cpu", "CPU ms per request (non-stream)", " ms", "lower"),
    ("c1_p50", "added latency p50, 1 connection", " ms", "lower"),
    ("c1_p99", "added latency p99, 1 connection", " ms", "lower"),
    ("c50_p50", "added latency p50, 50 connections", " ms", "lower"),
    ("c50_p99", "added latency p99, 50 connections", " ms", "lower"),
    ("sps", "streams/s, 50-chunk SSE, 50 connections", "", "higher"),
    ("scpu", "CPU ms per stream (50-chunk SSE)", " ms", "lower"),
    ("ttfb", "added time to first byte, 1 stream", " ms", "lower"),
    ("paced", "full paced stream (50 x 20 ms), median", " ms", "lower"),
    ("rss", "peak RSS over the run (all processes)", " MB", "lower"),
    ("rss_proc", "peak RSS of the largest process", " MB", "lower"),
]
RAW_ONLY = {"ttfb_abs": "time to first byte (absolute)", "c1_abs_p50": "latency p50 1 conn (absolute)"}


def summarize(targets: list[Target], rounds: list[dict[str, dict[str, Any]]], sampler: Sampler) -> Summary:
    values: dict[str, dict[str, float | None]] = {}
    na: dict[str, dict[str, str]] = {}
    base = "nginx"
    for t in targets:
        v: dict[str, list[float]] = {}
        for r in rounds:
            m = r.get(t.key, {})
            b = r.get(base, {})

            def get(d: dict[str, Any], k: str, f: str) -> float | None:
                x = d.get(k) or {}
                return x.get(f) if "error" not in x and (x.get("errors", 0) or 0) <= 0.01 * (x.get("requests") or 1) \
                    else None

            def add(key: str, x: float | None) -> None:
                if x is not None:
                    v.setdefault(key, []).append(x)

            add("rps", get(m, "chat_c50", "rps"))
            add("cpu", get(m, "chat_c50", "cpu_ms"))
            for conns, k in ((1, "chat_c1"), (50, "chat_c50")):
                for p in ("p50", "p99"):
                    a, z = get(m, k, p), get(b, k, p)
                    add(f"c{conns}_{p}", None if a is None or z is None else (a - z if t.key != base else 0.0))
                    add(f"c{conns}_abs_{p}", a)
            add("sps", get(m, "stream_c50", "rps"))
            add("scpu", get(m, "stream_c50", "cpu_ms"))
            tt, tb = m.get("ttfb") or {}, b.get("ttfb") or {}
            ta, tz = med(tt.get("ttfb_ms") or []), med(tb.get("ttfb_ms") or [])
            add("ttfb_abs", ta)
            add("ttfb", None if ta is None or tz is None else (ta - tz if t.key != base else 0.0))
            add("paced", med((m.get("paced") or {}).get("total_ms") or []))
            for s in SCENARIOS_TRANSLATED:
                add(f"{s}_rps", get(m, s, "rps"))
                add(f"{s}_cpu", get(m, s, "cpu_ms"))
        vals: dict[str, float | None] = {k: med(xs) for k, xs in v.items()}
        with sampler.lock:
            ps, pp = sampler.peak_sum.get(t.key, 0), sampler.peak_proc.get(t.key, 0)
        if t.proc is not None:
            pp = max(pp, max((status_kb(p, "VmHWM") for p in proc_tree(t.pid)), default=0))
        vals["rss"] = ps / 1024 if ps else None
        vals["rss_proc"] = pp / 1024 if pp else None
        values[t.key] = vals
        na[t.key] = {}
        for s, err in t.sanity.items():
            if err is not None:
                na[t.key][s] = err
    return Summary(values, na)


SCEN_OF_METRIC = {"rps": "chat", "cpu": "chat", "c1_p50": "chat", "c1_p99": "chat", "c50_p50": "chat",
                  "c50_p99": "chat", "sps": "stream", "scpu": "stream", "ttfb": "ttfb", "paced": "paced"}


def cell(s: Summary, t: Target, metric: str, unit: str) -> str:
    scen = SCEN_OF_METRIC.get(metric) or (metric.rsplit("_", 1)[0] if metric.endswith(("_rps", "_cpu")) else "")
    if t.skipped:
        return "n/a"
    if scen and scen in s.na.get(t.key, {}):
        return "n/a (failed sanity check)"
    v = s.values.get(t.key, {}).get(metric)
    return fmt(v, 3 if unit.strip() == "ms" else 2, unit)


def goals(s: Summary, targets: dict[str, Target], mem: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(goal, measured, verdict) for each goal of issue 7."""
    out: list[tuple[str, str, str]] = []
    f = s.values.get("fproxy", {})
    f2 = s.values.get("fproxy2", {}) if "fproxy2" in targets and not targets["fproxy2"].skipped else {}

    def peer(key: str, metric: str) -> tuple[float | None, str]:
        v = s.values.get(key, {}).get(metric) if key in targets and not targets[key].skipped else None
        if v is not None:
            return v, "measured here"
        return REFERENCE[key].get(metric), "issue's reference figure (peer not run)"

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("MET" if ok else "NOT MET")

    def ge(a: float | None, b: float | None, k: float) -> bool | None:
        return None if a is None or b is None else a >= k * b

    def le(a: float | None, b: float | None) -> bool | None:
        return None if a is None or b is None else a <= b

    pk, pk_src = peer("portkey", "rps")
    l1, l1_src = peer("litellm1", "rps")
    out.append(("Non-stream, 1 process: >= 1.5x Portkey's requests/s",
                f"fproxy {fmt(f.get('rps'))}/s vs Portkey {fmt(pk)}/s ({pk_src}) = {ratio(f.get('rps'), pk)}",
                verdict(ge(f.get("rps"), pk, 1.5))))
    out.append(("Non-stream, 1 process: >= 15x LiteLLM 1 worker",
                f"fproxy {fmt(f.get('rps'))}/s vs LiteLLM {fmt(l1)}/s ({l1_src}) = {ratio(f.get('rps'), l1)}",
                verdict(ge(f.get("rps"), l1, 15))))
    out.append(("Non-stream: CPU per request <= 0.6 ms", f"{fmt(f.get('cpu'), 3)} ms",
                verdict(le(f.get("cpu"), 0.6))))
    if "fproxy2" in targets and targets["fproxy2"].skipped:
        out.append(("Non-stream, two workers: >= 2x Portkey",
                    f"fproxy with --workers 2 not measured: {targets['fproxy2'].skipped[:160]}", "n/a"))
    elif "fproxy2" in targets:
        out.append(("Non-stream, two workers: >= 2x Portkey",
                    f"fproxy 2w {fmt(f2.get('rps'))}/s vs Portkey {fmt(pk)}/s = {ratio(f2.get('rps'), pk)}",
                    verdict(ge(f2.get("rps"), pk, 2))))
    else:
        out.append(("Non-stream, two workers: >= 2x Portkey", "`twistd fproxy --workers` does not exist yet",
                    "n/a"))
    out.append(("Added latency, 1 connection: p50 <= 0.6 ms", f"{fmt(f.get('c1_p50'), 3)} ms",
                verdict(le(f.get("c1_p50"), 0.6))))
    out.append(("Added latency, 1 connection: p99 <= 2 ms", f"{fmt(f.get('c1_p99'), 3)} ms",
                verdict(le(f.get("c1_p99"), 2.0))))
    lp99 = s.values.get("litellm1", {}).get("c50_p99") if "litellm1" in targets else None
    out.append(("Added latency, 50 connections: p99 <= 1/10 of LiteLLM's",
                f"fproxy {fmt(f.get('c50_p99'), 3)} ms vs LiteLLM 1w {fmt(lp99, 3)} ms"
                + ("" if lp99 is not None else " (LiteLLM not run: no reference at 50 connections)"),
                verdict(None if lp99 is None or f.get("c50_p99") is None else f["c50_p99"] <= lp99 / 10)))
    ps, ps_src = peer("portkey", "sps")
    out.append(("Streams/s >= 2x Portkey's",
                f"fproxy {fmt(f.get('sps'))}/s vs Portkey {fmt(ps)}/s ({ps_src}) = {ratio(f.get('sps'), ps)}",
                verdict(ge(f.get("sps"), ps, 2))))
    out.append(("Added time to first byte <= 1 ms", f"{fmt(f.get('ttfb'), 3)} ms", verdict(le(f.get("ttfb"), 1.0))))
    pd = s.values.get("nginx", {}).get("paced")
    fp = f.get("paced")
    out.append(("Paced stream's full time within 2 % of direct",
                f"fproxy {fmt(fp, 1)} ms vs direct {fmt(pd, 1)} ms "
                f"({'n/a' if fp is None or pd is None else f'{100 * (fp - pd) / pd:+.2f} %'})",
                verdict(None if fp is None or pd is None else abs(fp - pd) <= 0.02 * pd)))
    for s_key in ("oa2an_stream", "an2oa_stream"):
        a, b = f.get(f"{s_key}_cpu"), f.get("scpu")
        failed = "fproxy" in targets and s_key in s.na.get("fproxy", {})
        out.append((f"Translated streaming ({TRANSLATED_LABELS[s_key]}): <= 2x passthrough CPU per request",
                    "n/a (failed sanity check)" if failed else
                    f"{fmt(a, 3)} ms vs passthrough {fmt(b, 3)} ms = {ratio(a, b)}",
                    verdict(None if a is None or b is None else a <= 2 * b)))
    out.append(("Peak RSS over the whole run <= 100 MB per process",
                f"largest fproxy process {fmt(f.get('rss_proc'), 1)} MB"
                + (f"; 2 workers: largest {fmt(f2.get('rss_proc'), 1)} MB, all {fmt(f2.get('rss'), 1)} MB" if f2 else ""),
                verdict(None if f.get("rss_proc") is None else f["rss_proc"] <= 100
                        and (not f2 or (f2.get("rss_proc") or 0) <= 100))))
    mp = mem.get("many_paced") or {}
    mp_peak = mp.get("rss_peak_kb")
    out.append((f"{mp.get('n', 200)} concurrent paced streams <= 120 MB",
                mp.get("error") or f"peak {fmt(mp_peak and mp_peak / 1024, 1)} MB, {mp.get('completed')} of "
                                   f"{mp.get('n')} completed",
                verdict(None if not mp_peak else mp_peak / 1024 <= 120 and mp.get("completed") == mp.get("n"))))
    idle = mem.get("idle") or {}
    ip = idle.get("rss_peak_kb")
    n_ok = idle.get("opened")
    scale = "" if idle.get("n") in (None, 5000) else f" (only {idle.get('n')} in this run: not the goal's 5,000)"
    out.append(("5,000 concurrent idle streams <= 600 MB",
                idle.get("error") or f"peak {fmt(ip and ip / 1024, 1)} MB with {n_ok} of {idle.get('n')} open"
                                     + scale,
                verdict(None if not ip or idle.get("n") != 5000 else ip / 1024 <= 600 and n_ok == idle.get("n"))))
    sl = mem.get("slow") or {}
    g = sl.get("growth_kb")
    out.append(("Slow reader (10 MB stream at 1 KB/s): memory growth < 2 MB",
                sl.get("error") or f"growth {fmt(g and g / 1024, 2)} MB over {sl.get('seconds')} s "
                                   f"(read {sl.get('bytes_read')} B; upstream wrote {sl.get('upstream_bytes_written')} B)",
                verdict(None if g is None else g < 2048)))
    return out


def report(targets: list[Target], rounds: list[dict[str, dict[str, Any]]], s: Summary, mem: dict[str, Any],
           versions: dict[str, str], plan: Plan, prof: dict[str, Any] | None, notes: list[str],
           argv: list[str], elapsed: float) -> str:
    live = [t for t in targets]
    L: list[str] = []
    L.append(f"## Run: `{' '.join(argv)}`\n")
    L.append(f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}, {elapsed / 60:.1f} min, {plan.rounds} round(s), "
             f"targets run alternately in each round: {', '.join(t.label for t in targets if not t.skipped)}.\n")
    L.append("Versions: " + "; ".join(f"{k} {v}" for k, v in versions.items()) + "\n")
    if notes:
        L.append("Notes:\n" + "\n".join(f"- {n}" for n in notes) + "\n")
    L.append("### Main table (medians over rounds)\n")
    L.append("Added latency and time to first byte are the target's figure minus nginx's (or the paced "
             "server's) in the same round. The nginx column's paced-stream and first-byte figures are the paced "
             "server measured directly.\n")
    head = "| metric | " + " | ".join(t.label for t in live) + " |"
    L.append(head)
    L.append("|---" * (len(live) + 1) + "|")
    for key, label, unit, better in METRICS:
        L.append(f"| {label} ({better} is better) | " + " | ".join(cell(s, t, key, unit) for t in live) + " |")
    L.append("")
    gws = [t for t in live if t.key.startswith("fproxy") and not t.skipped]
    others = [t for t in live if not t.key.startswith("fproxy")]
    if gws:
        L.append("### Ratios (fproxy's figure divided by the other's)\n")
        L.append("For throughput a ratio above 1 means fproxy is ahead; for CPU, latency and memory a ratio below 1 "
                 "does. Ratios to nginx for added latency are not meaningful (nginx adds nothing by definition).\n")
        cols = [(g, o) for g in gws for o in others]
        L.append("| metric | " + " | ".join(f"{g.label} / {o.label}" for g, o in cols) + " |")
        L.append("|---" * (len(cols) + 1) + "|")
        for key, label, unit, better in METRICS:
            if key in ("c1_p50", "c1_p99", "c50_p50", "c50_p99", "ttfb"):
                row = [("n/a" if o.key == "nginx" else ratio(s.values[g.key].get(key), s.values[o.key].get(key)))
                       for g, o in cols]
            else:
                row = [ratio(s.values[g.key].get(key), s.values[o.key].get(key)) for g, o in cols]
            L.append(f"| {label} | " + " | ".join(row) + " |")
        L.append("")
    fp = next((t for t in live if t.key == "fproxy"), None)
    ng = next((t for t in live if t.key == "nginx"), None)
    if fp is not None:
        L.append("### Anthropic and translated paths (fproxy; medians over rounds; 50 connections)\n")
        L.append("| scenario | requests/s | CPU ms per request | CPU vs OpenAI passthrough | nginx direct upstream req/s |")
        L.append("|---|---|---|---|---|")
        for sk in SCENARIOS_TRANSLATED:
            if sk in s.na.get("fproxy", {}):
                L.append(f"| {TRANSLATED_LABELS[sk]} | n/a (failed sanity check) | n/a (failed sanity check) | n/a | "
                         f"{upstream_rps(s, sk)} |")
                continue
            v = s.values["fproxy"]
            basekey = "cpu" if TRANSLATED_BASE[sk] == "chat" else "scpu"
            L.append(f"| {TRANSLATED_LABELS[sk]} | {fmt(v.get(sk + '_rps'))} | {fmt(v.get(sk + '_cpu'), 3)} | "
                     f"{ratio(v.get(sk + '_cpu'), v.get(basekey))} | {upstream_rps(s, sk)} |")
        L.append("")
        failed = {k: e for k, e in s.na.get("fproxy", {}).items()}
        if failed:
            L.append("Sanity-check failures (fproxy):\n")
            for k, e in failed.items():
                L.append(f"- `{k}`: {e[:300]}")
            L.append("")
    for t in live:
        bad = {k: e for k, e in s.na.get(t.key, {}).items()}
        if t.key != "fproxy" and bad:
            L.append(f"Sanity-check failures ({t.label}): " + "; ".join(f"`{k}`: {e[:200]}" for k, e in bad.items())
                     + "\n")
        if t.skipped:
            L.append(f"{t.label}: not run: {t.skipped}\n")
    L.append("### Memory scenarios (fproxy, one process, each on a fresh process)\n")
    L.append("| scenario | result | RSS before | peak RSS | growth |")
    L.append("|---|---|---|---|---|")
    mb = lambda kb: "n/a" if not kb else f"{kb / 1024:.1f} MB"  # noqa: E731
    mp = mem.get("many_paced") or {}
    if mp:
        L.append(f"| {mp.get('n')} concurrent paced streams ({plan.many_paced_chunks} x {plan.many_paced_ms} ms) | "
                 + (mp.get("error") or f"{mp.get('completed')} completed, median {mp.get('total_ms_median')} ms "
                                       f"(paced {mp.get('expected_ms')} ms), max {mp.get('total_ms_max')} ms; "
                                       f"paced server directly: median "
                                       f"{(mem.get('many_paced_direct') or {}).get('total_ms_median')} ms")
                 + f" | {mb(mp.get('rss_before_kb'))} | {mb(mp.get('rss_peak_kb'))} | "
                   f"{mb((mp.get('rss_peak_kb') or 0) - (mp.get('rss_before_kb') or 0))} |")
    idle = mem.get("idle") or {}
    if idle:
        L.append(f"| {idle.get('n')} concurrent idle streams, held {plan.idle_hold:g} s | "
                 + (idle.get("error") or f"{idle.get('opened')} open in {idle.get('open_seconds')} s, "
                                         f"{idle.get('failed')} failed")
                 + f" | {mb(idle.get('rss_before_kb'))} | {mb(idle.get('rss_peak_kb'))} | "
                   f"{mb((idle.get('rss_peak_kb') or 0) - (idle.get('rss_before_kb') or 0))} |")
    sl = mem.get("slow") or {}
    if sl:
        L.append(f"| slow reader: {plan.slow_bytes // 1048576} MB stream at 1 KB/s for {plan.slow_seconds:g} s "
                 "(client SO_RCVBUF 16 KB) | "
                 + (sl.get("error") or f"read {sl.get('bytes_read')} B; the upstream could write "
                                       f"{sl.get('upstream_bytes_written')} B (kernel buffers included)")
                 + f" | {mb(sl.get('rss_before_kb'))} | {mb(sl.get('rss_peak_kb'))} | {mb(sl.get('growth_kb'))} |")
    L.append("")
    if fp is not None:
        L.append(f"fproxy idle RSS right after start: {mb(fp.idle_rss_kb)}.\n")
    L.append("### Goals of issue 7\n")
    L.append("| goal | measured | verdict |")
    L.append("|---|---|---|")
    for g, m, v in goals(s, {t.key: t for t in targets}, mem):
        L.append(f"| {g} | {m} | {v} |")
    L.append("")
    L.append("### Every round\n")
    L.append("The last column is the CPU (in cores) that processes outside the bench took during the non-stream "
             "50-connection, 1-connection and stream runs: the machine's busy time minus the target's, the "
             "upstream's, wrk's and the bench's own. Above ~0.1 the round was disturbed by something else on the "
             "machine.\n")
    L.append("| round | target | req/s c50 | CPU ms/req | p50/p99 c50 ms | p50/p99 c1 ms | streams/s | CPU ms/stream "
             "| TTFB ms (median) | paced full ms | errors | other processes' CPU (cores) |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for i, r in enumerate(rounds):
        for t in live:
            m = r.get(t.key)
            if m is None:
                continue
            c50, c1, st = m.get("chat_c50") or {}, m.get("chat_c1") or {}, m.get("stream_c50") or {}
            errs = sum((m.get(k) or {}).get("errors", 0) or 0 for k in m)
            L.append(f"| {i + 1} | {t.label} | {fmt(c50.get('rps'))} | {fmt(c50.get('cpu_ms'), 3)} | "
                     f"{fmt(c50.get('p50'), 2)}/{fmt(c50.get('p99'), 2)} | {fmt(c1.get('p50'), 3)}/{fmt(c1.get('p99'), 3)} | "
                     f"{fmt(st.get('rps'))} | {fmt(st.get('cpu_ms'), 3)} | "
                     f"{fmt(med((m.get('ttfb') or {}).get('ttfb_ms') or []), 3)} | "
                     f"{fmt(med((m.get('paced') or {}).get('total_ms') or []), 1)} | {errs} | "
                     f"{fmt(c50.get('foreign_cores'), 2)} / {fmt(c1.get('foreign_cores'), 2)} / "
                     f"{fmt(st.get('foreign_cores'), 2)} |")
    if fp is not None:
        L.append("")
        L.append("| round | " + " | ".join(f"{k} req/s (CPU ms)" for k in SCENARIOS_TRANSLATED) + " |")
        L.append("|---" * (len(SCENARIOS_TRANSLATED) + 1) + "|")
        for i, r in enumerate(rounds):
            m = r.get("fproxy") or {}
            L.append(f"| {i + 1} | " + " | ".join(
                "n/a" if "rps" not in (m.get(k) or {}) else
                f"{fmt(m[k]['rps'])} ({fmt(m[k]['cpu_ms'], 3)})" for k in SCENARIOS_TRANSLATED) + " |")
    L.append("")
    if prof:
        L.append("### Profile: fproxy, non-stream OpenAI passthrough, 50 connections (py-spy)\n")
        if "error" in prof:
            L.append(f"profile not taken: {prof['error']}\n")
        else:
            w = prof.get("wrk") or {}
            L.append(f"{prof.get('samples')} samples over {plan.profile_seconds:g} s at "
                     f"{fmt(w.get('rps'))} requests/s (py-spy slows the process a little). "
                     f"Raw stacks: `{prof.get('raw')}`; flame graph: `{prof.get('svg')}`.\n")
            L.append("Samples by thread: " + ", ".join(f"{k} {v} %" for k, v in (prof.get("threads") or {}).items())
                     + ".\n")
            L.append("Top 15 by own time (the frame itself was running):\n")
            L.append("| % of samples | frame |")
            L.append("|---|---|")
            for pct, fr in prof.get("top_self", []):
                L.append(f"| {pct} | `{fr}` |")
            L.append("\nTop 15 by total time (the frame was on the stack; the reactor loop, the twistd runner, "
                     "Deferred plumbing and thread bootstrap frames, which are on nearly every stack, left out):\n")
            L.append("| % of samples | frame |")
            L.append("|---|---|")
            for pct, fr in prof.get("top_total", []):
                L.append(f"| {pct} | `{fr}` |")
            L.append("\nOwn time by source file (top 15):\n")
            L.append("| % of samples | file |")
            L.append("|---|---|")
            for pct, fr in prof.get("top_files", []):
                L.append(f"| {pct} | `{fr}` |")
            L.append("")
    return "\n".join(L)


def upstream_rps(s: Summary, sk: str) -> str:
    """nginx's own figure for the upstream the scenario uses."""
    ng = s.values.get("nginx", {})
    up = {"anth_chat": "anth_chat_rps", "anth_stream": "anth_stream_rps", "oa2an_chat": "anth_chat_rps",
          "oa2an_stream": "anth_stream_rps", "an2oa_chat": "rps", "an2oa_stream": "sps"}[sk]
    return fmt(ng.get(up))


# ==================================================================== nginx
def nginx_conf(work: str, port: int) -> str:
    files = os.path.join(work, "files")
    os.makedirs(files, exist_ok=True)
    # nginx's workers run as an unprivileged user: the (mkdtemp, 0700) work dir must be readable
    os.chmod(work, 0o755)
    os.chmod(files, 0o755)
    bodies = {"chat.json": fixtures.openai_json(), "stream.sse": fixtures.openai_sse(50),
              "anth.json": fixtures.anthropic_json(), "anthstream.sse": fixtures.anthropic_sse(50)}
    for name, body in bodies.items():
        with open(os.path.join(files, name), "wb") as f:
            f.write(body)
        os.chmod(os.path.join(files, name), 0o644)
    os.makedirs(os.path.join(work, "nginx-body"), exist_ok=True)
    # nginx's static module answers POST with 405; error_page turns that into an internal GET
    # of the fixed file (and discards the request body, keeping the connection alive).
    locs = {"/v1/chat/completions": "chat.json", "/stream/v1/chat/completions": "stream.sse",
            "/anth/v1/messages": "anth.json", "/anthstream/v1/messages": "anthstream.sse"}
    loc_text = "\n".join(f"    location = {path} {{ error_page 405 =200 /_f/{name}; return 405; }}"
                         for path, name in locs.items())
    conf = f"""# generated by bench/bench.py
worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
worker_rlimit_nofile 20000;
events {{ worker_connections 16000; }}
http {{
  access_log off;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  client_body_temp_path {work}/nginx-body;
  etag off;
  open_file_cache max=16 inactive=600s;
  open_file_cache_valid 600s;
  server {{
    listen {HOST}:{port} backlog=4096;
{loc_text}
    location /_f/ {{ internal; alias {files}/; types {{ application/json json; text/event-stream sse; }} }}
    location = /health {{ return 200 'ok'; }}
  }}
}}
"""
    path = os.path.join(work, "nginx.conf")
    with open(path, "w") as f:
        f.write(conf)
    return path


# ==================================================================== main
def main() -> int:
    ap = argparse.ArgumentParser(description="fproxy's benchmark (see bench/README.md)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds of A B A B ... (default 3; --quick: 1)")
    ap.add_argument("--quick", action="store_true", help="one short round: a smoke run under 2 minutes")
    ap.add_argument("--with-litellm", action="store_true", help="also run LiteLLM (1 and 2 workers)")
    ap.add_argument("--with-portkey", action="store_true", help="also run the Portkey gateway")
    ap.add_argument("--litellm-bin", default=os.environ.get("BENCH_LITELLM_BIN", ""))
    ap.add_argument("--portkey-dir", default=os.environ.get("BENCH_PORTKEY_DIR", ""))
    ap.add_argument("--no-memory", action="store_true", help="skip the memory scenarios")
    ap.add_argument("--profile", action="store_true", help="append a py-spy profile of fproxy (non-stream)")
    ap.add_argument("--out", default="", help="directory for report.md, results.json and logs")
    ap.add_argument("--workdir", default="", help=argparse.SUPPRESS)
    a = ap.parse_args()
    plan = Plan.quick() if a.quick else Plan()
    if a.rounds:
        plan.rounds = a.rounds
    t_start = time.monotonic()
    work = a.workdir or tempfile.mkdtemp(prefix="fproxy-bench-")
    out_dir = a.out or work
    os.makedirs(out_dir, exist_ok=True)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    notes: list[str] = [f"open-files limit {hard}", f"load average at the start: {load}"]
    for var, why in (("BENCH_LITELLM_SKIP", "LiteLLM"), ("BENCH_PORTKEY_SKIP", "Portkey")):
        if os.environ.get(var):
            notes.append(f"{why} not run: {os.environ[var]}")

    def on_signal(signum: int, frame: Any) -> None:
        stop_all()
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    sampler = Sampler()
    sampler.start()
    try:
        return run(a, plan, work, out_dir, sampler, notes, t_start)
    finally:
        sampler.stopped.set()
        stop_all()


def run(a: argparse.Namespace, plan: Plan, work: str, out_dir: str, sampler: Sampler, notes: list[str],
        t_start: float) -> int:
    env = Env(work, free_port(), free_port(), plan)
    log(f"work dir {work}")
    nginx = start("nginx", ["nginx", "-p", work, "-c", nginx_conf(work, env.nginx_port), "-e",
                            os.path.join(work, "nginx-error.log")], work)
    paced = start("paced", [sys.executable, os.path.join(HERE, "paced_server.py"), "--port", str(env.paced_port)], work)
    if not wait_http(env.nginx_port, "/health", 20, nginx):
        log(f"nginx did not start: {nginx.tail()}")
        return 2
    if not wait_http(env.paced_port, "/health", 20, paced):
        log(f"paced server did not start: {paced.tail()}")
        return 2
    env.upstream_pids = [nginx.pid, paced.pid]
    targets: list[Target] = [nginx_target(env, nginx)]
    config = fproxy_config(env)
    fp, fport = start_fproxy(env, "fproxy", config)
    targets.append(Target("fproxy", "fproxy 1 process", fproxy_specs(fport, plan), fp, fp.pid))
    if workers_supported():
        fp2, fport2 = start_fproxy(env, "fproxy2", config, workers=2)
        targets.append(Target("fproxy2", "fproxy 2 workers", fproxy_specs(fport2, plan), fp2, fp2.pid))
    else:
        notes.append("`twistd fproxy --workers` does not exist yet: fproxy ran as one process only")
    if a.with_litellm:
        binary = a.litellm_bin or os.path.expanduser("~/.cache/fproxy-bench/litellm-venv/bin/litellm")
        a.litellm_bin = binary
        if os.path.exists(binary):
            targets.append(litellm_target(env, binary, 1))
            targets.append(litellm_target(env, binary, 2))
        else:
            notes.append(f"LiteLLM not run: {binary} is missing")
    if a.with_portkey:
        if a.portkey_dir and os.path.isdir(a.portkey_dir):
            targets.append(portkey_target(env, a.portkey_dir))
        else:
            notes.append("Portkey not run: no installed folder (run.sh --with-portkey installs it)")
    # wait for every target, then check each scenario once
    for t in targets:
        if t.key == "nginx":
            ok = True
        elif t.key.startswith("litellm"):
            ok = wait_http(t.specs["chat"].port, "/health/liveliness", 180, t.proc)
        else:
            ok = wait_http(t.specs["chat"].port, "/health" if t.key.startswith("fproxy") else "/", 45, t.proc)
        if not ok:
            t.skipped = f"did not start: {t.proc.tail(8) if t.proc else ''}".replace("\n", " / ")[:400]
            log(f"{t.label}: {t.skipped}")
            continue
        if t.key.startswith("fproxy"):
            time.sleep(0.3)
            t.idle_rss_kb = sum(status_kb(p, "VmRSS") for p in proc_tree(t.pid))
        for s, spec in t.specs.items():
            if s in SCENARIOS_MAIN or s in SCENARIOS_TRANSLATED:
                t.sanity[s] = spec.sanity()
                if t.sanity[s] is not None:
                    log(f"{t.label}: scenario {s}: n/a (failed sanity check): {t.sanity[s][:200]}")
        sampler.watch(t.key, t.pid)
    live = [t for t in targets if not t.skipped]
    versions = collect_versions(a, targets)
    rounds: list[dict[str, dict[str, Any]]] = []
    for rnd in range(plan.rounds):
        log(f"round {rnd + 1} of {plan.rounds}")
        results: dict[str, dict[str, Any]] = {}
        for t in live:
            if t.proc is not None and not t.proc.alive():
                log(f"{t.label} has exited: {t.proc.tail(5)}")
                t.skipped = t.skipped or "exited during the run"
                continue
            results[t.key] = measure(t, env, rnd)
        rounds.append(results)
    summary = summarize(targets, rounds, sampler)
    for t in targets:
        sampler.unwatch(t.key)
    # the peers are done: stop them so the memory scenarios run on a quiet machine
    for t in targets:
        if t.proc is not None and t.key != "nginx":
            t.proc.stop()
    mem: dict[str, Any] = {}
    if not a.no_memory:
        mem = memory_scenarios(env, config, sampler)
    prof = profile_fproxy(env, config) if a.profile else None
    elapsed = time.monotonic() - t_start
    argv = ["bench/run.sh"] + sys.argv[1:]
    text = report(targets, rounds, summary, mem, versions, plan, prof, notes, argv, elapsed)
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump({"plan": plan.__dict__, "versions": versions, "notes": notes, "rounds": rounds,
                   "summary": summary.values, "sanity": {t.key: t.sanity for t in targets},
                   "skipped": {t.key: t.skipped for t in targets}, "memory": mem,
                   "profile": {k: v for k, v in (prof or {}).items()}}, f, indent=1, default=str)
    for t in targets:
        if t.proc is not None:
            shutil.copy(t.proc.log_path, out_dir) if out_dir != work else None
    print(text)
    log(f"done in {elapsed / 60:.1f} min; report: {os.path.join(out_dir, 'report.md')}")
    return 0


def collect_versions(a: argparse.Namespace, targets: list[Target]) -> dict[str, str]:
    v: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "?")
    except OSError:
        model = "?"
    v["machine"] = f"{os.cpu_count()} cores ({model}), {platform.system()} {platform.release()}"
    v["nginx"] = tool_version(["nginx", "-v"]).replace("nginx version: ", "")
    v["wrk"] = tool_version(["wrk", "-v"]).split(" [")[0]
    py = os.path.join(REPO, ".venv", "bin", "python")
    v["fproxy python"] = tool_version([py, "-c", "import sys, twisted, fproxy; print(sys.version.split()[0], "
                                                "'twisted', twisted.__version__, 'fproxy', fproxy.__version__)"])
    for t in targets:
        if t.key == "litellm1" and a.litellm_bin:
            pip = os.path.join(os.path.dirname(a.litellm_bin), "pip")
            try:
                out = subprocess.run([pip, "show", "litellm"], capture_output=True, text=True, timeout=60).stdout
            except (OSError, subprocess.TimeoutExpired):
                out = ""
            m = re.search(r"^Version: (.+)$", out, re.M)
            v["litellm"] = m.group(1) if m else "?"
        if t.key == "portkey" and a.portkey_dir:
            try:
                with open(os.path.join(a.portkey_dir, "node_modules", "@portkey-ai", "gateway", "package.json")) as f:
                    v["portkey gateway"] = json.load(f)["version"]
                with open(os.path.join(a.portkey_dir, "node_modules", "@hono", "node-server", "package.json")) as f:
                    v["@hono/node-server"] = json.load(f)["version"]
            except (OSError, ValueError, KeyError):
                v["portkey gateway"] = "?"
            v["node"] = tool_version(["node", "--version"])
    return v


if __name__ == "__main__":
    sys.exit(main())
