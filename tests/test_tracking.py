"""MLflow records that hold: parallel stages on one fresh SQLite store, lineage tags, and the
prepared data as a dataset input identified by its digest."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import mlflow
import pytest

from pipeline.tracking import CPU_TAG, EXPERIMENT_KIND_TAG, TRAINING_KIND, cpu_model, experiment_id
from tests.conftest import EXPERIMENT_ENV, REPO_ROOT, run_stage, start_command, subprocess_env

CONNECT = """
import sys
from pipeline.tracking import experiment_id
print(experiment_id(sys.argv[1], sys.argv[2]))
"""


@pytest.mark.e2e
def test_parallel_stages_can_create_one_fresh_store_and_experiment(tmp_path):
    """Four processes start at once on a store that does not exist yet (dvc queue start -j N)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    processes = [start_command([sys.executable, "-c", CONNECT, uri, f"attention-{i % 2}"]) for i in range(4)]
    outputs = [p.communicate(timeout=120)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0, 0], [out[-500:] for out in outputs]
    ids = [out.strip().splitlines()[-1] for out in outputs]
    assert ids[0] == ids[2] and ids[1] == ids[3] and ids[0] != ids[1]
    mlflow.set_tracking_uri(uri)
    assert {e.name for e in mlflow.search_experiments()} >= {"attention-0", "attention-1"}


@pytest.mark.integration
def test_experiments_open_in_the_ui_s_training_view(tracked_run, tmp_path):
    """The pipeline's experiments are tagged as training experiments (MLflow's kind tag), also one
    created before the tag was set. (3.17's UI takes its view from the address: see pipeline/tracking/ui.py.)"""
    assert mlflow.get_experiment(tracked_run.info.experiment_id).tags[EXPERIMENT_KIND_TAG] == TRAINING_KIND
    uri = f"sqlite:///{tmp_path / 'older.db'}"
    untagged = mlflow.MlflowClient(uri).create_experiment("older", artifact_location=(tmp_path / "a").as_uri())
    assert experiment_id(uri, "older") == untagged
    assert mlflow.MlflowClient(uri).get_experiment(untagged).tags[EXPERIMENT_KIND_TAG] == TRAINING_KIND


