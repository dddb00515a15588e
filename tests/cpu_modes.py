"""How far the pipeline's metrics move between CPUs, measured on one machine.

    python -m tests.cpu_modes                                  # the default config
    python -m tests.cpu_modes experiment=ucr data.name=JapaneseVowels --out reports/cpu_modes_jv.json
    python -m tests.cpu_modes --golden     # the golden cases' ONNX outputs in each mode

TensorFlow's CPU kernels (oneDNN) pick their code by instruction set and vendor, so the same seed
trains to numbers that differ in the last digits from one CPU to the next. Each mode below runs the
pipeline (prepare, train, export, evaluate) in a fresh process, with oneDNN as a different CPU
would run it; the table gives each metric's largest difference from the native mode.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

# Each mode: the environment that makes this machine's TensorFlow compute like another CPU's.
CPU_MODES: dict[str, dict[str, str]] = {
    "native": {},
    "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},  # oneDNN limited to AVX2 kernels, as on older CPUs
    "onednn_off": {"TF_ENABLE_ONEDNN_OPTS": "0"},  # TensorFlow's own (Eigen) kernels
}
RUN_STAGES = (  # each stage's command, in one process
    "import runpy\n"
    "for name in ('prepare', 'train', 'export', 'evaluate'):\n"
    "    runpy.run_module(f'pipeline.stages.{name}', run_name='__main__')"
)
COMPARED_REPORTS = ("reports/train.json", "reports/metrics.json")


def mode_environment(mode: str) -> dict[str, str]:
    """This interpreter's environment for a subprocess (tests/conftest.py) plus the mode's
    variables: "native" is the environment as this process was given it."""
    from tests.conftest import subprocess_env

    return {**subprocess_env(), **CPU_MODES[mode]}


def run_pipeline(
    folder: Path, params: dict, mode: str, env: dict[str, str] | None = None, log: Path | None = None
) -> subprocess.Popen:
    """Start prepare, train, export and evaluate in `folder`, in a process of the given mode,
    with the variables `env` added to its environment; its output goes to the file `log`, or to
    a pipe (read it with `.communicate()`)."""
    from tests.conftest import REPO_ROOT

    folder.mkdir(parents=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {
        **mode_environment(mode),
        "PYTHONPATH": str(REPO_ROOT),
        "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}",
        **(env or {}),
    }
    command = [sys.executable, "-c", RUN_STAGES]
    if log is None:
        pipe = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
        return subprocess.Popen(command, cwd=folder, env=env, **pipe)
    with open(log, "w") as output:  # the process keeps its own copy of the file
        return subprocess.Popen(command, cwd=folder, env=env, stdout=output, stderr=subprocess.STDOUT)


def pipeline_metrics(folder: Path) -> dict[str, float]:
    """The numeric figures of train.json and metrics.json (timings left out)."""
    figures = {}
    for report in COMPARED_REPORTS:
        figures.update(json.loads((folder / report).read_text()))
    return {k: float(v) for k, v in figures.items() if k != "train/seconds"}


def differences(reference: dict[str, float], other: dict[str, float]) -> dict[str, dict[str, float]]:
    """Per metric: the absolute and the relative difference of `other` from `reference`."""
    return {
        key: {"abs": abs(other[key] - value), "rel": abs(other[key] - value) / abs(value) if value else abs(other[key])}
        for key, value in reference.items()
    }


def measure(overrides: list[str], workdir: Path) -> dict:
    """Run the pipeline once per mode (one after another) and compare each with native."""
    from pipeline.core.config import compose_defaults
    from tests.conftest import REPO_ROOT

    params = compose_defaults(REPO_ROOT / "conf", overrides)
    metrics = {}
    for mode in CPU_MODES:
        process = run_pipeline(workdir / mode, params, mode)
        output, _ = process.communicate()
        if process.returncode:
            raise SystemExit(f"error: mode {mode} failed:\n{output[-3000:]}")
        metrics[mode] = pipeline_metrics(workdir / mode)
    return {
        "overrides": overrides,
        "metrics": metrics,
        "differences": {m: differences(metrics["native"], metrics[m]) for m in CPU_MODES if m != "native"},
    }


def write_golden_outputs(path: str) -> None:
    """Export every golden case from its stored weights, in this process, and save the ONNX
    outputs on the stored inputs to `path` (keys <case>/<output>)."""
    from pipeline.serving.inference import OnnxModel
    from tests import golden_models

    outputs = {}
    for case in golden_models.CASES:
        run = OnnxModel(golden_models.exported(case).SerializeToString()).run(golden_models.load(case)["x"])
        outputs.update({f"{case}/{name}": values for name, values in run.items()})
    np.savez(path, **outputs)


def golden_differences(workdir: Path) -> dict[str, float]:
    """Per golden case: the largest difference of its ONNX outputs between any two modes and
    from the stored outputs (stored weights, exported in each mode's process)."""
    from tests import golden_models
    from tests.conftest import REPO_ROOT

    runs = {}
    for mode in CPU_MODES:
        path = workdir / f"golden-{mode}.npz"
        write = f"from tests.cpu_modes import write_golden_outputs; write_golden_outputs({str(path)!r})"
        subprocess.run(
            [sys.executable, "-c", write], cwd=REPO_ROOT, check=True, env=mode_environment(mode), capture_output=True
        )
        with np.load(path, allow_pickle=False) as arrays:
            runs[mode] = dict(arrays)
    worst = {}
    for case in golden_models.CASES:
        stored = golden_models.load(case)
        worst[case] = max(
            float(np.abs(runs[mode][f"{case}/{name}"] - reference).max())
            for name in ("prediction", "attention")
            for mode in CPU_MODES
            for reference in [stored[name], *(runs[other][f"{case}/{name}"] for other in CPU_MODES)]
        )
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. experiment=ucr data.name=GunPoint")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    parser.add_argument("--golden", action="store_true", help="compare the golden cases' outputs instead")
    args = parser.parse_args()
    if args.golden:
        with tempfile.TemporaryDirectory(prefix="cpu-modes-") as workdir:
            worst = golden_differences(Path(workdir))
        for case, difference in worst.items():
            print(f"{case:34s} largest difference between modes and stored outputs {difference:.2e}")
        return
    with tempfile.TemporaryDirectory(prefix="cpu-modes-") as workdir:
        result = measure(args.overrides, Path(workdir))
    print(f"{'metric':32s}" + "".join(f"{m:>14s}" for m in CPU_MODES) + "   largest rel. difference")
    for key, value in result["metrics"]["native"].items():
        others = [result["metrics"][m][key] for m in CPU_MODES if m != "native"]
        worst = max(result["differences"][m][key]["rel"] for m in result["differences"])
        print(f"{key:32s}{value:14.8g}" + "".join(f"{v:14.8g}" for v in others) + f"   {worst:.2e}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
