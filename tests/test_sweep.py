"""The size-and-position sweep: every cell composes a valid config, the table reads a real
MLflow store, and the ledger keeps finished runs for a store that starts empty."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest

from pipeline.core.config import compose_defaults, validate
from pipeline.experiments import ledger, sweep
from pipeline.tools.sweep import main as sweep_main
from tests.conftest import REPO_ROOT


def test_every_cell_of_the_sweep_is_a_valid_config(monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    cells = sweep.plan(seeds=(1,))
    assert len(cells) == 3 * 3 + 3 * 3 + 3 + 3
    for cell in cells:
        cfg = validate(compose_defaults(REPO_ROOT / "conf", cell.overrides), cell.command)
        assert cfg.model.name == cell.model
    last = sweep.Cell("planted_step", 30, "last", 2)
    assert "data.planted_step=29" in last.overrides and "data.time_steps=30" in last.overrides


def _log(cell: sweep.Cell, metrics: dict) -> str:
    with mlflow.start_run() as run:
        mlflow.log_params({**ledger.expected_params(cell, REPO_ROOT / "conf")})
        mlflow.log_metrics({**metrics, "attention/entropy": 1.0})
    return run.info.run_id


def test_the_table_gives_mean_and_std_over_seeds_and_the_goal(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("sweep")
    cells = sweep.plan(["planted_step"], (10,), (1, 2, 3))
    for cell, hit in zip([c for c in cells if c.position == "first"], (1.0, 0.98, 0.96)):
        _log(cell, {"test/accuracy": 0.995, "attention/argmax_hit": hit})
    for cell in [c for c in cells if c.position == "last"][:2]:
        _log(cell, {"test/accuracy": 0.9, "attention/argmax_hit": 0.5})
    _log(sweep.Cell("planted_step", 10, "middle", 1), {"test/accuracy": 0.5, "attention/argmax_hit": 0.0})

    sweep_main(
        [
            "table",
            "--tracking-uri",
            uri,
            "--tasks",
            "planted_step",
            "--sizes",
            "10",
            "--out",
            str(tmp_path / "sweep"),
            "--ledger",
            str(tmp_path / "none.csv"),
        ]
    )
    rows = {r["position"]: r for r in sweep.table_rows(sweep.done_runs(uri, cells))}
    first, last = rows["first"], rows["last"]
    assert first["argmax_hit mean"] == pytest.approx(0.98) and first["argmax_hit std"] == pytest.approx(0.02)
    assert first["goal met"] == "yes" and last["goal met"] == "" and np.isclose(last["score mean"], 0.9)
    assert (
        "| planted_step | lstm_attention | 10 | first | accuracy 0.9950 ± 0.0000 (3) | 0.980 ± 0.020 | yes |"
        in (tmp_path / "sweep.md").read_text()
    )
    missing = [c for c in cells if c not in sweep.done_runs(uri, cells)]
    assert [(c.position, c.seed) for c in missing] == [("middle", 2), ("middle", 3), ("last", 3)]


def test_the_ledger_stands_in_for_an_empty_store_until_the_recipe_changes(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("sweep")
    cells = sweep.plan(["planted_step"], (10,), (1,))
    _log(cells[0], {"test/accuracy": 0.995, "attention/argmax_hit": 0.97})
    _log(sweep.Cell("find_max", 10, None, 1), {"test/mae": 0.01, "attention/argmax_hit": 0.96})
    ledger = tmp_path / "sweep_runs.csv"
    sweep.write_ledger(ledger, sweep.done_runs(uri, cells))
    sweep.write_ledger(ledger, sweep.done_runs(uri, [sweep.Cell("find_max", 10, None, 1)]))  # keeps the first row

    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    from_ledger = sweep.done_runs(empty, [*cells, sweep.Cell("find_max", 10, None, 1)], ledger)
    assert from_ledger == sweep.done_runs(uri, [*cells, sweep.Cell("find_max", 10, None, 1)])
    assert from_ledger[sweep.Cell("find_max", 10, None, 1)].score_name == "test/mae"

    rows = ledger.read_text().splitlines()
    rows[1] = rows[1].replace(rows[1].rsplit(",", 1)[1], "0" * 16)  # written under another recipe
    ledger.write_text("\n".join(rows) + "\n")
    assert cells[0] not in sweep.done_runs(empty, cells, ledger)
