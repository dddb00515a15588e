"""The real-data study: every bundled UCR/UEA classification set x the attention model and its
peers x several seeds, and the selection study of settings on the inner folds of the training
files; their runs, found in the MLflow store or the ledger docs/results_runs.csv, and the rules
that choose a setting. The commands are `python -m pipeline.tools.study` (plan and queue) and
`python -m pipeline.tools.compare` (tables). No TensorFlow import.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.core.config import CONF_DIR, INNER_FOLDS
from pipeline.experiments import ledger

DATASETS = (
    "GunPoint",
    "ItalyPowerDemand",
    "ArrowHead",
    "OSULeaf",
    "ACSF1",
    "BasicMotions",
    "JapaneseVowels",
    "UnitTest",
)
MODELS = ("conv_attention", "conv_gap", "minirocket")
SEEDS = (1, 2, 3, 4, 5)  # five, as the FCN reference (dl-4-tsc: mean of 5 runs)
PRESET = "ucr"  # conf/experiment/ucr.yaml: data=ucr, model=conv_attention, train=ucr

# Published test accuracies (%): FCN from Fawaz et al. 2019 (dl-4-tsc, mean of its runs), and the
# goal of the attention model's mean (3 points below FCN, or the stated figure). UnitTest is a
# part of Chinatown bundled with sktime for its tests: nothing is published for it.
REFERENCES = {
    "GunPoint": {"FCN": 100.0, "goal": 97.0},
    "ItalyPowerDemand": {"FCN": 96.3, "goal": 93.3},
    "ArrowHead": {"FCN": 84.3, "goal": 81.3},
    "OSULeaf": {"FCN": 97.9, "goal": 94.9},
    "ACSF1": {"FCN": 89.8, "goal": 86.8},
    "BasicMotions": {"FCN": None, "goal": 97.5},
    "JapaneseVowels": {"FCN": 99.3, "goal": 97.0},
}
# Settings compared on training data only (--selection): each a model config and its overrides,
# run on every inner fold (data.inner_fold) of the training files with seed 1 (--seeds: several),
# with the recipe shortened to SELECTION_EPOCHS epochs (settings are ranked, not measured for the
# results table; a setting's own train.epochs replaces SELECTION_EPOCHS). docs/decisions.md has
# each comparison, its rule and its outcome.
PLATEAU = ("train.lr_schedule=plateau", "train.lr_decay_patience=50")
FULL_RECIPE = ("train.epochs=1000",)  # the recipe's own epochs, where SELECTION_EPOCHS is too few to stop early
FCN_WIDTH = "model.filters=[128,256,128]"  # the filters of the FCN of dl-4-tsc; the recipe's are half
MILLET_POOLING = ("model.positional_encoding=true", "model.state_dropout=0.1")  # MILLET's positions and dropout
# The per-step-logit poolings of MILLET (conjunctive, instance) and the softmax additive attention
# against the recipe's gated one (whose contribution is MILLET's additive explanation), with the
# rule fixed before their runs (POOLING_RULE): seeds 1-3 on ArrowHead's inner folds, seed 1 on
# GunPoint's and ItalyPowerDemand's.
POOLING_SCORES = ((), *((f"model.score={s}",) for s in ("conjunctive", "instance", "additive")))
POOLING_RULE = (
    "among the poolings whose held-out errors over these runs exceed the fewest by at most 2, "
    "the one whose contribution has the best mean rank of logit AOPCR per run (1 = highest)"
)
# Then MILLET's replicate padding (model.padding) under the per-step poolings the pooling rule
# ranked, on the same runs; PADDING_RULE, fixed before their runs, is the pooling rule over these
# and the four zero-padded poolings together.
REPLICATE_PADDING = "model.padding=replicate"
PADDED_SCORES = POOLING_SCORES[:3]  # gated, conjunctive, instance
PADDING_RULE = (
    "the pooling rule over the four poolings with zero padding and gated, conjunctive and instance "
    "with replicate padding"
)
# Then kernels of 3 steps in every block (a receptive field of 7 steps, the recipe's 14), which
# concentrated the contribution on planted_region's box; KERNEL_RULE, fixed before their runs, is the
# pooling rule over the recipe and them, on the same 15 inner-fold runs.
SMALL_KERNELS = "model.kernel_sizes=[3,3,3]"
KERNEL_RULE = (
    "the pooling rule over the recipe (gated, MILLET's positions and dropout) and the same with kernels [3,3,3]"
)
SELECTION_SETTINGS = (  # (model, overrides)
    ("conv_attention", ()),
    ("conv_attention", PLATEAU),
    ("conv_attention", ("model.score=class", *PLATEAU)),
    ("conv_attention", ("model.score=additive", *PLATEAU)),
    ("conv_gap", PLATEAU),
    ("conv_attention", ("train.ema_momentum=0.99",)),
    ("conv_attention", ("train.ema_momentum=0.999",)),
    ("conv_attention", ("model.gate_floor=0.5",)),
    ("conv_gap", ()),
    ("conv_attention", ("train.window_slice=0.9",)),
    ("conv_gap", ("train.window_slice=0.9",)),
    *((model, FULL_RECIPE) for model in ("conv_attention", "conv_gap")),
    *((model, (*FULL_RECIPE, "train.early_stopping_patience=0")) for model in ("conv_attention", "conv_gap")),
    *((model, (FCN_WIDTH,)) for model in ("conv_attention", "conv_gap")),
    *((model, ("model.state_dropout=0.1",)) for model in ("conv_attention", "conv_gap")),
    ("conv_attention", ("model.positional_encoding=true",)),
    ("conv_attention", MILLET_POOLING),
    *(("conv_attention", (*score, *MILLET_POOLING)) for score in POOLING_SCORES[1:]),
    *(("conv_attention", (*score, *MILLET_POOLING, REPLICATE_PADDING)) for score in PADDED_SCORES),
    ("conv_attention", (SMALL_KERNELS, *MILLET_POOLING)),
)
SELECTION_EPOCHS = 300
SELECTION_PROTOCOL = (f"train.epochs={SELECTION_EPOCHS}",)
SELECTION_SEED = 1
# The recipe the settings were compared against, where the model's config has changed since: MILLET's
# positions and state dropout joined conv_attention's defaults after the comparisons. A selection run
# sets these unless its setting sets the key itself, so each setting stays the one that was run.
SELECTION_BASE = {"conv_attention": ("model.positional_encoding=false", "model.state_dropout=0.0")}
# The committed record of finished runs (written by `python -m pipeline.tools.compare --out docs/results`):
# a fresh clone, or a machine whose MLflow store is gone, trains only what it lacks.
LEDGER = Path("docs/results_runs.csv")
# Evaluate's faithfulness/* metrics the study keeps per run, with their ledger column.
FAITHFULNESS_COLUMNS = {
    "faithfulness/deletion_aopc_gain": "aopc gain",
    "faithfulness/uniform_drop": "uniform drop",
    "faithfulness/occlusion_spearman": "occlusion rho",
    "faithfulness/seed_spearman": "seed rho",
    "faithfulness/aopcr_attention": "aopcr attention",
    "faithfulness/aopcr_contribution": "aopcr contribution",
    "faithfulness/aopcr_occlusion": "aopcr occlusion",
    "faithfulness/occlusion_calls": "occlusion calls",
}  # seed rho: by compare, across seeds
LEDGER_KEY_COLUMNS = ("data set", "model", "seed", "inner fold")
LEDGER_COLUMNS = (
    *LEDGER_KEY_COLUMNS,
    "test accuracy",
    "train seconds",
    "cpu",
    "run id",
    "started ms",
    "config digest",
    *FAITHFULNESS_COLUMNS.values(),
)
UNRECORDED_CPU = "unrecorded"  # runs logged before the CPU was


def unless_set(overrides: tuple[str, ...], setting: tuple[str, ...]) -> tuple[str, ...]:
    """`overrides` less the keys that the setting's overrides set themselves."""
    keys = {o.split("=", 1)[0] for o in setting}
    return tuple(o for o in overrides if o.split("=", 1)[0] not in keys)