def _rendered_text(url: str) -> str:
    """The text of the page at `url` once its scripts ran (headless chromium), tags stripped."""
    import html
    import re

    dom = subprocess.run(
        [
            "chromium",
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--virtual-time-budget=20000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    dom = re.sub(r"<script.*?</script>|<style.*?</style>", "", dom, flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", "\n", dom))


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (apt install chromium)")
@pytest.mark.e2e
def test_make_ui_prints_the_training_view_where_the_runs_table_and_comparison_show_the_metrics(tracked_run):
    import urllib.request

    from pipeline.tools.loadbench import free_port
    from pipeline.tracking.ui import compare_url

    store = mlflow.get_tracking_uri().removeprefix("sqlite:///")
    port = free_port()
    ui = subprocess.Popen(
        [sys.executable, "-m", "pipeline.tracking.ui", "--store", store, "--port", str(port)],
        cwd=REPO_ROOT,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        printed = [ui.stdout.readline() for _ in range(2)]
        assert printed[0].startswith("MLflow UI, training view"), printed
        runs_url = printed[1].split(": ", 1)[1].strip()
        assert printed[1].strip().startswith("attention-planted_step (1 runs)") and "workflowType" in runs_url
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, "the MLflow UI did not start"
                time.sleep(0.5)
        runs_table = _rendered_text(runs_url)
        assert "Detect Issues" not in runs_table, "the GenAI view, not the training view"
        assert "Run Name" in runs_table and tracked_run.info.run_name in runs_table
        base = runs_url.split("/#/")[0]
        comparison = _rendered_text(compare_url(base, tracked_run.info.experiment_id, [tracked_run.info.run_id]))
        assert "Comparing 1 Run" in comparison
        assert {"attention/argmax_hit", "epoch/loss"} <= set(comparison.split()), "the pipeline's metrics"
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=30)


@pytest.fixture
def tracked_run(trained_runs, tmp_path):
    """The MLflow run of a copy of the session's tiny run (trained as in a DVC experiment)."""
    import json

    workdir = trained_runs.copy(tmp_path / "tracked")
    run_id = json.loads((workdir / "reports/mlflow_run.json").read_text())["run_id"]
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    return mlflow.get_run(run_id)


@pytest.mark.integration
def test_runs_carry_the_dvc_experiment_name_baseline_and_cpu(tracked_run):
    """(The git commit tag is tested end to end, in a git repository: test_pipeline_e2e.)"""
    tags = tracked_run.data.tags
    assert tags["dvc.experiment"] == EXPERIMENT_ENV["DVC_EXP_NAME"] == "tidy-gnus"
    assert tags["dvc.baseline_rev"] == EXPERIMENT_ENV["DVC_EXP_BASELINE_REV"]
    assert "git.commit" not in tags, "the scratch directory is no git working copy"
    assert tags[CPU_TAG] == cpu_model() and cpu_model(), "training seconds need the CPU they were measured on"


@pytest.mark.integration
def test_prepared_data_is_a_dataset_input_with_its_digest(tracked_run):
    inputs = tracked_run.inputs.dataset_inputs
    assert len(inputs) == 1
    dataset = inputs[0].dataset
    assert dataset.name == "planted_step" and tracked_run.data.tags["data.digest"].startswith(dataset.digest)
    assert {t.key: t.value for t in inputs[0].tags}["mlflow.data.context"] == "training"


@pytest.mark.e2e
def test_unreachable_tracking_server_fails_fast_before_training(stage_dir):
    import socket
    import time

    from pipeline.core import stage

    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    stage_dir.write_params(f"mlflow.tracking_uri=http://127.0.0.1:{port}")
    run_stage("prepare")
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.stages.train"],
        cwd=stage_dir,
        env={**subprocess_env(), "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert f"MLflow tracking server http://127.0.0.1:{port} is unreachable" in result.stderr
    assert not (stage_dir / stage.KERAS_MODEL).exists(), "nothing trained, nothing written"
    assert time.monotonic() - started < 60


def test_a_dataset_inserted_by_a_parallel_run_between_lookup_and_insert_is_linked(tmp_path, monkeypatch):
    """Two queued runs log the same prepared data at once: the one whose insert loses the race
    (the store's unique key on experiment, name and digest) links the dataset the other inserted."""
    from mlflow.entities import Dataset, DatasetInput
    from mlflow.exceptions import MlflowException
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from mlflow.tracking import MlflowClient

    from pipeline.tracking import log_dataset_input

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("parallel")
    ours, theirs = (client.create_run(experiment).info.run_id for _ in range(2))
    dataset = DatasetInput(Dataset(name="find_max", digest="1e8e1dad720d141a", source_type="local", source="{}"))
    real_insert = SqlAlchemyStore._log_inputs_impl
    calls = []

    def racing_insert(store, experiment_id, run_id, datasets=None, models=None):
        calls.append(run_id)
        if len(calls) == 1:  # the other run inserts the dataset after our lookup missed it
            real_insert(store, experiment_id, theirs, datasets, models)
            raise MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id")
        return real_insert(store, experiment_id, run_id, datasets, models)

    monkeypatch.setattr(SqlAlchemyStore, "_log_inputs_impl", racing_insert)
    log_dataset_input(client, ours, dataset)
    for run_id in (ours, theirs):
        assert [d.dataset.digest for d in client.get_run(run_id).inputs.dataset_inputs] == ["1e8e1dad720d141a"]

    def other_failure(*args, **kwargs):
        raise MlflowException("the store is read-only")

    monkeypatch.setattr(SqlAlchemyStore, "_log_inputs_impl", other_failure)
    with pytest.raises(MlflowException, match="read-only"):  # only the lost race is retried
        log_dataset_input(client, ours, dataset)
