"""Every MLflow call of the pipeline goes through here.

One pipeline run is one MLflow run: `train` opens it and writes its id to reports/mlflow_run.json;
`export` and `evaluate` reopen it by that id. The store is, in order of precedence:
`mlflow.tracking_uri` in params.yaml, the MLFLOW_TRACKING_URI variable, or the SQLite file
mlflow.db at the repository root, with artifacts in mlartifacts/ beside it. The root is DVC_ROOT
when DVC runs the stage (so queued and temporary experiments log to the real repository), else the
working directory.

Outages: a tracking server that does not answer when `train` starts fails the stage before any
training (mlflow.required, the default) or, with mlflow.required=false, the run is recorded in the
offline store mlflow-offline.db at the repository root. A server that stops answering mid-run
never fails a stage: its records continue in the offline store. `python -m pipeline.tracking.sync`
uploads the offline records to their server later.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import subprocess
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline.core import stage
from pipeline.core.config import Config, MlflowConfig

DEFAULT_STORE = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"


def repository_root() -> Path:
    """The real repository root, also from inside DVC's temporary experiment copies."""
    return Path(os.environ.get("DVC_ROOT") or os.getcwd()).resolve()


def tracking_uri(cfg: MlflowConfig) -> str:
    if cfg.tracking_uri:
        return cfg.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{repository_root() / DEFAULT_STORE}"


def _store_lock(uri: str):
    """A file lock beside a SQLite store: creating and migrating its schema, and creating an
    experiment, must not run in two processes at once (`dvc queue start -j 2`); a server
    store handles that itself."""
    from filelock import FileLock

    if uri.startswith("sqlite:///"):
        return FileLock(uri.removeprefix("sqlite:///") + ".lock", timeout=300)
    return nullcontext()


SERVER_PROBE_SECONDS = 5
# MLflow's client retries a failed request for minutes by default; a stage should notice an
# outage in seconds and keep its records locally (see `_Recorder`). Users may still override.
for _variable, _value in (
    ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2"),
    ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"),
    ("MLFLOW_HTTP_REQUEST_TIMEOUT", "30"),
):
    os.environ.setdefault(_variable, _value)


def server_problem(uri: str) -> str | None:
    """Why the tracking server at `uri` does not answer its health check; None when it does,
    or when `uri` is no server."""
    if not uri.startswith(("http://", "https://")):
        return None
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=SERVER_PROBE_SECONDS) as reply:
            return None if reply.status == 200 else f"HTTP {reply.status}"
    except (urllib.error.URLError, OSError) as err:
        return str(getattr(err, "reason", err))


def check_reachable(uri: str) -> None:
    """Fail fast, before any training, when a tracking server does not answer its health
    check (MLflow's own client would retry for minutes)."""
    problem = server_problem(uri)
    if problem:
        raise stage.StageFailed(
            f"MLflow tracking server {uri} is unreachable ({problem}); start it, point "
            "mlflow.tracking_uri / MLFLOW_TRACKING_URI at a reachable store, or set "
            "mlflow.required=false to keep this run's records locally and `python -m pipeline.tracking.sync` them later"
        )


# The kind of experiment MLflow records for its clients (a training one, not GenAI). MLflow 3.17's
# UI no longer picks its view from it but from the address: pipeline/tracking/ui.py prints those.
EXPERIMENT_KIND_TAG, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"


def experiment_id(uri: str, name: str) -> str:
    """The id of the experiment `name` in the store `uri`, created if new (artifacts of a
    SQLite store go beside it, not into the working directory), tagged as a training experiment."""
    with _store_lock(uri):  # the client's first call creates a new store's schema
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            artifact_location = None
            if uri.startswith("sqlite:///"):
                store = Path(uri.removeprefix("sqlite:///"))
                artifact_location = (store.parent / ARTIFACT_FOLDERS.get(store.name, DEFAULT_ARTIFACTS)).as_uri()
            with contextlib.suppress(MlflowException):  # another client created it first
                client.create_experiment(
                    name, artifact_location=artifact_location, tags={EXPERIMENT_KIND_TAG: TRAINING_KIND}
                )
            experiment = client.get_experiment_by_name(name)
        if experiment.tags.get(EXPERIMENT_KIND_TAG) != TRAINING_KIND:  # made before the tag was set
            client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)
        return experiment.experiment_id


