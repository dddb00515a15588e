"""Reliability: the same seed gives the same numbers in separate processes, and within the stated
tolerance with another CPU's kernels; a training killed with SIGKILL resumes on the next
`dvc repro` to the same result, data-parallel training on two logical CPUs or two worker
processes agrees with one process, and nothing unsafe is loaded."""

from __future__ import annotations

import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.core import stage
from pipeline.tools.loadbench import free_port
from tests.conftest import REPO_ROOT, dvc, git_copy, run_command, subprocess_env, tiny_params
from tests.cpu_modes import CPU_MODES, mode_environment, run_pipeline

# Long enough to kill mid-training: 12 epochs of 30 small batches.
TRAINING = ("train.epochs=12", "train.batch_size=8")
# The series recipe on a small real data set (23 training series): Conv1D and BatchNorm kernels,
# no validation split, batches of 2.
# The recipe's model without its state dropout: two workers draw other dropout masks than one process.
CONV = ("experiment=ucr", "data.name=UnitTest", "model.filters=[16,32,16]", "model.state_dropout=0.0", "seed=1")


# Trained again by two worker processes: the planted LSTM and the convolutional model.
MULTI_WORKER_RUNS = {"first": (), "conv_first": CONV}
# Two workers against one process: every training figure within this relative difference
# (measured: 3e-7 at most), the ONNX outputs within this absolute one (measured: 3e-7 for the
# LSTM, 2.8e-5 for the convolutional model, whose synchronized BatchNormalization computes the
# variance as E[x^2] - E[x]^2); docs/guide/scaling.md.
MULTI_WORKER_TOLERANCE = {"figures": 1e-5, "outputs": 1e-4}

# Fixed-epoch training of a planted task under another CPU's kernels (tests/cpu_modes.py): every
# figure within this relative difference, the ONNX outputs (probabilities, attention weights)
# within this absolute one (measured: at most 1.8e-7, docs/guide/reliability.md).
CROSS_CPU_TOLERANCE = 1e-5


def _pipeline_process(
    folder: Path, *overrides: str, cpu_mode: str = "native", env: dict[str, str] | None = None
) -> subprocess.Popen:
    """The pipeline on tiny data in a fresh process of its own, in `folder`, with oneDNN as
    `cpu_mode` (tests/cpu_modes.py) says and the variables `env` added."""
    return run_pipeline(folder, tiny_params(*TRAINING, *overrides), cpu_mode, env)


def _cluster(workers: list[str], index: int) -> dict[str, str]:
    """The environment of worker `index` of a MultiWorkerMirroredStrategy over `workers`."""
    return {"TF_CONFIG": json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})}


# Every run the tests compare: its overrides, its CPU mode and, for the two workers of one
# MultiWorkerMirroredStrategy training on loopback, the name of their cluster.
RUNS: dict[str, dict] = {
    "first": {},
    "second": {},  # the same seed in another process
    "mirrored": {"overrides": ("train.strategy=mirrored", "train.cpu_replicas=2")},
    "conv_first": {"overrides": CONV},
    "conv_second": {"overrides": CONV},
    "conv_seed_2": {"overrides": (*CONV, "seed=2")},
    **{mode: {"cpu_mode": mode} for mode in CPU_MODES if mode != "native"},
    **{
        f"{name}_worker_{index}": {"overrides": (*extra, "train.strategy=multi_worker"), "cluster": name}
        for name, extra in MULTI_WORKER_RUNS.items()
        for index in range(2)
    },
}


