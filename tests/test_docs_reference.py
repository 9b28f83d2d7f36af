"""The generated reference pages (vaelab.docs_reference): every flag documented and listed, every config
field listed with its default and description, docstrings rendered; and the tests the docs name exist."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import re
import sys
import typing
from pathlib import Path
from typing import Literal, Optional

import pytest

from docs_blocks import DOCS, README, ROOT, doc_pages
from vaelab import docs_reference as ref
from vaelab.cli import build_parser
from vaelab.cli.options import TRAIN_FLAGS
from vaelab.config import RunConfig


def _every_action(parser: argparse.ArgumentParser, prog: str = "vaelab"):
    """(command, action) for every argument of every subcommand, walked independently of the generator."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _every_action(sub, f"{prog} {name}")
        elif not isinstance(action, argparse._HelpAction):
            yield prog, action


def test_every_flag_of_every_command_has_help_and_is_in_the_cli_reference():
    parser = build_parser()
    page = ref.cli_reference(parser)
    actions = list(_every_action(parser))
    assert len(actions) > 100  # every subcommand's flags, train's and config's included
    no_help = [f"{cmd} {a.option_strings or a.dest}" for cmd, a in actions if not (a.help or "").strip()
               or a.help == argparse.SUPPRESS]
    assert not no_help, f"flags without a help string: {no_help}"
    assert ref.undocumented_flags(parser) == []
    sections = re.split(r"^## ", page, flags=re.M)
    by_command = {s.splitlines()[0].strip(): s for s in sections[1:]}
    for cmd, action in actions:
        if cmd == "vaelab":  # --version: named in the page's intro
            assert "--version" in sections[0]
            continue
        assert cmd in by_command, f"no section for {cmd}"
        for name in action.option_strings or [action.metavar or action.dest]:
            assert f"`{name}`" in by_command[cmd], f"{cmd} {name} is missing from the CLI reference"


def test_a_new_flag_appears_and_a_flag_without_help_is_caught():
    parser = build_parser()
    train = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["train"]
    train.add_argument("--brand-new", type=int, default=7, help="a flag added <later> by someone")
    train.add_argument("--silent", type=int)
    page = ref.cli_reference(parser)
    section = page.split("## vaelab train\n", 1)[1].split("\n## ", 1)[0]
    assert "| `--brand-new` | `BRAND_NEW` | `7` | a flag added &lt;later&gt; by someone |" in section
    assert ref.undocumented_flags(parser) == ["vaelab train --silent"]


def test_training_flags_show_their_config_default():
    page = ref.cli_reference()
    section = page.split("## vaelab train\n", 1)[1].split("\n## ", 1)[0]
    assert "| `--latent-dim` | `LATENT_DIM` | `2` |" in section
    assert "| `--adam-betas` | `ADAM_BETAS` | `[0.9, 0.999]` |" in section
    assert "`digits \\| mnist" in section  # choices, with the table's pipe escaped


def test_every_config_field_is_in_the_config_reference_with_its_default_and_a_description():
    page = ref.config_reference()
    flags = {f.key: f.flag for f in TRAIN_FLAGS}
    defaults = RunConfig().to_dict()
    for section in ("data", "model", "train"):
        part = page.split(f"## [{section}]\n", 1)[1].split("\n## ", 1)[0]
        section_cls = type(getattr(RunConfig(), section))
        for field in dataclasses.fields(section_cls):
            row = next((line for line in part.splitlines() if line.startswith(f"| `{field.name}` |")), None)
            assert row is not None, f"{section}.{field.name} is missing from the config reference"
            cells = [c.strip() for c in row.strip("|").split(" | ")]
            default = defaults[section][field.name]
            assert cells[2] == ("`unset`" if default is None else f"`{ref.json.dumps(default)}`"), row
            key = f"{section}.{field.name}"
            assert cells[3] == (f"`{flags[key]}`" if key in flags else ""), row
            assert cells[4], f"{key} has no description: give it a '# comment' or a flag with help"
    for name in ("version", "vaelab_version"):
        assert f"| `{name}` |" in page.split("## Recorded by vaelab\n", 1)[1]
    assert "### iwae-paper-vae" in page and "`train.adam_eps` | `0.0001`" in page


def _module_from_source(tmp_path: Path, source: str):
    path = tmp_path / "added_config.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("added_config", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["added_config"] = module  # dataclasses look their module up while resolving hints
    spec.loader.exec_module(module)
    return module


