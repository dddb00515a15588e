"""Stage `evaluate`: score the exported ONNX model on the test split with ONNX Runtime only.

    python -m pipeline.stages.evaluate       # reads params.yaml: mlflow

Outputs: reports/metrics.json (DVC metrics, the faithfulness/* metrics among them),
reports/attention.csv (DVC plot: mean attention per position), reports/attention.png (heatmap),
reports/predictions.csv (actual and predicted class labels, or values for regression, per test
sample: the DVC confusion-matrix plot), reports/attention_series.png and
reports/contribution_series.png (the attention, and the predicted class's signed contribution,
drawn on the series, per class), reports/deletion.csv and reports/deletion.png (the
deletion and sufficiency curves). Logs the same metrics and files to the pipeline's MLflow run.
No TensorFlow import.
"""

from __future__ import annotations

import csv

import numpy as np

from pipeline import tracking
from pipeline.core import stage
from pipeline.core.config import load_config
from pipeline.core.contract import valid_positions
from pipeline.core.errors import run_command
from pipeline.core.explanations import measure_explanations, predicted_contribution
from pipeline.core.faithfulness import Task, measure_faithfulness, uniform_ablation
from pipeline.core.metrics import TASK_METRICS, attention_metrics, predicted_classes
from pipeline.data import sequence_lengths
from pipeline.data.splits import load_split
from pipeline.serving.inference import OnnxModel

HEATMAP_ROWS = 40
# The figures the stage's summary line shows, where the task has them (all are in metrics.json)
HEADLINE_METRICS = (
    "test/accuracy",
    "test/mae",
    "attention/argmax_hit",
    "faithfulness/deletion_aopc_gain",
    "faithfulness/uniform_drop",
    "faithfulness/aopcr_attention",
    "faithfulness/aopcr_contribution",
)


def write_attention_csv(attention: np.ndarray, targets: list[int], path=stage.ATTENTION_CSV) -> None:
    """One row per position: its mean attention over the test set and whether it is a target."""
    mean = attention.mean(axis=0)
    with stage.atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["position", "mean_attention", "is_target"])
        for position, weight in enumerate(mean):
            writer.writerow([position, f"{weight:.6f}", int(position in targets)])


def write_predictions_csv(
    task_type: str,
    prediction: np.ndarray,
    y: np.ndarray,
    labels: list[str] | None,
    path=stage.PREDICTIONS_CSV,
) -> None:
    """One row per test sample: actual and predicted class label (value, for regression)."""
    if task_type == "regression":
        actual, predicted = (f"{v:.6g}" for v in y[:, 0]), (f"{v:.6g}" for v in prediction[:, 0])
    else:
        names = np.array(labels or ["0", "1"])
        actual, predicted = names[y[:, 0].astype(np.int64)], names[predicted_classes(task_type, prediction)]
    with stage.atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sample", "actual", "predicted"])
        writer.writerows((i, a, p) for i, (a, p) in enumerate(zip(actual, predicted)))


def plot_attention(
    attention: np.ndarray, targets: list[int], axis_name: str, title: str, path=stage.ATTENTION_PNG
) -> None:
    """Heatmap of the first test samples' attention rows, above the mean weight per position."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = attention[:HEATMAP_ROWS]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    image = top.imshow(rows, aspect="auto", cmap="viridis", interpolation="nearest")
    fig.colorbar(image, ax=[top, bottom], label="attention weight")
    top.set_ylabel("test sample")
    top.set_title(title)
    positions = np.arange(attention.shape[1])
    colors = ["tab:red" if p in targets else "tab:blue" for p in positions]
    bottom.bar(positions, attention.mean(axis=0), color=colors)
    bottom.set_xlabel(f"{axis_name} (red: true position)")
    bottom.set_ylabel("mean weight")
    with stage.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


CURVE_COLUMNS = ("size", "attended", "random", "kept", "attended_drop", "random_drop")


def write_curves_csv(rows: list[dict], path=stage.DELETION_CSV) -> None:
    """One row per curve point (faithfulness.faithfulness_metrics)."""
    with stage.atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, CURVE_COLUMNS)
        writer.writeheader()
        writer.writerows({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()} for row in rows)


def plot_curves(rows: list[dict], score_name: str, title: str, path=stage.DELETION_PNG) -> None:
    """The task score after deleting the top-k attended positions, k random ones, or all but the
    top k, against k."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [row["size"] for row in rows]
    fig, axis = plt.subplots(figsize=(7, 4))
    for key, label in (
        ("attended", "delete top-k attended"),
        ("random", "delete k random"),
        ("kept", "keep only top-k attended"),
    ):
        axis.plot(sizes, [row[key] for row in rows], marker="o", label=label)
    axis.set_xlabel("k (positions; pct: of each sample's valid positions)")
    axis.set_ylabel(f"test {score_name}")
    axis.set_title(title)
    axis.legend()
    with stage.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png", bbox_inches="tight")
    plt.close(fig)


