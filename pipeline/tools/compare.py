"""Compare runs from an MLflow store: one row per run, as markdown and CSV.

    python -m pipeline.tools.compare                          # the repository's store, every experiment
    python -m pipeline.tools.compare --experiment attention-find_max --out docs/results
    python -m pipeline.tools.compare --tracking-uri http://127.0.0.1:5000

Synthetic tasks: one row per model and seed at the task's own size (its latest run) with the task
metric (accuracy or MAE), the attention and faithfulness metrics, the parameter count, the epochs
trained, the training time and the run id. UCR/UEA data sets: the study of
pipeline/experiments/study.py, each model's accuracy as mean ± std over seeds beside the published FCN, the
training times, mean ranks with Friedman and Wilcoxon-Holm tests, and a critical-difference
diagram (OUT_cd.png). With --out, the real-data runs are also written to OUT_runs.csv, the
ledger pipeline.tools.study reads (runs in it are not trained again), and synthetic rows of an earlier
OUT.csv that the store lacks are kept. No TensorFlow import.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import sys
from pathlib import Path

import mlflow
import numpy as np

from pipeline.core.errors import run_command
from pipeline.experiments import stability, study
from pipeline.tracking import DEFAULT_STORE, evaluated_runs, repository_root

COLUMNS = (
    ("task", "tags.task"),
    ("model", "tags.model"),
    ("seed", "params.seed"),
    ("test/accuracy", "metrics.test/accuracy"),
    ("test/mae", "metrics.test/mae"),
    ("attention/mass_at_target", "metrics.attention/mass_at_target"),
    ("attention/argmax_hit", "metrics.attention/argmax_hit"),
    ("attention/lift", "metrics.attention/lift"),
    ("attention/entropy", "metrics.attention/entropy"),
    ("attention/topk_precision", "metrics.attention/topk_precision"),
    ("faithfulness/deletion_aopc_gain", "metrics.faithfulness/deletion_aopc_gain"),
    ("faithfulness/uniform_drop", "metrics.faithfulness/uniform_drop"),
    ("ndcg attention", "metrics.faithfulness/ndcg_attention"),
    ("ndcg contribution", "metrics.faithfulness/ndcg_contribution"),
    ("ndcg occlusion", "metrics.faithfulness/ndcg_occlusion"),
    ("contribution mass", "metrics.faithfulness/contribution_mass_at_target"),
    ("params", "metrics.train/param_count"),
    ("epochs", "metrics.train/epochs"),
    ("train seconds", "metrics.train/seconds"),
    ("run", "run_id"),
)


def accuracy_table(rows: list[dict], min_seeds: int = 3):
    """pandas DataFrame [data set x model] of mean accuracies in %, rounded to 4 decimals (the
    same count of correct series is a tie, whatever float rounding the metric went through), only
    data sets where every model has at least `min_seeds` seeds (the statistics compare complete
    rows only)."""
    import pandas as pd

    frame = pd.DataFrame([r for r in rows if len(r["seeds"].split(",")) >= min_seeds])
    if frame.empty:
        return frame
    table = frame.pivot(index="data set", columns="model", values="accuracy mean")
    return table.dropna().round(4)


def rank_statistics(table) -> dict:
    """Across data sets (rows of `table`, accuracies, higher is better): each model's mean rank
    (1 = best; ties share), the Friedman test, and pairwise two-sided Wilcoxon signed-rank tests
    with Holm's correction. autorank and scikit-posthocs do the statistics."""
    import scikit_posthocs
    from scipy.stats import friedmanchisquare

    ranks = table.rank(axis=1, ascending=False, method="average")
    friedman = friedmanchisquare(*[table[c] for c in table.columns]) if table.shape[1] > 2 else None
    melted = (
        table.rename_axis("data set").reset_index().melt(id_vars="data set", var_name="model", value_name="accuracy")
    )
    wilcoxon = scikit_posthocs.posthoc_wilcoxon(
        melted,
        val_col="accuracy",
        group_col="model",
        p_adjust="holm",
        zero_method="zsplit",
    )
    return {
        "mean rank": ranks.mean().sort_values().to_dict(),
        "data sets": int(table.shape[0]),
        "friedman p": None if friedman is None else float(friedman.pvalue),
        "wilcoxon holm p": {a: {b: float(wilcoxon.loc[a, b]) for b in table.columns if b != a} for a in table.columns},
    }