def setting_label(model: str, overrides: tuple[str, ...]) -> str:
    """The model and its overrides, section names, the selection protocol and base dropped, e.g.
    "conv_attention score=additive" (the SELECTION key; a Combination's label)."""
    implied = (*SELECTION_PROTOCOL, *SELECTION_BASE.get(model, ()))
    return " ".join([model, *(o.split(".", 1)[1] for o in overrides if o not in implied)])


@dataclass(frozen=True)
class Combination:
    """One cell of the study: a data set, a model config (conf/model/<model>.yaml) with `extra`
    overrides, a seed, and for the selection study an inner fold (evaluated on a fold of the
    training file, the TEST file unread)."""

    dataset: str
    model: str
    seed: int
    inner_fold: int | None = None
    extra: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return setting_label(self.model, self.extra)

    @property
    def overrides(self) -> list[str]:
        fold = [] if self.inner_fold is None else [f"data.inner_fold={self.inner_fold}"]
        return [
            f"experiment={PRESET}",
            f"data.name={self.dataset}",
            f"model={self.model}",
            *self.extra,
            f"seed={self.seed}",
            *fold,
        ]

    @property
    def command(self) -> str:
        return "dvc exp run " + " ".join(f"-S {shlex.quote(o)}" for o in self.overrides)


