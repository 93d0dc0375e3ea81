"""The configuration reference, `docs/reference/configuration.md`, generated from the study config dataclasses.

Why generated: a hand-written reference drifts from the code the day a default changes. Every `@settings` class
reachable from `StudyConfig` gets one table: each field's name, type, default, allowed values (its enum, or its
`metadata` min/max/choices, the same bounds the loader checks) and a description. The description is the field's
`metadata["doc"]` when it has one, else the comments written beside it in the source: the comment on the field's
own lines and the comment lines right above it, read with `ast` and `tokenize`, so a comment is all a field needs.

    python -m search.config_reference > docs/reference/configuration.md
    python -m search.config_reference --check     # exit 1 when the committed file is stale

`tests/test_config_reference.py` fails when the committed file differs from what this module writes.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import enum
import inspect
import io
import sys
import tokenize
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.config import REPO_ROOT
from search.config import StudyConfig

OUTPUT = Path("docs") / "reference" / "configuration.md"
COMMAND = "python -m search.config_reference > docs/reference/configuration.md"


@dataclass(frozen=True, kw_only=True)
class Section:
    """One config class and the TOML tables it is read from (`[fidelity.f1.budget]`, ...)."""

    cls: type
    tables: tuple[str, ...]


def sections(root: type = StudyConfig) -> list[Section]:
    """Every dataclass reachable from `root`, depth first in field order, each once, with all its tables."""
    order: list[type] = []
    tables: dict[type, list[str]] = {}

    def walk(cls: type, table: str) -> None:
        if cls not in tables:
            order.append(cls)
            tables[cls] = []
        tables[cls].append(table)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            if f.init and dataclasses.is_dataclass(tp):
                walk(tp, f"{table}.{f.name}" if table else f.name)

    walk(root, "")
    return [Section(cls=c, tables=tuple(t for t in tables[c] if t)) for c in order]


def _comment_rows(source: str) -> dict[int, str]:
    """The text of every comment in `source`, by line number (1-based)."""
    rows = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            rows[tok.start[0]] = tok.string.lstrip("#").strip()
    return rows


def _class_node(tree: ast.Module, name: str) -> ast.ClassDef:
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node
    raise LookupError(f"class {name} is not defined in its module's source")


def source_comments(cls: type) -> dict[str, str]:
    """Per attribute of `cls`: the comment lines right above it, then the comments on its own lines."""
    source = inspect.getsource(sys.modules[cls.__module__])
    rows, lines = _comment_rows(source), source.splitlines()
    found = {}
    for stmt in _class_node(ast.parse(source), cls.__name__).body:
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            name = stmt.target.id
        elif isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            name = stmt.targets[0].id  # an enum member
        else:
            continue
        above, row = [], stmt.lineno - 1
        while row in rows and lines[row - 1].lstrip().startswith("#"):
            above.insert(0, rows[row])
            row -= 1
        beside = [rows[r] for r in range(stmt.lineno, (stmt.end_lineno or stmt.lineno) + 1) if r in rows]
        text = " ".join(part for part in (*above, *beside) if part)
        if text:
            found[name] = text
    return found


def describe(f: dataclasses.Field, comments: dict[str, str]) -> str:
    return str(f.metadata.get("doc") or comments.get(f.name, ""))


def toml_value(value: Any) -> str:
    """A default as it would be written in a study file."""
    if isinstance(value, enum.Enum):
        return toml_value(value.value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple) and all(isinstance(v, tuple) and len(v) == 2 for v in value) and value:
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value) + "}"
    if isinstance(value, tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


def type_name(tp: Any, meta: typing.Mapping[str, Any]) -> str:
    if dataclasses.is_dataclass(tp):
        return f"table ([{tp.__name__}](#{tp.__name__.lower()}))"
    if typing.get_origin(tp) is tuple:
        return "table" if meta.get("table") else f"list of {type_name(typing.get_args(tp)[0], {})}"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "string"
    return getattr(tp, "__name__", str(tp))


def allowed(tp: Any, meta: typing.Mapping[str, Any]) -> str:
    """The values the loader accepts: an enum's, `choices`, or the `min .. max` range."""
    if typing.get_origin(tp) is tuple and not meta.get("table"):
        return allowed(typing.get_args(tp)[0], meta)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return ", ".join(toml_value(m.value) for m in tp)
    choices = meta.get("choices")
    if choices is not None:
        return ", ".join(toml_value(c) for c in (choices() if callable(choices) else choices))
    if "min" in meta or "max" in meta:
        return f"{meta.get('min', '-inf')} .. {meta.get('max', 'inf')}"
    return ""


