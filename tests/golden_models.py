"""Golden outputs of the exported models: committed inputs and the ONNX outputs they must give.

    make golden          # python -m tests.golden_models --write

For each experiment: a fixed-seed model trained one epoch on tiny data, exported to ONNX; its
`prediction` and `attention` on committed inputs are stored in tests/golden/<experiment>.npz, with
the config and package versions in <experiment>.json. Rewrite only when a model definition or the
pinned packages change on purpose, and say why in the commit.
"""

from __future__ import annotations

import argparse
import json
import platform
from importlib.metadata import version
from pathlib import Path

import numpy as np

from pipeline import data
from pipeline.config import flatten
from tests.conftest import tiny_config

GOLDEN_DIR = Path(__file__).parent / "golden"
EXPERIMENTS = ("lstm_attention", "dense_attention")
N_INPUTS = 8
TOLERANCE = 1e-5
PACKAGES = ("tensorflow-cpu", "keras", "tf2onnx", "onnx", "onnxruntime", "numpy")


def golden_model(experiment: str, *overrides: str):
    """(onnx model, test inputs) of a fixed-seed model trained one epoch on tiny data."""
    from pipeline.export import to_onnx
    from pipeline.models import build_model
    from pipeline.train import fit, make_deterministic

    cfg = tiny_config(f"experiment={experiment}", *overrides)
    rng = np.random.default_rng(cfg.seed)
    splits = data.split(data.generate(cfg.data, rng), cfg.data.val_fraction, cfg.data.test_fraction, rng)
    make_deterministic(cfg.seed)
    model = build_model(cfg.model, splits["train"].x.shape[1:], cfg.task_type, cfg.padded)
    fit(cfg, model, splits["train"], splits["val"])
    return to_onnx(model, cfg.export.opset), splits["test"].x[:N_INPUTS], cfg


def write(experiment: str) -> None:
    from pipeline.inference import OnnxModel

    onnx_model, inputs, cfg = golden_model(experiment)
    outputs = OnnxModel(onnx_model.SerializeToString()).run(inputs)
    GOLDEN_DIR.mkdir(exist_ok=True)
    np.savez(GOLDEN_DIR / f"{experiment}.npz", x=inputs, **outputs)
    record = {
        "experiment": experiment,
        "made_by": "python -m tests.golden_models --write",
        "tolerance": TOLERANCE,
        "config": flatten(cfg.model_dump()),
        "versions": {"python": platform.python_version(), **{p: version(p) for p in PACKAGES}},
    }
    (GOLDEN_DIR / f"{experiment}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {GOLDEN_DIR / experiment}.npz/.json")


def load(experiment: str) -> dict[str, np.ndarray]:
    with np.load(GOLDEN_DIR / f"{experiment}.npz", allow_pickle=False) as arrays:
        return dict(arrays)


def main() -> None:
    parser = argparse.ArgumentParser(description="Rewrite the golden ONNX outputs.")
    parser.add_argument("--write", action="store_true", help="required: rewrite tests/golden/")
    args = parser.parse_args()
    if not args.write:
        parser.error("pass --write to rewrite the committed golden files")
    for experiment in EXPERIMENTS:
        write(experiment)


if __name__ == "__main__":
    main()
