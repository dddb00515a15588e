"""Write the reference pages of the config groups (docs/reference/) from the schema and conf/.

python -m pipeline.tools.reference                 # rewrite docs/reference/*.md (make docs runs it)
python -m pipeline.tools.reference --check         # exit 1 if a page differs from what it would write

Each page lists, per variant of its group (a schema class of pipeline/core/config.py), every key
with its type, allowed values and default and the comment beside it in the schema, then every
preset file of conf/<group>/ with its values and their comments. The schema and conf/ are the
one place these facts live; the pages are derived from them.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
import types
import typing
from pathlib import Path

import annotated_types
import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from pipeline.core import config as schema
from pipeline.core.errors import run_command

REFERENCE_DIR = Path("docs/reference")
MADE_BY = "<!-- made by: python -m pipeline.tools.reference (from pipeline/core/config.py and conf/) -->"
# group -> (title, one line on what it chooses)
GROUPS = {
    "data": "which data: a planted task, a bundled UCR/UEA set or your own files",
    "model": "which model and its architecture",
    "train": "how the model is trained",
    "export": "the ONNX export, its variants and their gates",
    "evaluate": "how evaluate measures the explanations",
    "mlflow": "where runs are tracked",
    "experiment": "presets that pair a data set with a model (and a training recipe)",
}
_CONSTRAINTS = (
    (annotated_types.Gt, "gt", "> {}"),
    (annotated_types.Ge, "ge", "≥ {}"),
    (annotated_types.Lt, "lt", "< {}"),
    (annotated_types.Le, "le", "≤ {}"),
    (annotated_types.MinLen, "min_length", "at least {} long"),
)


def _variants(annotation) -> list[type[BaseModel]]:
    """The schema classes of a group: a discriminated union's members, or the one class."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        found += _variants(arg) if not isinstance(arg, type) or issubclass(arg, BaseModel) else []
    return found


def _type_text(annotation) -> str:
    """A type as a reader writes it in params.yaml: int, list of int, one of 'a', 'b', or null."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_text(a) for a in args)
    if origin is typing.Annotated:
        inner = _type_text(args[0])
        limits = _limits(args[1:]) + [c for m in args[1:] for c in _limits(getattr(m, "metadata", []))]
        return f"{inner} ({', '.join(limits)})" if limits else inner
    if origin is list:
        return f"list of {_type_text(args[0])}"
    if origin is dict:
        return f"mapping of {_type_text(args[0])} to {_type_text(args[1])}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    return getattr(annotation, "__name__", str(annotation)).replace("StrictBool", "bool")


def _limits(metadata) -> list[str]:
    return [text.format(getattr(m, attr)) for m in metadata for kind, attr, text in _CONSTRAINTS if isinstance(m, kind)]


def _field_comments(cls: type[BaseModel]) -> dict[str, str]:
    """The comment of each field in the class's source: the lines above it and the one beside it."""
    comments: dict[str, str] = {}
    pending: list[str] = []
    for line in inspect.getsource(cls).splitlines()[1:]:
        stripped = line.strip()
        if stripped.startswith("#"):
            pending.append(stripped.lstrip("# "))
            continue
        match = re.match(r"\s+(\w+):\s", line)
        if match and not stripped.startswith(("def ", "@", "return")):
            beside = line.split("  # ", 1)[1].strip() if "  # " in line else ""
            comments[match.group(1)] = " ".join([*pending, beside]).strip()
        pending = []
    return comments


def _yaml_value(value) -> str:
    """A value as params.yaml spells it: null, true, [64, 128]."""
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _fields_table(cls: type[BaseModel], prefix: str = "") -> list[str]:
    rows = []
    comments = _field_comments(cls)
    for name, info in cls.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows += _fields_table(annotation, f"{prefix}{name}.")
            continue
        kind = _type_text(annotation)
        limits = _limits(info.metadata)
        if limits:
            kind += f" ({', '.join(limits)})"
        default = "set by the preset" if info.default is PydanticUndefined else f"`{_yaml_value(info.default)}`"
        rows.append(f"| `{prefix}{name}` | {_cell(kind)} | {_cell(default)} | {_cell(comments.get(name, ''))} |")
    return rows


def _docstring(cls: type[BaseModel]) -> str:
    doc = inspect.getdoc(cls)
    return " ".join(doc.split()) if doc and doc != inspect.getdoc(BaseModel) and cls.__doc__ else ""


