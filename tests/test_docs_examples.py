"""Every code block of the docs pages marked `<!-- runnable -->` runs as written, in an empty folder.

The convention is described in docs/index.md; the README's blocks are run by test_readme_example.py.
"""

from __future__ import annotations

import pytest

from docs_blocks import DOCS, MARKER, README, Block, doc_pages, run_bash, run_python, runnable_blocks

BLOCKS = [block for page in doc_pages() for block in runnable_blocks(page)]


def test_the_docs_have_runnable_examples():
    # A marker typo would silently turn an example into an untested one: the pages that promise a
    # runnable example must still have one.
    pages = {block.path.relative_to(DOCS).as_posix() for block in BLOCKS}
    assert {"getting-started.md", "datasets.md", "models.md", "training.md", "latent.md"} <= pages
    assert runnable_blocks(README), "the README's Python API example must stay runnable"


def test_a_marker_without_a_block_is_refused(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(f"text\n{MARKER}\nnot a code block\n")
    with pytest.raises(ValueError, match="must be followed directly by a fenced"):
        runnable_blocks(page)
    page.write_text(f"{MARKER}\n```python\nx = 1\n```\n\n```python\nnot run\n```\n")
    (block,) = runnable_blocks(page)
    assert block.code == "x = 1\n" and block.line == 2


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_runnable_block(block: Block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if block.language == "python":
        run_python(block)
    else:
        run_bash(block, tmp_path)