def critical_difference_diagram(table, path: Path) -> None:
    """The critical-difference diagram (Demšar 2006) of `table`, drawn by autorank with the
    Nemenyi test at alpha 0.05, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from autorank import autorank, plot_stats

    with contextlib.redirect_stdout(io.StringIO()):  # autorank prints its table when a mode is forced
        result = autorank(table, alpha=0.05, verbose=False, force_mode="nonparametric", order="descending")
    axes = plot_stats(result, allow_insignificant=True)
    axes.figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(axes.figure)


def default_data_params(task: str) -> dict[str, str] | None:
    """The data.* MLflow params of a run of `task` at the size conf/data/<task>.yaml sets (None
    for a data set without such a file)."""
    from pipeline.core.config import CONF_DIR, compose_defaults, flatten

    if not (CONF_DIR / "data" / f"{task}.yaml").exists():
        return None
    data = compose_defaults(overrides=[f"data={task}"])["data"]
    return {k: str(v) for k, v in flatten(data, "data.").items()}


def comparison_rows(tracking_uri: str, experiments: list[str] | None = None) -> list[dict]:
    """One dict per model and seed of each synthetic task with the COLUMNS, from its latest finished
    run on the task's own data config (the size sweep, pipeline/experiments/sweep.py, has its own table);
    best attention/argmax_hit first per task."""
    latest: dict[tuple, object] = {}
    defaults: dict[str, dict | None] = {}
    for run in evaluated_runs(tracking_uri, experiments):
        params = run.data.params
        if params.get("data.source"):  # real data: see ucr_rows
            continue
        task = run.data.tags.get("task", "")
        if task not in defaults:
            defaults[task] = default_data_params(task)
        expected = defaults[task]
        if expected is not None and any(params.get(k, v) != v for k, v in expected.items()):
            continue  # another size or planted position
        key = (task, run.data.tags.get("model"), params.get("seed"))
        if key not in latest or run.info.start_time > latest[key].info.start_time:
            latest[key] = run
    rows = []
    for run in latest.values():
        flat = {
            "run_id": run.info.run_id,
            **{f"params.{k}": v for k, v in run.data.params.items()},
            **{f"tags.{k}": v for k, v in run.data.tags.items()},
            **{f"metrics.{k}": v for k, v in run.data.metrics.items()},
        }
        rows.append({column: flat.get(source) for column, source in COLUMNS})
    return sorted(rows, key=lambda r: (r["task"] or "", -(r["attention/argmax_hit"] or 0)))


def with_earlier_rows(rows: list[dict], earlier_csv: Path) -> list[dict]:
    """`rows` and the synthetic rows of an earlier OUT.csv for the (task, model, seed) runs that
    the store does not hold: a table rebuilt from a fresh store, or from one that has only a
    default run since (seed 42 of `make repro`), keeps what it cannot remake."""
    if not earlier_csv.exists():
        return rows
    held = {(r["task"], r["model"], str(r["seed"] or "")) for r in rows}
    with open(earlier_csv, newline="") as handle:
        earlier = [
            r
            for r in csv.DictReader(handle)
            if r["table"] == "synthetic" and (r["task"], r["model"], r["seed"]) not in held
        ]
    kept = [
        {
            column: _number(row.get(column) or "") if source.startswith("metrics.") else row.get(column)
            for column, source in COLUMNS
        }
        for row in earlier
    ]  # a column added since is empty
    return sorted(rows + kept, key=lambda r: (r["task"] or "", -(r["attention/argmax_hit"] or 0)))


def _number(text: str) -> float | None:
    """A metric's CSV cell back as it was: None when empty."""
    return None if text == "" else float(text)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.0f}" if value.is_integer() and abs(value) >= 100 else f"{value:.4g}"
    return str(value)


