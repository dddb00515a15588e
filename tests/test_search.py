"""Hyperparameter search: the search space's parser, and two workers in two clones sharing one
Optuna study (in PostgreSQL where PIPELINE_TEST_POSTGRES names a server, else SQLite), every
trial a DVC experiment logged to one MLflow store."""

from __future__ import annotations

import os
import sys
import uuid

import pytest

from pipeline.core.errors import ConfigError
from pipeline.tools.search import Dimension, optuna_storage, parse_dimension
from tests.conftest import TINY, TINY_SAMPLES, dvc, git_copy, start_command


def test_the_space_is_parsed_from_its_flags():
    assert parse_dimension("model.units=int:16:64") == Dimension("model.units", "int", 16, 64)
    assert parse_dimension("train.learning_rate=float:1e-4:1e-2:log") == Dimension(
        "train.learning_rate", "float", 1e-4, 1e-2, log=True
    )
    assert parse_dimension("model.score=choice:dot,general") == Dimension(
        "model.score", "choice", choices=("dot", "general")
    )


@pytest.mark.parametrize(
    "text",
    ["model.units", "model.units=int:16", "model.units=uniform:1:2", "a=int:x:3", "a=float:2:1", "a=float:0:1:log"],
)
def test_a_bad_space_names_its_flag(text):
    with pytest.raises(ConfigError, match=f"--space {text}"):
        parse_dimension(text)


def test_postgresql_studies_go_through_psycopg_3():
    assert optuna_storage("postgresql://u:p@db:5432/optuna") == "postgresql+psycopg://u:p@db:5432/optuna"
    assert optuna_storage("sqlite:///optuna.db") == "sqlite:///optuna.db"


OPEN_AND_TRY = """
import sys
from pipeline.tools.search import open_study
study = open_study("race", sys.argv[1], None)
for _ in range(5):
    trial = study.ask()
    study.tell(trial, float(trial.suggest_int("units", 1, 10)))
"""


@pytest.mark.e2e
def test_workers_starting_together_on_a_fresh_storage_all_open_the_study(tmp_path):
    """They race to create the storage's tables (a unique-constraint or table-exists error for
    the loser, seen with plain optuna.create_study): every one of them opens the study."""
    import optuna

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    workers = [start_command([sys.executable, "-c", OPEN_AND_TRY, storage]) for _ in range(4)]
    outputs = [worker.communicate(timeout=300)[0] for worker in workers]
    assert [w.returncode for w in workers] == [0] * 4, outputs
    assert len(optuna.load_study(study_name="race", storage=storage).trials) == 20


@pytest.fixture
def study_storage(tmp_path):
    """A fresh PostgreSQL database (dropped after) where the test server is set, else SQLite."""
    server = os.environ.get("PIPELINE_TEST_POSTGRES")
    if not server:
        yield f"sqlite:///{tmp_path / 'optuna.db'}"
        return
    import psycopg

    name = f"optuna_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(f"{server.rstrip('/')}/postgres", autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    yield f"{server.rstrip('/')}/{name}"
    with psycopg.connect(f"{server.rstrip('/')}/postgres", autocommit=True) as connection:
        connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.mark.e2e
def test_two_workers_share_one_study_and_every_trial_is_a_logged_dvc_experiment(tmp_path, study_storage):
    import mlflow
    import optuna

    fixed = [*TINY, f"data.n_samples={TINY_SAMPLES}"]
    command = [sys.executable, "-m", "pipeline.tools.search", "--study", "tiny", "--storage", study_storage]
    command += ["--trials", "2", "--space", "model.units=int:4:16"]  # a trial per worker
    command += [part for override in fixed for part in ("-S", override)]
    clones = [git_copy(tmp_path / f"machine{i}") for i in (1, 2)]
    # each machine its own MLflow store (the runs of several machines go to the team's server)
    # seeds 0 and 1: the first trials of the two workers draw 11 and 9 units
    workers = [start_command([*command, "--seed", str(seed)], clone) for seed, clone in enumerate(clones)]
    outputs = [worker.communicate(timeout=900)[0] for worker in workers]
    print("\n\n".join(outputs))  # shown in full when the test fails
    assert [w.returncode for w in workers] == [0, 0]

    trials = optuna.load_study(study_name="tiny", storage=optuna_storage(study_storage)).trials
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) >= 2 and len({t.params["model.units"] for t in complete}) > 1
    by_experiment = {}
    for clone in clones:  # each worker ran trials in its own clone, logged to its store
        names = dvc(clone, "exp", "list", "--name-only").stdout.split()
        assert names and set(names) <= {t.user_attrs["dvc_experiment"] for t in complete}
        client = mlflow.MlflowClient(f"sqlite:///{clone / 'mlflow.db'}")
        runs = client.search_runs([client.get_experiment_by_name("attention-planted_step").experiment_id])
        by_experiment |= {run.data.tags["dvc.experiment"]: run for run in runs}
    for trial in complete:
        run = by_experiment[trial.user_attrs["dvc_experiment"]]
        assert run.info.run_id == trial.user_attrs["mlflow_run_id"]
        assert run.data.params["model.units"] == str(trial.params["model.units"])
        assert run.data.metrics["train/best_val_loss"] == pytest.approx(trial.value)
