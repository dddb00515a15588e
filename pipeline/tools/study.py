"""The real-data study: every bundled UCR/UEA classification set x the attention model and its
peers x several seeds, run as DVC experiments, summarised from the MLflow store.

    python -m pipeline.tools.study missing          # the runs the store lacks, as `dvc exp run` commands
    python -m pipeline.tools.study queue            # queue them (dvc exp run --queue) in place of any
                                                    # queued before; then
    dvc queue start -j 1                            # ...train them, one at a time
    python -m pipeline.tools.study wait             # until the queue is empty (restarts a stopped worker)
    python -m pipeline.tools.compare --out docs/results   # tables, ranks and the diagram
    python -m pipeline.tools.study queue --selection      # settings compared on inner folds of TRAIN

`make study` does all four. A run counts as done when the MLflow store holds a finished, evaluated
run whose logged params equal the composed config of its combination (data set, model, seed), or
when the committed ledger docs/results_runs.csv (written by compare) holds one with the same
config digest (pipeline/experiments/ledger.py): a changed recipe makes every run of it missing
again, and a rerun of `queue` adds only what is missing, also on a fresh clone. No TensorFlow import.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.core.errors import run_command
from pipeline.experiments import queue, study


def main(argv: list[str] | None = None) -> None:
    from pipeline.tracking import DEFAULT_STORE, repository_root

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("missing", "queue", "wait"))
    parser.add_argument("--tracking-uri", default=f"sqlite:///{repository_root() / DEFAULT_STORE}")
    parser.add_argument("--datasets", nargs="+", default=study.DATASETS)
    parser.add_argument("--models", nargs="+", default=study.MODELS)
    parser.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        help=f"default: {' '.join(map(str, study.SEEDS))}; with --selection {study.SELECTION_SEED}",
    )
    parser.add_argument(
        "--ledger",
        type=Path,
        default=repository_root() / study.LEDGER,
        help="the committed record of finished runs (runs in it are not trained again)",
    )
    parser.add_argument(
        "--selection",
        action="store_true",
        help="the selection study instead: SELECTION's settings (pipeline/experiments/study.py) "
        "on the inner folds of the training files",
    )
    parser.add_argument(
        "--settings",
        nargs="+",
        choices=tuple(study.SELECTION),
        default=tuple(study.SELECTION),
        help="with --selection: the SELECTION settings to compare (default: all)",
    )
    parser.add_argument(
        "--needs",
        nargs="+",
        default=(),
        choices=tuple(study.FAITHFULNESS_COLUMNS),
        help="count a run as missing if it lacks these metrics (train it again)",
    )
    args = parser.parse_args(argv)
    if args.action == "wait":
        print(queue.wait_for_queue())
        return
    plan = (
        study.selection_combinations(args.datasets, args.settings, args.seeds or (study.SELECTION_SEED,))
        if args.selection
        else study.combinations(args.datasets, args.models, args.seeds or study.SEEDS)
    )
    model_order = list(args.models)  # queued in the order --models names them, quick data sets first
    todo = sorted(
        study.missing(args.tracking_uri, plan, args.ledger, needs=tuple(args.needs)),
        key=lambda c: (
            model_order.index(c.model) if c.model in model_order else len(model_order),
            study.training_size(c.dataset),
        ),
    )
    print(
        f"{len(plan) - len(todo)} of {len(plan)} runs are in {args.tracking_uri} or {args.ledger}; {len(todo)} missing"
    )
    if args.action == "queue":
        queue.dvc("queue", "remove", "--queued")  # what an interrupted study left queued is queued afresh
    for combination in todo:
        if args.action == "queue":
            queue.dvc("exp", "run", "--queue", *[a for o in combination.overrides for a in ("-S", o)])
        print(("queued: " if args.action == "queue" else "") + combination.command)
    if args.action == "queue" and todo:
        print("now: dvc queue start -j 1 && python -m pipeline.tools.study wait")


if __name__ == "__main__":
    run_command(main)
