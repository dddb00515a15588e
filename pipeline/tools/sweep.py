"""The size-and-position sweep of the planted tasks: each task's default model at several sequence
lengths (feature counts for planted_feature) and planted positions (first, middle, last), over
seeds, as DVC experiments logged to MLflow; one table in docs/sweep.md.

    python -m pipeline.tools.sweep missing     # the runs the MLflow store lacks, as dvc commands
    python -m pipeline.tools.sweep queue       # queue them (dvc exp run --queue), beside anything queued
    dvc queue start -j 1                       # ...train them
    python -m pipeline.tools.sweep table --out docs/sweep   # docs/sweep.md, .csv and the ledger

A run counts when its logged params equal the composed config of its cell, so a changed recipe
makes its cells missing again, and an interrupted sweep resumes where it stopped. The ledger
(docs/sweep_runs.csv, committed) keeps every finished run, so a fresh clone or another machine,
whose MLflow store starts empty, trains only what is missing too (pipeline/experiments/ledger.py).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from pipeline.core.errors import run_command
from pipeline.experiments import queue, sweep
from pipeline.tracking import DEFAULT_STORE, repository_root


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("missing", "queue", "table"))
    parser.add_argument("--tracking-uri", default=f"sqlite:///{repository_root() / DEFAULT_STORE}")
    parser.add_argument("--tasks", nargs="+", default=list(sweep.TASKS), choices=list(sweep.TASKS))
    parser.add_argument("--sizes", nargs="+", type=int, help="in place of each task's own sizes")
    parser.add_argument("--seeds", nargs="+", type=int, default=list(sweep.SEEDS))
    parser.add_argument(
        "--out", type=Path, help="table: write OUT.md, OUT.csv and the ledger OUT_runs.csv instead of printing"
    )
    parser.add_argument(
        "--ledger",
        type=Path,
        default=repository_root() / sweep.LEDGER,
        help="the committed record of finished runs (runs in it are not trained again)",
    )
    args = parser.parse_args(argv)
    cells = sweep.plan(args.tasks, tuple(args.sizes or ()), args.seeds)
    done = sweep.done_runs(args.tracking_uri, cells, args.ledger)
    if args.action == "table":
        rows = sweep.table_rows(done)
        if args.out is None:
            print(sweep.markdown(rows), end="")
            return
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text(sweep.markdown(rows))
        with open(args.out.with_suffix(".csv"), "w", newline="") as handle:
            writer = csv.DictWriter(handle, sweep.COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        ledger_path = args.out.with_name(args.out.name + "_runs.csv")
        sweep.write_ledger(ledger_path, {cell: done[cell] for cell in cells if cell in done})
        print(f"wrote {args.out.with_suffix('.md')}, .csv and {ledger_path.name} ({len(rows)} cells, {len(done)} runs)")
        return
    # one seed of every cell before the next seed, small sizes first: an interrupted sweep has
    # already seen every cell
    todo = sorted((cell for cell in cells if cell not in done), key=lambda cell: (cell.seed, cell.size))
    print(
        f"{len(cells) - len(todo)} of {len(cells)} runs are in {args.tracking_uri} or {args.ledger}; "
        f"{len(todo)} missing"
    )
    for cell in todo:  # queued beside whatever is queued already: run `queue` once, then start the queue
        if args.action == "queue":
            queue.dvc("exp", "run", "--queue", *[a for o in cell.overrides for a in ("-S", o)])
        print(("queued: " if args.action == "queue" else "") + cell.command)
    if args.action == "queue" and todo:
        print("now: dvc queue start -j 1, then python -m pipeline.tools.sweep table --out docs/sweep")


if __name__ == "__main__":
    run_command(main)
