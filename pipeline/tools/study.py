"""The real-data study: every bundled UCR/UEA classification set x the attention model and its
peers x several seeds, run as DVC experiments, summarised from the MLflow store.

    python -m pipeline.tools.study missing          # the runs the store lacks, as `dvc exp run` commands
    python -m pipeline.tools.study queue            # queue them (dvc exp run --queue) in place of any
                                              # queued before; then
    dvc queue start -j 1                      # ...train them, one at a time
    python -m pipeline.tools.study wait             # until the queue is empty (restarts a stopped worker)
    python -m pipeline.tools.compare --out docs/results   # tables, ranks and the diagram
    python -m pipeline.tools.study queue --selection      # settings compared on inner folds of TRAIN

`make study` does all four. A run counts as done when the MLflow store holds a finished, evaluated
run whose logged params equal the composed config of its combination (data set, model, seed), or
when the committed ledger docs/results_runs.csv (written by compare) holds one with the same
config digest: a changed recipe makes every run of it missing again, and a rerun of `queue` adds
only what is missing, also on a fresh clone. No TensorFlow import.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import hashlib
import io
import json
import re
import shlex
import subprocess
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from pipeline.core.config import CONF_DIR, INNER_FOLDS, compose_defaults, flatten
from pipeline.core.errors import StageFailed, run_command

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
# results table). The poolings were compared with the plateau schedule, which the cosine one
# replaced after them; then the moving average of the weights (train.ema_momentum) against the
# best epoch's; then a floor under the gates (model.gate_floor) against the gates and the global
# average, over seeds 1-3; then training both on random windows of the series (train.window_slice);
# then both with the recipe's full epochs (a setting's own train.epochs replaces SELECTION_EPOCHS),
# with early stopping on the training loss and without; then the encoder at the FCN's full width
# (128-256-128, as dl-4-tsc) against the recipe's half width; then MILLET's dropout of the
# encoder's states before the pooling (its published 0.1), on the inner folds of several sets;
# then MILLET's positional encoding of the states, alone and with that dropout (its whole pooling).
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
)
SELECTION_EPOCHS = 300
SELECTION_PROTOCOL = (f"train.epochs={SELECTION_EPOCHS}",)
SELECTION_SEED = 1
# The recipe the settings were compared against, where the model's config has changed since: MILLET's
# positions and state dropout joined conv_attention's defaults after the comparisons. A selection run
# sets these unless its setting sets the key itself, so each setting stays the one that was run.
SELECTION_BASE = {"conv_attention": ("model.positional_encoding=false", "model.state_dropout=0.0")}
COMPARED_SECTIONS = ("data", "model", "train")
# Options added to the config after runs were logged, with the value those runs trained with: a
# run or ledger row without the option matches a config that sets it to that value.
VALUES_BEFORE_OPTIONS_EXISTED = {
    "train.lr_schedule": "plateau",
    "train.ema_momentum": "None",
    "model.gate_floor": "0.0",
    "train.window_slice": "None",
    "model.state_dropout": "0.0",
    "model.positional_encoding": "False",
    "model.padding": "zero",
}
# Settings that change how a run is carried out, not what it trains to: not compared.
RESULT_NEUTRAL = ("train.backup_every",)
UNTRAINED_BY_GRADIENT = ("minirocket",)  # fitted in closed form: the train section does not decide them
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
LEDGER_COLUMNS = (
    "data set",
    "model",
    "seed",
    "inner fold",
    "test accuracy",
    "train seconds",
    "cpu",
    "run id",
    "started ms",
    "config digest",
    *FAITHFULNESS_COLUMNS.values(),
)
UNRECORDED_CPU = "unrecorded"  # runs logged before the CPU was


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


def unless_set(overrides: tuple[str, ...], setting: tuple[str, ...]) -> tuple[str, ...]:
    """`overrides` less the keys that the setting's overrides set themselves."""
    keys = {o.split("=", 1)[0] for o in setting}
    return tuple(o for o in overrides if o.split("=", 1)[0] not in keys)


@functools.cache
def _composed_params(combination: Combination, conf_dir: Path) -> tuple[tuple[str, str], ...]:
    composed = compose_defaults(conf_dir, combination.overrides)
    sections = [k for k in COMPARED_SECTIONS if k != "train" or composed["model"]["name"] not in UNTRAINED_BY_GRADIENT]
    params = {k: v for k, v in flatten({k: composed[k] for k in sections}).items() if k not in RESULT_NEUTRAL}
    params["seed"] = composed["seed"]
    return tuple((k, str(v)) for k, v in params.items())


