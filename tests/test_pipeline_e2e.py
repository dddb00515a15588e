"""End to end: real `dvc repro` and `dvc exp run` in a temporary git repository, tiny data."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml

from tests.conftest import dvc as _dvc
from tests.conftest import git_copy as _git_copy
from tests.conftest import run_command as _run
from tests.conftest import tiny_params

pytestmark = pytest.mark.e2e
STAGES = ("prepare", "train", "export", "evaluate", "deploy")


def _ran(result: subprocess.CompletedProcess) -> list[str]:
    return [s for s in STAGES if f"Running stage '{s}'" in result.stdout]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_params(repo: Path, params: dict) -> None:
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def first_repro(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """A git clone of the project with a tiny params.yaml, and its first full `dvc repro`."""
    path = _git_copy(tmp_path_factory.mktemp("clone"))
    _write_params(path, tiny_params())
    first = _dvc(path, "repro")
    assert _ran(first) == list(STAGES)
    return path, first


@pytest.fixture(scope="module")
def repo(first_repro) -> Path:
    """The clone of `first_repro`, after its first full `dvc repro`."""
    return first_repro[0]


DVC_LINES = ("Running stage ", "> python -m pipeline.", "Updating lock file ")


def test_repro_prints_one_summary_per_stage_and_no_third_party_notice(first_repro):
    _, result = first_repro
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    ours = [
        line
        for line in lines
        if not line.startswith(DVC_LINES)
        and "/step - " not in line  # Keras's progress
        and not line.startswith("Epoch ")
    ]
    summaries = [
        line.split(maxsplit=1)[0]
        for line in ours
        if line.startswith(("prepared ", "trained ", "exported ", "evaluated: ", "wrote deploy/"))
    ]
    assert summaries == ["prepared", "trained", "exported", "evaluated:", "wrote"], ours
    noise = [
        line for line in ours if any(word in line for word in ("WARNING", " INFO ", "oneDNN", "absl", "I0000", "W0000"))
    ]
    assert noise == [], noise
    repeated = [line for line in set(ours) if ours.count(line) > 1]
    assert repeated == [], repeated


def test_repro_writes_the_model_metrics_and_one_mlflow_run(repo):
    assert (repo / "models/model.onnx").stat().st_size > 0
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    assert 0 <= metrics["test/accuracy"] <= 1 and metrics["export/parity_max_abs"] <= 1e-5
    shown = json.loads(_dvc(repo, "metrics", "show", "--json").stdout)
    assert "reports/metrics.json" in json.dumps(shown)
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["attention-planted_step"], output_format="list")
    assert len(runs) == 1
    run = runs[0]
    assert run.data.params["data.n_samples"] == "300" and run.data.params["train.epochs"] == "1"
    assert run.data.metrics["attention/lift"] == pytest.approx(metrics["attention/lift"])
    assert run.info.artifact_uri.startswith((repo / "mlartifacts").as_uri())
    head = _run(["git", "rev-parse", "HEAD"], repo).stdout.strip()
    assert run.data.tags["git.commit"] == head and "dvc.experiment" not in run.data.tags


def test_second_repro_runs_nothing_and_export_params_rerun_export_and_evaluate(repo):
    assert _ran(_dvc(repo, "repro")) == []
    params = tiny_params()
    params["export"]["parity_samples"] = 20
    _write_params(repo, params)
    assert _ran(_dvc(repo, "repro")) == ["export", "evaluate", "deploy"]
    assert json.loads((repo / "reports/export.json").read_text())["export/parity_samples"] == 20


def test_a_changed_layer_makes_dvc_report_train_and_export_as_changed(repo):
    layers = repo / "pipeline/models/layers.py"
    original = layers.read_text()
    layers.write_text(original + "\n# any change to the layers' code\n")
    try:
        status = json.loads(_dvc(repo, "status", "--json").stdout)
    finally:
        layers.write_text(original)
    assert set(status) == {"train", "export"}, status
    assert {"changed deps": {"pipeline/models": "modified"}} in status["train"]  # the whole package
    assert {"changed deps": {"pipeline/models/layers.py": "modified"}} in status["export"]  # what it imports
    assert json.loads(_dvc(repo, "status", "--json").stdout) == {}


@pytest.mark.parametrize(
    "section, key, value, fragment",
    [
        ("model", "name", "transformer", "model.name: unknown value 'transformer'"),
        ("train", "epochs", "ten", "train.epochs: Input should be a valid integer"),
    ],
)
def test_broken_params_fail_and_leave_outputs_untouched(repo, section, key, value, fragment):
    outputs = [
        repo / p for p in ("models/model.keras", "models/model.onnx", "reports/metrics.json", "reports/mlflow_run.json")
    ]
    before = {p: _digest(p) for p in outputs}
    params = tiny_params()
    params[section][key] = value
    _write_params(repo, params)
    try:
        result = _dvc(repo, "repro", check=False)
    finally:
        _write_params(repo, tiny_params())
    assert result.returncode != 0
    assert fragment in result.stderr + result.stdout
    assert {p: _digest(p) for p in outputs} == before


def test_exp_run_composes_hydra_overrides(repo):
    result = _dvc(
        repo,
        "exp",
        "run",
        "-S",
        "experiment=dense_attention",
        "-S",
        "data.n_samples=300",
        "-S",
        "train.epochs=1",
        "-S",
        "export.parity_samples=30",
    )
    assert _ran(result) == list(STAGES)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["model"]["name"] == "feature_attention" and params["data"]["name"] == "planted_feature"
    assert json.loads((repo / "reports/metrics.json").read_text())["attention/lift"] > 0
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["attention-planted_feature"], output_format="list")
    assert [r.info.run_name for r in runs] == ["feature_attention"]


def _exp_show_metrics(repo: Path, models: list[str], deadline: float) -> dict[str, dict]:
    """{model name: metrics.json} of every experiment `dvc exp show --json` lists, once it lists
    all of `models`: `dvc queue status` can report a task done before its experiment is collected
    into the repository (seen once in a loaded suite: 4 successes, 3 experiments shown), so the
    listing is read again until the deadline."""
    while True:
        found = _exp_show_once(repo)
        if set(models) <= set(found) or time.monotonic() > deadline:
            assert set(models) <= set(found), f"dvc exp show lists {sorted(found)}, not all of {models}"
            return found
        time.sleep(2)


def _exp_show_once(repo: Path) -> dict[str, dict]:
    found = {}

    def walk(node):
        if isinstance(node, dict):
            data = node.get("data")
            if isinstance(data, dict) and data.get("metrics") and data.get("params"):
                params = data["params"]["params.yaml"]["data"]
                metrics = data["metrics"]["reports/metrics.json"]["data"]
                found[params["model"]["name"]] = metrics
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(_dvc(repo, "exp", "show", "--json").stdout))
    return found


def test_parallel_queued_sweep_logs_complete_runs_into_the_repository_store(repo):
    """2 variants through `dvc queue start -j 2` (one per core): they run in temporary copies at
    the same time and must land, complete, in <repo>/mlflow.db, agreeing with `dvc exp show`."""
    models = ["luong_dot", "gru_attention"]
    _dvc(
        repo,
        "exp",
        "run",
        "--queue",
        "-S",
        f"model={','.join(models)}",
        "-S",
        "data=find_max",
        "-S",
        "data.n_samples=300",
        "-S",
        "train.epochs=1",
        "-S",
        "export.parity_samples=30",
    )
    _dvc(repo, "queue", "start", "-j", "2")
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        status = _dvc(repo, "queue", "status").stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(5)
    assert status.count("Success") >= len(models), status
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["attention-find_max"], output_format="list")
    assert sorted(r.info.run_name for r in runs) == sorted(models)
    logged = mlflow.search_logged_models(experiment_ids=[runs[0].info.experiment_id], output_format="list")
    shown = _exp_show_metrics(repo, models, deadline)
    client = mlflow.MlflowClient()
    for run in runs:
        assert run.data.params["model.name"] == run.info.run_name and run.info.status == "FINISHED"
        assert run.info.artifact_uri.startswith((repo / "mlartifacts").as_uri())
        assert any(m.source_run_id == run.info.run_id and m.name == "onnx_model" for m in logged)
        reports = {a.path for a in client.list_artifacts(run.info.run_id, "reports")}
        assert "reports/attention.png" in reports
        assert run.data.tags["dvc.experiment"], "the DVC experiment name leads back to `dvc exp apply`"
        for name in ("test/mae", "attention/argmax_hit", "attention/lift"):
            assert run.data.metrics[name] == pytest.approx(shown[run.info.run_name][name], rel=1e-6)
    assert not list((repo / ".dvc" / "tmp" / "exps").glob("**/mlflow.db"))


def _ts_file(n_series: int, seed: int) -> str:
    """A .ts file of 2-channel series of 16 steps, class "sine" or "ramp"."""
    rng = np.random.default_rng(seed)
    lines = [
        "@problemName mine",
        "@univariate false",
        "@dimensions 2",
        "@equalLength true",
        "@seriesLength 16",
        "@classLabel true sine ramp",
        "@data",
    ]
    steps = np.linspace(0, 1, 16)
    for i in range(n_series):
        label = ("sine", "ramp")[i % 2]
        base = np.sin(6 * steps) if label == "sine" else steps
        channels = [base + 0.1 * rng.standard_normal(16), 2 * base + 0.1 * rng.standard_normal(16)]
        lines.append(":".join(",".join(f"{v:.4f}" for v in c) for c in channels) + f":{label}")
    return "\n".join(lines) + "\n"


def test_user_files_tracked_by_dvc_feed_the_pipeline(tmp_path):
    path = _git_copy(tmp_path)
    mine = path / "data" / "raw" / "mine"
    mine.mkdir()
    (mine / "mine_TRAIN.ts").write_text(_ts_file(30, seed=0))
    (mine / "mine_TEST.ts").write_text(_ts_file(10, seed=1))
    _dvc(path, "add", "data/raw/mine")
    _write_params(
        path,
        tiny_params(
            "data=ts_file",
            "data.name=mine",
            "data.train_file=data/raw/mine/mine_TRAIN.ts",
            "data.test_file=data/raw/mine/mine_TEST.ts",
            "model=conv_attention",
            "model.filters=[8]",
            "model.kernel_sizes=[3]",
        ),
    )
    assert _ran(_dvc(path, "repro")) == list(STAGES)
    predictions = (path / "reports/predictions.csv").read_text().splitlines()
    assert len(predictions) == 11 and {row.split(",")[1] for row in predictions[1:]} == {"sine", "ramp"}

    outputs = [path / p for p in ("data/prepared/train.npz", "models/model.onnx", "reports/metrics.json")]
    before = {p: _digest(p) for p in outputs}
    with open(mine / "mine_TEST.ts", "a") as handle:  # a ragged row in a fixed-length file
        handle.write("1,2,3:1,2,3:sine\n")
    failed = _dvc(path, "repro", check=False)
    assert _ran(failed) == ["prepare"] and failed.returncode != 0
    assert "data/raw/mine/mine_TEST.ts: line 18: series of length 3" in failed.stderr
    assert {p: _digest(p) for p in outputs} == before


def test_dvc_plots_show_and_diff_render_training_curves_and_attention(repo):
    """The training curves, the mean attention per position, the heatmap and the confusion
    matrix are DVC plots: `dvc plots show` renders the workspace, `dvc plots diff` it beside a
    commit."""
    shown = json.loads(_dvc(repo, "plots", "show", "--json").stdout)["data"]
    assert {"loss", "accuracy", "attention_per_position", "reports/attention.png", "confusion"} <= set(shown)
    curve = shown["loss"][0]["content"]["data"]["values"]
    epochs = json.loads((repo / "reports/train.json").read_text())["train/epochs"]
    assert len({row["epoch"] for row in curve}) == epochs
    attention = shown["attention_per_position"][0]["content"]["data"]["values"]
    assert sum(float(row["mean_attention"]) for row in attention) == pytest.approx(1, abs=1e-3)
    diff = json.loads(_dvc(repo, "plots", "diff", "HEAD", "--json").stdout)["data"]
    assert set(diff["loss"][0]["revisions"]) == {"workspace", "HEAD"}
    assert {image["revisions"][0] for image in diff["reports/attention.png"]} == {"workspace", "HEAD"}


def test_dvc_remote_push_and_pull_round_trip_data_and_models(repo, tmp_path):
    """A DVC remote (a local folder here, S3 for a team): a fresh git clone gets the prepared
    data and every model back with `dvc pull`, byte for byte."""
    remote = tmp_path / "remote"
    _dvc(repo, "remote", "add", "--default", "shared", str(remote))
    _run(["git", "add", "-A"], repo)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "pipeline run"], repo)
    pushed = _dvc(repo, "push")
    assert any(remote.rglob("*")) and "pushed" in pushed.stdout

    clone = tmp_path / "clone"
    _run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    cached = sorted(
        p.relative_to(repo) for folder in ("data/prepared", "models") for p in (repo / folder).rglob("*") if p.is_file()
    )
    assert {"data/prepared/train.npz", "models/model.keras", "models/model.onnx"} <= {str(p) for p in cached}
    assert not (clone / "models/model.onnx").exists(), "models are not in git"
    _dvc(clone, "pull")
    assert {str(p): _digest(clone / p) for p in cached} == {str(p): _digest(repo / p) for p in cached}
    assert json.loads(_dvc(clone, "status", "--json").stdout) == {}
