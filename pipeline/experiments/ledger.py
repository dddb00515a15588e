"""Which planned runs are done: a run counts when the MLflow store holds a finished one whose logged
params equal its cell's composed config, or when the committed ledger CSV holds one with the same
config digest. The study and the sweep keep their ledgers with these functions, by one rule.

A cell is any frozen dataclass with `overrides` (the Hydra overrides of its run), `seed` and,
for the study's selection runs, `inner_fold`.
"""

from __future__ import annotations

import csv
import functools
from dataclasses import replace
from pathlib import Path

from pipeline.core import digests
from pipeline.core.config import CONF_DIR, compose_defaults, flatten

# The sections whose params decide what a run trains to (the seed too).
COMPARED_SECTIONS = ("data", "model", "train")
# Options added to the config after runs were logged, with the value those runs trained with: a
# logged run or a ledger row without the option matches a config that sets it to that value. Any
# other option a run lacks counts as off (null).
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


@functools.cache
def _composed_params(overrides: tuple[str, ...], conf_dir: Path) -> tuple[tuple[str, str], ...]:
    composed = compose_defaults(conf_dir, list(overrides))
    sections = [k for k in COMPARED_SECTIONS if k != "train" or composed["model"]["name"] not in UNTRAINED_BY_GRADIENT]
    params = {k: v for k, v in flatten({k: composed[k] for k in sections}).items() if k not in RESULT_NEUTRAL}
    return tuple((k, str(v)) for k, v in params.items())


def expected_params(cell, conf_dir: Path = CONF_DIR) -> dict[str, str]:
    """The MLflow params a run of `cell` logs that decide its result: its composed data, model and
    (for a model trained by gradient) train sections flattened, and the seed, as strings.
    Composed once per setting: the seed and the inner fold only set their own keys."""
    fold = getattr(cell, "inner_fold", None)
    setting = replace(cell, seed=0) if fold is None else replace(cell, seed=0, inner_fold=0)
    params = dict(_composed_params(tuple(setting.overrides), Path(conf_dir)))
    params["seed"] = str(cell.seed)
    if fold is not None:
        params["data.inner_fold"] = str(fold)
    return params


def result_params_digest(cell, conf_dir: Path = CONF_DIR) -> str:
    """A short hash of the params that decide a run's result (`expected_params`), options at their
    VALUES_BEFORE_OPTIONS_EXISTED left out (so a row written before an option existed keeps its
    digest): a ledger row counts only while the recipe it was trained with is unchanged."""
    params = {k: v for k, v in expected_params(cell, conf_dir).items() if VALUES_BEFORE_OPTIONS_EXISTED.get(k) != v}
    return digests.result_params_digest(params)


def logged_value(params: dict[str, str], key: str) -> str:
    """A logged run's param `key`, or for a run logged before the option existed the value it
    trained with: VALUES_BEFORE_OPTIONS_EXISTED's, else "None" (off)."""
    return params.get(key, VALUES_BEFORE_OPTIONS_EXISTED.get(key, "None"))


def latest_matching_runs(runs: list, cells: list, conf_dir: Path = CONF_DIR) -> dict:
    """{cell: the latest of `runs` (MLflow runs) whose params equal the cell's expected params}."""
    found = {}
    for cell in cells:
        expected = expected_params(cell, conf_dir)
        for run in runs:
            if all(logged_value(run.data.params, k) == v for k, v in expected.items()) and (
                cell not in found or run.info.start_time > found[cell].info.start_time
            ):
                found[cell] = run
    return found


def read_rows(ledger: Path, key_columns: tuple[str, ...]) -> dict[tuple[str, ...], dict[str, str]]:
    """The ledger CSV's rows by the values of their `key_columns` ({} where there is no ledger)."""
    if not ledger.exists():
        return {}
    with open(ledger, newline="") as handle:
        return {tuple(row[c] for c in key_columns): row for row in csv.DictReader(handle)}


def current_rows(ledger: Path, key_columns: tuple[str, ...], keys: dict, conf_dir: Path = CONF_DIR) -> dict:
    """{cell: its ledger row} for each cell of `keys` ({cell: its key in the ledger}) whose row's
    config digest equals the cell's current one (a changed recipe leaves it out)."""
    rows = read_rows(ledger, key_columns)
    found = {}
    for cell, key in keys.items():
        row = rows.get(key)
        if row is not None and row["config digest"] == result_params_digest(cell, conf_dir):
            found[cell] = row
    return found


def write_rows(path: Path, columns: tuple[str, ...], rows: list[dict]) -> None:
    """The ledger CSV: `rows` in the order given, under `columns`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def later_runs(recorded: dict, logged: dict) -> dict:
    """The ledger's records (`recorded`) with the MLflow store's (`logged`) added, the later of
    the two (by started_ms) where both have a cell."""
    done = dict(recorded)
    for cell, record in logged.items():
        if cell not in done or record.started_ms >= done[cell].started_ms:
            done[cell] = record
    return done