# Records of runs whose tracking server was unreachable wait here for `python -m pipeline.tracking.sync`.
OFFLINE_STORE = "mlflow-offline.db"
OFFLINE_ARTIFACTS = "mlartifacts-offline"
ARTIFACT_FOLDERS = {DEFAULT_STORE: DEFAULT_ARTIFACTS, OFFLINE_STORE: OFFLINE_ARTIFACTS}
CPU_TAG = "host.cpu"  # the CPU a run trained on (cpu_model())
SYNC_TARGET, SYNC_REMOTE_RUN, SYNC_STATUS, SYNC_REGISTER = (
    "sync.target",
    "sync.remote_run_id",
    "sync.status",
    "sync.register",
)


def offline_uri() -> str:
    return f"sqlite:///{repository_root() / OFFLINE_STORE}"


class _Recorder:
    """Where this process's records of one pipeline run go: the run `run_id` in the store `uri`.

    When the tracking server stops answering mid-run, the records continue in a run of the
    offline store, tagged with the server and the server's run (`sync.*`), and the stage goes on:
    an outage loses neither the trained model nor the DVC outputs."""

    def __init__(self, uri: str, run_id: str, experiment_name: str, remote_run_id: str | None = None):
        self.uri, self.run_id, self.experiment_name = uri, run_id, experiment_name
        self.remote_run_id = remote_run_id  # the server's run, for an offline continuation
        self.configured_uri = uri  # the store the config names (this one, unless offline)
        self.client = MlflowClient(uri)

    @property
    def offline(self) -> bool:
        return self.uri == offline_uri()

    def __call__(self, action):
        """Run action(client, run_id); if it fails because the server is down, go offline and
        run it there."""
        try:
            return action(self.client, self.run_id)
        except Exception as err:
            problem = None if self.offline else server_problem(self.uri)
            if problem is None:
                raise
            self.go_offline(f"{problem}; {type(err).__name__}")
            return action(self.client, self.run_id)

    def go_offline(self, problem: str) -> None:
        server, remote_run_id = self.uri, self.run_id
        print(
            f"warning: MLflow tracking server {server} is unreachable ({problem}); the records of "
            f"run {remote_run_id} continue in {offline_uri()}: upload them with `python -m "
            "pipeline.tracking.sync` when the server is back",
            file=sys.stderr,
            flush=True,
        )
        self.uri, self.client = offline_uri(), MlflowClient(offline_uri())
        self.run_id = open_offline_run(self.experiment_name, server, remote_run_id)
        self.remote_run_id = remote_run_id


def open_offline_run(experiment_name: str, server: str, remote_run_id: str | None, run_name: str | None = None) -> str:
    """A run in the offline store holding records for the server `server`: a continuation of
    its run `remote_run_id`, or a new run there when None."""
    tags = {SYNC_TARGET: server, SYNC_STATUS: "pending"}
    if remote_run_id:
        tags[SYNC_REMOTE_RUN] = remote_run_id
    uri = offline_uri()
    return MlflowClient(uri).create_run(experiment_id(uri, experiment_name), tags=tags, run_name=run_name).info.run_id


_recorder: _Recorder | None = None


def _record(action):
    if _recorder is None:
        raise RuntimeError("no pipeline run is open: use start_pipeline_run or resume_pipeline_run")
    return _recorder(action)


@contextmanager
def _open(recorder: _Recorder) -> Iterator[_Recorder]:
    """Make `recorder` the current one; end its run FINISHED (or FAILED on an error)."""
    global _recorder
    _recorder = recorder
    mlflow.set_tracking_uri(recorder.uri)
    status = "FAILED"
    try:
        yield recorder
        status = "FINISHED"
    finally:
        try:
            recorder(lambda client, run_id: client.set_terminated(run_id, status))
        finally:
            _recorder = None