class PipelineRuns:
    """The runs of RUNS that the selected tests ask for, each in a fresh process of its own,
    trained in the background from the first time a test asks for one: as many processes at a
    time as there are cores (the two workers of a cluster together), the runs a waiting test asks
    for first."""

    def __init__(self, base: Path, asked: set[str]):
        self.base = base
        self.pending = [name for name in RUNS if name in asked or RUNS[name].get("cluster") in _clusters(asked)]
        # composed here, in the test's thread: Hydra's composition is not for two threads at once
        self.params = {name: tiny_params(*TRAINING, *RUNS[name].get("overrides", ())) for name in self.pending}
        self.running: dict[str, subprocess.Popen] = {}
        self.done: dict[str, int] = {}  # name -> exit status
        self.slots = max(2, os.cpu_count() or 2)
        self.lock = threading.Condition()
        self.scheduler: threading.Thread | None = None
        self.stopped = False

    def __call__(self, *names: str) -> list[Path]:
        """The folders of the runs `names`, once each has finished (asserting it succeeded)."""
        with self.lock:
            wanted = [name for name in self.pending if name in names or RUNS[name].get("cluster") in _clusters(names)]
            self.pending = wanted + [name for name in self.pending if name not in wanted]
            if self.scheduler is None:
                self.scheduler = threading.Thread(target=self._schedule, daemon=True)
                self.scheduler.start()
            self.lock.notify_all()
            finished = self.lock.wait_for(lambda: all(name in self.done for name in names), timeout=900)
        assert finished, f"runs {names} did not finish in 900 s"
        for name in names:
            assert self.done[name] == 0, f"{name}: {(self.base / f'{name}.log').read_text()[-3000:]}"
        return [self.base / name for name in names]

    def _schedule(self) -> None:
        with self.lock:
            while not self.stopped and (self.pending or self.running):
                for name, process in list(self.running.items()):
                    if process.poll() is not None:
                        self.done[name] = self.running.pop(name).returncode
                        self.lock.notify_all()
                while self.pending and not self.stopped:
                    group = self._group(self.pending[0])
                    if self.running and len(self.running) + len(group) > self.slots:
                        break
                    self._start(group)
                self.lock.wait(timeout=0.2)

    def _group(self, name: str) -> list[str]:
        cluster = RUNS[name].get("cluster")
        return [other for other in self.pending if cluster and RUNS[other].get("cluster") == cluster] or [name]

    def _start(self, group: list[str]) -> None:
        ports = [f"127.0.0.1:{free_port()}" for _ in group]
        for index, name in enumerate(group):
            spec = RUNS[name]
            env = _cluster(ports, index) if "cluster" in spec else None
            self.running[name] = run_pipeline(
                self.base / name, self.params[name], spec.get("cpu_mode", "native"), env, log=self.base / f"{name}.log"
            )
            self.pending.remove(name)

    def stop(self) -> None:
        """Kill what still runs (runs nobody asked for, in a selection of the tests)."""
        with self.lock:
            self.stopped = True
            for process in self.running.values():
                process.kill()
                process.wait(timeout=30)


def _clusters(names) -> set[str]:
    return {RUNS[name]["cluster"] for name in names if "cluster" in RUNS[name]}


def _session_has_mode(mode: str) -> bool:
    """Whether this process already computes with the kernels of CPU mode `mode`."""
    return mode != "native" and all(os.environ.get(name) == value for name, value in CPU_MODES[mode].items())


# The runs each test compares, by the test's parameters: the folders its `runs` fixture holds,
# in this order.
ASKED: dict[str, Callable[..., tuple[str, ...]]] = {
    "test_same_seed_gives_identical_metrics_and_onnx_outputs": lambda pair: pair,
    "test_another_seed_gives_another_run_on_the_same_data": lambda: ("conv_first", "conv_seed_2"),
    "test_another_cpus_kernels_keep_every_figure_within_the_stated_tolerance": lambda mode: ("first", mode),
    "test_mirrored_strategy_on_two_cpus_matches_the_default_strategy": lambda: ("first", "mirrored"),
    "test_two_workers_on_loopback_train_as_one_process_does": lambda name: (
        name,
        f"{name}_worker_0",
        f"{name}_worker_1",
    ),
    "test_training_killed_mid_epoch_resumes_on_the_next_repro_to_the_same_result": lambda backup_every: ("first",),
    "test_two_workers_killed_mid_training_resume_together_to_the_same_result": lambda: ("first_worker_0",),
}


def _asked(item: pytest.Item) -> tuple[str, ...]:
    """The runs that the test `item` compares (ASKED), none where it runs in this session's CPU
    mode already (make test-portable: it skips)."""
    ask = ASKED[item.originalname]
    params = item.callspec.params if hasattr(item, "callspec") else {}
    names = ask(**{key: params[key] for key in inspect.signature(ask).parameters})
    return () if any(_session_has_mode(RUNS[name].get("cpu_mode", "native")) for name in names) else names


@pytest.fixture(scope="session")
def pipeline_runs(request, tmp_path_factory) -> Iterator[PipelineRuns]:
    """The runs the session's selected tests compare, trained once in the background."""
    asked = {name for item in request.session.items if item.originalname in ASKED for name in _asked(item)}
    trained = PipelineRuns(tmp_path_factory.mktemp("runs"), asked)
    yield trained
    trained.stop()


@pytest.fixture
def runs(pipeline_runs, request) -> list[Path]:
    """The folders of the runs this test compares (ASKED), once they have finished."""
    return pipeline_runs(*_asked(request.node))


