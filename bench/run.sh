#!/usr/bin/env bash
# fproxy's benchmark, one command from a fresh clone (see bench/README.md):
#
#   bench/run.sh                                  # 3 rounds, fproxy vs nginx directly (~5 min)
#   bench/run.sh --with-litellm --with-portkey    # and the peers (~10 min; first install longer)
#   bench/run.sh --quick                          # 1 short round: a smoke run under 2 minutes
#   bench/run.sh --profile                        # append a py-spy profile of fproxy
#
# Installs what is missing: nginx and wrk (Debian), the repository's .venv with fproxy
# (pip install -e .[test]); with --with-litellm LiteLLM in its own venv under
# ~/.cache/fproxy-bench; with --with-portkey the Portkey gateway (npm) in a temp folder;
# with --profile py-spy into .venv.  A peer that fails to install is reported and skipped.
# Everything runs on 127.0.0.1 and stops by itself.  Other flags go to bench/bench.py
# (--rounds N, --no-memory, --out DIR).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/fproxy-bench"
cd "$REPO"

say() { printf '[run.sh] %s\n' "$*" >&2; }

WITH_LITELLM=0 WITH_PORTKEY=0 PROFILE=0
for arg in "$@"; do
  case "$arg" in
    --with-litellm) WITH_LITELLM=1 ;;
    --with-portkey) WITH_PORTKEY=1 ;;
    --profile) PROFILE=1 ;;
    -h|--help) sed -n '2,16p' "$0"; exec python3 "$HERE/bench.py" --help ;;
  esac
done

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

# ---- system packages: nginx (the fake upstream) and wrk (the load generator)
missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]} (apt-get)"
  if ! $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null 2>&1; then
    $SUDO apt-get update -q >/dev/null
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
  fi
  # the Debian package may start a system nginx on port 80: the bench runs its own and leaves that alone
fi
export PATH="$PATH:/usr/sbin"

# ---- the repository's venv with fproxy
if [ ! -x "$REPO/.venv/bin/twistd" ] || ! "$REPO/.venv/bin/python" -c 'import fproxy, klein, treq' 2>/dev/null; then
  say "creating .venv and installing fproxy (pip install -e .[test])"
  [ -x "$REPO/.venv/bin/python" ] || python3 -m venv "$REPO/.venv"
  "$REPO/.venv/bin/pip" install -q -e "$REPO[test]"
fi

# ---- py-spy for --profile
if [ "$PROFILE" = 1 ] && [ ! -x "$REPO/.venv/bin/py-spy" ]; then
  say "installing py-spy into .venv"
  "$REPO/.venv/bin/pip" install -q py-spy || say "py-spy did not install: the profile will be skipped"
fi

# ---- LiteLLM, in its own venv (it pins many packages)
if [ "$WITH_LITELLM" = 1 ]; then
  LVENV="$CACHE/litellm-venv"
  if [ ! -x "$LVENV/bin/litellm" ]; then
    say "installing LiteLLM into $LVENV (pip install 'litellm[proxy]'; a few minutes the first time)"
    mkdir -p "$CACHE"
    if ! { python3 -m venv "$LVENV" && timeout 900 "$LVENV/bin/pip" install -q 'litellm[proxy]'; } \
        >"$CACHE/litellm-install.log" 2>&1; then
      export BENCH_LITELLM_SKIP="pip install 'litellm[proxy]' failed: $(tail -n 2 "$CACHE/litellm-install.log" | tr '\n' ' ')"
      say "$BENCH_LITELLM_SKIP"
    fi
  fi
  [ -x "$LVENV/bin/litellm" ] && export BENCH_LITELLM_BIN="$LVENV/bin/litellm"
fi

# ---- Portkey gateway (Node), in a temp folder
PORTKEY_DIR=""
cleanup() { [ -n "$PORTKEY_DIR" ] && rm -rf "$PORTKEY_DIR"; }
trap cleanup EXIT
if [ "$WITH_PORTKEY" = 1 ]; then
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    say "installing nodejs and npm (apt-get)"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm >/dev/null 2>&1 || true
  fi
  PORTKEY_DIR="$(mktemp -d -t fproxy-bench-portkey-XXXXXX)"
  # @hono/node-server 1.14.2 and later keep the fetch response's immutable headers in a new
  # Response, and the gateway's Node build then fails every stream with "TypeError: immutable"
  # (Portkey-AI/gateway issues 1389 and 1550): pin the last release without that change.
  cat >"$PORTKEY_DIR/package.json" <<'EOF'
{
  "private": true,
  "dependencies": { "@portkey-ai/gateway": "^1.15.2" },
  "overrides": { "@hono/node-server": "1.14.1" }
}
EOF
  say "installing the Portkey gateway into $PORTKEY_DIR (npm install @portkey-ai/gateway)"
  if (cd "$PORTKEY_DIR" && timeout 600 npm install --no-audit --no-fund --loglevel=error >npm-install.log 2>&1); then
    export BENCH_PORTKEY_DIR="$PORTKEY_DIR"
  else
    export BENCH_PORTKEY_SKIP="npm install @portkey-ai/gateway failed: $(tail -n 2 "$PORTKEY_DIR/npm-install.log" | tr '\n' ' ')"
    say "$BENCH_PORTKEY_SKIP"
  fi
fi

# ---- open files: 5,000 idle streams need ~10,000 descriptors in fproxy
hard="$(ulimit -Hn)"
if [ "$hard" = unlimited ] || [ "$hard" -gt 65536 ]; then hard=65536; fi
ulimit -n "$hard" 2>/dev/null || true
if [ "$(ulimit -n)" -lt 12000 ]; then
  say "warning: open-files limit is $(ulimit -n); the 5,000 idle streams scenario needs about 12,000"
fi

say "running bench/bench.py $*"
"$REPO/.venv/bin/python" "$HERE/bench.py" "$@"