def _preset(path: Path) -> list[str]:
    """A conf/ file: its leading comment, then each key with its value and the comment beside it."""
    text = path.read_text(encoding="utf-8")
    head = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        if not line.startswith("# @package"):
            head.append(line.lstrip("#").strip())
    commands = [h for h in head if h.startswith("dvc ")]
    prose = " ".join(h for h in head if h and not h.startswith("dvc "))
    lines = [f"### `{path.stem}`", "", f"`conf/{path.parent.name}/{path.name}`. {prose}".rstrip(), ""]
    if commands:
        lines += ["```bash", *commands, "```", ""]
    rows = []
    for line in text.splitlines():
        match = re.match(r"^(\w+):\s*(.*?)\s*(?:#\s*(.*))?$", line)
        if match and match.group(1) != "defaults":
            rows.append(f"| `{match.group(1)}` | `{_cell(match.group(2))}` | {_cell(match.group(3) or '')} |")
    defaults = yaml.safe_load(text) or {}
    for entry in defaults.get("defaults", []) if isinstance(defaults, dict) else []:
        if isinstance(entry, dict):
            for key, value in entry.items():
                group = key.replace("override ", "").lstrip("/")
                rows.append(f"| `{group}` | `{value}` | the preset chosen for that group |")
    if rows:
        lines += ["| key | value | note |", "|---|---|---|", *rows, ""]
    return lines


def group_page(group: str, conf_dir: Path = schema.CONF_DIR) -> str:
    """The markdown of docs/reference/<group>.md."""
    lines = [MADE_BY, "", f"# `{group}`", "", f"The config group `{group}`: {GROUPS[group]}."]
    if group != "experiment":
        lines += [
            f"Choose a preset with `dvc exp run -S {group}=<preset>`, change one key with "
            f"`dvc exp run -S {group}.<key>=<value>`.",
            "",
        ]
        for cls in _variants(schema.Config.model_fields[group].annotation):
            tag = cls.model_fields.get("source") or cls.model_fields.get("name")
            tags = typing.get_args(tag.annotation) if tag is not None else ()
            title = ", ".join(f"`{t}`" for t in tags) if tags else f"`{group}`"
            lines += [f"## {title}", ""]
            if _docstring(cls):
                lines += [_docstring(cls), ""]
            lines += ["| key | type | default | note |", "|---|---|---|---|", *_fields_table(cls), ""]
    else:
        lines += ["A preset sets the groups it names; `dvc exp run -S experiment=<preset>`.", ""]
    presets = sorted((conf_dir / group).glob("*.yaml"))
    lines += ["## Presets", ""]
    for path in presets:
        lines += _preset(path)
    return "\n".join(lines).rstrip() + "\n"


def index_page(conf_dir: Path = schema.CONF_DIR) -> str:
    lines = [
        MADE_BY,
        "",
        "# Config reference",
        "",
        "`dvc exp run` composes `conf/config.yaml` and its groups with Hydra into params.yaml, "
        "which every stage validates against the schema (`pipeline/core/config.py`): an unknown "
        "key or a value outside what a page allows stops the stage with the key and the allowed values.",
        "",
        "| group | chooses | presets |",
        "|---|---|---|",
    ]
    for group, what in GROUPS.items():
        presets = ", ".join(f"`{p.stem}`" for p in sorted((conf_dir / group).glob("*.yaml")))
        lines.append(f"| [`{group}`]({group}.md) | {what} | {presets} |")
    lines += ["", "The top-level keys:", "", "| key | type | default | note |", "|---|---|---|---|"]
    lines += [row for row in _fields_table(schema.Config) if row.startswith("| `seed`")]
    lines += ["", "The defaults (`conf/config.yaml`):", "", "```yaml"]
    defaults = (conf_dir / "config.yaml").read_text(encoding="utf-8").splitlines()
    lines += [line for line in defaults if not line.startswith("#")]
    lines += ["```"]
    return "\n".join(lines).rstrip() + "\n"


def pages(conf_dir: Path = schema.CONF_DIR) -> dict[str, str]:
    """File name -> markdown of every reference page."""
    return {"index.md": index_page(conf_dir), **{f"{g}.md": group_page(g, conf_dir) for g in GROUPS}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REFERENCE_DIR, help="folder of the pages")
    parser.add_argument("--check", action="store_true", help="exit 1 if a page is out of date")
    args = parser.parse_args()
    stale = []
    for name, text in pages().items():
        path = args.out / name
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(str(path))
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    if stale:
        print(f"out of date (make docs rewrites them): {', '.join(stale)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    run_command(main)
