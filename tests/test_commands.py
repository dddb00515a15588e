"""Every command reports bad input the same way: one `error:` line and exit code 2."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

from pipeline import TENSORFLOW_STARTUP_NOTICES, _HeldStderr
from tests.conftest import REPO_ROOT, subprocess_env


def _imports(path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names} | {
        n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
    }


def _main_block(path) -> str | None:
    """The source of a module's `if __name__ == "__main__":` block, or None."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
            return "\n".join(ast.unparse(statement) for statement in node.body)
    return None


def test_the_errors_module_imports_nothing_of_the_package():
    assert not {m for m in _imports(REPO_ROOT / "pipeline/core/errors.py") if m.startswith("pipeline")}


def _module_name(path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_the_package_has_no_import_cycle():
    """Every import of a package module, at the top of a file or inside a function, points one way."""
    import graphlib

    modules = {_module_name(p): p for p in (REPO_ROOT / "pipeline").rglob("*.py")}
    graph = {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}
    for name, path in modules.items():  # `from pipeline import stage` imports pipeline.core.stage
        tree = ast.parse(path.read_text())
        graph[name] |= {
            f"{n.module}.{a.name}"
            for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom) and n.module
            for a in n.names
            if f"{n.module}.{a.name}" in modules and f"{n.module}.{a.name}" != name
        }
    graphlib.TopologicalSorter(graph).prepare()  # raises CycleError, naming the cycle


# Which package may import which (the first name under pipeline/; pipeline/__init__.py, the log
# levels, is below them all). The core imports nothing of the package. A feature package imports
# the core only, but for onnx, whose job is to convert the package's models. training (the library
# the train stage runs) and experiments (what the study and sweep tools plan and record) build on
# the features. A tool imports the core, the features and those two libraries, never another tool;
# a stage imports the same, never another stage or a tool. Nothing imports a stage or a tool
# (tests reach them through their commands: tests/conftest.py run_stage).
FEATURES = ("data", "models", "onnx", "serving", "tracking")
MAY_IMPORT = {
    "core": set(),
    **{feature: {"core"} for feature in FEATURES},
    "onnx": {"core", "models"},
    "training": {"core", *FEATURES},
    "experiments": {"core", *FEATURES},
    "tools": {"core", *FEATURES, "training", "experiments"},
    "stages": {"core", *FEATURES, "training"},
}


def _imported_names(tree: ast.AST) -> list[str]:
    """Every module (and `from` module's name) that a parsed file imports."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names += [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
    return names


def _package(module: str) -> str | None:
    """The package of a module name (pipeline.onnx.conversion -> onnx; pipeline -> None)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _breaks_the_rule(importer: str, imported: str) -> bool:
    source, target = _package(importer), _package(imported)
    if target is None or source == target:
        return False
    return source is None or target not in MAY_IMPORT[source]


def _package_imports() -> list[tuple[str, str]]:
    """(importing module, imported module) for every import between the package's modules."""
    modules = {_module_name(p): p for p in (REPO_ROOT / "pipeline").rglob("*.py")}
    pairs = []
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pipeline"):
                targets = [f"{node.module}.{a.name}" for a in node.names]
                pairs += [(name, t if t in modules else node.module) for t in targets]
            elif isinstance(node, ast.Import):
                pairs += [(name, a.name) for a in node.names if a.name.startswith("pipeline")]
    return [(a, b) for a, b in pairs if a != b]


def test_every_import_between_packages_is_one_the_rule_allows():
    pairs = _package_imports()
    assert len(pairs) > 50 and set(MAY_IMPORT) <= {_package(a) for a, _ in pairs} | {"core"}
    assert {p.name for p in (REPO_ROOT / "pipeline").iterdir() if p.is_dir() and p.name != "__pycache__"} == set(
        MAY_IMPORT
    ), "a package the rule does not name"
    assert [(a, b) for a, b in pairs if _breaks_the_rule(a, b)] == []


def test_no_module_imports_a_stage_or_another_tool():
    """Within stages and tools, no module imports another of its own package either."""
    pairs = _package_imports()
    assert [(a, b) for a, b in pairs if _package(a) in ("stages", "tools") and _package(b) == _package(a)] == []
    stage_imports = [
        (path.name, name)
        for path in (REPO_ROOT / "tests").glob("*.py")
        for name in _imported_names(ast.parse(path.read_text()))
        if name.startswith("pipeline.stages")
    ]
    assert stage_imports == [], "tests run a stage through its command (run_stage), not its module"


@pytest.mark.parametrize(
    "importer, imported",
    [
        ("pipeline.core.metrics", "pipeline.tracking"),  # the core imports nothing of the package
        ("pipeline.data.files", "pipeline.models"),  # a feature imports the core only
        ("pipeline.serving.inference", "pipeline.training"),
        ("pipeline.tools.compare", "pipeline.stages.evaluate"),  # nothing imports a stage
        ("pipeline.stages.train", "pipeline.tools.study"),  # nor a tool
        ("pipeline.experiments.study", "pipeline.training"),
    ],
)
def test_the_rule_refuses_an_import_that_breaks_it(importer, imported):
    assert _breaks_the_rule(importer, imported)
    assert not _breaks_the_rule(importer, "pipeline.core.errors")


