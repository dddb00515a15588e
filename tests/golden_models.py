"""Golden outputs of the exported models: committed inputs and the ONNX outputs they must give.

    make golden          # python -m tests.golden_models --write
    python -m tests.golden_models --write --case NAME    # one (new) case only

For each case (every model, and a masked variable-length one): a fixed-seed model trained one
epoch on tiny data, exported to ONNX; its `prediction` and `attention` on committed inputs are
stored in tests/golden/<case>.npz, with the config and package versions in <case>.json. Rewrite only when a model definition or the
pinned packages change on purpose, and say why in the commit.
"""

from __future__ import annotations

import argparse
import json
import platform
from importlib.metadata import version
from pathlib import Path

import numpy as np

from pipeline.config import SEQUENCE_MODELS, flatten
from tests.conftest import tiny_config

GOLDEN_DIR = Path(__file__).parent / "golden"
CASES = {
    "dense_attention": ("experiment=dense_attention",),
    "lstm_attention": ("experiment=lstm_attention",),
    **{name: (f"model={name}",) for name in SEQUENCE_MODELS if name != "lstm_attention"},
    "bahdanau_variable_length": ("model=bahdanau", "data=find_max", "data.min_length=5"),
    "conv_attention_japanese_vowels": (
        "model=conv_attention", "data=ucr", "data.name=JapaneseVowels",
        "data.normalization=per_channel", "model.filters=[8,8]", "model.kernel_sizes=[5,3]",
    ),
}
N_INPUTS = 8
TOLERANCE = 1e-5
PACKAGES = ("tensorflow-cpu", "keras", "tf2onnx", "onnx", "onnxruntime", "numpy")


def golden_model(case: str, *overrides: str):
    """(onnx model, test inputs, config) of a fixed-seed model trained one epoch on tiny data."""
    from pipeline.export import to_onnx
    from pipeline.models import TaskSpec, build_model
    from pipeline.prepare import prepared
    from pipeline.train import fit, make_deterministic

    cfg = tiny_config(*CASES[case], *overrides)
    splits, meta = prepared(cfg)
    task = TaskSpec.from_meta(meta)
    make_deterministic(cfg.seed)
    model = build_model(cfg.model, task)
    fit(cfg, model, task, splits["train"], splits["val"])
    return to_onnx(model, cfg.export.opset), splits["test"].x[:N_INPUTS], cfg


def write(case: str) -> None:
    from pipeline.inference import OnnxModel

    onnx_model, inputs, cfg = golden_model(case)
    outputs = OnnxModel(onnx_model.SerializeToString()).run(inputs)
    GOLDEN_DIR.mkdir(exist_ok=True)
    np.savez(GOLDEN_DIR / f"{case}.npz", x=inputs, **outputs)
    record = {
        "case": case,
        "overrides": list(CASES[case]),
        "made_by": "python -m tests.golden_models --write",
        "tolerance": TOLERANCE,
        "config": flatten(cfg.model_dump()),
        "versions": {"python": platform.python_version(), **{p: version(p) for p in PACKAGES}},
    }
    (GOLDEN_DIR / f"{case}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {GOLDEN_DIR / case}.npz/.json")


def load(case: str) -> dict[str, np.ndarray]:
    with np.load(GOLDEN_DIR / f"{case}.npz", allow_pickle=False) as arrays:
        return dict(arrays)


def main() -> None:
    parser = argparse.ArgumentParser(description="Rewrite the golden ONNX outputs.")
    parser.add_argument("--write", action="store_true", help="required: rewrite tests/golden/")
    parser.add_argument("--case", action="append", choices=list(CASES),
                        help="only this case (repeatable), e.g. a newly added one; default: all")
    args = parser.parse_args()
    if not args.write:
        parser.error("pass --write to rewrite the committed golden files")
    for case in args.case or CASES:
        write(case)


if __name__ == "__main__":
    main()
