"""Compare runs from an MLflow store: one row per run, as markdown and CSV.

    python -m pipeline.compare                          # the repository's store, every experiment
    python -m pipeline.compare --experiment attention-find_max --out docs/results
    python -m pipeline.compare --tracking-uri http://127.0.0.1:5000

Synthetic tasks: one row per run with the task metric (accuracy or MAE), the attention metrics,
the parameter count, the training time and the run id. UCR/UEA data sets: the best run of each,
its test accuracy beside the published references, and the command that reproduces it.
No TensorFlow import.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import mlflow

from pipeline.config import CONF_DIR, compose_defaults, flatten
from pipeline.errors import run_command
from pipeline.tracking import DEFAULT_STORE, repository_root

COLUMNS = (
    ("task", "tags.task"),
    ("model", "tags.model"),
    ("test/accuracy", "metrics.test/accuracy"),
    ("test/mae", "metrics.test/mae"),
    ("attention/mass_at_target", "metrics.attention/mass_at_target"),
    ("attention/argmax_hit", "metrics.attention/argmax_hit"),
    ("attention/lift", "metrics.attention/lift"),
    ("attention/entropy", "metrics.attention/entropy"),
    ("params", "metrics.train/param_count"),
    ("train seconds", "metrics.train/seconds"),
    ("run", "run_id"),
)


# Published test accuracies (%) on the UCR/UEA archives: 1-NN DTW from the archives' pages
# (DTW_I, dimension-independent, for the multivariate sets) and FCN from Fawaz et al. 2019,
# "Deep learning for time series classification: a review"; the goal this pipeline must reach.
UCR_REFERENCES = {
    "GunPoint": {"1-NN DTW": "90.7", "FCN": "100.0", "goal": 97.0},
    "ItalyPowerDemand": {"1-NN DTW": "95.0", "FCN": "96.1", "goal": 96.0},
    "BasicMotions": {"1-NN DTW": "100 (DTW_I)", "FCN": "–", "goal": 97.5},
    "JapaneseVowels": {"1-NN DTW": "95.9 (DTW_I)", "FCN": "99.3", "goal": 97.0},
}
UCR_COLUMNS = ("data set", "model", "test accuracy %", "1-NN DTW", "FCN", "goal", "goal met",
               "train seconds", "epochs", "command", "run")
REPRODUCED_SECTIONS = ("seed", "data", "model", "train")


def _finished_runs(tracking_uri: str, experiments: list[str] | None) -> list:
    mlflow.set_tracking_uri(tracking_uri)
    if experiments:
        found = [mlflow.get_experiment_by_name(name) for name in experiments]
        missing = [n for n, e in zip(experiments, found) if e is None]
        if missing:
            raise SystemExit(f"error: {tracking_uri}: no experiment named {missing}")
        ids = [e.experiment_id for e in found]
    else:
        ids = [e.experiment_id for e in mlflow.search_experiments()]
    runs = mlflow.search_runs(ids, filter_string="attributes.status = 'FINISHED'", output_format="list")
    return [run for run in runs if "attention/entropy" in run.data.metrics]  # evaluated runs


def reproducing_command(params: dict[str, str], conf_dir: Path = CONF_DIR) -> str:
    """`dvc exp run` with the data set's experiment preset (conf/experiment/ucr_<name>.yaml) and
    a `-S key=value` for every logged param that differs from the preset."""
    name = params["data.name"]
    preset = "ucr_" + "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")
    if (conf_dir / "experiment" / f"{preset}.yaml").is_file():
        base, command = compose_defaults(conf_dir, [f"experiment={preset}"]), f"-S experiment={preset}"
    else:
        base = compose_defaults(conf_dir, ["data=ucr", f"data.name={name}"])
        command = f"-S data=ucr -S data.name={name}"
    expected = flatten({k: base[k] for k in REPRODUCED_SECTIONS if isinstance(base[k], dict)})
    expected["seed"] = base["seed"]
    changed = [
        f"-S {key}={value}" for key, value in sorted(params.items())
        if key in expected and str(expected[key]) != value
    ]
    return " ".join(["dvc exp run", command, *changed])


def ucr_rows(tracking_uri: str, experiments: list[str] | None = None,
             conf_dir: Path = CONF_DIR) -> list[dict]:
    """The best run (highest test accuracy, then fastest) of each UCR/UEA data set, beside the
    published references, in the order of UCR_REFERENCES, then any other data sets."""
    best: dict[str, object] = {}
    for run in _finished_runs(tracking_uri, experiments):
        if run.data.params.get("data.source") != "ucr":
            continue
        name = run.data.params["data.name"]
        key = (run.data.metrics["test/accuracy"], -run.data.metrics.get("train/seconds", 0))
        current = best.get(name)
        if current is None or key > (current.data.metrics["test/accuracy"],
                                     -current.data.metrics.get("train/seconds", 0)):
            best[name] = run
    order = [n for n in UCR_REFERENCES if n in best] + sorted(set(best) - set(UCR_REFERENCES))
    rows = []
    for name in order:
        run = best[name]
        accuracy = 100 * run.data.metrics["test/accuracy"]
        reference = UCR_REFERENCES.get(name, {})
        goal = reference.get("goal")
        rows.append({
            "data set": name,
            "model": run.data.params.get("model.name"),
            "test accuracy %": round(accuracy, 2),
            "1-NN DTW": reference.get("1-NN DTW", ""),
            "FCN": reference.get("FCN", ""),
            "goal": f"≥ {goal:g}" if goal else "",
            "goal met": ("yes" if accuracy >= goal else "no") if goal else "",
            "train seconds": round(run.data.metrics.get("train/seconds", float("nan")), 1),
            "epochs": int(run.data.metrics.get("train/epochs", 0)),
            "command": reproducing_command(run.data.params, conf_dir),
            "run": run.info.run_id,
        })
    return rows


def comparison_rows(tracking_uri: str, experiments: list[str] | None = None) -> list[dict]:
    """One dict per finished run of a synthetic task with the COLUMNS, best
    attention/argmax_hit first per task."""
    rows = []
    for run in _finished_runs(tracking_uri, experiments):
        if run.data.params.get("data.source"):  # real data: see ucr_rows
            continue
        flat = {
            "run_id": run.info.run_id,
            **{f"tags.{k}": v for k, v in run.data.tags.items()},
            **{f"metrics.{k}": v for k, v in run.data.metrics.items()},
        }
        rows.append({column: flat.get(source) for column, source in COLUMNS})
    return sorted(rows, key=lambda r: (r["task"] or "", -(r["attention/argmax_hit"] or 0)))


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


def write_csv(rows: list[dict], real_rows: list[dict], path: Path) -> None:
    """Both tables in one CSV: a `table` column says which (synthetic or ucr)."""
    names = ["table", *[c for c, _ in COLUMNS], *[c for c in UCR_COLUMNS if c not in ("model", "run")]]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=names, restval="")
        writer.writeheader()
        writer.writerows({"table": "synthetic", **row} for row in rows)
        writer.writerows({"table": "ucr", "task": row["data set"], "test/accuracy": row["test accuracy %"] / 100,
                          **row} for row in real_rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", default=f"sqlite:///{repository_root() / DEFAULT_STORE}")
    parser.add_argument("--experiment", action="append", help="MLflow experiment name (repeatable)")
    parser.add_argument("--out", type=Path, help="write OUT.md and OUT.csv instead of printing")
    args = parser.parse_args(argv)
    rows = comparison_rows(args.tracking_uri, args.experiment)
    real_rows = ucr_rows(args.tracking_uri, args.experiment)
    table = to_markdown(rows)
    if real_rows:
        table = (
            f"## Synthetic tasks\n\n{table}\n## UCR/UEA time-series classification\n\n"
            "Test accuracy of the best attention run of each data set (one run, seed 42) beside "
            "the published references: 1-NN DTW (the archives' pages) and FCN (Fawaz et al. "
            "2019).\n\n" + to_markdown(real_rows, list(UCR_COLUMNS))
        )
    if args.out is None:
        sys.stdout.write(table)
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    command = "python -m pipeline.compare " + " ".join(argv if argv is not None else sys.argv[1:])
    args.out.with_suffix(".md").write_text(f"<!-- made by: {command} -->\n\n{table}")
    write_csv(rows, real_rows, args.out.with_suffix(".csv"))
    print(f"wrote {args.out.with_suffix('.md')} and .csv ({len(rows)} + {len(real_rows)} runs)")


if __name__ == "__main__":
    run_command(main)
