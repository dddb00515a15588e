"""Evaluate finished real-data study runs again where they predate the logit AOPCR, without
training them again: the faithfulness/* metrics of each run's logged ONNX model (as `evaluate`
measures them, with today's evaluate settings), the uniform-attention ablation of its logged
Keras model, and the AOPCR of its attention, contribution and occlusion (a model logged before
the `logit` and `contribution` outputs is rebuilt from its config with its logged weights), on
the splits its config prepares; logged to the same MLflow run.

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
from pipeline.experiments import study
from pipeline.experiments.stability import METRIC as SEED_METRIC
from pipeline.tracking import DEFAULT_STORE, logged_onnx_file, repository_root

MARKER = "faithfulness/aopcr_attention"  # a run without it predates the logit AOPCR


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


def logged_keras_model(tracking_uri: str, run):
    """The Keras model `run` logged, or None where it logged none."""
    import mlflow

    try:
        folder = mlflow.artifacts.download_artifacts(
            run_id=run.info.run_id, artifact_path="keras_model", tracking_uri=tracking_uri
        )
    except Exception:
        return None
    from pipeline.models import load_model  # TensorFlow: only where there is a Keras model

    return load_model(Path(folder) / "model.keras")


def uniform_prediction(keras_model, x, opset: int):
    """The predictions on x of the uniform-attention ablation of `keras_model` (converted to ONNX
    as `export` does)."""
    from pipeline.models import uniform_attention_copy
    from pipeline.onnx.conversion import to_onnx
    from pipeline.serving.inference import OnnxModel

    return OnnxModel(to_onnx(uniform_attention_copy(keras_model), opset).SerializeToString()).run(x)["prediction"]


def explainable(logged, keras_model, cfg, meta: dict, x):
    """An ONNX model with the `logit` and `contribution` outputs of today's contract for the run's
    weights: its logged ONNX model if it has them, else today's model of its config with the
    logged Keras model's weights (the same layers and weights, the extra outputs added), if it
    predicts x as the logged ONNX model does; None where neither is possible."""
    from pipeline.core.contract import LOGIT_NAME

    if LOGIT_NAME in logged.output_names:
        return logged
    if keras_model is None:
        return None
    import numpy as np

    from pipeline.models import TaskSpec, build_model
    from pipeline.onnx.conversion import to_onnx
    from pipeline.serving.inference import OnnxModel

    model = build_model(cfg.model, TaskSpec.from_meta(meta))
    if [w.shape for w in model.weights] != [w.shape for w in keras_model.weights]:
        return None
    model.set_weights(keras_model.get_weights())
    rebuilt = OnnxModel(to_onnx(model, cfg.export.opset).SerializeToString())
    same = np.allclose(rebuilt.run(x)["prediction"], logged.run(x)["prediction"], atol=1e-5)
    return rebuilt if same else None


def reevaluate(tracking_uri: str, combination: study.Combination, run) -> dict[str, float] | str:
    """The faithfulness/* metrics of `run` (and its uniform ablation), or why there are none."""
    from pipeline.core.explanations import measure_explanations
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
    keras_model = logged_keras_model(tracking_uri, run)
    if keras_model is not None:
        uniform = uniform_prediction(keras_model, test.x, cfg.export.opset)
        metrics.update(uniform_ablation(scores, TASK_METRICS[meta["task_type"]](uniform, test.y)))
    explained = explainable(model, keras_model, cfg, meta, test.x)
    if explained is not None:
        metrics.update(measure_explanations(cfg, meta, explained, test))
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
        shown = ("deletion_aopc_gain", "uniform_drop", "aopcr_attention", "aopcr_contribution")
        print(
            f"{combination.dataset} {combination.label} seed {combination.seed}: "
            + ", ".join(f"{k}={result[f'faithfulness/{k}']:.3f}" for k in shown if f"faithfulness/{k}" in result)
        )


if __name__ == "__main__":
    run_command(main)
