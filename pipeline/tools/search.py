"""Hyperparameter search over DVC experiments: Optuna proposes the values, each trial is a
`dvc exp run`, and any number of workers share one study.

    python -m pipeline.tools.search --study units-lr --trials 6 \\
        --space model.units=int:16:64 --space train.learning_rate=float:0.0003:0.01:log
    python -m pipeline.tools.search ... --storage postgresql://USER:PASSWORD@HOST:5432/DATABASE -S data=find_max

A trial runs the whole pipeline as a DVC experiment named <study>-<trial number>, with the
sampled values and the fixed `-S` overrides; it logs to MLflow like any run (its tag
dvc.experiment names the trial). Its objective is the lowest validation loss of training
(`train/best_val_loss`): the validation split is carved from the training data, so no test
figure ever steers the search. The study lives in --storage (Optuna's RDB storage): SQLite for
the workers of one machine, the team's PostgreSQL for several. Each worker runs in its own clone
of the repository (a `dvc exp run` holds its working copy) and takes trials until the study has
--trials finished ones; a failed trial is recorded as failed and the worker goes on.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass

from pipeline.core import stage
from pipeline.core.errors import ConfigError, StageFailed, run_command

OBJECTIVE = "train/best_val_loss"
KINDS = ("int", "float", "choice")


@dataclass(frozen=True)
class Dimension:
    """One searched key: `kind` int or float over [low, high] (log-uniform if `log`), or choice."""

    key: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[str, ...] = ()

    def sample(self, trial) -> int | float | str:
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.choices))
        suggest = trial.suggest_int if self.kind == "int" else trial.suggest_float
        return suggest(self.key, self.low, self.high, log=self.log)


def parse_dimension(text: str) -> Dimension:
    """`key=int:16:64`, `key=float:1e-4:1e-2:log` or `key=choice:a,b,c` (ConfigError naming the flag)."""
    problem = f"--space {text}: expected KEY=int:LOW:HIGH[:log], KEY=float:LOW:HIGH[:log] or KEY=choice:A,B,..."
    key, _, spec = text.partition("=")
    kind, _, rest = spec.partition(":")
    if not key or kind not in KINDS or not rest:
        raise ConfigError(problem)
    if kind == "choice":
        return Dimension(key, kind, choices=tuple(rest.split(",")))
    parts = rest.split(":")
    if len(parts) not in (2, 3) or parts[2:] not in ([], ["log"]):
        raise ConfigError(problem)
    number = int if kind == "int" else float
    try:
        low, high = number(parts[0]), number(parts[1])
    except ValueError:
        raise ConfigError(f"{problem} (bounds must be {kind} numbers)") from None
    if not low < high or (len(parts) == 3 and low <= 0):
        raise ConfigError(f"--space {text}: needs LOW < HIGH, and LOW > 0 on a log scale")
    return Dimension(key, kind, low, high, log=len(parts) == 3)


def optuna_storage(url: str) -> str:
    """SQLAlchemy's URL of the study's database: postgresql:// goes through psycopg 3."""
    return "postgresql+psycopg://" + url.removeprefix("postgresql://") if url.startswith("postgresql://") else url


def open_study(name: str, storage: str, seed: int | None):
    """The study `name` in `storage`, created if new. Workers that start together race to create
    the storage's tables; the loser finds them made when it tries again."""
    import time

    import optuna
    import sqlalchemy.exc

    engine = {"connect_args": {"timeout": 60}} if storage.startswith("sqlite") else {}  # wait for a writer's lock
    for attempt in range(5):
        try:
            return optuna.create_study(
                study_name=name,
                storage=optuna.storages.RDBStorage(optuna_storage(storage), engine_kwargs=engine),
                load_if_exists=True,
                direction="minimize",
                sampler=optuna.samplers.TPESampler(seed=seed),
            )
        # the race's loser: IntegrityError or OperationalError on SQLite, ProgrammingError
        # (DuplicateTable) where PostgreSQL creates a table the other worker has just made
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError, sqlalchemy.exc.ProgrammingError):
            if attempt == 4:
                raise
            time.sleep(1 + attempt)


def run_trial(trial, study: str, space: list[Dimension], fixed: list[str]) -> float:
    """One `dvc exp run` with the trial's values; its objective from reports/train.json."""
    overrides = [*fixed, *(f"{d.key}={d.sample(trial)}" for d in space)]
    name = f"{study}-{trial.number}"
    command = [sys.executable, "-m", "dvc", "exp", "run", "-n", name]
    for override in overrides:
        command += ["-S", override]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise StageFailed(
            f"trial {trial.number} ({' '.join(overrides)}): `dvc exp run` failed:\n{result.stderr[-2000:]}"
        )
    report = stage.read_json(stage.TRAIN_REPORT)
    if OBJECTIVE not in report:
        raise ConfigError(
            f"trial {trial.number}: {stage.TRAIN_REPORT} has no {OBJECTIVE}: the search needs a validation split "
            "(a training set of at least data.val_min_series series)"
        )
    trial.set_user_attr("dvc_experiment", name)
    trial.set_user_attr("mlflow_run_id", stage.read_json(stage.MLFLOW_RUN_FILE)["run_id"])
    print(f"trial {trial.number} ({name}): {' '.join(overrides)} -> {OBJECTIVE} {report[OBJECTIVE]:.6g}", flush=True)
    return float(report[OBJECTIVE])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", required=True, help="the study's name, shared by its workers")
    parser.add_argument("--storage", default="sqlite:///optuna.db", help="Optuna's RDB storage URL")
    parser.add_argument("--trials", type=int, required=True, help="finished trials the study should reach")
    parser.add_argument("--space", action="append", required=True, help="KEY=int|float:LOW:HIGH[:log] or choice:A,B")
    parser.add_argument("-S", dest="fixed", action="append", default=[], help="a fixed override of every trial")
    parser.add_argument("--seed", type=int, default=None, help="the sampler's seed (default: random)")
    args = parser.parse_args()
    space = [parse_dimension(text) for text in args.space]
    if args.trials < 1:
        raise ConfigError(f"--trials {args.trials}: must be at least 1")

    import optuna
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(args.study, args.storage, args.seed)
    finished = MaxTrialsCallback(args.trials, states=(TrialState.COMPLETE, TrialState.FAIL))
    study.optimize(
        lambda trial: run_trial(trial, args.study, space, args.fixed), callbacks=[finished], catch=(StageFailed,)
    )
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    if not complete:
        raise StageFailed(f"study {args.study}: no trial finished")
    best = study.best_trial
    print(
        f"study {args.study}: {len(complete)} trials finished; best {best.user_attrs['dvc_experiment']} "
        f"{best.params} {OBJECTIVE} {best.value:.6g} (`dvc exp apply {best.user_attrs['dvc_experiment']}`)"
    )


if __name__ == "__main__":
    run_command(main)
