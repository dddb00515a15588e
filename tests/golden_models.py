"""Golden files of the exported models: stored weights and inputs, and the ONNX outputs they give.

    make golden          # python -m tests.golden_models --write
    python -m tests.golden_models --write --case NAME    # one (new) case only
    python -m tests.golden_models --write --outputs-only # the stored weights' outputs again (a new output)

What they pin: the model definitions (layers, preprocessing, head), the ONNX export and ONNX
Runtime, not training. Per case (every model, a masked variable-length one, the conv model on
JapaneseVowels), tests/golden/ holds
    <case>.json          the model config and task the model is built from, the package versions
    <case>.weights.npz   its weights, in the order of `model.weights`
    <case>.npz           inputs `x` and every output the exported model gives (`prediction`,
                         `attention`, and `logit` and `contribution` where it has them)
The test builds the model from the config, loads the weights, exports it with tf2onnx and runs it
with ONNX Runtime: no training, so the same on every CPU. Writing trains a fixed-seed model one
epoch on tiny data, so that the weights (and the attention) are those of a real model. Rewrite only
when a model definition or the pinned packages change on purpose, and say why in the commit.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
from importlib.metadata import version
from pathlib import Path

import numpy as np

from pipeline.core.config import SEQUENCE_MODELS
from tests.conftest import tiny_config

GOLDEN_DIR = Path(__file__).parent / "golden"
CASES = {
    "dense_attention": ("experiment=dense_attention",),
    "lstm_attention": ("experiment=lstm_attention",),
    **{
        name: (f"model={name}",)
        for name in SEQUENCE_MODELS
        if name not in ("lstm_attention", "conv_attention", "conv_gap")
    },
    # small weight files; a high learning rate for a few epochs takes the gates (the class
    # attention's alpha) well away from their start, so that the attention path is pinned too
    # (at 0.1 the gated attention's states die and its weights turn uniform)
    "conv_attention": (
        "model=conv_attention",
        "model.filters=[16,32,16]",
        "train.learning_rate=0.03",
        "train.epochs=3",
    ),
    "conv_attention_class": (
        "model=conv_attention",
        "model.score=class",
        "model.filters=[16,32,16]",
        "train.learning_rate=0.1",
        "train.epochs=3",
    ),
    "conv_gap": ("model=conv_gap", "model.filters=[16,32,16]"),
    "conv_attention_additive": ("model=conv_attention", "model.score=additive", "model.filters=[16,32,16]"),
    "conv_attention_conjunctive": (
        "model=conv_attention",
        "model.score=conjunctive",
        "model.filters=[16,32,16]",
        "train.learning_rate=0.03",
        "train.epochs=3",
    ),
    "conv_attention_instance_replicate": (
        "model=conv_attention",
        "model.score=instance",
        "model.padding=replicate",
        "model.filters=[16,32,16]",
        "train.learning_rate=0.03",
        "train.epochs=3",
    ),
    "bahdanau_variable_length": ("model=bahdanau", "data=find_max", "data.min_length=5"),
    "conv_attention_japanese_vowels": (
        "model=conv_attention",
        "data=ucr",
        "data.name=JapaneseVowels",
        "model.filters=[8,8]",
        "model.kernel_sizes=[5,3]",
        "train.learning_rate=0.1",
        "train.epochs=3",
    ),
}
N_INPUTS = 8
TOLERANCE = 1e-5
OPSET = 17
PACKAGES = ("tensorflow-cpu", "keras", "tf2onnx", "onnx", "onnxruntime", "numpy")


class GoldenMismatch(AssertionError):
    """The stored case no longer fits the code (a changed model definition): see `make golden`."""


def _trained(case: str):
    """(Keras model, task, model config, test inputs [N_INPUTS, ...]) of a fixed-seed model
    trained one epoch on tiny data: what `write` stores."""
    from pipeline.data.splits import prepared
    from pipeline.models import TaskSpec, build_model
    from pipeline.training import fit, make_deterministic

    cfg = tiny_config(*CASES[case])
    splits, meta = prepared(cfg)
    task = TaskSpec.from_meta(meta)
    make_deterministic(cfg.seed)
    model = build_model(cfg.model, task)
    fit(cfg, model, task, splits["train"], splits["val"])
    return model, task, cfg.model, splits["test"].x[:N_INPUTS]


def _files(case: str) -> dict[str, Path]:
    return {
        kind: GOLDEN_DIR / f"{case}{suffix}"
        for kind, suffix in (("record", ".json"), ("weights", ".weights.npz"), ("outputs", ".npz"))
    }


def _arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as arrays:
        return dict(arrays)


def load(case: str) -> dict[str, np.ndarray]:
    """The stored inputs `x` and the outputs of a case, by name."""
    return _arrays(_files(case)["outputs"])


def stored_model(case: str):
    """The case's Keras model, built from its stored config and task, with its stored weights."""
    import pydantic

    from pipeline.core.config import ModelConfig
    from pipeline.models import TaskSpec, build_model

    files = _files(case)
    record = json.loads(files["record"].read_text())
    model_cfg = pydantic.TypeAdapter(ModelConfig).validate_python(record["model"])
    task = TaskSpec(**{**record["task"], "input_shape": tuple(record["task"]["input_shape"])})
    model = build_model(model_cfg, task)
    weights = _arrays(files["weights"])
    stored = [weights[f"w{i:03d}"] for i in range(len(weights))]
    shapes = [tuple(v.shape) for v in model.weights]
    if [w.shape for w in stored] != shapes:
        raise GoldenMismatch(
            f"{case}: the model built from {files['record'].name} has weights of shapes "
            f"{shapes}, {files['weights'].name} holds {[w.shape for w in stored]} "
            "(a changed model definition; see `make golden`)"
        )
    model.set_weights(stored)
    return model


