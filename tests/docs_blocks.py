"""The documentation's runnable code blocks: a fenced block right after a line `<!-- runnable -->`.

Used by tests/test_docs_examples.py (the pages under docs/) and tests/test_readme_example.py (the
README). The convention is described in docs/index.md ("Writing these docs").
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
MARKER = "<!-- runnable -->"
LANGUAGES = ("python", "bash")
FENCE = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```\s*$", re.S | re.M)


@dataclass
class Block:
    """One runnable block: where it is, its language and its code."""

    path: Path
    line: int  # 1-based line of the opening fence
    language: str
    code: str

    @property
    def id(self) -> str:
        return f"{_shown(self.path)}:{self.line}"


def _shown(path: Path) -> str:
    """`path` relative to the repository when it is inside it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def runnable_blocks(path: Path) -> list[Block]:
    """Every block marked runnable in `path`; a marker not followed by a python/bash fence raises."""
    text = path.read_text()
    blocks = []
    for match in re.finditer(rf"^{re.escape(MARKER)}[ \t]*$", text, re.M):  # the marker alone on its line
        rest = text[match.end():]
        fence = FENCE.match(rest.lstrip("\n"))
        line = text[:match.end()].count("\n") + 2
        if fence is None or fence.group(1) not in LANGUAGES:
            raise ValueError(f"{_shown(path)}:{line - 1}: '{MARKER}' must be followed directly by a "
                             f"fenced {' or '.join(LANGUAGES)} block")
        blocks.append(Block(path, line, fence.group(1), fence.group(2)))
    return blocks


def doc_pages() -> list[Path]:
    """Every markdown page of the docs site."""
    return sorted(DOCS.rglob("*.md"))


def run_bash(block: Block, cwd: Path) -> None:
    """Run a bash block with `bash -euo pipefail` in `cwd`, this Python's `vaelab` first on the PATH."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", block.code], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{block.id} failed (exit {result.returncode}):\n{result.stderr[-3000:]}"


def run_python(block: Block) -> dict:
    """exec a python block in a fresh namespace (in the current directory); return the namespace."""
    namespace: dict = {"__name__": "docs_example"}
    exec(compile(block.code, block.id, "exec"), namespace)
    return namespace
