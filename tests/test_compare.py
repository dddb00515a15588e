"""The comparison table reads a real MLflow store: one row per complete run, markdown and CSV."""

from __future__ import annotations

import csv

import mlflow

from pipeline.compare import comparison_rows, main, ucr_rows
from tests.conftest import REPO_ROOT


def _log_run(experiment: str, model: str, hit: float, complete: bool = True) -> str:
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=model) as run:
        mlflow.set_tags({"task": experiment.removeprefix("attention-"), "model": model})
        mlflow.log_metrics({"train/param_count": 4565.0, "train/seconds": 10.5, "test/mae": 0.05})
        if complete:
            mlflow.log_metrics({"attention/argmax_hit": hit, "attention/lift": hit * 20,
                                "attention/mass_at_target": hit, "attention/entropy": 1.0})
    return run.info.run_id


def test_rows_per_complete_run_best_first(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    weak = _log_run("attention-find_max", "luong_dot", 0.3)
    strong = _log_run("attention-find_max", "bahdanau", 0.96)
    _log_run("attention-find_max", "crashed", 0.0, complete=False)
    other = _log_run("attention-add_two_numbers", "bahdanau", 0.9)

    rows = comparison_rows(uri)
    assert [r["run"] for r in rows] == [other, strong, weak]
    assert rows[1]["model"] == "bahdanau" and rows[1]["attention/argmax_hit"] == 0.96
    assert rows[1]["params"] == 4565.0 and rows[1]["test/accuracy"] is None
    assert [r["run"] for r in comparison_rows(uri, ["attention-find_max"])] == [strong, weak]

    main(["--tracking-uri", uri, "--out", str(tmp_path / "docs" / "results")])
    markdown = (tmp_path / "docs" / "results.md").read_text()
    assert markdown.startswith("<!-- made by: python -m pipeline.compare --tracking-uri")
    assert "| find_max | bahdanau |  | 0.05 | 0.96 | 0.96 | 19.2 | 1 | 4565 | 10.5 |" in markdown
    with open(tmp_path / "docs" / "results.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 3


def _log_ucr_run(name: str, accuracy: float, seconds: float, **params) -> str:
    mlflow.set_experiment(f"attention-{name}")
    with mlflow.start_run() as run:
        mlflow.log_params({"data.source": "ucr", "data.name": name, "model.name": "conv_attention",
                           "seed": 42, **params})
        mlflow.log_metrics({"test/accuracy": accuracy, "train/seconds": seconds, "train/epochs": 80,
                            "attention/entropy": 2.0})
    return run.info.run_id


def test_ucr_table_keeps_the_best_run_per_data_set_beside_the_references(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    _log_ucr_run("GunPoint", 0.96, 50.0)
    best = _log_ucr_run("GunPoint", 0.98, 70.0, **{"train.batch_size": 8})
    vowels = _log_ucr_run("JapaneseVowels", 0.95, 40.0)
    _log_run("attention-find_max", "bahdanau", 0.96)

    rows = ucr_rows(uri, conf_dir=REPO_ROOT / "conf")
    assert [(r["data set"], r["run"]) for r in rows] == [("GunPoint", best), ("JapaneseVowels", vowels)]
    gun_point, japanese_vowels = rows
    assert gun_point["test accuracy %"] == 98.0 and gun_point["goal met"] == "yes"
    assert (gun_point["1-NN DTW"], gun_point["FCN"], gun_point["goal"]) == ("90.7", "100.0", "≥ 97")
    assert japanese_vowels["goal met"] == "no"
    # the command names the preset and every logged value that differs from it
    assert gun_point["command"] == "dvc exp run -S experiment=ucr_gun_point -S train.batch_size=8"
    assert [r["model"] for r in comparison_rows(uri)] == ["bahdanau"], "real data stays out of it"

    main(["--tracking-uri", uri, "--out", str(tmp_path / "results")])
    markdown = (tmp_path / "results.md").read_text()
    assert "## UCR/UEA time-series classification" in markdown and "| GunPoint | conv_attention | 98 |" in markdown
    with open(tmp_path / "results.csv") as handle:
        tables = [row["table"] for row in csv.DictReader(handle)]
    assert tables == ["synthetic", "ucr", "ucr"]