def test_the_tracking_package_only_re_exports_its_modules():
    """pipeline/tracking/__init__.py holds imports, its docstring and __all__, nothing that runs."""
    tree = ast.parse((REPO_ROOT / "pipeline" / "tracking" / "__init__.py").read_text())
    statements = [
        type(node).__name__
        for node in tree.body
        if not isinstance(node, ast.ImportFrom | ast.Import)
        and not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))
        and not (isinstance(node, ast.Assign) and [t.id for t in node.targets] == ["__all__"])
    ]
    assert statements == []
    import pipeline.tracking

    assert sorted(pipeline.tracking.__all__) == sorted(
        name for name in dir(pipeline.tracking) if not name.startswith("_") and name not in _SUBMODULES
    )


_SUBMODULES = {p.stem for p in (REPO_ROOT / "pipeline" / "tracking").glob("*.py")}


def test_every_command_reports_bad_input_through_one_runner():
    """Each `python -m pipeline.X` ends in run_command(main), which turns the package's errors
    (all defined in pipeline/core/errors.py or derived from them) into one line and exit code 2."""
    commands = {p.relative_to(REPO_ROOT).as_posix(): _main_block(p) for p in (REPO_ROOT / "pipeline").rglob("*.py")}
    commands = {path: block for path, block in commands.items() if block is not None}
    assert len(commands) >= 10
    assert {path: block for path, block in commands.items() if block != "run_command(main)"} == {}


@pytest.mark.parametrize(
    "args, key",
    [
        (["train.epochs=0"], "train.epochs"),
        (["data.planted_step=99"], "data"),
    ],
)
@pytest.mark.e2e
def test_the_config_command_prints_one_error_line_and_exits_2(args, key):
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.tools.params", *args],
        cwd=REPO_ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: conf/ with {args[0]}: invalid config: {key}")


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["pipeline.serving.predict", "missing.onnx", "x.npy"], "missing.onnx: not a readable ONNX model"),
        (["pipeline.serving.serve", "--model", "missing.onnx"], "missing.onnx: not a readable ONNX model"),
        (
            ["pipeline.tracking.promote", "--name", "nothing", "--tracking-uri", "sqlite:///{tmp}/m.db"],
            "no registered model 'nothing'",
        ),
        (["pipeline.stages.deploy"], "params.yaml: not found"),
    ],
)
@pytest.mark.e2e
def test_commands_refuse_bad_input_with_one_error_line_and_exit_2(tmp_path, args, fragment):
    args = [a.format(tmp=tmp_path) for a in args]
    result = subprocess.run(
        [sys.executable, "-m", *args], cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert fragment in line


@pytest.mark.parametrize("verbose", ["", "1"])
@pytest.mark.e2e
def test_third_party_notices_stay_silent_unless_pipeline_verbose_is_set(tmp_path, verbose):
    """A new MLflow store logs INFO lines as MLflow creates its tables: shown with PIPELINE_VERBOSE=1
    only. TensorFlow's start-up notices (on CPUs where it prints them) never reach a quiet process."""
    script = (
        "import pipeline, mlflow, tensorflow; "
        f"mlflow.set_tracking_uri('sqlite:///{tmp_path / 'mlflow.db'}'); mlflow.search_experiments()"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**subprocess_env(), "PIPELINE_VERBOSE": verbose},
        check=True,
    )
    assert ("INFO mlflow" in result.stderr) == bool(verbose), result.stderr
    if not verbose:
        assert not any(notice in result.stderr for notice in TENSORFLOW_STARTUP_NOTICES), result.stderr


def test_held_stderr_writes_back_all_but_the_dropped_lines(capfd):
    """What C code writes to file descriptor 2 inside is kept, less the dropped notices."""
    with _HeldStderr(("dropped notice",)):
        os.write(2, b"first line\nsome dropped notice here\nlast line\n")
        assert capfd.readouterr().err == ""  # held, not yet written
    assert capfd.readouterr().err == "first line\nlast line\n"


def _documented_layout() -> set[str]:
    """The package files named in the "Code layout" tree of docs/guide/development.md: a line
    names a folder, or one or more modules before their description; indentation (two spaces) nests."""
    text = (REPO_ROOT / "docs" / "guide" / "development.md").read_text(encoding="utf-8")
    block = text.split("## Code layout", 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    files, folders = set(), {}
    for line in block.splitlines():
        depth, tokens = (len(line) - len(line.lstrip())) // 2, line.split()
        if tokens[0].endswith("/"):
            folders[depth] = tokens[0]
            continue
        prefix = "".join(folders[d] for d in range(depth))
        for token in tokens:
            if not token.endswith(".py"):
                break
            files.add(prefix + token)
    return files


def test_the_documented_layout_names_every_module_of_the_package():
    tree = {p.relative_to(REPO_ROOT).as_posix() for p in (REPO_ROOT / "pipeline").rglob("*.py")}
    packages_without_entry = {f"pipeline/{p}/__init__.py" for p in MAY_IMPORT if p != "tracking"}
    assert _documented_layout() == tree - packages_without_entry