def expected_params(combination: Combination, conf_dir: Path = CONF_DIR) -> dict[str, str]:
    """The MLflow params a run of `combination` logs that decide its result: its composed data,
    model and (for a model trained by gradient) train sections flattened, and the seed, as
    strings. Composed once per setting: the seed and the inner fold only set their own keys."""
    fold = getattr(combination, "inner_fold", None)  # a Combination's; the planted sweep's cells have none
    setting = replace(combination, seed=0) if fold is None else replace(combination, seed=0, inner_fold=0)
    params = dict(_composed_params(setting, Path(conf_dir)))
    params["seed"] = str(combination.seed)
    if fold is not None:
        params["data.inner_fold"] = str(fold)
    return params


def config_digest(combination: Combination, conf_dir: Path = CONF_DIR) -> str:
    """A short hash of the composed config of `combination`: a ledger row counts only while the
    recipe it was trained with is unchanged."""
    params = {
        k: v for k, v in expected_params(combination, conf_dir).items() if VALUES_BEFORE_OPTIONS_EXISTED.get(k) != v
    }  # the digest such a row was written with
    text = json.dumps(params, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


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


def matching_runs(runs: list, plan: list[Combination], conf_dir: Path = CONF_DIR) -> dict[Combination, RunRecord]:
    """The latest MLflow run of each combination of `plan` whose params equal its composed config.
    An option that is off (null), or has its VALUES_BEFORE_OPTIONS_EXISTED value, may be absent
    from a run logged before the option existed."""
    from pipeline.tracking import CPU_TAG

    found: dict[Combination, RunRecord] = {}
    for combination in plan:
        expected = expected_params(combination, conf_dir)
        for run in runs:
            if all(
                run.data.params.get(k, VALUES_BEFORE_OPTIONS_EXISTED.get(k, "None")) == v for k, v in expected.items()
            ) and (combination not in found or run.info.start_time > found[combination].started_ms):
                found[combination] = RunRecord(
                    run.data.metrics["test/accuracy"],
                    run.data.metrics.get("train/seconds", float("nan")),
                    run.info.run_id,
                    run.info.start_time,
                    {k: run.data.metrics[k] for k in FAITHFULNESS_COLUMNS if k in run.data.metrics},
                    run.data.tags.get(CPU_TAG, UNRECORDED_CPU),
                )
    return found


def _ledger_key(dataset: str, label: str, seed: str, fold: str) -> tuple[str, str, str, str]:
    return dataset, label, seed, fold


def recorded_runs(ledger: Path, plan: list[Combination], conf_dir: Path = CONF_DIR) -> dict[Combination, RunRecord]:
    """The runs of `plan` in the ledger CSV whose config digest equals their combination's
    current one (a changed recipe leaves them out)."""
    if not ledger.exists():
        return {}
    with open(ledger, newline="") as handle:
        rows = {_ledger_key(r["data set"], r["model"], r["seed"], r["inner fold"]): r for r in csv.DictReader(handle)}
    found = {}
    for combination in plan:
        fold = "" if combination.inner_fold is None else str(combination.inner_fold)
        row = rows.get(_ledger_key(combination.dataset, combination.label, str(combination.seed), fold))
        if row is not None and row["config digest"] == config_digest(combination, conf_dir):
            found[combination] = RunRecord(
                float(row["test accuracy"]),
                float(row["train seconds"] or "nan"),
                row["run id"],
                int(row["started ms"]),
                {k: float(row[c]) for k, c in FAITHFULNESS_COLUMNS.items() if row.get(c)},
                row.get("cpu") or UNRECORDED_CPU,
            )
    return found


def done_runs(
    tracking_uri: str, plan: list[Combination], ledger: Path | None = None, conf_dir: Path = CONF_DIR
) -> dict[Combination, RunRecord]:
    """Each combination of `plan` that the MLflow store or the ledger holds, the later run where
    both do."""
    recorded = recorded_runs(ledger, plan, conf_dir) if ledger is not None else {}
    return later_runs(recorded, matching_runs(evaluated_runs(tracking_uri), plan, conf_dir))


def later_runs(recorded: dict, logged: dict) -> dict:
    """The ledger's records (`recorded`) with the MLflow store's (`logged`) added, the later of
    the two (by started_ms) where both have a cell."""
    done = dict(recorded)
    for cell, record in logged.items():
        if cell not in done or record.started_ms >= done[cell].started_ms:
            done[cell] = record
    return done


def write_ledger(path: Path, done: dict[Combination, RunRecord], conf_dir: Path = CONF_DIR) -> None:
    """The ledger CSV: one row per run, in plan order as given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=LEDGER_COLUMNS)
        writer.writeheader()
        for combination, record in done.items():
            writer.writerow(
                {
                    "data set": combination.dataset,
                    "model": combination.label,
                    "seed": combination.seed,
                    "inner fold": "" if combination.inner_fold is None else combination.inner_fold,
                    "test accuracy": f"{record.accuracy:.6f}",
                    "train seconds": f"{record.train_seconds:.1f}",
                    "cpu": record.cpu,
                    "run id": record.run_id,
                    "started ms": record.started_ms,
                    "config digest": config_digest(combination, conf_dir),
                    **{
                        c: f"{record.faithfulness[k]:.6f}"
                        for k, c in FAITHFULNESS_COLUMNS.items()
                        if k in record.faithfulness
                    },
                }
            )


def missing(
    tracking_uri: str,
    plan: list[Combination],
    ledger: Path | None = None,
    conf_dir: Path = CONF_DIR,
    needs: tuple[str, ...] = (),
) -> list[Combination]:
    """The combinations of `plan` that neither the MLflow store nor the ledger holds, or whose
    run lacks one of the faithfulness metrics `needs` (a run evaluated before the metric existed,
    whose model is no longer in the store to evaluate again)."""
    done = done_runs(tracking_uri, plan, ledger, conf_dir)
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


def _dvc(*args: str) -> str:
    result = subprocess.run(["dvc", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise StageFailed(f"`dvc {shlex.join(args)}` failed: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def queue_state(status: str) -> tuple[int, int]:
    """(experiments queued, workers active) from the text of `dvc queue status`."""
    queued = sum(1 for line in status.splitlines() if line.rstrip().endswith("Queued"))
    workers = re.search(r"Worker status: (\d+) active", status)
    return queued, int(workers.group(1)) if workers else 0


def wait_for_queue(poll_seconds: float = 30) -> str:
    """Block until nothing is queued and no worker is busy; its final `dvc queue status`. A worker
    that stopped while experiments wait is started again (DVC's worker can stop after a task when
    it has seen a shutdown request); an entry left "Running" by a killed worker does not block."""
    while True:
        status = _dvc("queue", "status")
        queued, active = queue_state(status)
        if not active:
            if not queued:
                return status
            _dvc("queue", "start", "-j", "1")
        time.sleep(poll_seconds)


def main(argv: list[str] | None = None) -> None:
    from pipeline.tracking import DEFAULT_STORE, repository_root

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("missing", "queue", "wait"))
    parser.add_argument("--tracking-uri", default=f"sqlite:///{repository_root() / DEFAULT_STORE}")
    parser.add_argument("--datasets", nargs="+", default=DATASETS)
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument(
        "--seeds", nargs="+", type=int, help=f"default: {' '.join(map(str, SEEDS))}; with --selection {SELECTION_SEED}"
    )
    parser.add_argument(
        "--ledger",
        type=Path,
        default=repository_root() / LEDGER,
        help="the committed record of finished runs (runs in it are not trained again)",
    )
    parser.add_argument(
        "--selection",
        action="store_true",
        help="the selection study instead: SELECTION's settings on the inner folds of the training files",
    )
    parser.add_argument(
        "--settings",
        nargs="+",
        choices=tuple(SELECTION),
        default=tuple(SELECTION),
        help="with --selection: the SELECTION settings to compare (default: all)",
    )
    parser.add_argument(
        "--needs",
        nargs="+",
        default=(),
        choices=tuple(FAITHFULNESS_COLUMNS),
        help="count a run as missing if it lacks these metrics (train it again)",
    )
    args = parser.parse_args(argv)
    if args.action == "wait":
        print(wait_for_queue())
        return
    plan = (
        selection_combinations(args.datasets, args.settings, args.seeds or (SELECTION_SEED,))
        if args.selection
        else combinations(args.datasets, args.models, args.seeds or SEEDS)
    )
    model_order = list(args.models)  # queued in the order --models names them, quick data sets first
    todo = sorted(
        missing(args.tracking_uri, plan, args.ledger, needs=tuple(args.needs)),
        key=lambda c: (
            model_order.index(c.model) if c.model in model_order else len(model_order),
            training_size(c.dataset),
        ),
    )
    print(
        f"{len(plan) - len(todo)} of {len(plan)} runs are in {args.tracking_uri} or {args.ledger}; {len(todo)} missing"
    )
    if args.action == "queue":
        _dvc("queue", "remove", "--queued")  # what an interrupted study left queued is queued afresh
    for combination in todo:
        if args.action == "queue":
            _dvc("exp", "run", "--queue", *[a for o in combination.overrides for a in ("-S", o)])
        print(("queued: " if args.action == "queue" else "") + combination.command)
    if args.action == "queue" and todo:
        print("now: dvc queue start -j 1 && python -m pipeline.tools.study wait")


if __name__ == "__main__":
    run_command(main)
