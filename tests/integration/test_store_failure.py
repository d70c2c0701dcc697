"""A gateway whose store cannot be opened stops with a failing exit code (a supervisor restarts it)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BOOT = "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"


def test_unreadable_store_exits_nonzero(tmp_path):
    (tmp_path / "bad.db").write_bytes(b"not a database at all, just some bytes that are not SQLite")
    (tmp_path / "c.toml").write_text('[access]\nkeys = ["k"]\n[store]\nurl = "sqlite:bad.db"\n'
                                     '[[provider]]\nname = "demo"\ndialect = "mock"\nmodels = ["fproxy-demo"]\n')
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, "-c", BOOT, "-n", "--pidfile=", "fproxy", "--config", "c.toml",
                        "--listen", "tcp:0:interface=127.0.0.1"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=60)
    out = p.stdout + p.stderr
    assert p.returncode == 1, out[-2000:]
    assert "cannot open the store sqlite:bad.db: file is not a database" in out