def to_markdown(rows: list[dict], names: list[str] | None = None) -> str:
    names = names or [c for c, _ in COLUMNS]
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    lines += ["| " + " | ".join(_cell(row[n]).replace("|", "\\|") for n in names) + " |" for row in rows]
    return "\n".join(lines) + "\n"


PLANTED_COLUMNS = (
    "test/accuracy",
    "test/mae",
    "ndcg attention",
    "ndcg contribution",
    "ndcg occlusion",
    "contribution mass",
)


def planted_markdown(rows: list[dict]) -> str:
    """Per synthetic task and model with an NDCG@n: each of PLANTED_COLUMNS as mean ± sample std
    over the seeds that have it (their number in brackets); '' when no model has one."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["task"], row["model"]), []).append(row)
    lines = []
    for (task, model), group in sorted(groups.items()):
        if all(row["ndcg attention"] is None for row in group):
            continue
        cells = []
        for column in PLANTED_COLUMNS:
            values = [row[column] for row in group if row[column] is not None]
            spread = f" ± {np.std(values, ddof=1):.3f}" if len(values) > 1 else ""
            cells.append(f"{np.mean(values):.3f}{spread} ({len(values)})" if values else "–")
        lines.append(f"| {task} | {model} | " + " | ".join(cells) + " |")
    if not lines:
        return ""
    header = "| task | model | " + " | ".join(PLANTED_COLUMNS) + " |\n|" + "---|" * (len(PLANTED_COLUMNS) + 2)
    return (
        "### Explanations on the planted tasks\n\nNDCG@n of each explanation against the n true positions "
        "(n = their number; 1: the top n steps are the true ones), and the share of the predicted class's "
        "positive contribution that lies on them, mean ± sample std over seeds (their number in brackets), "
        "at each task's own size.\n\n" + header + "\n" + "\n".join(lines) + "\n"
    )


def write_csv(rows: list[dict], real_rows: list[dict], path: Path, selection_rows: list[dict] = ()) -> None:
    """Every table in one CSV: a `table` column says which (synthetic; real: one row per data set
    and model, accuracy mean and std over seeds in %; selection: the same over inner folds)."""
    names = ["table", *[c for c, _ in COLUMNS], *REAL_COLUMNS]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=names, restval="", extrasaction="ignore")
        writer.writeheader()
        writer.writerows({"table": "synthetic", **row} for row in rows)
        writer.writerows({"table": "real", "task": row["data set"], **row} for row in real_rows)
        writer.writerows({"table": "selection", "task": row["data set"], **row} for row in selection_rows)


REAL_COLUMNS = (
    "data set",
    "model",
    "seeds",
    "accuracy mean",
    "accuracy std",
    "train seconds mean",
    "train seconds max",
    "train cpus",
    *(f"{c} {statistic}" for c in study.FAITHFULNESS_COLUMNS.values() for statistic in ("mean", "std")),
    "FCN",
    "goal",
    "command",
    "runs",
)


def _mean_std(row: dict | None) -> str:
    if row is None:
        return "–"
    return f"{row['accuracy mean']:.2f} ± {row['accuracy std']:.2f} ({len(row['seeds'].split(','))})"


def real_data_markdown(real_rows: list[dict], statistics: dict | None, diagram: str | None) -> str:
    """The real-data section: per data set, each model's accuracy mean ± std (seeds) beside
    FCN and the goal; then training times; then the rank statistics and the diagram."""
    models = [m for m in study.MODELS if any(r["model"] == m for r in real_rows)]
    models += sorted({r["model"] for r in real_rows} - set(models))
    by_cell = {(r["data set"], r["model"]): r for r in real_rows}
    datasets = list(dict.fromkeys(r["data set"] for r in real_rows))
    lines = [
        "Test accuracy (%) as mean ± sample std over seeds (the number of seeds in brackets). Each "
        "seed of each cell is one DVC experiment logged to MLflow, `dvc exp run -S experiment=ucr "
        "-S data.name=<data set> -S model=<model> -S seed=<seed>`; the CSV lists the run ids. "
        "FCN: Fawaz et al. 2019 (dl-4-tsc). goal: for the attention model's mean.",
        "",
        "| data set | " + " | ".join(models) + " | FCN | goal | goal met |",
        "|---|" + "---|" * (len(models) + 3),
    ]
    for name in datasets:
        reference = study.REFERENCES.get(name, {})
        attention = by_cell.get((name, "conv_attention"))
        goal = reference.get("goal")
        met = "" if goal is None or attention is None else ("yes" if attention["accuracy mean"] >= goal else "no")
        fcn = reference.get("FCN")
        lines.append(
            f"| {name} | "
            + " | ".join(_mean_std(by_cell.get((name, m))) for m in models)
            + f" | {'' if fcn is None else fcn} | {'' if goal is None else f'≥ {goal:g}'} | {met} |"
        )
    cpus = list(dict.fromkeys(r["train cpus"] for r in real_rows))  # [n]: the CPUs of a cell's runs
    lines += [
        "",
        "Training seconds per run (mean / max over seeds; 2 CPU cores; [n]: the CPU, below):",
        "",
        "| data set | " + " | ".join(models) + " |",
        "|---|" + "---|" * len(models),
    ]
    for name in datasets:
        cells = [by_cell.get((name, m)) for m in models]
        times = [
            "–"
            if c is None
            else f"{c['train seconds mean']:.0f} / {c['train seconds max']:.0f} [{cpus.index(c['train cpus']) + 1}]"
            for c in cells
        ]
        lines.append(f"| {name} | " + " | ".join(times) + " |")
    unrecorded = any(study.UNRECORDED_CPU in c for c in cpus)
    lines += [
        "",
        "; ".join(f"[{i}] {cpu}" for i, cpu in enumerate(cpus, 1))
        + (f" ({study.UNRECORDED_CPU}: runs logged before the CPU was)" if unrecorded else "")
        + ". Times compare within one CPU.",
    ]
    lines += explanation_lines(by_cell, datasets)
    lines += faithfulness_lines(real_rows, models, datasets)
    if statistics:
        lines += [
            "",
            f"Across the {statistics['data sets']} data sets where every model has its seeds: mean rank "
            "(1 = best), Friedman test p = "
            + (f"{statistics['friedman p']:.3g}" if statistics["friedman p"] is not None else "–")
            + "; two-sided Wilcoxon signed-rank tests with Holm's correction, p per pair.",
            "",
            "| model | mean rank | " + " | ".join(f"p vs {m}" for m in statistics["mean rank"]) + " |",
            "|---|---|" + "---|" * len(statistics["mean rank"]),
        ]
        for model, rank in statistics["mean rank"].items():
            pairs = statistics["wilcoxon holm p"][model]
            lines.append(
                f"| {model} | {rank:.2f} | "
                + " | ".join("" if other == model else f"{pairs[other]:.3g}" for other in statistics["mean rank"])
                + " |"
            )
    if diagram:
        lines += [
            "",
            f"![critical-difference diagram]({diagram})",
            "",
            "Critical-difference diagram (autorank, Nemenyi test, alpha 0.05): models joined by "
            "a bar do not differ significantly.",
        ]
    return "\n".join(lines) + "\n"


# The faithfulness table's figures: summary column, scale, decimals.
FAITHFULNESS_CELL = (
    ("aopc gain mean", 1, 3),
    ("uniform drop mean", 100, 1),
    ("occlusion rho mean", 1, 2),
    ("seed rho mean", 1, 2),
)


def _figure(value: float, scale: float, digits: int) -> str:
    return "–" if np.isnan(value) else f"{scale * value:.{digits}f}"


def add_seed_agreement(tracking_uri: str, done: dict) -> None:
    """faithfulness/seed_spearman (pipeline/experiments/stability.py) for the real-data runs of each cell
    with two or more seeds in the MLflow store, where one of them lacks it: kept in the runs'
    records (hence the ledger) and logged to the runs."""
    runs = {run.info.run_id: run for run in study.evaluated_runs(tracking_uri)}
    cells: dict[tuple[str, str], list] = {}
    for combination, record in done.items():
        if combination.inner_fold is None and record.run_id in runs:
            cells.setdefault((combination.dataset, combination.label), []).append((combination, record))
    client = mlflow.MlflowClient(tracking_uri)
    for members in cells.values():
        if len(members) < 2 or all(stability.METRIC in record.faithfulness for _, record in members):
            continue
        x = stability.test_inputs(members[0][0].overrides)
        members_runs = {record.run_id: runs[record.run_id] for _, record in members}
        agreement = stability.cell_agreement(tracking_uri, members_runs, x)
        for _, record in members:  # nan (constant attention, no model) is kept too: computed once
            value = agreement.get(record.run_id, float("nan"))
            record.faithfulness[stability.METRIC] = value
            client.log_metric(record.run_id, stability.METRIC, value)


# The explanations compared in logit AOPCR on the test sets: (heading, model, summary column).
EXPLANATIONS = (
    ("conv_attention attention", "conv_attention", "aopcr attention"),
    ("conv_attention contribution", "conv_attention", "aopcr contribution"),
    ("conv_attention occlusion", "conv_attention", "aopcr occlusion"),
    ("conv_gap CAM", "conv_gap", "aopcr contribution"),
    ("conv_gap occlusion", "conv_gap", "aopcr occlusion"),
)


def explanation_lines(by_cell: dict, datasets: list[str]) -> list[str]:
    """The explanations table: per data set, the logit AOPCR (mean ± std over the seeds that
    have it) of conv_attention's attention, contribution and occlusion and of conv_gap's CAM
    and occlusion, the contribution's lead over CAM and over the best occlusion, and what
    occlusion costs in model calls per series; none if no run has them."""

    def cell(name: str, model: str, column: str) -> tuple[float, float]:
        row = by_cell.get((name, model)) or {}
        return row.get(f"{column} mean", float("nan")), row.get(f"{column} std", float("nan"))

    if all(np.isnan(cell(d, m, c)[0]) for d in datasets for _, m, c in EXPLANATIONS):
        return []
    lines = [
        "",
        "Logit AOPCR of each explanation on the test series ([faithfulness](guide/faithfulness.md); "
        "the larger, the more the predicted class's logit falls when its top steps are removed, "
        "against random orders), mean ± std over the seeds; contribution − CAM and contribution − "
        "occlusion: conv_attention's contribution against conv_gap's CAM and against the better "
        "occlusion of the two models; calls: the model calls occlusion costs per series (an "
        "exported explanation costs none beyond the prediction).",
        "",
        "| data set | "
        + " | ".join(h for h, _, _ in EXPLANATIONS)
        + " | contribution − CAM | contribution − occlusion | calls |",
        "|---|" + "---|" * (len(EXPLANATIONS) + 3),
    ]
    for name in datasets:
        figures = dict(zip((h for h, _, _ in EXPLANATIONS), (cell(name, m, c) for _, m, c in EXPLANATIONS)))
        cells = ["–" if np.isnan(mean) else f"{mean:.2f} ± {std:.2f}" for mean, std in figures.values()]
        contribution, cam = figures["conv_attention contribution"][0], figures["conv_gap CAM"][0]
        occlusions = [figures[h][0] for h in ("conv_attention occlusion", "conv_gap occlusion")]
        occlusion = max((o for o in occlusions if not np.isnan(o)), default=float("nan"))
        calls = (by_cell.get((name, "conv_attention")) or {}).get("occlusion calls mean", float("nan"))
        cells += [_figure(contribution - cam, 1, 2), _figure(contribution - occlusion, 1, 2), _figure(calls, 1, 0)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def faithfulness_lines(real_rows: list[dict], models: list[str], datasets: list[str]) -> list[str]:
    """The faithfulness table: per data set and model, the means over seeds of the deletion
    AOPC gain, the uniform-attention drop (points), the occlusion and the between-seed rank
    correlations; none if no run has them."""
    columns = [f"{c} mean" for c in study.FAITHFULNESS_COLUMNS.values()]
    rows = [r for r in real_rows if any(not np.isnan(r.get(c, float("nan"))) for c in columns)]
    if not rows:
        return []
    lines = [
        "",
        "Faithfulness of the attention (the `faithfulness/*` metrics, [faithfulness](guide/faithfulness.md)), "
        "mean over the seeds that have them: deletion AOPC gain over random positions / "
        "accuracy lost with uniform attention (points) / occlusion rank correlation / rank correlation "
        "between seeds (– where undefined: constant attention, or runs that predate the metric).",
        "",
        "| data set | " + " | ".join(models) + " |",
        "|---|" + "---|" * len(models),
    ]
    by_cell = {(r["data set"], r["model"]): r for r in rows}
    for name in datasets:
        cells = []
        for model in models:
            row = by_cell.get((name, model))
            cells.append(
                "–"
                if row is None
                else " / ".join(_figure(row[column], scale, digits) for column, scale, digits in FAITHFULNESS_CELL)
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def selection_markdown(rows: list[dict]) -> str:
    """The settings compared on inner folds of the training files: one row per setting, its
    accuracy on the held-out folds of each data set (mean ± std over the folds and seeds), and
    its mean over the data sets that every setting ran, where there are two or more."""
    labels = list(dict.fromkeys(r["model"] for r in rows))
    by_cell = {(r["data set"], r["model"]): r for r in rows}
    datasets = list(dict.fromkeys(r["data set"] for r in rows))
    shared = [d for d in datasets if all((d, label) in by_cell for label in labels)]
    mean_column = [f"mean of the {len(shared)} sets all ran"] if len(shared) > 1 else []
    lines = [
        "Accuracy (%) on held-out inner folds of the TRAIN files (`-S data.inner_fold=K`, K = 0, 1, 2; "
        "the TEST files are not read), mean ± std over the folds and seeds (runs in brackets); "
        "`python -m pipeline.tools.study queue --selection` runs what is missing.",
        "",
        "| setting | " + " | ".join([*datasets, *mean_column]) + " |",
        "|---|" + "---|" * (len(datasets) + len(mean_column)),
    ]
    for label in labels:
        cells = [_mean_std(by_cell.get((name, label))) for name in datasets]
        if mean_column:
            cells.append(f"{sum(by_cell[(d, label)]['accuracy mean'] for d in shared) / len(shared):.2f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    explained = [label for label in labels if any(_has_aopcr(by_cell.get((d, label))) for d in datasets)]
    if explained:
        lines += [
            "",
            "Logit AOPCR on the held-out folds ([faithfulness](guide/faithfulness.md)): the model's "
            "attention / its contribution / occlusion, mean over the runs that have them (– none).",
            "",
            "| setting | " + " | ".join(datasets) + " |",
            "|---|" + "---|" * len(datasets),
        ]
        for label in explained:
            cells = [_aopcr_cell(by_cell.get((name, label))) for name in datasets]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def pooling_markdown(choice: dict | None, title: str, rule: str, candidates: tuple[str, ...]) -> str:
    """A pooling rule's outcome (study.pooling_choice over `candidates`); nothing before a cell is
    complete."""
    if choice is None:
        return ""
    lines = [
        "",
        f"{title}, fixed before the runs: {rule}; over the "
        f"{choice['runs per setting']} runs every candidate has (data set, fold, seed):",
        "",
        "| pooling | held-out errors | mean rank of the contribution's AOPCR | admitted |",
        "|---|---|---|---|",
    ]
    for label in candidates:
        mark = "yes" if label in choice["admitted"] else "no"
        chosen = " (chosen)" if label == choice["chosen"] else ""
        lines.append(f"| {label}{chosen} | {choice['errors'][label]} | {choice['mean rank'][label]:.2f} | {mark} |")
    return "\n".join(lines) + "\n"


AOPCR_COLUMNS = ("aopcr attention mean", "aopcr contribution mean", "aopcr occlusion mean")


def _has_aopcr(row: dict | None) -> bool:
    return row is not None and any(not np.isnan(row.get(c, float("nan"))) for c in AOPCR_COLUMNS)


def _aopcr_cell(row: dict | None) -> str:
    return " / ".join(_figure(row[c], 1, 2) for c in AOPCR_COLUMNS) if _has_aopcr(row) else "–"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", default=f"sqlite:///{repository_root() / DEFAULT_STORE}")
    parser.add_argument("--experiment", action="append", help="MLflow experiment name (repeatable)")
    parser.add_argument("--out", type=Path, help="write OUT.md, OUT.csv and OUT_cd.png instead of printing")
    args = parser.parse_args(argv)
    rows = comparison_rows(args.tracking_uri, args.experiment)
    if args.out is not None:
        rows = with_earlier_rows(rows, args.out.with_suffix(".csv"))
    ledger = (
        args.out.with_name(args.out.name + "_runs.csv") if args.out is not None else repository_root() / study.LEDGER
    )
    done = study.done_runs(
        args.tracking_uri, study.combinations() + study.selection_combinations(seeds=study.SEEDS), ledger
    )
    add_seed_agreement(args.tracking_uri, done)
    real_rows = study.summary({c: r for c, r in done.items() if c.inner_fold is None})
    for row in real_rows:
        reference = study.REFERENCES.get(row["data set"], {})
        row["FCN"], row["goal"] = reference.get("FCN"), reference.get("goal")
    table_of_means = accuracy_table(real_rows)
    comparable = table_of_means.shape[0] >= 2 and table_of_means.shape[1] >= 2  # data sets, models
    statistics = rank_statistics(table_of_means) if comparable else None
    diagram = None
    if args.out is not None:
        diagram_path = args.out.with_name(args.out.name + "_cd.png")
        if statistics and table_of_means.shape[0] >= 5 and table_of_means.shape[1] >= 3:  # Nemenyi: 3 models
            args.out.parent.mkdir(parents=True, exist_ok=True)
            critical_difference_diagram(table_of_means, diagram_path)
            diagram = diagram_path.name
        else:
            diagram_path.unlink(missing_ok=True)  # a diagram of earlier runs no longer holds
    selection_rows = study.summary({c: r for c, r in done.items() if c.inner_fold is not None})
    table = to_markdown(rows)
    planted = planted_markdown(rows)
    table += f"\n{planted}" if planted else ""
    if real_rows:
        table = (
            f"## Synthetic tasks\n\n{table}\n## Time-series classification: UCR/UEA data sets\n\n"
            + real_data_markdown(real_rows, statistics, diagram)
        )
    if selection_rows:
        table += "\n### Settings compared on training data only\n\n" + selection_markdown(selection_rows)
        for title, rule, candidates in (
            ("Pooling rule (`study.POOLING_RULE`)", study.POOLING_RULE, study.POOLING_SETTINGS),
            ("Padding rule (`study.PADDING_RULE`)", study.PADDING_RULE, study.PADDING_SETTINGS),
            ("Kernel rule (`study.KERNEL_RULE`)", study.KERNEL_RULE, study.KERNEL_SETTINGS),
        ):
            table += pooling_markdown(study.pooling_choice(done, candidates), title, rule, candidates)
    if args.out is None:
        sys.stdout.write(table)
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    command = "python -m pipeline.tools.compare " + " ".join(argv if argv is not None else sys.argv[1:])
    args.out.with_suffix(".md").write_text(f"<!-- made by: {command} -->\n\n{table}")
    write_csv(rows, real_rows, args.out.with_suffix(".csv"), selection_rows)
    study.write_ledger(ledger, done)
    print(
        f"wrote {args.out.with_suffix('.md')}, .csv and {ledger.name} ({len(rows)} synthetic runs, "
        f"{len(real_rows)} real-data rows, {len(done)} real-data runs{', the diagram' if diagram else ''})"
    )


if __name__ == "__main__":
    run_command(main)