@contextmanager
def start_pipeline_run(cfg: Config, run_name: str, resume: dict | None = None) -> Iterator[str]:
    """Open a new MLflow run for this pipeline run, or continue the run `resume` (from
    current_run() of a training that was killed); record its id for the later stages.

    An unreachable server fails the stage before any training, unless mlflow.required is
    false: then the run is recorded in the offline store, for `python -m pipeline.tracking.sync`."""
    uri = tracking_uri(cfg.mlflow)
    problem = server_problem(uri)
    if problem and cfg.mlflow.required:
        check_reachable(uri)
    recorder = _continued(resume, uri, cfg.mlflow.experiment_name, problem) if resume else None
    if recorder is None and problem:
        print(
            f"warning: MLflow tracking server {uri} is unreachable ({problem}); mlflow.required is "
            f"false: this run is recorded in {offline_uri()}, upload it with `python -m pipeline.tracking.sync`",
            file=sys.stderr,
            flush=True,
        )
        run_id = open_offline_run(cfg.mlflow.experiment_name, uri, None, run_name)
        recorder = _Recorder(offline_uri(), run_id, cfg.mlflow.experiment_name)
    elif recorder is None:
        run_id = (
            MlflowClient(uri).create_run(experiment_id(uri, cfg.mlflow.experiment_name), run_name=run_name).info.run_id
        )
        recorder = _Recorder(uri, run_id, cfg.mlflow.experiment_name)
    recorder.configured_uri = uri
    with _open(recorder):
        set_tags(
            {"task": cfg.data.name, "model": cfg.model.name, "seed": cfg.seed, CPU_TAG: cpu_model(), **lineage_tags()}
        )
        yield recorder.remote_run_id or recorder.run_id
    run_file = {"run_id": recorder.remote_run_id or recorder.run_id, "experiment_name": cfg.mlflow.experiment_name}
    if recorder.offline:
        run_file["offline_run_id"] = recorder.run_id
    stage.write_json(stage.MLFLOW_RUN_FILE, run_file)


def current_run() -> dict:
    """Where the open pipeline run records, for continuing it after a crash (start_pipeline_run's
    `resume`)."""
    return {
        "configured_uri": _recorder.configured_uri,
        "uri": _recorder.uri,
        "run_id": _recorder.run_id,
        "remote_run_id": _recorder.remote_run_id,
        "experiment_name": _recorder.experiment_name,
    }


def _continued(resume: dict, uri: str, experiment_name: str, problem: str | None) -> _Recorder | None:
    """A recorder on the run of a killed training, if it was recorded for the same store and
    experiment and still exists; None otherwise."""
    if resume.get("configured_uri") != uri or resume.get("experiment_name") != experiment_name:
        return None
    recorder = _Recorder(resume["uri"], resume["run_id"], experiment_name, resume.get("remote_run_id"))
    if problem and not recorder.offline:
        recorder.go_offline(problem)
    try:
        recorder(lambda client, run_id: client.update_run(run_id, status="RUNNING"))
    except MlflowException:
        return None  # the store no longer has it
    return recorder


@contextmanager
def resume_pipeline_run(cfg: Config) -> Iterator[str]:
    """Reopen the run that `train` started (reports/mlflow_run.json); yields the run id to cite.

    A run that `train` recorded offline stays offline; a server that is down now gets an
    offline continuation of its run: the stage never fails for the tracking server."""
    run_file = stage.read_json(stage.MLFLOW_RUN_FILE)
    name = run_file.get("experiment_name", cfg.mlflow.experiment_name)
    if run_file.get("offline_run_id"):
        recorder = _Recorder(offline_uri(), run_file["offline_run_id"], name, remote_run_id=run_file["run_id"])
    else:
        recorder = _Recorder(tracking_uri(cfg.mlflow), run_file["run_id"], name)
        problem = server_problem(recorder.uri)
        if problem:
            recorder.go_offline(problem)
    with _open(recorder):
        yield run_file["run_id"]


def cpuinfo_field(key: str) -> str:
    """The first value of `key` in /proc/cpuinfo ("model name", "flags"); "" where there is none."""
    try:
        with open("/proc/cpuinfo") as handle:
            return next((line.split(":", 1)[1].strip() for line in handle if line.split(":", 1)[0].strip() == key), "")
    except OSError:
        return ""


