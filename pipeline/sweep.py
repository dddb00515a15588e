"""The size-and-position sweep of the planted tasks: each task's default model at several sequence
lengths (feature counts for planted_feature) and planted positions (first, middle, last), over
seeds, as DVC experiments logged to MLflow; one table in docs/sweep.md.

    python -m pipeline.sweep missing     # the runs the MLflow store lacks, as dvc commands
    python -m pipeline.sweep queue       # queue them (dvc exp run --queue), beside anything queued
    dvc queue start -j 1                 # ...train them
    python -m pipeline.sweep table --out docs/sweep   # docs/sweep.md and .csv from the store

A run counts when its logged params equal the composed config of its cell, so a changed recipe
makes its cells missing again, and an interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import argparse
import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import study
from pipeline.errors import run_command
from pipeline.tracking import DEFAULT_STORE, evaluated_runs, repository_root

SEEDS = (1, 2, 3)
POSITIONS = ("first", "middle", "last")
SEQUENCE_SIZES = (10, 30, 100)  # time steps
# Each planted task: its default model, the key of its size and its sizes, the key of its planted
# position (None: the task places its targets at random).
TASKS = {
    "planted_step": ("lstm_attention", "data.time_steps", SEQUENCE_SIZES, "data.planted_step"),
    "planted_feature": ("feature_attention", "data.n_features", (8, 32, 64), "data.planted_index"),
    "find_max": ("multihead_pooling", "data.time_steps", SEQUENCE_SIZES, None),
    "add_two_numbers": ("multihead_pooling", "data.time_steps", SEQUENCE_SIZES, None),
}
ACCURACY_GOAL = 0.99
ARGMAX_GOAL = {"add_two_numbers": 0.9}  # the others: 0.95
COLUMNS = ("task", "model", "size", "position", "seeds", "score", "score mean", "score std",
           "argmax_hit mean", "argmax_hit std", "goal met", "command", "runs")


@dataclass(frozen=True)
class Cell:
    """One run of the sweep: a planted task at a size, its planted position, a seed."""

    task: str
    size: int
    position: str | None
    seed: int

    @property
    def model(self) -> str:
        return TASKS[self.task][0]

    @property
    def overrides(self) -> list[str]:
        _, size_key, _, position_key = TASKS[self.task]
        overrides = [f"data={self.task}", f"model={self.model}", f"{size_key}={self.size}", f"seed={self.seed}"]
        if position_key is not None:
            index = {"first": 0, "middle": self.size // 2, "last": self.size - 1}[self.position]
            overrides.append(f"{position_key}={index}")
        if self.task in ("find_max", "add_two_numbers"):
            overrides.append(f"data.min_length={self.size}")  # fixed length: the size is the length
        return overrides

    @property
    def command(self) -> str:
        return "dvc exp run " + " ".join(f"-S {o}" for o in self.overrides)


def plan(tasks=tuple(TASKS), sizes: tuple[int, ...] | None = None, seeds=SEEDS) -> list[Cell]:
    """Every task x size (its own, or `sizes`) x position (one, None, for the tasks that place
    targets at random) x seed."""
    return [Cell(task, size, position, seed) for task in tasks for size in (sizes or TASKS[task][2])
            for position in (POSITIONS if TASKS[task][3] else (None,)) for seed in seeds]


def done_runs(tracking_uri: str, cells: list[Cell]) -> dict[Cell, object]:
    """The latest finished, evaluated MLflow run of each cell whose params equal its composed config."""
    runs = evaluated_runs(tracking_uri)
    found: dict[Cell, object] = {}
    for cell in cells:
        expected = study.expected_params(cell)
        for run in runs:
            if all(run.data.params.get(k, "None") == v for k, v in expected.items()):
                if cell not in found or run.info.start_time > found[cell].info.start_time:
                    found[cell] = run
    return found


def _sample_std(values: np.ndarray) -> float:
    return float(values.std(ddof=1)) if len(values) > 1 else float("nan")


def table_rows(done: dict[Cell, object]) -> list[dict]:
    """One row per task, size and position: mean and sample std over the seeds of the task score
    (test accuracy, or test MAE for regression) and of attention/argmax_hit, and whether the
    means meet the goals (accuracy >= 0.99 where there is one, argmax_hit >= 0.95; 0.9 for
    add_two_numbers)."""
    groups: dict[tuple, list[tuple[Cell, object]]] = {}
    for cell, run in done.items():
        groups.setdefault((cell.task, cell.size, cell.position), []).append((cell, run))
    rows = []
    for (task, size, position), members in groups.items():
        members.sort(key=lambda pair: pair[0].seed)
        metrics = [run.data.metrics for _, run in members]
        score = "test/accuracy" if "test/accuracy" in metrics[0] else "test/mae"
        scores = np.array([m[score] for m in metrics])
        hits = np.array([m["attention/argmax_hit"] for m in metrics])
        met = hits.mean() >= ARGMAX_GOAL.get(task, 0.95) and (
            score != "test/accuracy" or scores.mean() >= ACCURACY_GOAL)
        template = Cell(task, size, position, 0)
        rows.append({
            "task": task, "model": template.model, "size": size, "position": position or "random",
            "seeds": ",".join(str(cell.seed) for cell, _ in members), "score": score.removeprefix("test/"),
            "score mean": float(scores.mean()), "score std": _sample_std(scores),
            "argmax_hit mean": float(hits.mean()), "argmax_hit std": _sample_std(hits),
            "goal met": "yes" if met and len(members) >= 3 else ("no" if len(members) >= 3 else ""),
            "command": template.command.replace("seed=0", "seed=N"),
            "runs": ",".join(run.info.run_id for _, run in members),
        })
    order = {task: i for i, task in enumerate(TASKS)}
    return sorted(rows, key=lambda r: (order[r["task"]], r["size"], POSITIONS.index(r["position"])
                                       if r["position"] in POSITIONS else 0))


def markdown(rows: list[dict]) -> str:
    lines = ["Each planted task's default model at sizes (time steps; features for planted_feature) and planted "
             "positions, mean ± sample std over seeds (their number in brackets). Goal: accuracy ≥ 0.99 and "
             "argmax_hit ≥ 0.95 (add_two_numbers ≥ 0.9) on the means over ≥ 3 seeds. Made by "
             "`python -m pipeline.sweep table --out docs/sweep`; each row's command is in the CSV.", "",
             "| task | model | size | position | score | argmax_hit | goal met |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        seeds = len(r["seeds"].split(","))
        lines.append(f"| {r['task']} | {r['model']} | {r['size']} | {r['position']} | {r['score']} "
                     f"{r['score mean']:.4f} ± {r['score std']:.4f} ({seeds}) | {r['argmax_hit mean']:.3f} ± "
                     f"{r['argmax_hit std']:.3f} | {r['goal met']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("missing", "queue", "table"))
    parser.add_argument("--tracking-uri", default=f"sqlite:///{repository_root() / DEFAULT_STORE}")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--sizes", nargs="+", type=int, help="in place of each task's own sizes")
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--out", type=Path, help="table: write OUT.md and OUT.csv instead of printing")
    args = parser.parse_args(argv)
    cells = plan(args.tasks, tuple(args.sizes or ()), args.seeds)
    done = done_runs(args.tracking_uri, cells)
    if args.action == "table":
        rows = table_rows(done)
        if args.out is None:
            print(markdown(rows), end="")
            return
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text(markdown(rows))
        with open(args.out.with_suffix(".csv"), "w", newline="") as handle:
            writer = csv.DictWriter(handle, COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        print(f"wrote {args.out.with_suffix('.md')} and .csv ({len(rows)} cells, {len(done)} runs)")
        return
    # one seed of every cell before the next seed, small sizes first: an interrupted sweep has
    # already seen every cell
    todo = sorted((cell for cell in cells if cell not in done), key=lambda cell: (cell.seed, cell.size))
    print(f"{len(cells) - len(todo)} of {len(cells)} runs are in {args.tracking_uri}; {len(todo)} missing")
    for cell in todo:  # queued beside whatever is queued already: run `queue` once, then start the queue
        if args.action == "queue":
            study._dvc("exp", "run", "--queue", *[a for o in cell.overrides for a in ("-S", o)])
        print(("queued: " if args.action == "queue" else "") + cell.command)
    if args.action == "queue" and todo:
        print("now: dvc queue start -j 1, then python -m pipeline.sweep table --out docs/sweep")


if __name__ == "__main__":
    run_command(main)