POOLING_SETTINGS = tuple(  # the settings POOLING_RULE chooses from, by their labels
    setting_label("conv_attention", (*score, *MILLET_POOLING)) for score in POOLING_SCORES
)
PADDING_SETTINGS = (  # and those PADDING_RULE chooses from
    *POOLING_SETTINGS,
    *(setting_label("conv_attention", (*score, *MILLET_POOLING, REPLICATE_PADDING)) for score in PADDED_SCORES),
)
KERNEL_SETTINGS = (POOLING_SETTINGS[0], setting_label("conv_attention", (SMALL_KERNELS, *MILLET_POOLING)))
POOLING_ERROR_MARGIN = 2  # held-out errors above the fewest that still admit a pooling


# Each selection setting by its label, e.g. "conv_attention score=class lr_schedule=plateau ...".
SELECTION = {setting_label(model, extra): (model, extra) for model, extra in SELECTION_SETTINGS}


def combinations(datasets=DATASETS, models=MODELS, seeds=SEEDS) -> list[Combination]:
    return [Combination(d, m, s) for d in datasets for m in models for s in seeds]


def selection_combinations(datasets=DATASETS, settings=tuple(SELECTION), seeds=(SELECTION_SEED,)) -> list[Combination]:
    """Every setting of SELECTION on every inner fold of each data set's training file, with
    each of `seeds`."""
    return [
        Combination(
            d,
            model,
            seed,
            fold,
            (*setting, *unless_set(SELECTION_PROTOCOL, setting), *unless_set(SELECTION_BASE.get(model, ()), setting)),
        )
        for d in datasets
        for model, setting in (SELECTION[label] for label in settings)
        for seed in seeds
        for fold in range(INNER_FOLDS)
    ]


@dataclass(frozen=True)
class RunRecord:
    """What the study keeps of one finished, evaluated run: its test accuracy (0..1), training
    seconds, MLflow run id, start time (ms since the epoch), the faithfulness metrics of
    FAITHFULNESS_COLUMNS that it has (runs evaluated before they existed have none), and the CPU
    it trained on."""

    accuracy: float
    train_seconds: float
    run_id: str
    started_ms: int
    faithfulness: dict[str, float] = field(default_factory=dict, compare=False)
    cpu: str = UNRECORDED_CPU


def evaluated_runs(tracking_uri: str) -> list:
    """Finished runs of real data (data.source logged) that reached the evaluate stage."""
    from pipeline import tracking

    return [
        r
        for r in tracking.evaluated_runs(tracking_uri)
        if r.data.params.get("data.source") and "test/accuracy" in r.data.metrics
    ]


def _record(run) -> RunRecord:
    from pipeline.tracking import CPU_TAG

    return RunRecord(
        run.data.metrics["test/accuracy"],
        run.data.metrics.get("train/seconds", float("nan")),
        run.info.run_id,
        run.info.start_time,
        {k: run.data.metrics[k] for k in FAITHFULNESS_COLUMNS if k in run.data.metrics},
        run.data.tags.get(CPU_TAG, UNRECORDED_CPU),
    )


def matching_runs(runs: list, plan: list[Combination], conf_dir: Path = CONF_DIR) -> dict[Combination, RunRecord]:
    """The latest MLflow run of each combination of `plan` whose params equal its composed config
    (ledger.latest_matching_runs)."""
    return {c: _record(run) for c, run in ledger.latest_matching_runs(runs, plan, conf_dir).items()}


