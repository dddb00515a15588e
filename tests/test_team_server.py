"""Team mode against a real MLflow server on a real PostgreSQL database, through MLflow's client
and its REST API; outages: a server down at the start (mlflow.required=false, then sync) and a
server killed mid-run.

Needs PIPELINE_TEST_POSTGRES=postgresql://USER:PASSWORD@HOST:PORT, a role that may create
databases (`bash scripts/postgres-test-server.sh` sets one up; .ci/run does). Without it these
tests skip, except under CI=true, where they fail.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.tools.loadbench import free_port
from tests.conftest import REPO_ROOT, dvc, git_copy, stages_run, subprocess_env, tiny_params

pytestmark = pytest.mark.e2e

POSTGRES = os.environ.get("PIPELINE_TEST_POSTGRES")
if not POSTGRES:
    if os.environ.get("CI") == "true":
        raise RuntimeError("CI=true but PIPELINE_TEST_POSTGRES is not set: .ci/run starts PostgreSQL")
    pytest.skip("PIPELINE_TEST_POSTGRES is not set (bash scripts/postgres-test-server.sh)", allow_module_level=True)

EXPERIMENT = "attention-planted_step"


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return json.loads(reply.read())


class TeamServer:
    """`python -m pipeline.tracking.team_server` in its own process group, on a loopback port."""

    def __init__(self, db: str, artifacts: Path, port: int | None = None):
        self.db, self.artifacts, self.port = db, artifacts, port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> TeamServer:
        # the server writes its log; this process closes its own copy of the file once it started
        with open(self.artifacts.parent / f"server-{self.port}.log", "ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "pipeline.tracking.team_server",
                    "--db",
                    self.db,
                    "--artifacts",
                    str(self.artifacts),
                    "--port",
                    str(self.port),
                    "--workers",
                    "1",
                ],
                cwd=REPO_ROOT,
                env=subprocess_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"team server exited {self.process.returncode}: {log.name}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as reply:
                    if reply.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        raise AssertionError(f"team server not healthy after {timeout}s: {log.name}")

    def kill(self) -> None:
        """SIGKILL the server and its workers: an outage, not a shutdown."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def database():
    """A fresh database on the PostgreSQL server (the team server creates it), dropped after."""
    import psycopg

    name = f"mlflow_test_{uuid.uuid4().hex[:10]}"
    yield f"{POSTGRES.rstrip('/')}/{name}"
    with psycopg.connect(f"{POSTGRES.rstrip('/')}/postgres", autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def server(database, tmp_path_factory):
    team = TeamServer(database, tmp_path_factory.mktemp("team") / "artifacts").start()
    yield team
    team.kill()


@pytest.fixture(scope="module")
def team_run(server, tmp_path_factory):
    """The pipeline's stages, in-process, logging to the team server and nothing else."""
    with stages_run(tmp_path_factory.mktemp("work"), f"mlflow.tracking_uri={server.uri}") as workdir:
        run_id = json.loads((workdir / "reports/mlflow_run.json").read_text())["run_id"]
        yield workdir, run_id


def test_team_server_keeps_runs_in_postgresql_and_artifacts_in_its_folder(server, team_run, database):
    import psycopg

    workdir, run_id = team_run
    with psycopg.connect(database) as connection:
        stored = connection.execute("SELECT status FROM runs WHERE run_uuid = %s", (run_id,)).fetchall()
    assert stored == [("FINISHED",)]
    assert list(server.artifacts.rglob("attention.png")), "the heatmap is under the artifact root"
    assert not (workdir / "mlflow.db").exists() and not (workdir / "mlflow-offline.db").exists()


def test_client_sees_the_complete_run(server, team_run):
    workdir, run_id = team_run
    client = MlflowClient(server.uri)
    run = client.get_run(run_id)
    metrics = json.loads((workdir / "reports/metrics.json").read_text())
    assert run.data.params["train.epochs"] == "1" and run.data.tags["model"] == "lstm_attention"
    assert run.data.metrics["test/accuracy"] == pytest.approx(metrics["test/accuracy"])
    assert {a.path for a in client.list_artifacts(run_id, "reports")} >= {
        "reports/attention.png",
        "reports/metrics.json",
    }
    logged = client.search_logged_models([run.info.experiment_id], f"source_run_id = '{run_id}'")
    assert [m.name for m in logged] == ["onnx_model"]


def test_rest_api_serves_the_run_metrics_and_registry(server, team_run):
    _, run_id = team_run
    api = f"{server.uri}/api/2.0/mlflow"
    run = get_json(f"{api}/runs/get?run_id={run_id}")["run"]
    assert run["info"]["status"] == "FINISHED"
    assert {p["key"] for p in run["data"]["params"]} >= {"model.name", "seed", "export.opset"}
    history = get_json(f"{api}/metrics/get-history?run_id={run_id}&metric_key=epoch/loss")["metrics"]
    assert [m["step"] for m in history] == [0]
    version = get_json(f"{api}/registered-models/alias?name={EXPERIMENT}&alias=candidate")["model_version"]
    assert version["run_id"] == run_id


def test_predictor_loads_the_champion_from_the_team_server(server, team_run, monkeypatch):
    import numpy as np

    from pipeline.serving.inference import Predictor

    workdir, _ = team_run
    subprocess.run(
        [sys.executable, "-m", "pipeline.tracking.promote", "--name", EXPERIMENT, "--tracking-uri", server.uri],
        cwd=REPO_ROOT,
        env=subprocess_env(),
        check=True,
        capture_output=True,
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    predictor = Predictor(f"models:/{EXPERIMENT}@champion")
    x = np.load(workdir / "data/prepared/test.npz", allow_pickle=False)["x"][:4]
    result = predictor.predict(x)
    assert result.attention.shape[0] == 4 and np.allclose(result.attention.sum(axis=1), 1, atol=1e-5)


@pytest.mark.parametrize(
    "db, message",
    [
        ("sqlite:///mlflow.db", "expected a postgresql:// URI"),
        ("postgresql://pipeline@127.0.0.1:5432", "no database name"),
        ("postgresql://pipeline:wrong-password@127.0.0.1:5432/mlflow", "password authentication failed"),
    ],
)
def test_team_server_refuses_a_bad_database_with_a_clear_error(db, message, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.tracking.team_server",
            "--db",
            db,
            "--artifacts",
            str(tmp_path / "a"),
            "--port",
            str(free_port()),
        ],
        cwd=REPO_ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "wrong-password" not in result.stderr, "passwords never show in messages"


def _sync(workdir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.tracking.sync"],
        cwd=workdir,
        env={**subprocess_env(), "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_server_down_at_start_records_offline_and_sync_uploads_it(database, tmp_path):
    later = TeamServer(database, tmp_path / "artifacts")  # not started yet: its port is closed
    (tmp_path / "work").mkdir()
    with stages_run(tmp_path / "work", f"mlflow.tracking_uri={later.uri}", "mlflow.required=false") as workdir:
        run_file = json.loads((workdir / "reports/mlflow_run.json").read_text())
        assert run_file["offline_run_id"] == run_file["run_id"]
        assert (workdir / "models/model.onnx").exists()
    assert _sync(workdir).returncode == 2, "the server is still down: sync fails, keeps the records"
    later.start()
    try:
        synced = _sync(workdir)
        assert synced.returncode == 0, synced.stderr[-2000:]
        remote_run_id = synced.stdout.split("server run ")[-1].split()[0]
        client = MlflowClient(later.uri)
        run = client.get_run(remote_run_id)
        metrics = json.loads((workdir / "reports/metrics.json").read_text())
        assert run.data.metrics["test/accuracy"] == pytest.approx(metrics["test/accuracy"])
        assert run.data.params["train.epochs"] == "1" and run.data.params["export.opset"] == "17"
        assert run.inputs.dataset_inputs[0].dataset.name == "planted_step"
        assert client.get_model_version_by_alias(EXPERIMENT, "candidate").run_id == remote_run_id
        assert "nothing to sync" in _sync(workdir).stdout, "a second sync uploads nothing twice"
    finally:
        later.kill()


def test_server_killed_mid_training_loses_neither_model_nor_dvc_outputs(database, tmp_path):
    """`dvc repro` against a team server that is SIGKILLed after the first epochs: every stage
    still completes and DVC records its outputs; the records made after the kill go to the
    offline store, and sync completes the server's run."""
    server = TeamServer(database, tmp_path / "artifacts").start()
    repo = git_copy(tmp_path / "repo")
    params = tiny_params("train.epochs=10", "train.batch_size=8", f"mlflow.tracking_uri={server.uri}")
    (repo / "params.yaml").write_text(json.dumps(params))  # JSON is YAML
    repro = subprocess.Popen(
        [sys.executable, "-m", "dvc", "repro"],
        cwd=repo,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    client = MlflowClient(server.uri)
    try:
        run_id = _wait_for_epochs(client, minimum=3, timeout=300)
        server.kill()
        output, _ = repro.communicate(timeout=600)
    finally:
        repro.kill()
        server.kill()
    assert repro.returncode == 0, output[-3000:]
    assert "is unreachable" in output and "pipeline.tracking.sync" in output
    assert json.loads((repo / "reports/train.json").read_text())["train/epochs"] == 10
    assert (repo / "models/model.keras").exists() and (repo / "models/model.onnx").exists()
    status = dvc(repo, "status", "--json")
    assert json.loads(status.stdout) == {}, "dvc.lock records every stage's outputs"

    server.start()
    try:
        synced = _sync(repo)
        assert synced.returncode == 0, synced.stderr[-2000:]
        run = client.get_run(run_id)
        steps = [m.step for m in client.get_metric_history(run_id, "epoch/loss")]
        assert sorted(steps) == list(range(10)), "epochs before and after the kill, none twice"
        assert "test/accuracy" in run.data.metrics and run.info.status == "FINISHED"
        assert client.get_model_version_by_alias(EXPERIMENT, "candidate").run_id == run_id
    finally:
        server.kill()


def _wait_for_epochs(client: MlflowClient, minimum: int, timeout: float) -> str:
    """The id of the newest run once it has logged `minimum` epochs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        experiment = client.get_experiment_by_name(EXPERIMENT)
        runs = (
            client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)
            if experiment
            else []
        )
        if runs and len(client.get_metric_history(runs[0].info.run_id, "epoch/loss")) >= minimum:
            return runs[0].info.run_id
        time.sleep(0.2)
    raise AssertionError(f"no run logged {minimum} epochs within {timeout}s")
