"""The comparison table reads a real MLflow store: one row per complete run, markdown and CSV."""

from __future__ import annotations

import csv
import shutil

import mlflow
import numpy as np
import pytest

from pipeline.experiments import ledger, queue, study
from pipeline.tools.compare import (
    accuracy_table,
    comparison_rows,
    critical_difference_diagram,
    main,
    rank_statistics,
    with_earlier_rows,
)
from pipeline.tracking import CPU_TAG
from tests.conftest import REPO_ROOT


def _log_run(experiment: str, model: str, hit: float, complete: bool = True, **params) -> str:
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=model) as run:
        mlflow.set_tags({"task": experiment.removeprefix("attention-"), "model": model})
        mlflow.log_params(params)
        mlflow.log_metrics({"train/param_count": 4565.0, "train/seconds": 10.5, "test/mae": 0.05})
        if complete:
            mlflow.log_metrics(
                {
                    "attention/argmax_hit": hit,
                    "attention/lift": hit * 20,
                    "attention/mass_at_target": hit,
                    "attention/entropy": 1.0,
                }
            )
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
    assert markdown.startswith("<!-- made by: python -m pipeline.tools.compare --tracking-uri")
    row = "| find_max | bahdanau |  |  | 0.05 | 0.96 | 0.96 | 19.2 | 1 |  |  |  |  |  |  |  | 4565 |  | 10.5 |"
    assert row in markdown
    with open(tmp_path / "docs" / "results.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 3

    # rebuilt from a store that holds only a new luong_dot run: the other rows stay as they were
    fresh = f"sqlite:///{tmp_path / 'fresh.db'}"
    mlflow.set_tracking_uri(fresh)
    newer = _log_run("attention-find_max", "luong_dot", 0.5)
    main(["--tracking-uri", fresh, "--out", str(tmp_path / "docs" / "results")])
    rebuilt = (tmp_path / "docs" / "results.md").read_text()
    assert f"{row} {strong} |" in rebuilt
    assert other in rebuilt and newer in rebuilt and weak not in rebuilt


def test_rows_are_the_latest_run_per_model_and_seed_at_the_task_s_own_size(tmp_path):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    own = {"data.time_steps": "20", "data.min_length": "20"}  # conf/data/find_max.yaml
    _log_run("attention-find_max", "bahdanau", 0.5, seed="1", **own)
    latest = _log_run("attention-find_max", "bahdanau", 0.6, seed="1", **own)
    other_seed = _log_run("attention-find_max", "bahdanau", 0.7, seed="2", **own)
    _log_run("attention-find_max", "bahdanau", 0.9, seed="1", **{**own, "data.time_steps": "100"})  # a sweep size

    rows = comparison_rows(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert [(r["run"], r["seed"]) for r in rows] == [(other_seed, "2"), (latest, "1")]


def test_the_planted_tasks_table_gives_each_explanation_s_ndcg_over_seeds(tmp_path):
    """Mean ± sample std over the seeds that have each figure; a model without NDCG has no row."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("attention-planted_region")
    for seed, ndcg, mass in (("1", 0.5, 0.3), ("2", 0.7, 0.5), ("3", 0.6, 0.4)):
        with mlflow.start_run():
            mlflow.set_tags({"task": "planted_region", "model": "conv_attention"})
            mlflow.log_params({"seed": seed})
            mlflow.log_metrics(
                {
                    "test/accuracy": 0.9,
                    "attention/entropy": 3.0,
                    "faithfulness/ndcg_attention": ndcg,
                    "faithfulness/contribution_mass_at_target": mass,
                }
            )
    _log_run("attention-planted_region", "lstm_attention", 0.4, seed="1")

    main(["--tracking-uri", uri, "--out", str(tmp_path / "results")])
    markdown = (tmp_path / "results.md").read_text()
    assert "### Explanations on the planted tasks" in markdown
    row = "| planted_region | conv_attention | 0.900 ± 0.000 (3) | – | 0.600 ± 0.100 (3) | – | – | 0.400 ± 0.100 (3) |"
    assert row in markdown
    assert "| planted_region | lstm_attention | 0." not in markdown


def _log_study_run(
    combination: study.Combination, accuracy: float, seconds: float, cpu: str | None = "CPU A", **changed
) -> str:
    """A finished, evaluated run with the params the pipeline logs for `combination`, trained on
    `cpu` (None: a run logged before the CPU was)."""
    params = {**ledger.expected_params(combination, REPO_ROOT / "conf"), "data.source": "ucr", **changed}
    mlflow.set_experiment(f"attention-{combination.dataset}")
    with mlflow.start_run() as run:
        mlflow.log_params(params)
        if cpu is not None:
            mlflow.set_tag(CPU_TAG, cpu)
        mlflow.log_metrics({"test/accuracy": accuracy, "train/seconds": seconds, "attention/entropy": 2.0})
    return run.info.run_id


def test_study_finds_the_runs_of_the_current_recipe_and_reports_mean_and_std(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)  # compose conf/ of the repository
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    plan = study.combinations(["GunPoint"], ["conv_attention", "conv_gap"], [1, 2, 3])
    for seed, accuracy in zip((1, 2, 3), (0.96, 0.98, 1.0)):
        _log_study_run(study.Combination("GunPoint", "conv_attention", seed), accuracy, 30.0 + seed)
    _log_study_run(study.Combination("GunPoint", "conv_gap", 1), 0.9, 20.0)
    _log_study_run(study.Combination("GunPoint", "conv_gap", 2), 0.5, 20.0, **{"train.epochs": "3"})  # another recipe

    assert study.missing(uri, plan) == [
        study.Combination("GunPoint", "conv_gap", 2),
        study.Combination("GunPoint", "conv_gap", 3),
    ]
    rows = study.summary(study.matching_runs(study.evaluated_runs(uri), plan))
    attention, gap = rows
    assert (attention["model"], attention["seeds"]) == ("conv_attention", "1,2,3")
    assert attention["accuracy mean"] == pytest.approx(98.0) and attention["accuracy std"] == pytest.approx(2.0)
    assert attention["train seconds mean"] == pytest.approx(32.0) and attention["train seconds max"] == 33.0
    assert attention["train cpus"] == "CPU A"
    assert gap["seeds"] == "1" and np.isnan(gap["accuracy std"])

    main(["--tracking-uri", uri, "--out", str(tmp_path / "results")])
    markdown = (tmp_path / "results.md").read_text()
    assert "| GunPoint | 98.00 ± 2.00 (3) | 90.00 ± nan (1) | 100.0 | ≥ 97 | yes |" in markdown
    with open(tmp_path / "results.csv") as handle:
        real = [row for row in csv.DictReader(handle) if row["table"] == "real"]
    assert [(r["model"], r["seeds"]) for r in real] == [("conv_attention", "1,2,3"), ("conv_gap", "1")]


def test_a_run_logged_before_an_option_existed_matches_the_value_it_trained_with(tmp_path, monkeypatch):
    """train.lr_schedule came after runs that trained with plateau halving: such a run, and its
    ledger row, still count for the plateau recipe and not for the cosine one."""
    monkeypatch.chdir(REPO_ROOT)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    plateau = study.Combination("GunPoint", "conv_attention", 1, None, study.PLATEAU)
    cosine = study.Combination("GunPoint", "conv_attention", 1)
    params = ledger.expected_params(plateau, REPO_ROOT / "conf")
    assert params["train.lr_schedule"] == "plateau"
    mlflow.set_experiment("attention-GunPoint")
    with mlflow.start_run():
        mlflow.log_params({k: v for k, v in params.items() if k != "train.lr_schedule"} | {"data.source": "ucr"})
        mlflow.log_metrics({"test/accuracy": 0.9, "train/seconds": 1.0, "attention/entropy": 2.0})
    assert study.missing(uri, [plateau, cosine]) == [cosine]

    ledger_file = tmp_path / "results_runs.csv"
    record = study.RunRecord(0.9, 1.0, "run-before-the-option", 0)
    with monkeypatch.context() as before_the_option:  # the ledger as the code of that time wrote it
        composed = ledger.expected_params
        before_the_option.setattr(
            ledger,
            "expected_params",
            lambda *args: {k: v for k, v in composed(*args).items() if k != "train.lr_schedule"},
        )
        study.write_ledger(ledger_file, {plateau: record})
    assert study.recorded_runs(ledger_file, [plateau, cosine]) == {plateau: record}


def test_a_changed_training_recipe_leaves_minirocket_runs_current(tmp_path, monkeypatch):
    """MiniRocket is fitted in closed form: its runs match on data, model and seed, so a new
    train section (epochs here) makes the gradient-trained runs missing and not MiniRocket's."""
    monkeypatch.chdir(REPO_ROOT)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    rocket, attention = (study.Combination("GunPoint", model, 1) for model in ("minirocket", "conv_attention"))
    for combination in (rocket, attention):
        _log_study_run(combination, 0.9, 10.0, **{"train.epochs": "3"})
    assert not any(key.startswith("train.") for key in ledger.expected_params(rocket, REPO_ROOT / "conf"))
    assert study.missing(uri, [rocket, attention]) == [attention]


def test_how_often_training_is_backed_up_does_not_decide_a_run(tmp_path, monkeypatch):
    """train.backup_every changes how a run is carried out, not its result (tests/test_reliability.py
    resumes from either to the same model): a run backed up every epoch counts for a recipe that
    backs up every 10, and a run of another learning rate does not."""
    monkeypatch.chdir(REPO_ROOT)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    seeds = study.combinations(["GunPoint"], ["conv_attention"], [1, 2])
    _log_study_run(seeds[0], 0.9, 10.0, **{"train.backup_every": "1"})
    _log_study_run(seeds[1], 0.9, 10.0, **{"train.learning_rate": "0.5"})
    assert study.missing(uri, seeds) == [seeds[1]]


def test_the_selection_study_reads_inner_fold_runs_only(tmp_path, monkeypatch):
    """Runs on inner folds of the training file form their own table (mean over the folds and
    seeds per setting), never mixed with the test-set results."""
    monkeypatch.chdir(REPO_ROOT)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    additive, gap = (
        f"{setting} lr_schedule=plateau lr_decay_patience=50"  # a train setting is a setting too
        for setting in ("conv_attention score=additive", "conv_gap")
    )
    plan = study.selection_combinations(["ArrowHead"], ("conv_attention", additive, gap))
    assert [c.label for c in plan[::3]] == ["conv_attention", additive, gap]
    assert plan[3].command.endswith(  # the recipe the settings were compared against, pinned
        "-S model.score=additive -S train.lr_schedule=plateau -S train.lr_decay_patience=50 -S train.epochs=300"
        " -S model.positional_encoding=false -S model.state_dropout=0.0 -S seed=1 -S data.inner_fold=0"
    )
    millet = study.selection_combinations(["ArrowHead"], ("conv_attention positional_encoding=true",))[0]
    assert millet.label == "conv_attention positional_encoding=true"  # a setting's own key is not pinned
    assert {k: ledger.expected_params(millet)[k] for k in ("model.positional_encoding", "model.state_dropout")} == {
        "model.positional_encoding": "True",
        "model.state_dropout": "0.0",
    }
    for combination, accuracy in zip(plan, (0.7, 0.8, 0.9, 0.6, 0.6, 0.6)):
        _log_study_run(combination, accuracy, 10.0)
    full = study.selection_combinations(["ArrowHead"], ("conv_gap epochs=1000 early_stopping_patience=0",))[0]
    assert full.command.endswith(  # a setting's own epochs replace the selection's
        "-S model=conv_gap -S train.epochs=1000 -S train.early_stopping_patience=0 -S seed=1 -S data.inner_fold=0"
    )
    assert ledger.expected_params(full)["train.epochs"] == "1000"
    wide = study.selection_combinations(["ArrowHead"], ("conv_attention filters=[128,256,128]",))[0]
    assert "-S 'model.filters=[128,256,128]' " in wide.command  # quoted: the shell must not glob it
    assert ledger.expected_params(wide)["model.filters"] == "[128, 256, 128]"
    two_seeds = study.selection_combinations(["ArrowHead"], ("conv_attention",), seeds=(1, 2))
    assert [(c.seed, c.inner_fold) for c in two_seeds] == [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)]
    _log_study_run(two_seeds[3], 1.0, 10.0)  # seed 2 on fold 0
    _log_study_run(study.Combination("ArrowHead", "conv_attention", 1), 0.5, 10.0)  # a test-set run
    second_set = study.selection_combinations(["GunPoint"], ("conv_attention", additive))[::3]  # fold 0
    for combination, accuracy in zip(second_set, (1.0, 0.5)):
        _log_study_run(combination, accuracy, 10.0)

    main(["--tracking-uri", uri, "--out", str(tmp_path / "results")])
    markdown = (tmp_path / "results.md").read_text()
    assert (  # one row per setting; the mean over the sets that every setting ran
        "| setting | GunPoint | ArrowHead | mean of the 2 sets all ran |\n|---|---|---|---|\n"
        "| conv_attention | 100.00 ± nan (1) | 85.00 ± 12.91 (4) | 92.50 |\n"
        f"| {additive} | 50.00 ± nan (1) | 60.00 ± 0.00 (3) | 55.00 |\n"
    ) in markdown
    assert "| ArrowHead | 50.00 ± nan (1) | 84.3 | ≥ 81.3 | no |" in markdown  # the test-set table, apart
    with open(tmp_path / "results.csv") as handle:
        selection = [row for row in csv.DictReader(handle) if row["table"] == "selection"]
    assert [(r["data set"], r["model"], r["seeds"]) for r in selection] == [
        ("GunPoint", "conv_attention", "0/1"),
        ("GunPoint", additive, "0/1"),
        ("ArrowHead", "conv_attention", "0/1,0/2,1/1,2/1"),
        ("ArrowHead", additive, "0/1,1/1,2/1"),
    ]
    assert "-S data.inner_fold=K" in selection[0]["command"]
    assert len(study.missing(uri, plan)) == 3  # conv_gap's folds


def test_rank_statistics_on_a_known_table(tmp_path):
    """Model a wins on every data set, b is second, c last: ranks 1, 2, 3; the Friedman test
    rejects; with 8 data sets every Wilcoxon-Holm pair differs at 0.05 (exact p 2 * 2^-8,
    Holm-adjusted x3 or x2)."""
    import pandas as pd

    rng = np.random.default_rng(0)
    base = rng.uniform(60, 90, size=8)
    table = pd.DataFrame(
        {"a": base + 5, "b": base + rng.uniform(1, 2, 8), "c": base}, index=[f"set{i}" for i in range(8)]
    )
    stats = rank_statistics(table)
    assert stats["mean rank"] == {"a": 1.0, "b": 2.0, "c": 3.0} and stats["data sets"] == 8
    assert stats["friedman p"] < 0.001
    for pair in (("a", "b"), ("a", "c"), ("b", "c")):
        assert stats["wilcoxon holm p"][pair[0]][pair[1]] == pytest.approx(3 * 2 / 2**8, rel=0.5)
        assert stats["wilcoxon holm p"][pair[0]][pair[1]] < 0.05
    tied = pd.DataFrame({"a": base, "b": base}, index=table.index)
    assert rank_statistics(tied)["mean rank"] == {"a": 1.5, "b": 1.5}
    same_counts = [  # 10 of 11 and 7 of 9 series right, once through float32 and once through float64
        {"data set": name, "model": model, "seeds": "1,2,3", "accuracy mean": 100 * accuracy}
        for name, share in (("UnitTest", 10 / 11), ("Other", 7 / 9))
        for model, accuracy in (("a", float(np.float32(share))), ("b", share))
    ]
    assert rank_statistics(accuracy_table(same_counts))["mean rank"] == {"a": 1.5, "b": 1.5}
    critical_difference_diagram(table, tmp_path / "cd.png")
    assert (tmp_path / "cd.png").read_bytes()[:4] == b"\x89PNG"


def test_the_ledger_keeps_finished_runs_for_a_fresh_store(tmp_path, monkeypatch):
    """compare --out writes every real-data run to OUT_runs.csv; with an empty MLflow store the
    study counts those runs as done and the tables are rebuilt from them, until the recipe changes."""
    monkeypatch.chdir(REPO_ROOT)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    plan = study.combinations(["UnitTest"], ["conv_attention"], [1, 2, 3])
    for combination, accuracy, cpu in zip(plan[:2], (0.9, 0.8), ("CPU A", None)):
        _log_study_run(combination, accuracy, 12.0, cpu)
    main(["--tracking-uri", uri, "--out", str(tmp_path / "results")])
    ledger = tmp_path / "results_runs.csv"
    first = (tmp_path / "results.md").read_text()
    assert "| UnitTest | 85.00 ± 7.07 (2) |" in first
    assert "| UnitTest | 12 / 12 [1] |" in first and "[1] CPU A + unrecorded (unrecorded: runs logged" in first

    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    assert study.missing(empty, plan) == plan
    assert study.missing(empty, plan, ledger) == [plan[2]]
    main(["--tracking-uri", empty, "--out", str(tmp_path / "results")])
    assert (tmp_path / "results.md").read_text().split("\n", 1)[1] == first.split("\n", 1)[1]

    changed = tmp_path / "conf"
    shutil.copytree(REPO_ROOT / "conf", changed)
    train = changed / "train" / "ucr.yaml"
    train.write_text(train.read_text().replace("epochs: 1000", "epochs: 999"))
    assert study.missing(empty, plan, ledger, conf_dir=changed) == plan


def test_faithfulness_figures_reach_the_table_and_survive_the_ledger(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    plan = study.combinations(["UnitTest"], ["conv_attention"], [1, 2])
    for combination, gain, drop, rho in zip(plan, (0.2, 0.4), (0.1, 0.3), (0.5, 0.7)):
        run_id = _log_study_run(combination, 0.9, 12.0)
        with mlflow.start_run(run_id=run_id):
            mlflow.log_metrics(
                {
                    "faithfulness/deletion_aopc_gain": gain,
                    "faithfulness/uniform_drop": drop,
                    "faithfulness/occlusion_spearman": rho,
                }
            )
    main(["--tracking-uri", uri, "--out", str(tmp_path / "results")])
    line = "| UnitTest | 0.300 / 20.0 / 0.60 / – |"
    assert line in (tmp_path / "results.md").read_text()
    main(["--tracking-uri", f"sqlite:///{tmp_path / 'empty.db'}", "--out", str(tmp_path / "results")])
    assert line in (tmp_path / "results.md").read_text(), "the ledger keeps the faithfulness figures"
    with open(tmp_path / "results.csv") as handle:
        real = [row for row in csv.DictReader(handle) if row["table"] == "real"]
    assert float(real[0]["uniform drop mean"]) == pytest.approx(0.2)


def test_the_explanations_table_sets_the_contribution_against_cam_and_occlusion(tmp_path, monkeypatch):
    """Per data set, mean ± std over seeds of each explanation's logit AOPCR, the contribution's
    lead over conv_gap's CAM and over the better occlusion, and occlusion's cost in calls."""
    monkeypatch.chdir(REPO_ROOT)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    figures = {  # model: per seed (attention, contribution, occlusion)
        "conv_attention": ((1.0, 3.0, 2.0), (2.0, 5.0, 2.5)),
        "conv_gap": ((0.0, 2.0, 4.5), (0.0, 3.0, 4.5)),
    }
    for model, seeded in figures.items():
        for seed, (attention, contribution, occlusion) in enumerate(seeded, 1):
            run_id = _log_study_run(study.Combination("UnitTest", model, seed), 0.9, 12.0)
            with mlflow.start_run(run_id=run_id):
                mlflow.log_metrics(
                    {
                        "faithfulness/aopcr_attention": attention,
                        "faithfulness/aopcr_contribution": contribution,
                        "faithfulness/aopcr_occlusion": occlusion,
                        "faithfulness/occlusion_calls": 10.0,
                    }
                )
    main(["--tracking-uri", uri, "--out", str(tmp_path / "results")])
    assert (
        "| UnitTest | 1.50 ± 0.71 | 4.00 ± 1.41 | 2.25 ± 0.35 | 2.50 ± 0.71 | 4.50 ± 0.00 | 1.50 | -0.50 | 10 |"
        in (tmp_path / "results.md").read_text()
    )
    main(["--tracking-uri", f"sqlite:///{tmp_path / 'empty.db'}", "--out", str(tmp_path / "results")])
    assert "| UnitTest | 1.50 ± 0.71 | 4.00 ± 1.41 |" in (tmp_path / "results.md").read_text(), "kept by the ledger"


def test_selection_runs_report_logit_aopcr_and_runs_without_it_count_as_missing_when_needed(tmp_path, monkeypatch):
    """The poolings are chosen on accuracy and on AOPCR (study.POOLING_RULE): the selection table
    gives both, and `--needs` trains again a run evaluated before its AOPCR existed."""
    monkeypatch.chdir(REPO_ROOT)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    instance = "conv_attention score=instance positional_encoding=true state_dropout=0.1"
    plan = study.selection_combinations(["GunPoint"], (instance,))
    assert "-S model.score=instance -S model.positional_encoding=true -S model.state_dropout=0.1" in plan[0].command
    for fold, combination in enumerate(plan):
        run_id = _log_study_run(combination, 0.9, 12.0)
        if fold:  # fold 0 was evaluated before the AOPCR existed
            with mlflow.start_run(run_id=run_id):
                mlflow.log_metrics(
                    {
                        "faithfulness/aopcr_attention": 0.5 * fold,
                        "faithfulness/aopcr_contribution": 2.0 * fold,
                        "faithfulness/aopcr_occlusion": 1.0,
                    }
                )
    assert study.missing(uri, plan) == []
    assert study.missing(uri, plan, needs=("faithfulness/aopcr_contribution",)) == plan[:1]
    main(["--tracking-uri", uri, "--out", str(tmp_path / "results")])
    assert f"| {instance} | 0.75 / 3.00 / 1.00 |" in (tmp_path / "results.md").read_text()


QUEUE_STATUS = """Task     Name        Created       Status
e60af1b  moody-lira  Nov 26, 2026  Running
465bd8d  urban-chay  Nov 26, 2026  Running
ef129ae  tenor-ruby  Nov 26, 2026  Queued
da4c60d  manly-wave  Nov 26, 2026  Queued
ac3101a  frore-toke  Nov 26, 2026  Failed
c212e53  parky-rick  Nov 26, 2026  Success

Worker status: {active} active, 0 idle
"""


def test_the_queue_state_counts_queued_experiments_and_busy_workers():
    """As `dvc queue status` prints them; a "Running" entry left by a killed worker counts for
    nothing, so `study wait` ends (or restarts a worker) by the queued count and the workers."""
    assert queue.queue_state(QUEUE_STATUS.format(active=1)) == (2, 1)
    assert queue.queue_state(QUEUE_STATUS.format(active=0)) == (2, 0)
    assert queue.queue_state("Task     Name        Created       Status\n") == (0, 0)


def test_two_models_get_ranks_and_wilcoxon_but_no_diagram(tmp_path, monkeypatch):
    """The critical-difference diagram belongs to the Nemenyi test of three models or more: two
    models on five data sets get their ranks and the Wilcoxon test, and no diagram."""
    monkeypatch.chdir(REPO_ROOT)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    for dataset in study.DATASETS[:5]:
        for seed in study.SEEDS:
            _log_study_run(study.Combination(dataset, "conv_attention", seed), 0.9, 10.0)
            _log_study_run(study.Combination(dataset, "minirocket", seed), 0.95, 1.0)
    main(["--tracking-uri", uri, "--out", str(tmp_path / "results")])
    markdown = (tmp_path / "results.md").read_text()
    assert "mean rank" in markdown and "Wilcoxon" in markdown
    assert not (tmp_path / "results_cd.png").exists()


def test_one_model_alone_gets_no_rank_statistics_and_an_earlier_diagram_is_removed(tmp_path, monkeypatch):
    """Ranks need two models: with the attention model's runs alone the table is written without
    them, and a critical-difference diagram of earlier runs does not stay behind."""
    monkeypatch.chdir(REPO_ROOT)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    for dataset in ("GunPoint", "ArrowHead"):
        for seed in study.SEEDS:
            _log_study_run(study.Combination(dataset, "conv_attention", seed), 0.9, 10.0)
    (tmp_path / "results_cd.png").write_bytes(b"a diagram of earlier runs")
    main(["--tracking-uri", uri, "--out", str(tmp_path / "results")])
    markdown = (tmp_path / "results.md").read_text()
    assert f"| GunPoint | 90.00 ± 0.00 ({len(study.SEEDS)}) |" in markdown and "mean rank" not in markdown
    assert not (tmp_path / "results_cd.png").exists()


def test_the_pooling_rule_admits_by_errors_and_chooses_by_aopcr_rank(monkeypatch):
    """study.POOLING_RULE on complete cells: errors counted from the held-out accuracies and fold
    sizes; of the poolings within POOLING_ERROR_MARGIN errors of the fewest, the best mean AOPCR rank."""
    monkeypatch.chdir(REPO_ROOT)
    gated, conjunctive, instance, additive = study.POOLING_SETTINGS
    sizes = [study.held_out_size("GunPoint", fold) for fold in range(3)]
    wrong_on_fold_0 = {gated: 0, conjunctive: 1, instance: 2, additive: 3}
    aopcr = {gated: 1.0, conjunctive: 3.0, instance: 2.0, additive: 4.0}
    done = {
        combination: study.RunRecord(
            1
            - (wrong_on_fold_0[combination.label] if combination.inner_fold == 0 else 0)
            / sizes[combination.inner_fold],
            10.0,
            "run",
            0,
            {"faithfulness/aopcr_contribution": aopcr[combination.label]},
        )
        for combination in study.selection_combinations(["GunPoint"], study.POOLING_SETTINGS)
    }
    choice = study.pooling_choice(done)
    assert choice["runs per setting"] == 3 and choice["errors"] == wrong_on_fold_0
    assert choice["mean rank"] == {gated: 4.0, conjunctive: 2.0, instance: 3.0, additive: 1.0}
    assert choice["admitted"] == [gated, conjunctive, instance]  # additive: 3 errors above the fewest
    assert choice["chosen"] == conjunctive
    done = {c: r for c, r in done.items() if c.label != gated}  # without the gated pooling no cell is complete
    assert study.pooling_choice(done) is None


def test_the_padding_rule_ranks_the_replicate_padded_poolings_beside_the_zero_padded_ones(monkeypatch):
    """study.PADDING_RULE: the pooling rule over seven candidates, the replicate-padded ones run
    with `-S model.padding=replicate` on the same folds; a zero-padded cell alone is not complete."""
    monkeypatch.chdir(REPO_ROOT)
    replicated = study.PADDING_SETTINGS[len(study.POOLING_SETTINGS) :]
    plan = study.selection_combinations(["GunPoint"], study.PADDING_SETTINGS)
    assert all("-S model.padding=replicate" in c.command for c in plan if c.label in replicated)
    aopcr = {label: float(rank) for rank, label in enumerate(study.PADDING_SETTINGS)}  # the last one best
    done = {c: study.RunRecord(1.0, 10.0, "run", 0, {"faithfulness/aopcr_contribution": aopcr[c.label]}) for c in plan}
    choice = study.pooling_choice(done, study.PADDING_SETTINGS)
    assert choice["admitted"] == list(study.PADDING_SETTINGS) and choice["chosen"] == replicated[-1]
    zero_padded = {c: r for c, r in done.items() if c.label not in replicated}
    assert study.pooling_choice(zero_padded, study.PADDING_SETTINGS) is None
    assert study.pooling_choice(zero_padded)["chosen"] == study.POOLING_SETTINGS[-1]


def test_a_rebuilt_table_keeps_the_earlier_seeds_the_store_lacks(tmp_path):
    """A store that holds only the default run of a task (seed 42, as `make repro` logs it) keeps
    the earlier table's seeds 1-3 of the same model beside it, and a seed it holds replaces the
    earlier row of that seed."""
    earlier = tmp_path / "results.csv"
    with open(earlier, "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["table", "task", "model", "seed", "attention/argmax_hit"])
        writer.writeheader()
        for seed in ("1", "2", "3"):
            writer.writerow(
                {
                    "table": "synthetic",
                    "task": "planted_step",
                    "model": "lstm_attention",
                    "seed": seed,
                    "attention/argmax_hit": "1.0",
                }
            )
    rows = [
        {"task": "planted_step", "model": "lstm_attention", "seed": seed, "attention/argmax_hit": 1.0}
        for seed in ("42", "3")
    ]
    merged = with_earlier_rows(rows, earlier)
    assert sorted(r["seed"] for r in merged) == ["1", "2", "3", "42"]