SERIES_GROUPS, SERIES_EXAMPLES = 6, 3


def plot_on_series(
    x: np.ndarray,
    y: np.ndarray,
    weights: np.ndarray | None,
    task_type: str,
    labels: list[str] | None,
    title: str,
    path,
    signed: bool = False,
) -> None:
    """An explanation drawn on the inputs, one row per class (the first SERIES_GROUPS; one row
    for regression): left, the class-mean series (every channel) over the class-mean weights as
    a band; right, the first SERIES_EXAMPLES test samples of the class, each point coloured by
    its weight. x [n, time, channels] or [n, features] (features as positions), y [n, 1],
    weights [n, positions]: the attention, or (`signed`) the predicted class's contribution,
    red for and blue against it; None: a model without that explanation, said in the picture.
    Padded steps are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if weights is None:
        fig, axis = plt.subplots(figsize=(6, 1.2))
        axis.axis("off")
        axis.text(0.5, 0.5, f"{title}: this model exports no contribution", ha="center", va="center")
        with stage.atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=80, format="png")
        plt.close(fig)
        return
    series = x if x.ndim == 3 else x[:, :, None]
    series = np.where(valid_positions(series)[..., None], series, np.nan)
    if task_type == "regression":
        groups = [("all test samples", np.arange(len(y)))]
    else:
        names = labels or ["0", "1"]
        groups = [(f"class {names[c]}", np.flatnonzero(y[:, 0] == c)) for c in np.unique(y[:, 0]).astype(int)]
    groups = [(name, rows) for name, rows in groups if len(rows)][:SERIES_GROUPS]
    fig, axes = plt.subplots(
        len(groups), 1 + SERIES_EXAMPLES, figsize=(4 * (1 + SERIES_EXAMPLES), 2.4 * len(groups)), squeeze=False
    )
    steps = np.arange(series.shape[1])
    for (name, rows), row_axes in zip(groups, axes):
        mean_axis = row_axes[0]
        mean_axis.plot(steps, np.nanmean(series[rows], axis=0), color="black", linewidth=1)
        band = mean_axis.twinx()
        mean_weight = weights[rows].mean(axis=0)
        for part, colour in ((np.maximum(mean_weight, 0), "tab:red"), (np.minimum(mean_weight, 0), "tab:blue")):
            band.fill_between(steps, 0, part, color=colour, alpha=0.3, step="mid")
        if signed:  # zero in the middle: for above, against below
            reach = np.abs(mean_weight).max() or 1
            band.set_ylim(-1.05 * reach, 1.05 * reach)
            band.axhline(0, color="0.6", linewidth=0.5)
        band.set_yticks([])
        mean_axis.set_title(f"{name}: mean of {len(rows)}", fontsize=9)
        for axis, sample in zip(row_axes[1:], rows[:SERIES_EXAMPLES]):
            reach = np.abs(weights[sample]).max() or 1
            colours = {"cmap": "coolwarm", "vmin": -reach, "vmax": reach} if signed else {"vmin": 0, "vmax": reach}
            for channel in range(series.shape[2]):
                axis.plot(steps, series[sample, :, channel], color="0.75", linewidth=0.8)
                axis.scatter(steps, series[sample, :, channel], c=weights[sample], s=6, **colours)
            axis.set_title(f"test sample {sample}", fontsize=9)
        for axis in row_axes[1 + len(rows[:SERIES_EXAMPLES]) :]:
            axis.axis("off")
    legend = (
        "band: mean contribution to the predicted class, red for, blue against; points: its sign and size"
        if signed
        else "red band: mean attention; points: colour = weight"
    )
    fig.suptitle(f"{title} ({legend})")
    fig.tight_layout()
    with stage.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)


def main() -> None:
    cfg = load_config()
    meta = stage.read_json(stage.META_FILE)
    test = load_split("test")
    onnx_model = OnnxModel(stage.ONNX_MODEL)
    outputs = onnx_model.run(test.x)
    export_report = stage.read_json(stage.EXPORT_REPORT)
    lengths = sequence_lengths(test.x) if test.x.ndim == 3 else None
    metrics = {
        **TASK_METRICS[meta["task_type"]](outputs["prediction"], test.y),
        **attention_metrics(outputs["attention"], test.target_positions, lengths),
        "export/parity_max_abs": export_report["export/parity_max_abs"],
    }
    faithfulness, curves = measure_faithfulness(cfg, meta, onnx_model.run, test, load_split("train").x)
    uniform = TASK_METRICS[meta["task_type"]](OnnxModel(stage.UNIFORM_ONNX).run(test.x)["prediction"], test.y)
    metrics.update(faithfulness)
    metrics.update(uniform_ablation(metrics, uniform))
    metrics.update(measure_explanations(cfg, meta, onnx_model, test))
    write_curves_csv(curves)
    plot_curves(
        curves,
        Task(meta["task_type"], test.y).score_name,
        f"{cfg.model.name} on {cfg.data.name}: deletion by attention",
    )
    targets = meta["target_positions"]
    write_attention_csv(outputs["attention"], targets)
    write_predictions_csv(meta["task_type"], outputs["prediction"], test.y, meta.get("labels"))
    plot_attention(
        outputs["attention"],
        targets,
        meta["attention_axis"],
        f"{cfg.model.name} on {cfg.data.name}: attention on the test set",
    )
    title = f"{cfg.model.name} on {cfg.data.name}"
    plot_on_series(
        test.x, test.y, outputs["attention"], meta["task_type"], meta.get("labels"), title, stage.ATTENTION_SERIES_PNG
    )
    plot_on_series(
        test.x,
        test.y,
        predicted_contribution(outputs, meta["task_type"]),
        meta["task_type"],
        meta.get("labels"),
        title,
        stage.CONTRIBUTION_SERIES_PNG,
        signed=True,
    )
    stage.write_json(stage.METRICS_FILE, metrics)
    with tracking.resume_pipeline_run(cfg) as run_id:
        tracking.log_metrics(metrics)
        tracking.log_artifacts(
            [
                stage.METRICS_FILE,
                stage.ATTENTION_CSV,
                stage.ATTENTION_PNG,
                stage.PREDICTIONS_CSV,
                stage.DELETION_CSV,
                stage.DELETION_PNG,
                stage.ATTENTION_SERIES_PNG,
                stage.CONTRIBUTION_SERIES_PNG,
            ],
            artifact_path="reports",
        )
        # export passed every variant's gate, or it would have failed: register the model
        version = tracking.register_candidate(run_id, cfg.mlflow.registered_model)
    headline = ", ".join(f"{k} {metrics[k]:.4f}" for k in HEADLINE_METRICS if k in metrics)
    registered = (
        f"registered {cfg.mlflow.registered_model} version {version} as @{tracking.CANDIDATE}"
        if version is not None
        else f"{cfg.mlflow.registered_model} to be registered by `python -m pipeline.tracking.sync` "
        "(run recorded offline)"
    )
    print(f"evaluated: {headline} ({len(metrics)} metrics in {stage.METRICS_FILE}); {registered}")


if __name__ == "__main__":
    run_command(main)