def cpu_model() -> str:
    """The CPU's model name (the machine type where /proc/cpuinfo has none): training seconds
    compare only between runs on the same CPU."""
    return cpuinfo_field("model name") or platform.machine()


def lineage_tags() -> dict[str, str]:
    """What leads a run back to its code and `dvc exp apply`: the DVC experiment name and
    baseline (set by DVC during `dvc exp run`) and the git commit of the working copy."""
    tags = {}
    for variable, tag in (("DVC_EXP_NAME", "dvc.experiment"), ("DVC_EXP_BASELINE_REV", "dvc.baseline_rev")):
        if os.environ.get(variable):
            tags[tag] = os.environ[variable]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        tags["git.commit"] = tags["mlflow.source.git.commit"] = commit
    except (OSError, subprocess.SubprocessError):
        pass  # not a git working copy
    return tags


def _log_dataset_input(client: MlflowClient, run_id: str, dataset) -> None:
    """client.log_inputs for one DatasetInput. MLflow looks the dataset up, then inserts it if
    missing: when a parallel run (`dvc queue start -j 2`) inserts the same one in between, the
    insert breaks the store's unique key and rolls back, and a second call finds the dataset and
    links it to this run."""
    from mlflow.exceptions import MlflowException

    try:
        client.log_inputs(run_id, datasets=[dataset])
    except MlflowException as err:
        if "unique constraint" not in str(err).lower():
            raise
        client.log_inputs(run_id, datasets=[dataset])


def log_prepared_data(split_files: list[Path], name: str) -> str:
    """The prepared splits as the run's training dataset input, identified by the sha256 of
    their files (the tag `data.digest`): runs on the same data share it. Returns the digest."""
    from mlflow.data.sources import LocalArtifactDatasetSource
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    digest = hashlib.sha256()
    for path in split_files:
        digest.update(Path(path).read_bytes())
    hexdigest = digest.hexdigest()
    source = LocalArtifactDatasetSource(str(stage.PREPARED_DIR.resolve()))
    dataset = DatasetInput(
        Dataset(name=name, digest=hexdigest[:16], source_type="local", source=source.to_json()),
        tags=[InputTag(MLFLOW_DATASET_CONTEXT, "training")],
    )
    _record(lambda client, run_id: _log_dataset_input(client, run_id, dataset))
    set_tags({"data.digest": hexdigest})
    return hexdigest


def set_tags(tags: dict[str, Any]) -> None:
    _record(lambda client, run_id: [client.set_tag(run_id, k, str(v)) for k, v in tags.items()])


CANDIDATE, CHAMPION = "candidate", "champion"


def register_candidate(run_id: str, name: str) -> str | None:
    """Register the run's logged ONNX model as a new version of `name` and point the alias
    `candidate` at it; returns the version, or None when the run is offline (then
    `python -m pipeline.tracking.sync` registers it on the server)."""
    if _recorder is not None and _recorder.offline:
        set_tags({SYNC_REGISTER: name})
        return None
    return _record(lambda client, _: register_model_of_run(_recorder.uri, run_id, name))


def evaluated_runs(uri: str, experiments: list[str] | None = None) -> list:
    """The finished runs of the store `uri` that reached the evaluate stage, in the named
    experiments (default: all)."""
    mlflow.set_tracking_uri(uri)
    if experiments:
        found = [mlflow.get_experiment_by_name(name) for name in experiments]
        missing = [n for n, e in zip(experiments, found) if e is None]
        if missing:
            raise SystemExit(f"error: {uri}: no experiment named {missing}")
        ids = [e.experiment_id for e in found]
    else:
        ids = [e.experiment_id for e in mlflow.search_experiments()]
    if not ids:
        return []
    runs = mlflow.search_runs(ids, filter_string="attributes.status = 'FINISHED'", output_format="list")
    return [run for run in runs if "attention/entropy" in run.data.metrics]