def test_a_field_added_in_the_existing_style_appears_with_its_comment(tmp_path):
    module = _module_from_source(tmp_path, '''
from __future__ import annotations
import dataclasses
from dataclasses import dataclass, field
from typing import Literal, Optional

Mode = Literal["fast", "slow"]


@dataclass
class NewConfig:
    """A section someone adds."""

    ema_decay: float = 0.0  # EMA of the weights; 0 = off
    # Two comment lines above a field
    # belong to it,
    mode: Mode = "fast"  # and so does the one on its line.

    window: Optional[list[float]] = None
    plain: int = 3
    documented: int = field(default=1, metadata={"doc": "metadata wins"})  # over the comment
    items: list[int] = field(default_factory=lambda: [1, 2])  # a factory default

    def method(self) -> None:
        x: int = 1  # not a field
''')
    docs = {d.key: d for d in ref.config_fields(module.NewConfig, "train.")}
    assert list(docs) == ["train.ema_decay", "train.mode", "train.window", "train.plain", "train.documented",
                          "train.items"]
    assert docs["train.ema_decay"].description == "EMA of the weights; 0 = off"
    assert docs["train.ema_decay"].default == "0.0" and docs["train.ema_decay"].type == "float"
    assert docs["train.mode"].description == \
        "Two comment lines above a field belong to it, and so does the one on its line."
    assert docs["train.mode"].type == '"fast" | "slow"'
    assert docs["train.window"].description == ""  # a blank line separates it from mode's comment
    assert docs["train.window"].type == "list of float or unset" and docs["train.window"].default == "unset"
    assert docs["train.documented"].description == "metadata wins"
    assert docs["train.items"].default == "[1, 2]"
    # A field without a comment falls back to its flag's help.
    from vaelab.cli.options import Flag

    plain = Flag("--plain", "train.plain", int, "from the flag")
    docs = ref.config_fields(module.NewConfig, "train.", {"train.plain": plain})
    assert [(d.flag, d.description) for d in docs if d.key == "train.plain"] == [("--plain", "from the flag")]


def test_type_text():
    assert ref.type_text(int) == "int"
    assert ref.type_text(Optional[int]) == "int or unset"
    assert ref.type_text(list[list[float]]) == "list of list of float"
    assert ref.type_text(Literal["a", "b"]) == '"a" | "b"'
    assert ref.type_text(typing.Union[int, str]) == "int or str"


def test_api_reference_has_signatures_and_docstrings():
    page = ref.api_reference(["vaelab", "vaelab.latent"])
    assert "## vaelab.latent\n" in page
    section = page.split("### vaelab.latent.interpolate_images\n", 1)[1].split("\n### ", 1)[0]
    # Unquoted annotations (the modules use `from __future__ import annotations`), defaults kept.
    assert "interpolate_images(model: VAE, x_a: torch.Tensor, x_b: torch.Tensor, steps: int = 10, mode: str = 'lerp'" \
        in section
    import vaelab.latent

    first_line = vaelab.latent.interpolate_images.__doc__.strip().splitlines()[0]
    assert ref._escape(first_line) in section
    # The top-level names point at their definitions.
    full = ref.api_reference(["vaelab", "vaelab.config"])
    assert "The same object as [`vaelab.config.RunConfig`](#vaelabconfigrunconfig)" in full
    assert "### vaelab.config.RunConfig" in full


def test_every_package_module_is_in_the_api_reference():
    modules = ref.api_modules()
    assert modules[0] == "vaelab" and "vaelab.latent" in modules and "vaelab.fid" in modules
    assert not any(m.startswith("vaelab.cli") for m in modules)
    for path in (ROOT / "src" / "vaelab").glob("*.py"):
        name = f"vaelab.{path.stem}"
        if not path.stem.startswith("_") and not name.startswith(ref.EXCLUDED_PREFIXES):
            assert name in modules, f"{name} is missing from the API reference"


def test_docstrings_render_as_written():
    md = ref.docstring_markdown("""Write `RUN/<name>.png` to <run>/figures.

    Files:
        a.py   one thing
        b.py   another

    # not a heading, *not emphasis*
    """)
    assert "`RUN/<name>.png`" in md and "&lt;run&gt;/figures" in md
    assert "```text\na.py   one thing\nb.py   another\n```" in md
    assert "\\# not a heading, \\*not emphasis\\*" in md


def test_generation_markers_are_filled_and_unknown_ones_refused():
    assert "`--latent-dim`" in ref.fill_generated("intro\n<!-- generated: cli -->\n")
    with pytest.raises(KeyError, match="unknown generated section 'nope'"):
        ref.fill_generated("<!-- generated: nope -->")
    for name in ("cli", "config", "api"):
        assert f"<!-- generated: {name} -->" in (DOCS / "reference" / f"{name}.md").read_text()


def test_module_prints_a_page(capsys):
    assert ref.main(["config"]) == 0
    assert "## [model]" in capsys.readouterr().out


TEST_REFERENCE = re.compile(r"tests/(test_\w+\.py)(?:::(test_\w+))?")


def test_every_test_the_docs_name_exists():
    # "Your work is safe" names the test behind each guarantee; a renamed test must not leave it stale.
    named = 0
    for page in [README, *doc_pages()]:
        for file_name, test_name in TEST_REFERENCE.findall(page.read_text()):
            path = ROOT / "tests" / file_name
            assert path.is_file(), f"{page.name} names tests/{file_name}, which does not exist"
            if test_name:
                named += 1
                assert re.search(rf"^\s*def {test_name}\(", path.read_text(), re.M), \
                    f"{page.name} names tests/{file_name}::{test_name}, which does not exist"
    assert named >= 20
