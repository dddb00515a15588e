"""The size-and-position sweep of the planted tasks: each task's default model at several sequence
lengths (feature counts for planted_feature) and planted positions (first, middle, last), over
seeds; its cells, their runs (the MLflow store or the ledger docs/sweep_runs.csv) and its table.
The command is `python -m pipeline.tools.sweep`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from pipeline.experiments import ledger
from pipeline.tracking import evaluated_runs

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
    composed config (ledger.latest_matching_runs)."""
    found = {}
    for cell, run in ledger.latest_matching_runs(runs, cells).items():
        metrics = run.data.metrics
        score = "test/accuracy" if "test/accuracy" in metrics else "test/mae"
        found[cell] = SweepRecord(
            score, metrics[score], metrics["attention/argmax_hit"], run.info.run_id, run.info.start_time
        )
    return found


def _ledger_key(cell: Cell) -> tuple[str, str, str, str]:
    return cell.task, str(cell.size), cell.position or "", str(cell.seed)


def recorded_runs(path: Path, cells: list[Cell]) -> dict[Cell, SweepRecord]:
    """The runs of `cells` in the ledger CSV whose config digest equals their cell's current one."""
    rows = ledger.current_rows(path, LEDGER_CELL_COLUMNS, {cell: _ledger_key(cell) for cell in cells})
    return {
        cell: SweepRecord(
            row["score_name"], float(row["score"]), float(row["argmax_hit"]), row["run_id"], int(row["started_ms"])
        )
        for cell, row in rows.items()
    }


def done_runs(tracking_uri: str, cells: list[Cell], path: Path | None = None) -> dict[Cell, SweepRecord]:
    """Each cell that the MLflow store or the ledger at `path` holds, the later run where both do."""
    recorded = recorded_runs(path, cells) if path is not None else {}
    return ledger.later_runs(recorded, matching_runs(evaluated_runs(tracking_uri), cells))


def write_ledger(path: Path, done: dict[Cell, SweepRecord]) -> None:
    """The ledger CSV: its rows of cells outside `done` as they were, then one row per run of `done`."""
    rows = ledger.read_rows(path, LEDGER_CELL_COLUMNS)
    for cell, record in done.items():
        rows[_ledger_key(cell)] = {
            **dict(zip(LEDGER_CELL_COLUMNS, _ledger_key(cell), strict=True)),
            **{f.name: getattr(record, f.name) for f in fields(SweepRecord)},
            "config digest": ledger.result_params_digest(cell),
        }
    ledger.write_rows(path, LEDGER_COLUMNS, list(rows.values()))


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