def latest_onnx_model(client: MlflowClient, run):
    """The newest `onnx_model` that `run` logged (an MLflow LoggedModel), or None."""
    logged = client.search_logged_models(
        experiment_ids=[run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'"
    )
    onnx_models = [m for m in logged if m.name == "onnx_model"]
    return max(onnx_models, key=lambda m: m.creation_timestamp) if onnx_models else None


def logged_onnx_file(uri: str, run) -> Path | None:
    """The model.onnx that `run` of the store `uri` logged, downloaded; None if it logged none."""
    latest = latest_onnx_model(MlflowClient(uri), run)
    if latest is None:
        return None
    return (
        Path(mlflow.artifacts.download_artifacts(artifact_uri=latest.artifact_location, tracking_uri=uri))
        / "model.onnx"
    )


def register_model_of_run(uri: str, run_id: str, name: str) -> str:
    """Register the newest `onnx_model` logged by run `run_id` in the store `uri` as a new
    version of `name`, alias `candidate`; returns the version."""
    client = MlflowClient(uri)
    latest = latest_onnx_model(client, client.get_run(run_id))
    if latest is None:
        raise stage.StageFailed(f"MLflow run {run_id} has no logged onnx_model; rerun `dvc repro export`")
    with _store_lock(uri), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # parallel runs must not race to create the model
        with contextlib.suppress(MlflowException):  # it exists
            client.create_registered_model(name)
        version = client.create_model_version(
            name, f"models:/{latest.model_id}", run_id=run_id, model_id=latest.model_id
        ).version
        client.set_registered_model_alias(name, CANDIDATE, version)
        client.set_model_version_tag(name, version, "run_id", run_id)
    return str(version)


def log_params(params: dict[str, Any]) -> None:
    """Log params; a value that differs from one already logged (a stage rerun with new params
    on the same run) is kept as the tag `param.<key>`, since MLflow params are immutable."""
    _record(lambda client, run_id: merge_params(client, run_id, params))


def merge_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    logged = client.get_run(run_id).data.params
    fresh = [Param(k, str(v)) for k, v in params.items() if k not in logged]
    changed = {k: v for k, v in params.items() if k in logged and logged[k] != str(v)}
    if fresh:
        client.log_batch(run_id, params=fresh)
    if changed:
        warnings.warn(f"params changed since this run logged them, kept as tags: {sorted(changed)}", stacklevel=2)
        for key, value in changed.items():
            client.set_tag(run_id, f"param.{key}", str(value))


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
    _record(lambda client, run_id: client.log_batch(run_id, metrics=batch))


def log_labels(labels: list[str]) -> None:
    """The class labels (index i is class i): labels.json and the tag `labels`."""
    _record(lambda client, run_id: client.log_dict(run_id, {"labels": labels}, "labels.json"))
    set_tags({"labels": ",".join(labels)})


def log_artifacts(paths: list[Path], artifact_path: str | None = None) -> None:
    for path in paths:
        _record(lambda client, run_id, path=path: client.log_artifact(run_id, str(path), artifact_path=artifact_path))


def log_onnx_model(onnx_model, input_example, outputs: dict) -> None:
    """The ONNX model as an MLflow model (flavor onnx), with its signature and an input example.
    Its execution providers are the CUDA and CPU ones this onnxruntime has, so that MLflow's check
    of the input example asks for no provider the machine lacks."""
    import mlflow.onnx
    import onnx
    import onnxruntime
    from mlflow.models import Model, infer_signature

    def log(client, run_id):
        # Model.log creates the logged model in the fluent API's store and experiment
        mlflow.set_tracking_uri(_recorder.uri)
        mlflow.set_experiment(experiment_id=client.get_run(run_id).info.experiment_id)
        Model.log(
            artifact_path=None,
            name="onnx_model",
            flavor=mlflow.onnx,
            run_id=run_id,
            onnx_model=onnx_model,
            signature=infer_signature(input_example, outputs),
            input_example=input_example,
            pip_requirements=[f"onnx=={onnx.__version__}", f"onnxruntime=={onnxruntime.__version__}"],
            onnx_execution_providers=[
                p
                for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                if p in onnxruntime.get_available_providers()
            ],
        )

    _record(log)