def differences(value: Any, base: Any, prefix: str = "") -> list[str]:
    """`key = value` for every field where the dataclass `value` differs from `base`, nested keys dotted."""
    out = []
    for f in dataclasses.fields(value):
        mine, theirs = getattr(value, f.name), getattr(base, f.name)
        if dataclasses.is_dataclass(mine):
            out += differences(mine, theirs, f"{prefix}{f.name}.")
        elif f.init and mine != theirs:
            out.append(f"{prefix}{f.name} = {toml_value(mine)}")
    return out


def default(f: dataclasses.Field, tp: Any) -> str:
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
        return "required"
    value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    if f.metadata.get("table"):
        return toml_value(value) if value else "{}"
    if not dataclasses.is_dataclass(tp):
        return toml_value(value)
    changed = differences(value, tp())
    return "its defaults, except " + "; ".join(changed) if changed else "its defaults"


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def field_rows(cls: type) -> Iterator[str]:
    hints, comments = typing.get_type_hints(cls), source_comments(cls)
    yield "| key | type | default | allowed | description |"
    yield "|---|---|---|---|---|"
    for f in dataclasses.fields(cls):
        if f.init:
            tp = hints[f.name]
            parts = (
                f"`{f.name}`",
                type_name(tp, f.metadata),
                default(f, tp),
                allowed(tp, f.metadata),
                describe(f, comments),
            )
            yield "| " + " | ".join(cell(p) for p in parts) + " |"


def section_text(section: Section) -> Iterator[str]:
    cls = section.cls
    yield f'<a id="{cls.__name__.lower()}"></a>'
    yield ""
    where = ", ".join(f"`[{t}]`" for t in section.tables) or "the study file's top level (its sections)"
    yield f"## {cls.__name__}"
    yield ""
    yield f"Read from {where}; class `{cls.__module__}.{cls.__name__}`."
    yield ""
    doc = inspect.getdoc(cls)
    if doc and not doc.startswith(f"{cls.__name__}("):  # a dataclass without a docstring gets its signature
        yield doc
        yield ""
    yield from field_rows(cls)
    yield ""


def enums_used(found: list[Section]) -> list[type[enum.Enum]]:
    seen: list[type[enum.Enum]] = []
    for section in found:
        for tp in typing.get_type_hints(section.cls).values():
            inner = typing.get_args(tp)[0] if typing.get_origin(tp) is tuple else tp
            if isinstance(inner, type) and issubclass(inner, enum.Enum) and inner not in seen:
                seen.append(inner)
    return seen


def enum_text(kinds: list[type[enum.Enum]]) -> Iterator[str]:
    """What each fixed choice means, from the comments on its members (where they have any)."""
    yield "## What the choices mean"
    yield ""
    for kind in kinds:
        comments = source_comments(kind)
        described = [(m, comments.get(m.name, "")) for m in kind]
        if any(text for _, text in described):
            yield f"`{kind.__name__}` (`{kind.__module__}`):"
            yield ""
            yield from (f"- {toml_value(m.value)}" + (f": {cell(text)}" if text else "") for m, text in described)
            yield ""


def reference() -> str:
    """The whole reference page."""
    found = sections()
    head = [
        "# Configuration reference",
        "",
        f"<!-- Generated by `{COMMAND}`; do not edit by hand. -->",
        "",
        "Every key a study file (`studies/*.toml`, or your own) may set, generated from the config dataclasses",
        "(`search.config.StudyConfig` and the classes it holds). The loader rejects an unknown key, a wrong type",
        "or a value outside `allowed` with the file, the key and what is allowed; a config built in Python",
        "(`search.Study`, `search.compress`) is checked the same way. Any table can be overridden per profile",
        "under `[profiles.NAME.<table>]`, key by key (see [studies and profiles](../guides/studies-and-profiles.md)).",
        'A default marked "its defaults, except ..." is the nested table\'s own defaults with those keys changed.',
        "",
        "Tables: " + ", ".join(f"[{s.cls.__name__}](#{s.cls.__name__.lower()})" for s in found) + ".",
        "",
    ]
    body = [line for s in found for line in section_text(s)]
    return "\n".join([*head, *body, *enum_text(enums_used(found))]).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m search.config_reference", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--check", action="store_true", help=f"compare with {OUTPUT} instead of printing; exit 1 when it is stale"
    )
    args = parser.parse_args(argv)
    text = reference()
    if not args.check:
        sys.stdout.write(text)
        return 0
    committed = REPO_ROOT / OUTPUT
    if not committed.is_file() or committed.read_text() != text:
        print(f"{OUTPUT} is stale; regenerate it: {COMMAND}", file=sys.stderr)
        return 1
    print(f"{OUTPUT} is up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
