"""The README's two set-up commands are what CI and users run: keep them true."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _indented_commands(text: str) -> list[str]:
    return [m.group(1) for m in re.finditer(r"^    (python3 -m venv .+)$", text, re.M)]


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    start, test = _indented_commands(readme)
    assert "twistd -n --pidfile= fproxy --config etc/fproxy.example.toml" in start
    assert "pytest" in test
    ci = (ROOT / ".ci" / "run").read_text()
    assert test.replace("pip install -q -e", "pip install -q -e") in ci.splitlines(), \
        ".ci/run must run exactly the README's test command"


def test_example_config_is_valid_and_serves_the_mock_model():
    from fproxy.config import load

    cfg = load(str(ROOT / "etc" / "fproxy.example.toml"), env={})
    assert cfg.access.keys == ("sk-fproxy-demo",)
    assert cfg.server.listen == ("tcp:8001:interface=127.0.0.1",)
    (demo,) = [p for p in cfg.providers if p.dialect == "mock"]
    assert "fproxy-demo" in demo.models