def _ledger_key(combination: Combination) -> tuple[str, str, str, str]:
    fold = "" if combination.inner_fold is None else str(combination.inner_fold)
    return combination.dataset, combination.label, str(combination.seed), fold


def recorded_runs(path: Path, plan: list[Combination], conf_dir: Path = CONF_DIR) -> dict[Combination, RunRecord]:
    """The runs of `plan` in the ledger CSV whose config digest equals their combination's
    current one (a changed recipe leaves them out)."""
    rows = ledger.current_rows(path, LEDGER_KEY_COLUMNS, {c: _ledger_key(c) for c in plan}, conf_dir)
    return {
        combination: RunRecord(
            float(row["test accuracy"]),
            float(row["train seconds"] or "nan"),
            row["run id"],
            int(row["started ms"]),
            {k: float(row[c]) for k, c in FAITHFULNESS_COLUMNS.items() if row.get(c)},
            row.get("cpu") or UNRECORDED_CPU,
        )
        for combination, row in rows.items()
    }


def done_runs(
    tracking_uri: str, plan: list[Combination], path: Path | None = None, conf_dir: Path = CONF_DIR
) -> dict[Combination, RunRecord]:
    """Each combination of `plan` that the MLflow store or the ledger at `path` holds, the later
    run where both do."""
    recorded = recorded_runs(path, plan, conf_dir) if path is not None else {}
    return ledger.later_runs(recorded, matching_runs(evaluated_runs(tracking_uri), plan, conf_dir))


def write_ledger(path: Path, done: dict[Combination, RunRecord], conf_dir: Path = CONF_DIR) -> None:
    """The ledger CSV: one row per run, in plan order as given."""
    rows = [
        {
            **dict(zip(LEDGER_KEY_COLUMNS, _ledger_key(combination), strict=True)),
            "test accuracy": f"{record.accuracy:.6f}",
            "train seconds": f"{record.train_seconds:.1f}",
            "cpu": record.cpu,
            "run id": record.run_id,
            "started ms": record.started_ms,
            "config digest": ledger.result_params_digest(combination, conf_dir),
            **{c: f"{record.faithfulness[k]:.6f}" for k, c in FAITHFULNESS_COLUMNS.items() if k in record.faithfulness},
        }
        for combination, record in done.items()
    ]
    ledger.write_rows(path, LEDGER_COLUMNS, rows)


def missing(
    tracking_uri: str,
    plan: list[Combination],
    path: Path | None = None,
    conf_dir: Path = CONF_DIR,
    needs: tuple[str, ...] = (),
) -> list[Combination]:
    """The combinations of `plan` that neither the MLflow store nor the ledger holds, or whose
    run lacks one of the faithfulness metrics `needs` (a run evaluated before the metric existed,
    whose model is no longer in the store to evaluate again)."""
    done = done_runs(tracking_uri, plan, path, conf_dir)
    return [c for c in plan if c not in done or any(m not in done[c].faithfulness for m in needs)]


def summary(runs_by_combination: dict[Combination, RunRecord]) -> list[dict]:
    """One row per (data set, model label): test accuracy mean and std over the seeds (or the
    inner folds and their seeds) in %, sample std, the seeds (or "fold/seed" pairs), the mean
    training seconds; in the order of DATASETS, then MODELS."""
    cells: dict[tuple[str, str], list] = {}
    for combination, record in runs_by_combination.items():
        replicate = combination.seed if combination.inner_fold is None else (combination.inner_fold, combination.seed)
        cells.setdefault((combination.dataset, combination.label), []).append((replicate, combination, record))
    rows = []
    order = {name: i for i, name in enumerate((*DATASETS, *MODELS))}
    for (dataset, model), seeded in sorted(
        cells.items(), key=lambda kv: (order.get(kv[0][0], 99), kv[0][0], order.get(kv[0][1], 99), kv[0][1])
    ):
        seeded.sort(key=lambda triple: triple[0])
        accuracy = np.array([100 * record.accuracy for _, _, record in seeded])
        seconds = np.array([record.train_seconds for _, _, record in seeded])
        rows.append(
            {
                "data set": dataset,
                "model": model,
                "seeds": ",".join(
                    str(replicate) if isinstance(replicate, int) else "/".join(map(str, replicate))
                    for replicate, _, _ in seeded
                ),
                "accuracy mean": float(accuracy.mean()),
                "accuracy std": float(accuracy.std(ddof=1)) if len(accuracy) > 1 else float("nan"),
                "train seconds mean": float(np.nanmean(seconds)),
                "train seconds max": float(np.nanmax(seconds)),
                "train cpus": " + ".join(sorted({record.cpu for _, _, record in seeded})),
                **{
                    f"{column} {statistic}": _statistic_of_present(
                        [record.faithfulness.get(metric) for _, _, record in seeded], statistic
                    )
                    for metric, column in FAITHFULNESS_COLUMNS.items()
                    for statistic in ("mean", "std")
                },
                "command": _cell_command(seeded[0][1]),
                "runs": ",".join(record.run_id for _, _, record in seeded),
            }
        )
    return rows


