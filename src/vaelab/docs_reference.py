"""The documentation's reference pages, generated from the code so that they cannot drift from it.

- `cli_reference()`: every `vaelab` subcommand and flag with its help, walked from the argparse
  parsers of `vaelab.cli.build_parser()`;
- `config_reference()`: every field of `DataConfig`, `ModelConfig`, `TrainConfig` (and the facts a
  run records) with its type or choices, default, flag and description. A field's description is
  `dataclasses.field(metadata={"doc": ...})` when given, else its source comment (`name: T = v  #
  comment`, or comment lines directly above the field), else its flag's help;
- `api_reference()`: the public functions and classes of the package with signatures and docstrings.

`docs/hooks.py` (an MkDocs hook, see mkdocs.yml) replaces each `<!-- generated: NAME -->` marker of
a page with `PAGES[NAME]()` at build time; `python -m vaelab.docs_reference cli|config|api` prints
a page.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
import inspect
import io
import json
import pkgutil
import re
import sys
import textwrap
import tokenize
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Optional

MARKER = re.compile(r"<!--\s*generated:\s*([\w-]+)\s*-->")

# ---- markdown helpers ---------------------------------------------------------------------------


def _escape(text: str) -> str:
    """Plain text -> markdown that shows it as written: HTML-like `<run>` and `*`, `|` escaped,
    except inside `code spans`, which markdown already shows literally."""
    parts = re.split(r"(`[^`\n]+`)", text)
    out = []
    for i, part in enumerate(parts):
        if i % 2:  # a code span
            out.append(part.replace("|", "\\|"))
        else:
            part = part.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            out.append(re.sub(r"([*_|\[\]\\])", r"\\\1", part))
    return "".join(out)


def _cell(text: str) -> str:
    """One table cell: escaped, on one line."""
    return _escape(" ".join(str(text).split()))


def _code(text: str) -> str:
    """A code span for any text (backticks inside get a longer fence)."""
    text = " ".join(str(text).split())
    fence = "``" if "`" in text else "`"
    return f"{fence}{text}{fence}".replace("|", "\\|")


def docstring_markdown(doc: Optional[str]) -> str:
    """A docstring as markdown: prose escaped, indented runs (examples, lists of files) fenced."""
    if not doc:
        return ""
    lines = inspect.cleandoc(doc).splitlines()
    blocks: list[str] = []
    i = 0
    while i < len(lines):
        if lines[i].startswith("    ") or lines[i].lstrip().startswith(">>>"):
            run = []
            while i < len(lines) and (lines[i].startswith("    ") or lines[i].lstrip().startswith(">>>")
                                      or (not lines[i].strip() and i + 1 < len(lines)
                                          and lines[i + 1].startswith("    "))):
                run.append(lines[i])
                i += 1
            blocks.append("```text\n" + textwrap.dedent("\n".join(run)) + "\n```")
        else:
            para = []
            while i < len(lines) and not (lines[i].startswith("    ") or lines[i].lstrip().startswith(">>>")):
                para.append(lines[i])
                i += 1
            text = "\n".join(_escape(line) for line in para).strip("\n")
            if text:
                blocks.append(re.sub(r"^(\s*)#", r"\1\\#", text, flags=re.M))
    return "\n\n".join(blocks)


# ---- CLI ----------------------------------------------------------------------------------------


@dataclass
class FlagDoc:
    """One argument of one command: how it is written, what it takes, its default and help."""

    names: list[str]  # ["--latent-dim"], ["--conditional", "--no-conditional"], or ["RUN"] (positional)
    value: str  # metavar or choices; "" for a switch
    default: str  # "" when there is none worth showing
    help: str
    group: str
    positional: bool


@dataclass
class CommandDoc:
    """One subcommand: its full name (`vaelab train`), one-line help, description and arguments."""

    prog: str
    help: str
    description: str
    flags: list[FlagDoc]


def _subparsers(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, help, parser) for each subcommand of `parser`, in the order they were added."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            seen: set[int] = set()
            for name, sub in action.choices.items():
                if id(sub) not in seen:  # aliases map to the same parser
                    seen.add(id(sub))
                    found.append((name, helps.get(name, ""), sub))
    return found


def _flag_doc(parser: argparse.ArgumentParser, action: argparse.Action, group: str) -> FlagDoc:
    formatter = parser._get_formatter()
    help_text = "" if action.help in (None, argparse.SUPPRESS) else formatter._expand_help(action)
    if action.choices is not None and not isinstance(action, argparse._SubParsersAction):
        value = " | ".join(str(c) for c in action.choices)
    elif action.nargs == 0:
        value = ""
    else:
        metavar = action.metavar or (action.dest if not action.option_strings else action.dest.upper())
        value = " ".join(metavar) if isinstance(metavar, tuple) else str(metavar)
        if action.nargs in ("+", "*"):
            value += " ..."
    default = action.default
    shown = "" if default in (None, argparse.SUPPRESS, False) or action.nargs == 0 else (
        json.dumps(default) if isinstance(default, (list, tuple)) else str(default))
    names = list(action.option_strings) or [str(action.metavar or action.dest)]
    return FlagDoc(names, value, shown, help_text, group, not action.option_strings)


def cli_commands(parser: Optional[argparse.ArgumentParser] = None) -> list[CommandDoc]:
    """Every subcommand (recursively) of the `vaelab` parser with every argument but `--help`."""
    if parser is None:
        from vaelab.cli import build_parser

        parser = build_parser()
    commands: list[CommandDoc] = []

    def walk(p: argparse.ArgumentParser, help_line: str) -> None:
        flags = []
        for group in p._action_groups:
            for action in group._group_actions:
                if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                    continue
                flags.append(_flag_doc(p, action, group.title or ""))
        commands.append(CommandDoc(p.prog, help_line, p.description or "", flags))
        for _, sub_help, sub in _subparsers(p):
            walk(sub, sub_help)

    walk(parser, parser.description or "")
    return commands


def _config_defaults() -> dict[str, str]:
    """{--flag: its config key's default} for the training flags, whose argparse default is
    SUPPRESS (so that only given flags override a config file)."""
    from vaelab.cli.options import TRAIN_FLAGS
    from vaelab.config import RunConfig

    settings = RunConfig().to_dict()
    defaults = {}
    for f in TRAIN_FLAGS:
        section, _, name = f.key.partition(".")
        value = settings.get(section, {}).get(name)
        if value is not None and value != []:
            defaults[f.flag] = json.dumps(value) if not isinstance(value, str) else value
    return defaults


def undocumented_flags(parser: Optional[argparse.ArgumentParser] = None) -> list[str]:
    """`vaelab CMD --flag` for every argument of every command that has no help text (should be none)."""
    return [f"{c.prog} {f.names[0]}" for c in cli_commands(parser) for f in c.flags if not f.help.strip()]


def cli_reference(parser: Optional[argparse.ArgumentParser] = None) -> str:
    """The CLI reference page's generated part (markdown)."""
    commands = cli_commands(parser)
    config_defaults = _config_defaults()
    top, subs = commands[0], commands[1:]
    lines = ["| command | what it does |", "|---|---|"]
    lines += [f"| [{_code(c.prog)}](#{_anchor(c.prog)}) | {_cell(c.help)} |" for c in subs]
    lines += ["", f"`{top.prog} --version` prints the version; `{top.prog} COMMAND --help` prints a command's help."]
    for command in subs:
        lines += ["", f"## {command.prog}", ""]
        positionals = " ".join(f.names[0] for f in command.flags if f.positional)
        lines += [f"```text\n{command.prog} {positionals + ' ' if positionals else ''}[options]\n```", ""]
        if command.description or command.help:
            lines += [_escape(command.description or command.help), ""]
        for group in dict.fromkeys(f.group for f in command.flags):
            rows = [f for f in command.flags if f.group == group]
            title = "options" if group == "optional arguments" else group  # Python < 3.10 says "optional"
            if len(set(f.group for f in command.flags)) > 1:
                lines += [f"**{_escape(title)}**", ""]
            lines += ["| argument | value | default | help |", "|---|---|---|---|"]
            for f in rows:
                names = " / ".join(_code(n) for n in f.names)
                value = _code(f.value) if f.value and not f.positional else ""
                default = f.default or config_defaults.get(f.names[0], "")
                default = _code(default) if default else ""
                lines.append(f"| {names} | {value} | {default} | {_cell(f.help)} |")
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _anchor(heading: str) -> str:
    """The id MkDocs' toc extension gives a heading of plain words (`vaelab train` -> vaelab-train)."""
    return re.sub(r"[\s]+", "-", re.sub(r"[^\w\s-]", "", heading).strip().lower())


# ---- config -------------------------------------------------------------------------------------


@dataclass
class FieldDoc:
    """One config field: its dotted key, type text, default text, flag and description."""

    key: str
    type: str
    default: str
    flag: str
    description: str


def source_comments(cls: type) -> dict[str, str]:
    """{field name: its comment} from the class source: the comment on the field's line(s), after
    the comment lines directly above it (no blank line between), joined into one line."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    comments: dict[int, str] = {}  # line number -> comment text
    code_lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER):
            code_lines.add(tok.start[0])
    class_node = ast.parse(source).body[0]
    found: dict[str, str] = {}
    for node in getattr(class_node, "body", []):
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above = []
        line = node.lineno - 1
        while line in comments and line not in code_lines:
            above.insert(0, comments[line])
            line -= 1
        inline = [comments[n] for n in range(node.lineno, (node.end_lineno or node.lineno) + 1) if n in comments]
        text = " ".join(part for part in above + inline if part)
        if text:
            found[node.target.id] = text
    return found


def type_text(hint: Any) -> str:
    """A type hint in words: `"a" | "b"` for a Literal, `int or unset` for Optional[int], `list of int`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        text = " or ".join(type_text(a) for a in inner)
        return f"{text} or unset" if len(inner) < len(args) else text
    if origin in (list, Sequence, tuple):
        return "list of " + (type_text(args[0]) if args else "values")
    return getattr(hint, "__name__", str(hint))


def _default_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "(required)"
    if value is None:
        return "unset"
    if dataclasses.is_dataclass(value):
        return "(a table)"
    return json.dumps(value)


def config_fields(cls: type, prefix: str, flags: Optional[dict[str, Any]] = None) -> list[FieldDoc]:
    """Every dataclass field of `cls` as a FieldDoc (`prefix` + name is its dotted key)."""
    flags = flags or {}
    hints = typing.get_type_hints(cls)
    comments = source_comments(cls)
    docs = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        flag = flags.get(key)
        description = f.metadata.get("doc") or comments.get(f.name) or (flag.help if flag else "")
        docs.append(FieldDoc(key, type_text(hints[f.name]), _default_text(f), flag.flag if flag else "", description))
    return docs


def all_config_fields() -> dict[str, list[FieldDoc]]:
    """{section: its fields} for every section of RunConfig, plus "run" for the run's own facts."""
    from vaelab.cli.options import TRAIN_FLAGS
    from vaelab.config import RunConfig

    flags = {f.key: f for f in TRAIN_FLAGS}
    sections: dict[str, list[FieldDoc]] = {}
    own = []
    hints = typing.get_type_hints(RunConfig)
    for f in dataclasses.fields(RunConfig):
        if dataclasses.is_dataclass(hints[f.name]):
            sections[f.name] = config_fields(hints[f.name], f"{f.name}.", flags)
        else:
            own.append(f)
    if own:
        top = {d.key: d for d in config_fields(RunConfig, "", flags)}
        sections["run"] = [top[f.name] for f in own]
    return sections


def config_reference() -> str:
    """The config reference page's generated part (markdown)."""
    from vaelab.cli.options import RUN_FACTS
    from vaelab.config import RunConfig
    from vaelab.presets import PRESETS

    lines: list[str] = []
    for section, fields in all_config_fields().items():
        cls = type(getattr(RunConfig(), section)) if section != "run" else RunConfig
        title = f"[{section}]" if section != "run" else "Recorded by vaelab"
        lines += [f"## {title}", "", _escape(inspect.getdoc(cls) or "")]
        if section == "run":
            lines += ["", "Top-level keys of `config.json`, written by vaelab and not settable."]
        lines += ["", "| key | type | default | flag | description |", "|---|---|---|---|---|"]
        for d in fields:
            fact = " (recorded by vaelab, not settable)" if d.key in RUN_FACTS and section != "run" else ""
            name = d.key.rpartition(".")[2]
            lines.append(f"| {_code(name)} | {_cell(d.type)} | {_code(d.default)} | "
                         f"{_code(d.flag) if d.flag else ''} | {_cell(d.description + fact)} |")
        lines.append("")
    lines += ["## Presets", "", "`--preset NAME` sets these keys before the config file and the flags "
              "(defined in `src/vaelab/presets.py`).", ""]
    for name, values in PRESETS.items():
        lines += [f"### {name}", "", "| key | value |", "|---|---|"]
        for key, value in values.items():
            text = json.dumps(value)
            if len(text) > 120:
                text = text[:117] + "..."
            lines.append(f"| {_code(key)} | {_code(text)} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


# ---- Python API ---------------------------------------------------------------------------------

# Shown first, in this order; every other module of the package follows alphabetically.
PRIMARY_MODULES = ("vaelab", "vaelab.config", "vaelab.data", "vaelab.models", "vaelab.models.vae",
                   "vaelab.models.posterior", "vaelab.likelihoods", "vaelab.objectives", "vaelab.training",
                   "vaelab.runs", "vaelab.evaluate", "vaelab.latent", "vaelab.latent_codes", "vaelab.plots",
                   "vaelab.report", "vaelab.export", "vaelab.checkpoint", "vaelab.explorer", "vaelab.errors")
# The command line has its own reference; the explorer's server modules are behind create_app.
EXCLUDED_PREFIXES = ("vaelab.cli", "vaelab.__main__", "vaelab.explorer.", "vaelab.docs_reference")


def api_modules() -> list[str]:
    """Every module of the package worth documenting: PRIMARY_MODULES, then the rest, sorted."""
    import vaelab

    found = {m.name for m in pkgutil.walk_packages(vaelab.__path__, "vaelab.")}
    rest = sorted(name for name in found
                  if name not in PRIMARY_MODULES and not name.startswith(EXCLUDED_PREFIXES)
                  and not any(part.startswith("_") for part in name.split(".")))
    return [m for m in PRIMARY_MODULES if m == "vaelab" or m in found] + rest


class _Annotation:
    """Shows a string annotation (from `from __future__ import annotations`) without quotes."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def signature_text(obj: Callable[..., Any], method: bool = False) -> str:
    """`(x: torch.Tensor, steps: int = 10) -> ImageTable`, or "(...)" when Python cannot tell.
    A method's `self`/`cls` and a class's `-> None` are left out."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return "(...)"

    def unquote(a: Any) -> Any:
        return _Annotation(a) if isinstance(a, str) else a

    params = [p.replace(annotation=unquote(p.annotation)) for p in sig.parameters.values()]
    if method and params and params[0].name in ("self", "cls"):
        params = params[1:]
    returns = inspect.Signature.empty if inspect.isclass(obj) else unquote(sig.return_annotation)
    return str(sig.replace(parameters=params, return_annotation=returns))


def _assigned_names(module: types.ModuleType) -> set[str]:
    """Names assigned at the top level of the module's own source (not imported ones)."""
    try:
        tree = ast.parse(inspect.getsource(module))
    except (OSError, TypeError, SyntaxError):
        return set()
    names = set()
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        else:
            continue
        names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def public_names(module: types.ModuleType) -> list[str]:
    """`__all__`, or the public functions, classes and registries (UPPERCASE dicts) defined there."""
    if hasattr(module, "__all__"):
        return [n for n in module.__all__ if not n.startswith("__")]
    names = []
    assigned = _assigned_names(module)
    for name, obj in vars(module).items():
        if name.startswith("_"):
            continue
        if (inspect.isfunction(obj) or inspect.isclass(obj)) and obj.__module__ == module.__name__:
            names.append(name)
        elif (name.isupper() and name in assigned and isinstance(obj, dict) and obj
              and all(isinstance(k, str) for k in obj)):
            names.append(name)
    return names


def _members(cls: type) -> list[tuple[str, Any]]:
    """Public methods and properties defined in `cls` itself, in source order."""
    members = []
    for name, obj in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(obj, (staticmethod, classmethod)):
            obj = obj.__func__
        if inspect.isfunction(obj) or isinstance(obj, property):
            members.append((name, obj))
    return members


def _object_markdown(module_name: str, name: str, obj: Any, documented: Sequence[str] = ()) -> list[str]:
    full = f"{module_name}.{name}"
    home = getattr(obj, "__module__", module_name)
    if (inspect.isclass(obj) or inspect.isfunction(obj)) and home != module_name:
        target = f"{home}.{getattr(obj, '__qualname__', name)}"
        shown = f"[`{target}`](#{_anchor(target)})" if home in documented else f"`{target}`"
        return [f"### {full}", "", f"The same object as {shown}.", ""]
    if isinstance(obj, dict):
        keys = ", ".join(_code(k) for k in obj)
        return [f"### {full}", "", f"A registry (dict) with the keys {keys}.", ""]
    if inspect.isclass(obj):
        lines = [f"### {full}", "", f"```python\nclass {name}{signature_text(obj)}\n```", "",
                 docstring_markdown(inspect.getdoc(obj)), ""]
        for member, value in _members(obj):
            if isinstance(value, property):
                summary = docstring_markdown(inspect.getdoc(value)).split("\n\n")[0].replace("\n", " ")
                lines += [f"- `{member}` (property)" + (f": {summary}" if summary else "")]
            else:
                doc = docstring_markdown(inspect.getdoc(value))
                summary = doc.split("\n\n")[0].replace("\n", " ")
                lines += [f"- `{member}{signature_text(value, method=True)}`" + (f": {summary}" if doc else "")]
        return lines + [""]
    if callable(obj):
        return [f"### {full}", "", f"```python\n{name}{signature_text(obj)}\n```", "",
                docstring_markdown(inspect.getdoc(obj)), ""]
    return [f"### {full}", "", f"`{_short_repr(obj)}`", ""]


def _short_repr(obj: Any) -> str:
    text = repr(obj)
    return text if len(text) <= 100 else text[:97] + "..."


def api_reference(modules: Optional[Sequence[str]] = None) -> str:
    """The Python API reference page's generated part (markdown)."""
    lines: list[str] = []
    modules = list(modules) if modules is not None else api_modules()
    for module_name in modules:
        lines += [f"## {module_name}", ""]
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:  # an optional extra that is not installed here
            lines += [f"*Not importable where these docs were built ({_escape(str(exc))}); install its extra.*", ""]
            continue
        lines += [docstring_markdown(inspect.getdoc(module)), ""]
        for name in public_names(module):
            lines += _object_markdown(module_name, name, getattr(module, name), modules)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).rstrip() + "\n"


# ---- pages --------------------------------------------------------------------------------------

PAGES: dict[str, Callable[[], str]] = {"cli": cli_reference, "config": config_reference, "api": api_reference}


def fill_generated(markdown: str) -> str:
    """Replace every `<!-- generated: NAME -->` marker with the generated page part NAME."""

    def generate(match: re.Match) -> str:
        name = match.group(1)
        if name not in PAGES:
            raise KeyError(f"unknown generated section '{name}'; known: {', '.join(PAGES)}")
        return PAGES[name]()

    return MARKER.sub(generate, markdown)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`python -m vaelab.docs_reference cli|config|api`: print that generated page part."""
    parser = argparse.ArgumentParser(prog="python -m vaelab.docs_reference",
                                     description="Print a generated reference page of the docs (markdown).")
    parser.add_argument("page", choices=sorted(PAGES), help="which reference page")
    args = parser.parse_args(argv)
    sys.stdout.write(PAGES[args.page]())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
