"""The local code each DVC stage runs, computed from the source, against its `deps` in dvc.yaml.

    python -m tests.stage_deps          # prints, per stage, the code deps dvc.yaml should list

A stage's code is the import closure of the module its `cmd` runs (`python -m pipeline.<stage>`):
every module of the package it imports, directly or through others, at the top of a file or
inside a function, with the `__init__.py` of each package on the way. dvc.yaml is the one place
the paths are written; tests/test_stage_deps.py checks it against this closure, so a stage whose
code changes is never called up to date.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "pipeline"
STAGE_COMMAND = re.compile(r"python -m (?P<module>[\w.]+)")


def module_file(module: str, root: Path = REPO_ROOT) -> Path | None:
    """The source file of a module of the package (a module file or a package's __init__.py)."""
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_modules(source: Path, root: Path) -> set[str]:
    """Modules of the package that a file imports (`import a.b`, `from a.b import c`, where c
    may itself be a module), with their parent packages."""
    names = set()
    for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"), str(source))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    found = set()
    for name in names:
        parts = name.split(".")
        if parts[0] != PACKAGE:
            continue
        for depth in range(1, len(parts) + 1):
            if module_file(".".join(parts[:depth]), root):
                found.add(".".join(parts[:depth]))
    return found


def import_closure(module: str, root: Path = REPO_ROOT) -> set[str]:
    """Repository-relative paths of every package file that running `module` may import."""
    pending, seen = [module], set()
    for parent in range(1, module.count(".") + 1):  # python -m a.b imports package a first
        pending.append(".".join(module.split(".")[:parent]))
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        pending.extend(_imported_modules(module_file(name, root), root) - seen)
    return {module_file(name, root).relative_to(root).as_posix() for name in seen}


def declared_code(deps: list, root: Path = REPO_ROOT) -> set[str]:
    """The package files a stage's `deps` cover: listed files, and every .py under a listed folder."""
    files = set()
    for dep in deps:
        path = dep if isinstance(dep, str) else next(iter(dep))
        if not path.startswith(f"{PACKAGE}/"):
            continue
        full = root / path
        if full.is_dir():
            files.update(p.relative_to(root).as_posix() for p in full.rglob("*.py"))
        else:
            files.add(path)
    return files


def stage_modules(dvc_yaml: dict) -> dict[str, str]:
    """{stage: the module its cmd runs} for the stages that run a module of the package."""
    modules = {}
    for name, stage in dvc_yaml["stages"].items():
        match = STAGE_COMMAND.search(stage["cmd"])
        if match and match["module"].split(".")[0] == PACKAGE:
            modules[name] = match["module"]
    return modules


def deps_problems(dvc_yaml: dict, root: Path = REPO_ROOT) -> list[str]:
    """What each stage's code deps miss or list beyond its import closure; [] when they agree."""
    problems = []
    for name, module in stage_modules(dvc_yaml).items():
        needed = import_closure(module, root)
        declared = declared_code(dvc_yaml["stages"][name].get("deps", []), root)
        if missing := sorted(needed - declared):
            problems.append(f"stage {name}: deps miss {missing}, which {module} imports")
        if extra := sorted(declared - needed):
            problems.append(f"stage {name}: deps list {extra}, which {module} does not import")
    return problems


def load_dvc_yaml(root: Path = REPO_ROOT) -> dict:
    return yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8"))


def main() -> None:
    for name, module in stage_modules(load_dvc_yaml()).items():
        print(f"{name}:")
        for path in sorted(import_closure(module)):
            print(f"  - {path}")


if __name__ == "__main__":
    main()
