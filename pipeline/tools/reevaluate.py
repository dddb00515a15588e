"""Evaluate finished real-data study runs again where they predate the faithfulness metrics, without
training them again: the faithfulness/* metrics of each run's logged ONNX model (as `evaluate`
measures them, with today's evaluate settings) and the uniform-attention ablation of its logged
Keras model, on the splits its config prepares; logged to the same MLflow run.

    python -m pipeline.tools.reevaluate                     # every study run that lacks them
    python -m pipeline.tools.reevaluate --all --models conv_gap   # again, after a change to the metrics
    python -m pipeline.tools.compare --out docs/results     # then the tables show them

A run is re-evaluated only if its logged ONNX model scores the run's logged test accuracy on the
splits prepared today (else its data changed since, and the run is reported and left alone).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from pipeline.core.errors import run_command
from pipeline.tools import study
from pipeline.tools.stability import METRIC as SEED_METRIC
from pipeline.tracking import DEFAULT_STORE, logged_onnx_file, repository_root

MARKER = "faithfulness/deletion_aopc_gain"  # a run without it predates the faithfulness metrics


def lacking(
    tracking_uri: str,
    plan: list[study.Combination],
    everything: bool = False,
) -> list[tuple[study.Combination, object]]:
    """(combination, MLflow run) of each finished run of `plan` without the faithfulness metrics
    (`everything`: each finished run of `plan`)."""
    runs = {run.info.run_id: run for run in study.evaluated_runs(tracking_uri)}
    matched = study.matching_runs(list(runs.values()), plan)
    return [
        (combination, runs[record.run_id])
        for combination, record in matched.items()
        if everything or MARKER not in runs[record.run_id].data.metrics
    ]


def uniform_prediction(tracking_uri: str, run, x, opset: int):
    """The predictions on x of the uniform-attention ablation of the Keras model `run` logged
    (converted to ONNX as `export` does), or None where the run logged no Keras model."""
    import mlflow

    try:
        folder = mlflow.artifacts.download_artifacts(
            run_id=run.info.run_id, artifact_path="keras_model", tracking_uri=tracking_uri
        )
    except Exception:
        return None
    from pipeline.models import load_model, uniform_attention_copy
    from pipeline.onnx.conversion import to_onnx  # TensorFlow: only where there is a Keras model
    from pipeline.serving.inference import OnnxModel

    model = load_model(Path(folder) / "model.keras")
    return OnnxModel(to_onnx(uniform_attention_copy(model), opset).SerializeToString()).run(x)["prediction"]


def reevaluate(tracking_uri: str, combination: study.Combination, run) -> dict[str, float] | str:
    """The faithfulness/* metrics of `run` (and its uniform ablation), or why there are none."""
    from pipeline.core.faithfulness import measure_faithfulness, uniform_ablation
    from pipeline.core.metrics import TASK_METRICS
    from pipeline.data.splits import prepared_for
    from pipeline.serving.inference import OnnxModel

    cfg, splits, meta = prepared_for(combination.overrides)
    path = logged_onnx_file(tracking_uri, run)
    if path is None:
        return "no logged ONNX model"
    model, test = OnnxModel(path), splits["test"]
    scores = TASK_METRICS[meta["task_type"]](model.run(test.x)["prediction"], test.y)
    logged = run.data.metrics["test/accuracy"]
    if not math.isclose(scores["test/accuracy"], logged, abs_tol=1e-9):
        return f"its model scores {scores['test/accuracy']:.4f} on today's test split, it logged {logged:.4f}"
    metrics, _ = measure_faithfulness(cfg, meta, model.run, test, splits["train"].x)
    uniform = uniform_prediction(tracking_uri, run, test.x, cfg.export.opset)
    if uniform is not None:
        metrics.update(uniform_ablation(scores, TASK_METRICS[meta["task_type"]](uniform, test.y)))
    return metrics


def main(argv: list[str] | None = None) -> None:
    import mlflow

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", default=f"sqlite:///{repository_root() / DEFAULT_STORE}")
    parser.add_argument("--datasets", nargs="+", default=study.DATASETS)
    parser.add_argument("--models", nargs="+", default=study.MODELS)
    parser.add_argument(
        "--all",
        action="store_true",
        help="the runs that have the metrics too (after a change to how they are measured)",
    )
    args = parser.parse_args(argv)
    todo = lacking(args.tracking_uri, study.combinations(args.datasets, args.models), args.all)
    print(f"{len(todo)} runs to evaluate again")
    client = mlflow.MlflowClient(args.tracking_uri)
    for combination, run in sorted(todo, key=lambda item: study.training_size(item[0].dataset)):
        result = reevaluate(args.tracking_uri, combination, run)
        if isinstance(result, str):
            print(f"left alone: {combination.label} seed {combination.seed} ({run.info.run_id}): {result}")
            continue
        # a metric measured before but undefined now (constant attention) must not keep its old value
        stale = {
            k: float("nan")
            for k in run.data.metrics
            if k.startswith("faithfulness/") and k not in result and k != SEED_METRIC
        }
        for name, value in {**stale, **result}.items():
            client.log_metric(run.info.run_id, name, value)
        uniform = result.get("faithfulness/uniform_drop")
        print(
            f"{combination.dataset} {combination.label} seed {combination.seed}: "
            f"aopc_gain={result['faithfulness/deletion_aopc_gain']:.3f}"
            + ("" if uniform is None else f", uniform_drop={uniform:.3f}")
        )


if __name__ == "__main__":
    run_command(main)
