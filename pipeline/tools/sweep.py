"""The size-and-position sweep of the planted tasks: each task's default model at several sequence
lengths (feature counts for planted_feature) and planted positions (first, middle, last), over
seeds, as DVC experiments logged to MLflow; one table in docs/sweep.md.

    python -m pipeline.tools.sweep missing     # the runs the MLflow store lacks, as dvc commands
    python -m pipeline.tools.sweep queue       # queue them (dvc exp run --queue), beside anything queued
    dvc queue start -j 1                 # ...train them
    python -m pipeline.tools.sweep table --out docs/sweep   # docs/sweep.md, .csv and the ledger

A run counts when its logged params equal the composed config of its cell, so a changed recipe
makes its cells missing again, and an interrupted sweep resumes where it stopped. The ledger
(docs/sweep_runs.csv, committed) keeps every finished run, so a fresh clone or another machine,
whose MLflow store starts empty, trains only what is missing too.
"""

from __future__ import annotations

import argparse
import csv
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from pipeline.core.errors import run_command
from pipeline.tools import study
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
COLUMNS = (
    "task",
    "model",
    "size",
    "position",
    "seeds",
    "score",
    "score mean",
    "score std",
    "argmax_hit mean",
    "argmax_hit std",
    "goal met",
    "command",
    "runs",
)
LEDGER = Path("docs/sweep_runs.csv")  # under the repository root: one row per finished run
LEDGER_CELL_COLUMNS = ("task", "size", "position", "seed")


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
    return [
        Cell(task, size, position, seed)
        for task in tasks
        for size in (sizes or TASKS[task][2])
        for position in (POSITIONS if TASKS[task][3] else (None,))
        for seed in seeds
    ]


@dataclass(frozen=True)
class SweepRecord:
    """What the sweep keeps of one finished, evaluated run: its task score (score_name
    "test/accuracy", or "test/mae" for regression), attention/argmax_hit, MLflow run id and start
    time (ms since the epoch)."""

    score_name: str
    score: float
    argmax_hit: float
    run_id: str
    started_ms: int


LEDGER_COLUMNS = (*LEDGER_CELL_COLUMNS, *(f.name for f in fields(SweepRecord)), "config digest")


def matching_runs(runs: list, cells: list[Cell]) -> dict[Cell, SweepRecord]:
    """The latest of `runs` (finished, evaluated MLflow runs) of each cell whose params equal its
    composed config."""
    found: dict[Cell, SweepRecord] = {}
    for cell in cells:
        expected = study.expected_params(cell)
        for run in runs:
            if all(run.data.params.get(k, "None") == v for k, v in expected.items()) and (
                cell not in found or run.info.start_time > found[cell].started_ms
            ):
                metrics = run.data.metrics
                score = "test/accuracy" if "test/accuracy" in metrics else "test/mae"
                found[cell] = SweepRecord(
                    score, metrics[score], metrics["attention/argmax_hit"], run.info.run_id, run.info.start_time
                )
    return found


def _ledger_key(cell: Cell) -> tuple[str, str, str, str]:
    return cell.task, str(cell.size), cell.position or "", str(cell.seed)


def _ledger_rows(ledger: Path) -> dict[tuple[str, str, str, str], dict]:
    """The ledger CSV's rows by their cell's key ({} where there is no ledger yet)."""
    if not ledger.exists():
        return {}
    with open(ledger, newline="") as handle:
        return {tuple(r[c] for c in LEDGER_CELL_COLUMNS): r for r in csv.DictReader(handle)}


def recorded_runs(ledger: Path, cells: list[Cell]) -> dict[Cell, SweepRecord]:
    """The runs of `cells` in the ledger CSV whose config digest equals their cell's current one."""
    rows = _ledger_rows(ledger)
    found = {}
    for cell in cells:
        row = rows.get(_ledger_key(cell))
        if row is not None and row["config digest"] == study.config_digest(cell):
            found[cell] = SweepRecord(
                row["score_name"], float(row["score"]), float(row["argmax_hit"]), row["run_id"], int(row["started_ms"])
            )
    return found


def done_runs(tracking_uri: str, cells: list[Cell], ledger: Path | None = None) -> dict[Cell, SweepRecord]:
    """Each cell that the MLflow store or the ledger holds, the later run where both do."""
    recorded = recorded_runs(ledger, cells) if ledger is not None else {}
    return study.later_runs(recorded, matching_runs(evaluated_runs(tracking_uri), cells))