def _train_report(folder: Path) -> dict:
    report = json.loads((folder / "reports/train.json").read_text())
    report.pop("train/seconds")
    return report


def _export_report(folder: Path) -> dict:
    """The parity figures (file sizes aside: tf2onnx's names of traced functions can differ)."""
    report = json.loads((folder / "reports/export.json").read_text())
    return {k: v for k, v in report.items() if not k.endswith("/bytes")}


def _onnx_outputs(folder: Path) -> dict[str, np.ndarray]:
    from pipeline.serving.inference import OnnxModel

    with np.load(folder / "data/prepared/test.npz", allow_pickle=False) as test:
        return OnnxModel(folder / "models/model.onnx").run(test["x"])


@pytest.mark.parametrize("pair", [("first", "second"), ("conv_first", "conv_second")])
@pytest.mark.e2e
@pytest.mark.numeric
def test_same_seed_gives_identical_metrics_and_onnx_outputs(runs, pair):
    first, second = runs
    assert _train_report(first) == _train_report(second)
    assert (first / "reports/history.csv").read_text() == (second / "reports/history.csv").read_text()
    assert _export_report(first) == _export_report(second)
    for name, values in _onnx_outputs(first).items():
        assert np.array_equal(values, _onnx_outputs(second)[name]), f"{name} differs"


@pytest.mark.e2e
def test_another_seed_gives_another_run_on_the_same_data(runs):
    """On real data the seed draws the initial weights and the order of the batches (not the
    data: the files and splits are the same), so seeds give genuinely different runs."""
    first, other = runs
    for split in ("train", "test"):
        with np.load(first / f"data/prepared/{split}.npz") as a, np.load(other / f"data/prepared/{split}.npz") as b:
            assert np.array_equal(a["x"], b["x"]) and np.array_equal(a["y"], b["y"])
    assert _train_report(first)["train/final_loss"] != _train_report(other)["train/final_loss"]
    assert not np.array_equal(_onnx_outputs(first)["prediction"], _onnx_outputs(other)["prediction"])


@pytest.mark.parametrize("mode", [m for m in CPU_MODES if m != "native"])
@pytest.mark.e2e
@pytest.mark.numeric
def test_another_cpus_kernels_keep_every_figure_within_the_stated_tolerance(runs, mode):
    """Across CPUs a fixed seed is not bit-identical; the figures stay within the tolerance."""
    if _session_has_mode(mode):
        pytest.skip(f"this session computes with the kernels of {mode} already (make test-portable)")
    native_run, other_run = runs
    native, other = _train_report(native_run), _train_report(other_run)
    assert other.keys() == native.keys()
    for key, value in native.items():
        assert other[key] == pytest.approx(value, rel=CROSS_CPU_TOLERANCE, abs=1e-12), key
    for key, value in _export_report(native_run).items():  # ONNX/Keras parity: both under the gate
        assert _export_report(other_run)[key] == pytest.approx(value, abs=1e-6), key
    for name, values in _onnx_outputs(native_run).items():
        np.testing.assert_allclose(
            _onnx_outputs(other_run)[name], values, rtol=0, atol=CROSS_CPU_TOLERANCE, err_msg=name
        )


@pytest.mark.e2e
def test_mirrored_strategy_on_two_cpus_matches_the_default_strategy(runs):
    default_run, mirrored_run = runs
    default, mirrored = _train_report(default_run), _train_report(mirrored_run)
    assert default["train/replicas"] == 1 and mirrored["train/replicas"] == 2
    for key in ("train/final_loss", "train/final_val_loss", "train/final_accuracy"):
        assert mirrored[key] == pytest.approx(default[key], rel=1e-3), key
    for name, values in _onnx_outputs(default_run).items():
        np.testing.assert_allclose(_onnx_outputs(mirrored_run)[name], values, atol=1e-3)


