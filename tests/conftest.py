"""Shared fixtures: the repository, tiny configs, and a scratch working directory for stages."""

from __future__ import annotations

import copy
import functools
import os
import runpy
import shutil
import sqlite3
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from pipeline.core.config import Config, compose_defaults, validate

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = ["train.epochs=1", "train.batch_size=32", "export.parity_samples=60"]
TINY_SAMPLES = 300  # synthetic data sets; real ones keep the size of their files


def tiny_params(*overrides: str) -> dict:
    """The composed conf/ defaults, shrunk for tests, plus any Hydra overrides (a fresh copy: the
    caller may change it)."""
    return copy.deepcopy(_composed_tiny(overrides))


@functools.cache
def _composed_tiny(overrides: tuple[str, ...]) -> dict:
    """Hydra's composition costs a tenth of a second: once per distinct list of overrides."""
    params = compose_defaults(REPO_ROOT / "conf", [*TINY, *overrides])
    if "n_samples" in params["data"] and not any(o.startswith("data.n_samples=") for o in overrides):
        params["data"]["n_samples"] = TINY_SAMPLES
    return params


def parity(model, runtime, x) -> dict[str, float]:
    """Max abs difference, per output, between a Keras model and an OnnxModel on inputs x."""
    import numpy as np

    from pipeline.core.contract import OUTPUT_NAMES

    keras_out = model.predict(x, batch_size=1024, verbose=0)
    onnx_out = runtime.run(x)
    return {name: float(np.max(np.abs(keras_out[name] - onnx_out[name]))) for name in OUTPUT_NAMES}


def tiny_config(*overrides: str) -> Config:
    return validate(tiny_params(*overrides), "tests")


class StageDir(type(Path())):
    """A scratch working directory that can write a tiny params.yaml into itself."""

    def write_params(self, *overrides: str) -> Path:
        path = self / "params.yaml"
        path.write_text(yaml.safe_dump(tiny_params(*overrides), sort_keys=False))
        return path


STAGES = ("prepare", "train", "export", "evaluate", "deploy")


def run_stage(name: str) -> None:
    """`python -m pipeline.stages.<name>` in this process, in the working directory: the stage's
    command as dvc.yaml runs it (a PipelineError exits 2 with its `error:` line on stderr). Tests
    reach a stage through its command only; nothing imports a stage module."""
    runpy.run_module(f"pipeline.stages.{name}", run_name="__main__")


@contextmanager
def stages_run(workdir: Path, *overrides: str) -> Iterator[StageDir]:
    """Every stage, in-process, in `workdir` on tiny params plus `overrides`, logging to an
    MLflow store of its own; yields the directory with the outputs."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{workdir / 'mlflow.db'}")
        patch.delenv("DVC_ROOT", raising=False)
        StageDir(workdir).write_params(*overrides)
        for name in STAGES:
            run_stage(name)
        yield StageDir(workdir)


def _move_store(folder: Path, old: Path) -> None:
    """Point the MLflow store in `folder` (a copy of `old`) at its own artifacts: the store
    records absolute paths and URIs, so every text value that names `old` is rewritten."""
    with sqlite3.connect(folder / "mlflow.db") as db:
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            columns = [row[1] for row in db.execute(f'PRAGMA table_info("{table}")') if "CHAR" in row[2].upper()]
            for column in columns:
                db.execute(
                    f'UPDATE "{table}" SET "{column}" = replace("{column}", ?, ?) WHERE instr("{column}", ?) > 0',
                    (str(old), str(folder), str(old)),
                )
    db.close()


# The session's runs are trained as `dvc exp run` runs a stage: in an experiment of this name
# and baseline, which the run's tags must carry.
EXPERIMENT_ENV = {"DVC_EXP_NAME": "tidy-gnus", "DVC_EXP_BASELINE_REV": "0123abc"}


class TrainedRuns:
    """Tiny pipeline runs (every stage, in-process: `stages_run`, with EXPERIMENT_ENV) trained
    once per pytest session, one per distinct list of overrides; each test gets a copy of its own."""

    def __init__(self, root: Path):
        self.root = root
        self._runs: dict[tuple[str, ...], Path] = {}

    def copy(self, destination: Path, *overrides: str) -> StageDir:
        """A copy of the run of `overrides` (trained now if this session has none yet) in
        `destination`, with an MLflow store that names its own folder."""
        if overrides not in self._runs:
            folder = self.root / f"run{len(self._runs)}"
            folder.mkdir()
            with pytest.MonkeyPatch.context() as patch:
                for name, value in EXPERIMENT_ENV.items():
                    patch.setenv(name, value)
                with stages_run(folder, *overrides):
                    pass
            self._runs[overrides] = folder
        source = self._runs[overrides]
        shutil.copytree(source, destination, dirs_exist_ok=True)
        _move_store(destination, source)
        return StageDir(destination)


@pytest.fixture(scope="session")
def trained_runs(tmp_path_factory) -> TrainedRuns:
    """Tiny pipeline runs shared by the session: `trained_runs.copy(folder, *overrides)`."""
    return TrainedRuns(tmp_path_factory.mktemp("trained"))


@pytest.fixture
def stage_dir(tmp_path, monkeypatch) -> StageDir:
    """An empty working directory (with its own MLflow store) for running stage mains in-process."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("DVC_ROOT", raising=False)
    return StageDir(tmp_path)


def copy_repository(destination: Path) -> Path:
    """Copy the project's files (tracked and new, not ignored) to `destination`."""
    import subprocess

    listed = (
        subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=REPO_ROOT,
            check=True,
            capture_output=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, listed):
        source = REPO_ROOT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


def subprocess_env() -> dict[str, str]:
    """This interpreter's environment, with its bin/ first on PATH so `python` and `dvc` are ours,
    less the log levels that importing `pipeline` set here: a command sets its own, as for a user."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "TF_CPP_", "PIPELINE_VERBOSE"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def run_command(args: list[str], cwd: Path, check: bool = True):
    """Run a command with our interpreter's environment; on `check`, fail with its output."""
    import subprocess

    result = subprocess.run(args, cwd=cwd, env=subprocess_env(), capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def start_command(args: list[str], cwd: Path = REPO_ROOT):
    """Start a command with our interpreter's environment, its stdout and stderr in one text pipe
    (read with `.communicate(timeout=...)[0]`), so that several can run at once."""
    import subprocess

    return subprocess.Popen(
        args, cwd=cwd, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def dvc(repo: Path, *args: str, check: bool = True):
    return run_command([sys.executable, "-m", "dvc", *args], repo, check)


def git_copy(destination: Path) -> Path:
    """The project's files in a fresh git repository (one commit)."""
    path = copy_repository(destination)
    run_command(["git", "init", "-q"], path)
    run_command(["git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A"], path)
    run_command(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "clone"], path)
    return path


def pytest_terminal_summary(terminalreporter):
    """The counts of generated cases that property-based tests record (record_property
    "generated cases"), one line per test, after the run."""
    reports = [r for key in ("passed", "failed") for r in terminalreporter.stats.get(key, [])]
    lines = [
        f"{r.nodeid}: {value}"
        for r in reports
        if r.when == "call"
        for name, value in r.user_properties
        if name == "generated cases"
    ]
    if lines:
        terminalreporter.write_sep("=", "generated cases")
        for line in lines:
            terminalreporter.write_line(line)