def exported(case: str):
    """The ONNX model of the case's stored model, as the export stage converts it."""
    from pipeline.onnx.conversion import to_onnx

    return to_onnx(stored_model(case), OPSET)


def write(case: str) -> None:
    from pipeline.onnx.conversion import to_onnx
    from pipeline.serving.inference import OnnxModel

    model, task, model_cfg, inputs = _trained(case)
    outputs = OnnxModel(to_onnx(model, OPSET).SerializeToString()).run(inputs)
    files = _files(case)
    GOLDEN_DIR.mkdir(exist_ok=True)
    np.savez(files["weights"], **{f"w{i:03d}": w for i, w in enumerate(model.get_weights())})
    np.savez(files["outputs"], x=inputs, **outputs)
    record = {
        "case": case,
        "overrides": list(CASES[case]),
        "made_by": "python -m tests.golden_models --write",
        "tolerance": TOLERANCE,
        "model": model_cfg.model_dump(),
        "task": dataclasses.asdict(task),
        "weights": [f"{v.path} {list(v.shape)}" for v in model.weights],
        "versions": {"python": platform.python_version(), **{p: version(p) for p in PACKAGES}},
    }
    files["record"].write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {', '.join(str(p) for p in files.values())}")


def write_outputs(case: str) -> None:
    """<case>.npz again from the stored weights and inputs: every output the exported model gives
    today (an output added to the contract), the weights and the record left as they are."""
    from pipeline.serving.inference import OnnxModel

    files = _files(case)
    inputs = load(case)["x"]
    outputs = OnnxModel(exported(case).SerializeToString()).run(inputs)
    np.savez(files["outputs"], x=inputs, **outputs)
    print(f"wrote {files['outputs']}")


def main() -> None:
    parser = argparse.ArgumentParser(description="Rewrite the golden files of the exported models.")
    parser.add_argument("--write", action="store_true", help="required: rewrite tests/golden/")
    parser.add_argument(
        "--case",
        action="append",
        choices=list(CASES),
        help="only this case (repeatable), e.g. a newly added one; default: all",
    )
    parser.add_argument(
        "--outputs-only",
        action="store_true",
        help="keep the stored weights and inputs; store the outputs the exported model gives today",
    )
    args = parser.parse_args()
    if not args.write:
        parser.error("pass --write to rewrite the committed golden files")
    for case in args.case or CASES:
        write_outputs(case) if args.outputs_only else write(case)


if __name__ == "__main__":
    main()
