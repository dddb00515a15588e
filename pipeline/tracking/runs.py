"""The pipeline run: `train` opens it (start_pipeline_run), `export` and `evaluate` reopen it
(resume_pipeline_run), and every record of a stage goes to it through its Recorder."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

import pipeline.tracking.store as store
from pipeline.core import stage
from pipeline.core.config import Config
from pipeline.core.digests import files_digest
from pipeline.tracking.host import CPU_TAG, cpu_model, lineage_tags
from pipeline.tracking.recorder import SYNC_REGISTER, Recorder, open_offline_run
from pipeline.tracking.registry import register_model_of_run
from pipeline.tracking.store import check_reachable, experiment_id, offline_uri, server_problem, tracking_uri

_current: Recorder | None = None  # the recorder of the run this process has open


def _record(action):
    if _current is None:
        raise RuntimeError("no pipeline run is open: use start_pipeline_run or resume_pipeline_run")
    return _current(action)


@contextmanager
def _open(recorder: Recorder) -> Iterator[Recorder]:
    """Make `recorder` the current one; end its run FINISHED (or FAILED on an error)."""
    global _current
    _current = recorder
    mlflow.set_tracking_uri(recorder.uri)
    status = "FAILED"
    try:
        yield recorder
        status = "FINISHED"
    finally:
        try:
            recorder(lambda client, run_id: client.set_terminated(run_id, status))
        finally:
            _current = None


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
        recorder = Recorder(offline_uri(), run_id, cfg.mlflow.experiment_name)
    elif recorder is None:
        run_id = (
            store.client(uri).create_run(experiment_id(uri, cfg.mlflow.experiment_name), run_name=run_name).info.run_id
        )
        recorder = Recorder(uri, run_id, cfg.mlflow.experiment_name)
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
        "configured_uri": _current.configured_uri,
        "uri": _current.uri,
        "run_id": _current.run_id,
        "remote_run_id": _current.remote_run_id,
        "experiment_name": _current.experiment_name,
    }


def _continued(resume: dict, uri: str, experiment_name: str, problem: str | None) -> Recorder | None:
    """A recorder on the run of a killed training, if it was recorded for the same store and
    experiment and still exists; None otherwise."""
    if resume.get("configured_uri") != uri or resume.get("experiment_name") != experiment_name:
        return None
    recorder = Recorder(resume["uri"], resume["run_id"], experiment_name, resume.get("remote_run_id"))
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
        recorder = Recorder(offline_uri(), run_file["offline_run_id"], name, remote_run_id=run_file["run_id"])
    else:
        recorder = Recorder(tracking_uri(cfg.mlflow), run_file["run_id"], name)
        problem = server_problem(recorder.uri)
        if problem:
            recorder.go_offline(problem)
    with _open(recorder):
        yield run_file["run_id"]


def log_dataset_input(client: MlflowClient, run_id: str, dataset) -> None:
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

    hexdigest = files_digest(split_files)
    source = LocalArtifactDatasetSource(str(stage.PREPARED_DIR.resolve()))
    dataset = DatasetInput(
        Dataset(name=name, digest=hexdigest[:16], source_type="local", source=source.to_json()),
        tags=[InputTag(MLFLOW_DATASET_CONTEXT, "training")],
    )
    _record(lambda client, run_id: log_dataset_input(client, run_id, dataset))
    set_tags({"data.digest": hexdigest})
    return hexdigest


def set_tags(tags: dict[str, Any]) -> None:
    _record(lambda client, run_id: [client.set_tag(run_id, k, str(v)) for k, v in tags.items()])


def register_candidate(run_id: str, name: str) -> str | None:
    """Register the run's logged ONNX model as a new version of `name` and point the alias
    `candidate` at it; returns the version, or None when the run is offline (then
    `python -m pipeline.tracking.sync` registers it on the server)."""
    if _current is not None and _current.offline:
        set_tags({SYNC_REGISTER: name})
        return None
    return _record(lambda client, _: register_model_of_run(_current.uri, run_id, name))


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
        mlflow.set_tracking_uri(_current.uri)
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