@pytest.mark.parametrize("name", MULTI_WORKER_RUNS)
@pytest.mark.e2e
def test_two_workers_on_loopback_train_as_one_process_does(runs, name):
    """MultiWorkerMirroredStrategy over two processes (TF_CONFIG, loopback): both workers end with
    the same model, and it is the single process's within the stated tolerance; for the
    convolutional model too, whose batches of 2 reach each worker's BatchNormalization as one
    series (its statistics are synchronized)."""
    import mlflow

    single_run, *worker_runs = runs
    single = _train_report(single_run)
    workers = [_train_report(folder) for folder in worker_runs]
    assert workers[0] == workers[1]
    assert workers[0]["train/replicas"] == 2 and single["train/replicas"] == 1
    assert workers[0].keys() == single.keys()
    for key, value in single.items():
        if key != "train/replicas":
            assert workers[0][key] == pytest.approx(value, rel=MULTI_WORKER_TOLERANCE["figures"], abs=1e-12), key
    for output, values in _onnx_outputs(single_run).items():
        for folder in worker_runs:
            worker_values = _onnx_outputs(folder)[output]
            tolerance = MULTI_WORKER_TOLERANCE["outputs"]
            np.testing.assert_allclose(worker_values, values, rtol=0, atol=tolerance, err_msg=output)
    for index, folder in enumerate(worker_runs):
        client = mlflow.MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
        (run,) = client.search_runs([experiment.experiment_id for experiment in client.search_experiments()])
        assert run.data.tags["train.worker"] == f"{index} of 2"


@pytest.mark.e2e
def test_a_batch_smaller_than_the_replicas_is_refused_before_training(tmp_path):
    params = tiny_params(*TRAINING, "train.strategy=mirrored", "train.cpu_replicas=3", "train.batch_size=2")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_command([sys.executable, "-m", "pipeline.stages.prepare"], tmp_path)
    result = run_command([sys.executable, "-m", "pipeline.stages.train"], tmp_path, check=False)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "error: train.batch_size: a batch of 2 series cannot be split over 3 replicas" in result.stderr
    assert not (tmp_path / "models/model.keras").exists()