def _statistic_of_present(values: list[float | None], statistic: str) -> float:
    """The "mean" or the sample "std" of the values that are there and defined, nan if too few are."""
    present = [v for v in values if v is not None and not np.isnan(v)]
    if statistic == "mean":
        return float(np.mean(present)) if present else float("nan")
    return float(np.std(present, ddof=1)) if len(present) > 1 else float("nan")


def _cell_command(combination: Combination) -> str:
    """The command of a cell, the seed (and fold) as placeholders."""
    cell = Combination(
        combination.dataset, combination.model, 0, None if combination.inner_fold is None else 0, combination.extra
    )
    return cell.command.replace("seed=0", "seed=N").replace("inner_fold=0", "inner_fold=K") + (
        " (N: each seed)" if combination.inner_fold is None else " (N: each seed, K: each fold)"
    )


def held_out_size(dataset: str, fold: int) -> int:
    """Series in inner fold `fold` of a bundled set's training file (its held-out split)."""
    from pipeline.data.files import bundled_ucr_files, inner_fold_index, read_series

    labels = np.array(read_series(bundled_ucr_files(dataset)[0]).labels)
    return len(inner_fold_index(labels, INNER_FOLDS, fold))


def pooling_choice(done: dict[Combination, RunRecord], candidates: tuple[str, ...] = POOLING_SETTINGS) -> dict | None:
    """POOLING_RULE applied to the selection runs of `candidates` (setting labels): over the cells
    (data set, fold, seed) that every candidate ran with its AOPCR, each one's held-out errors and
    mean rank of its contribution's AOPCR (1 = highest), the admitted candidates and the chosen
    one; None if no cell is complete."""
    runs: dict[tuple, dict[str, RunRecord]] = {}
    for combination, record in done.items():
        if combination.inner_fold is not None and combination.label in candidates:
            cell = (combination.dataset, combination.inner_fold, combination.seed)
            runs.setdefault(cell, {})[combination.label] = record
    metric = "faithfulness/aopcr_contribution"
    complete = {
        cell: by_label
        for cell, by_label in runs.items()
        if set(by_label) == set(candidates) and all(metric in r.faithfulness for r in by_label.values())
    }
    if not complete:
        return None
    errors = dict.fromkeys(candidates, 0)
    ranks = {label: [] for label in candidates}
    for (dataset, fold, _), by_label in complete.items():
        size = held_out_size(dataset, fold)
        order = sorted(candidates, key=lambda label: -by_label[label].faithfulness[metric])
        for label, record in by_label.items():
            errors[label] += round((1 - record.accuracy) * size)
            ranks[label].append(1 + order.index(label))
    fewest = min(errors.values())
    admitted = [label for label in candidates if errors[label] <= fewest + POOLING_ERROR_MARGIN]
    mean_rank = {label: float(np.mean(r)) for label, r in ranks.items()}
    return {
        "runs per setting": len(complete),
        "errors": errors,
        "mean rank": mean_rank,
        "admitted": admitted,
        "chosen": min(admitted, key=lambda label: mean_rank[label]),
    }


def training_size(dataset: str) -> int:
    """Values in the training file of a bundled data set (series x steps x channels): the cost of
    an epoch, roughly."""
    from pipeline.data.files import bundled_ucr_files, read_series

    series = read_series(bundled_ucr_files(dataset)[0])
    return int(series.lengths.sum()) * series.channels
