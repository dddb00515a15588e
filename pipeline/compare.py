"""Compare runs from an MLflow store: one row per run, as markdown and CSV.

    python -m pipeline.compare                          # the repository's store, every experiment
    python -m pipeline.compare --experiment attention-find_max --out docs/results
    python -m pipeline.compare --tracking-uri http://127.0.0.1:5000

Columns: task, model, the task metric (accuracy or MAE), the attention metrics, the parameter
count, the training time and the run id. No TensorFlow import.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import mlflow

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


def comparison_rows(tracking_uri: str, experiments: list[str] | None = None) -> list[dict]:
    """One dict per finished run with the COLUMNS, best attention/argmax_hit first per task."""
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
    rows = []
    for run in runs:
        flat = {
            "run_id": run.info.run_id,
            **{f"tags.{k}": v for k, v in run.data.tags.items()},
            **{f"metrics.{k}": v for k, v in run.data.metrics.items()},
        }
        if "metrics.attention/lift" in flat:  # a complete pipeline run
            rows.append({column: flat.get(source) for column, source in COLUMNS})
    return sorted(rows, key=lambda r: (r["task"] or "", -(r["attention/argmax_hit"] or 0)))


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.0f}" if value.is_integer() and abs(value) >= 100 else f"{value:.4g}"
    return str(value)


def to_markdown(rows: list[dict]) -> str:
    names = [c for c, _ in COLUMNS]
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    lines += ["| " + " | ".join(_cell(row[n]) for n in names) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[c for c, _ in COLUMNS])
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", default=f"sqlite:///{repository_root() / DEFAULT_STORE}")
    parser.add_argument("--experiment", action="append", help="MLflow experiment name (repeatable)")
    parser.add_argument("--out", type=Path, help="write OUT.md and OUT.csv instead of printing")
    args = parser.parse_args(argv)
    rows = comparison_rows(args.tracking_uri, args.experiment)
    table = to_markdown(rows)
    if args.out is None:
        sys.stdout.write(table)
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    command = "python -m pipeline.compare " + " ".join(argv if argv is not None else sys.argv[1:])
    args.out.with_suffix(".md").write_text(f"<!-- made by: {command} -->\n\n{table}")
    write_csv(rows, args.out.with_suffix(".csv"))
    print(f"wrote {args.out.with_suffix('.md')} and .csv ({len(rows)} runs)")


if __name__ == "__main__":
    main()
