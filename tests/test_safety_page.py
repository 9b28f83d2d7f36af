"""docs/safety.md ("Your work is safe"): every test it names exists, and every guarantee names one."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "safety.md"


def test_every_named_test_exists_and_every_guarantee_names_one():
    text = PAGE.read_text()
    named = [(f, n) for f, n in re.findall(r"`tests/(\w+\.py)::(\w+)`", text) if f != "FILE.py"]  # not the legend
    assert len(named) > 40
    missing = [f"{file}::{name}" for file, name in named
               if not (REPO / "tests" / file).is_file()
               or not re.search(rf"^def {name}\(", (REPO / "tests" / file).read_text(), re.MULTILINE)]
    assert not missing, f"docs/safety.md names tests that do not exist: {missing}"
    sections = re.split(r"^## ", text, flags=re.MULTILINE)[1:]
    unchecked = [section.splitlines()[0] for section in sections if "tests/" not in section]
    assert not unchecked, f"guarantees without a test: {unchecked}"