@pytest.mark.e2e
@pytest.mark.parametrize("backup_every", [1, 3])
def test_training_killed_mid_epoch_resumes_on_the_next_repro_to_the_same_result(runs, tmp_path, backup_every):
    """Killed after its backup of epoch 4 or later (with backups every 3 epochs: of epoch 6, the
    epochs after it trained and lost), the training resumes from that backup and ends exactly as
    the uninterrupted run (with backups every epoch) did."""
    import mlflow

    repo = git_copy(tmp_path / "repo")
    params = tiny_params(*TRAINING, f"train.backup_every={backup_every}")
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    backup = repo / ".checkpoints/train/training_metadata.json"
    committed_report = (repo / "reports/train.json").read_bytes()  # the repository's last run
    committed_train = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["train"]
    repro = subprocess.Popen(
        [sys.executable, "-m", "dvc", "repro"],
        cwd=repo,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while _epochs_backed_up(backup) < 4:
        assert repro.poll() is None and time.monotonic() < deadline, "training ended before the kill"
        time.sleep(0.05)
    os.killpg(repro.pid, signal.SIGKILL)  # dvc and the training process under it
    repro.wait(timeout=30)

    assert not (repo / "models/model.keras").exists(), "no partial model"
    assert (repo / "reports/train.json").read_bytes() == committed_report, "outputs as they were"
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert lock["train"] == committed_train, "DVC recorded no partial training"

    resumed = dvc(repo, "repro")
    assert "resumed from .checkpoints/train:" in resumed.stdout
    (uninterrupted,) = runs
    assert _train_report(repo) == _train_report(uninterrupted), "the same result as an uninterrupted run"
    for name, values in _onnx_outputs(uninterrupted).items():
        assert np.array_equal(_onnx_outputs(repo)[name], values), name
    assert not (repo / ".checkpoints/train").exists(), "a finished training leaves no backup"
    assert json.loads(dvc(repo, "status", "--json").stdout) == {}
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    [run] = mlflow.search_runs(experiment_names=["attention-planted_step"], output_format="list")
    steps = {m.step for m in mlflow.MlflowClient().get_metric_history(run.info.run_id, "epoch/loss")}
    assert steps == set(range(12)) and run.info.status == "FINISHED", "one run holds every epoch"


@pytest.mark.e2e
def test_two_workers_killed_mid_training_resume_together_to_the_same_result(runs, tmp_path):
    """Both workers killed with SIGKILL and started again resume from one epoch, also when one of
    them saved an epoch the other did not (it goes back to its previous backup), and end with the
    model of the two workers that were never killed."""
    workers = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    folders = [tmp_path / f"worker_{index}" for index in range(2)]
    killed = [
        _pipeline_process(folder, "train.strategy=multi_worker", env=_cluster(workers, index))
        for index, folder in enumerate(folders)
    ]
    backups = [folder / stage.TRAIN_BACKUP_DIR for folder in folders]
    deadline = time.monotonic() + 300
    while min(_epochs_backed_up(backup / "training_metadata.json") for backup in backups) < 4:
        assert all(p.poll() is None for p in killed) and time.monotonic() < deadline, "training ended before the kill"
        time.sleep(0.05)
    for process in killed:
        process.kill()
        process.communicate(timeout=30)
    epochs = [_epochs_backed_up(backup / "training_metadata.json") for backup in backups]
    if epochs[0] == epochs[1]:  # as if worker 1 was killed before it saved the epoch worker 0 saved
        for name in ("latest.weights.h5", "training_metadata.json"):
            shutil.copyfile(backups[1] / f"{name}.bkp", backups[1] / name)
    epochs = [_epochs_backed_up(backup / "training_metadata.json") for backup in backups]
    assert abs(epochs[0] - epochs[1]) == 1, epochs

    workers = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    resumed = [
        subprocess.Popen(
            [sys.executable, "-m", "pipeline.stages.train"],
            cwd=folder,
            env={
                **mode_environment("native"),
                "PYTHONPATH": str(REPO_ROOT),
                "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}",
                **_cluster(workers, index),
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for index, folder in enumerate(folders)
    ]
    outputs = [process.communicate(timeout=600)[0] for process in resumed]
    for process, output in zip(resumed, outputs):
        assert process.returncode == 0, output[-3000:]
        assert f"{min(epochs)} of 12 epochs were done" in output, output[-3000:]
    ahead = epochs.index(max(epochs))
    assert f"back to the backup of epoch {min(epochs)}" in outputs[ahead]
    uninterrupted = _train_report(runs[0])
    for folder in folders:
        report = _train_report(folder)
        assert report.keys() == uninterrupted.keys()
        for key, value in uninterrupted.items():
            assert report[key] == pytest.approx(value, rel=MULTI_WORKER_TOLERANCE["figures"], abs=1e-12), key
        assert not (folder / stage.TRAIN_BACKUP_DIR).exists(), "a finished training leaves no backup"


def _epochs_backed_up(metadata: Path) -> int:
    try:
        return json.loads(metadata.read_text())["epoch"]
    except (OSError, ValueError, KeyError):  # not there yet, or being written
        return 0


def test_a_backup_of_another_config_is_not_resumed(stage_dir):
    """A stale backup (other params or data) is discarded, not mixed into a new training."""
    from pipeline.core import stage
    from pipeline.training import TrainingBackup

    backup = stage_dir / stage.TRAIN_BACKUP_DIR
    backup.mkdir(parents=True)
    (backup / "digest.txt").write_text("another config")
    (backup / "history.json").write_text(json.dumps({"loss": [1.0, 0.9]}))
    (backup / "training_metadata.json").write_text(json.dumps({"epoch": 2, "batch": 0}))
    fresh = TrainingBackup("this config")
    assert fresh.history == {} and fresh.mlflow_run is None
    assert sorted(p.name for p in backup.iterdir()) == ["digest.txt"]


def test_onnx_model_with_an_operator_outside_the_standard_domains_is_refused(tmp_path):
    from onnx import TensorProto, helper, save

    from pipeline.serving.inference import OnnxModel, UnsafeModel

    body = helper.make_graph(
        [helper.make_node("Spy", ["v"], ["w"], domain="com.example")],
        "body",
        [helper.make_tensor_value_info("v", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("w", TensorProto.FLOAT, None)],
    )
    graph = helper.make_graph(  # the custom operator hides in a subgraph
        [
            helper.make_node("If", ["c"], ["prediction"], then_branch=body, else_branch=body),
            helper.make_node("Identity", ["x"], ["attention"]),
        ],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("prediction", "attention")],
    )
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    with pytest.raises(UnsafeModel, match="operator 'Spy' of domain 'com.example' is outside"):
        OnnxModel(tmp_path / "m.onnx")


def test_no_pickle_anywhere_in_the_pipeline():
    """Arrays load with allow_pickle=False, Keras models with safe_mode=True (a Lambda layer is
    refused: test_models.py); nothing pickles."""
    forbidden = (
        "import pickle",
        "from pickle",
        "cloudpickle",
        "joblib",
        "allow_pickle=True",
        "safe_mode=False",
        "torch.load",
        "dill",
    )
    sources = {p: p.read_text() for p in (REPO_ROOT / "pipeline").rglob("*.py")}
    found = [f"{p.relative_to(REPO_ROOT)}: {word}" for p, text in sources.items() for word in forbidden if word in text]
    assert found == []
    assert sum("allow_pickle=False" in text for text in sources.values()) >= 2
    assert any("safe_mode=True" in text for text in sources.values())
