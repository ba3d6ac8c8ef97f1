"""The README's apps run as written: "Your own app" and "Conversations in your app", each
an app module with its offline test."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_files() -> dict[str, str]:
    """Python blocks of the README whose first line is ``# NAME.py``, by file name."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    named = {}
    for block in blocks:
        first = block.splitlines()[0]
        if re.fullmatch(r"# \w+\.py", first):
            named[first[2:]] = block
    return named


def test_the_readmes_apps_and_their_offline_tests_pass(tmp_path: Path) -> None:
    files = readme_files()
    tests = ["test_app.py", "test_chat_api.py"]
    assert {"app.py", "chat_api.py", *tests} <= files.keys()
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OPENAI_API_KEY", "OPENAI_AGENTS_DISABLE_TRACING")  # as a newcomer has it
    }
    options = ["-o", "asyncio_mode=auto", "-o", "asyncio_default_fixture_loop_scope=function"]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests, *options],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        # The checkout under test, even where another one is installed (a git worktree).
        env={**env, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])},
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout
    assert "OPENAI_API_KEY is not set" not in result.stdout + result.stderr