def write_ledger(path: Path, done: dict[Cell, SweepRecord]) -> None:
    """The ledger CSV: its rows of cells outside `done` as they were, then one row per run of `done`."""
    rows = _ledger_rows(path)
    for cell, record in done.items():
        rows[_ledger_key(cell)] = {
            "task": cell.task,
            "size": cell.size,
            "position": cell.position or "",
            "seed": cell.seed,
            **{f.name: getattr(record, f.name) for f in fields(SweepRecord)},
            "config digest": study.config_digest(cell),
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=LEDGER_COLUMNS)
        writer.writeheader()
        writer.writerows(rows.values())


def _sample_std(values: np.ndarray) -> float:
    return float(values.std(ddof=1)) if len(values) > 1 else float("nan")


def table_rows(done: dict[Cell, SweepRecord]) -> list[dict]:
    """One row per task, size and position: mean and sample std over the seeds of the task score
    (test accuracy, or test MAE for regression) and of attention/argmax_hit, and whether the
    means meet the goals (accuracy >= 0.99 where there is one, argmax_hit >= 0.95; 0.9 for
    add_two_numbers)."""
    groups: dict[tuple, list[tuple[Cell, SweepRecord]]] = {}
    for cell, record in done.items():
        groups.setdefault((cell.task, cell.size, cell.position), []).append((cell, record))
    rows = []
    for (task, size, position), members in groups.items():
        members.sort(key=lambda pair: pair[0].seed)
        score = members[0][1].score_name
        scores = np.array([record.score for _, record in members])
        hits = np.array([record.argmax_hit for _, record in members])
        met = hits.mean() >= ARGMAX_GOAL.get(task, 0.95) and (
            score != "test/accuracy" or scores.mean() >= ACCURACY_GOAL
        )
        template = Cell(task, size, position, 0)
        rows.append(
            {
                "task": task,
                "model": template.model,
                "size": size,
                "position": position or "random",
                "seeds": ",".join(str(cell.seed) for cell, _ in members),
                "score": score.removeprefix("test/"),
                "score mean": float(scores.mean()),
                "score std": _sample_std(scores),
                "argmax_hit mean": float(hits.mean()),
                "argmax_hit std": _sample_std(hits),
                "goal met": "yes" if met and len(members) >= 3 else ("no" if len(members) >= 3 else ""),
                "command": template.command.replace("seed=0", "seed=N"),
                "runs": ",".join(record.run_id for _, record in members),
            }
        )
    order = {task: i for i, task in enumerate(TASKS)}
    return sorted(
        rows,
        key=lambda r: (
            order[r["task"]],
            r["size"],
            POSITIONS.index(r["position"]) if r["position"] in POSITIONS else 0,
        ),
    )


def markdown(rows: list[dict]) -> str:
    lines = [
        "Each planted task's default model at sizes (time steps; features for planted_feature) and planted "
        "positions, mean ± sample std over seeds (their number in brackets). Goal: accuracy ≥ 0.99 and "
        "argmax_hit ≥ 0.95 (add_two_numbers ≥ 0.9) on the means over ≥ 3 seeds. Made by "
        "`python -m pipeline.tools.sweep table --out docs/sweep`; each row's command is in the CSV.",
        "",
        "| task | model | size | position | score | argmax_hit | goal met |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        seeds = len(r["seeds"].split(","))
        lines.append(
            f"| {r['task']} | {r['model']} | {r['size']} | {r['position']} | {r['score']} "
            f"{r['score mean']:.4f} ± {r['score std']:.4f} ({seeds}) | {r['argmax_hit mean']:.3f} ± "
            f"{r['argmax_hit std']:.3f} | {r['goal met']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("missing", "queue", "table"))
    parser.add_argument("--tracking-uri", default=f"sqlite:///{repository_root() / DEFAULT_STORE}")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--sizes", nargs="+", type=int, help="in place of each task's own sizes")
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument(
        "--out", type=Path, help="table: write OUT.md, OUT.csv and the ledger OUT_runs.csv instead of printing"
    )
    parser.add_argument(
        "--ledger",
        type=Path,
        default=repository_root() / LEDGER,
        help="the committed record of finished runs (runs in it are not trained again)",
    )
    args = parser.parse_args(argv)
    cells = plan(args.tasks, tuple(args.sizes or ()), args.seeds)
    done = done_runs(args.tracking_uri, cells, args.ledger)
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
        ledger = args.out.with_name(args.out.name + "_runs.csv")
        write_ledger(ledger, {cell: done[cell] for cell in cells if cell in done})
        print(f"wrote {args.out.with_suffix('.md')}, .csv and {ledger.name} ({len(rows)} cells, {len(done)} runs)")
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
            study._dvc("exp", "run", "--queue", *[a for o in cell.overrides for a in ("-S", o)])
        print(("queued: " if args.action == "queue" else "") + cell.command)
    if args.action == "queue" and todo:
        print("now: dvc queue start -j 1, then python -m pipeline.tools.sweep table --out docs/sweep")


if __name__ == "__main__":
    run_command(main)
