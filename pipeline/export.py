"""Stage `export`: convert the Keras model to ONNX with tf2onnx and gate it on parity with Keras.

    python -m pipeline.export         # reads params.yaml: export, mlflow

Outputs: models/model.onnx (input `x`, outputs `prediction` and `attention`, dynamic `batch` and,
for sequence models, `time`) and reports/export.json. The stage fails, writing nothing, when the
largest absolute difference between ONNX Runtime and Keras on held-out inputs exceeds
`export.parity_tolerance`.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf2onnx  # noqa: E402

from pipeline import stage, tracking  # noqa: E402
from pipeline.config import flatten, load_config  # noqa: E402
from pipeline.contract import (  # noqa: E402
    BATCH_DIM,
    INPUT_NAME,
    OUTPUT_NAMES,
    PAD_VALUE,
    TIME_DIM,
)
from pipeline.inference import OnnxModel  # noqa: E402
from pipeline.models import load_model  # noqa: E402
from pipeline.prepare import load_split  # noqa: E402


def _input_signature(model) -> tuple[tf.TensorSpec]:
    """[batch, features] or [batch, time, features], with batch (and time if the model allows)
    left dynamic."""
    shape = tuple(model.input.shape)
    return (tf.TensorSpec(shape, tf.float32, name=INPUT_NAME),)


def _name_dynamic_dims(onnx_model: onnx.ModelProto, sequence: bool) -> None:
    """Give tf2onnx's anonymous dims the contract's names: batch, and time for sequence models."""

    def rename(value_info, names: dict[int, str]) -> None:
        dims = value_info.type.tensor_type.shape.dim
        for axis, name in names.items():
            if axis < len(dims) and not dims[axis].HasField("dim_value"):
                dims[axis].dim_param = name

    rename(onnx_model.graph.input[0], {0: BATCH_DIM, **({1: TIME_DIM} if sequence else {})})
    for output in onnx_model.graph.output:
        rename(output, {0: BATCH_DIM, **({1: TIME_DIM} if sequence and output.name == "attention" else {})})


def _order_outputs(onnx_model: onnx.ModelProto) -> None:
    """Outputs in the contract's order (prediction, attention); consumers still bind by name."""
    by_name = {o.name: o for o in onnx_model.graph.output}
    ordered = [by_name[name] for name in OUTPUT_NAMES]
    del onnx_model.graph.output[:]
    onnx_model.graph.output.extend(ordered)


def to_onnx(model, opset: int, metadata: dict[str, str] | None = None) -> onnx.ModelProto:
    """Convert a two-output Keras model to a checked ONNX model that follows the contract."""
    signature = _input_signature(model)

    @tf.function(input_signature=signature)
    def serve(x):
        outputs = model(x, training=False)
        return {name: tf.identity(outputs[name], name=name) for name in OUTPUT_NAMES}

    onnx_model, _ = tf2onnx.convert.from_function(serve, input_signature=signature, opset=opset)
    _order_outputs(onnx_model)
    _name_dynamic_dims(onnx_model, sequence=len(signature[0].shape) == 3)
    onnx_model.producer_name = "attention-pipeline"
    for key, value in (metadata or {}).items():
        onnx_model.metadata_props.add(key=key, value=str(value))
    onnx.checker.check_model(onnx_model, full_check=True)
    return onnx_model


def parity(model, runtime: OnnxModel, x: np.ndarray) -> dict[str, float]:
    """Max abs difference, per output, between Keras and ONNX Runtime on the same inputs."""
    keras_out = model.predict(x, batch_size=1024, verbose=0)
    onnx_out = runtime.run(x)
    return {name: float(np.max(np.abs(keras_out[name] - onnx_out[name]))) for name in OUTPUT_NAMES}


def main() -> None:
    cfg = load_config()
    model = load_model(stage.KERAS_MODEL)
    test = load_split("test")
    meta = stage.read_json(stage.META_FILE)
    metadata = {
        "task": cfg.data.name,
        "task_type": meta["task_type"],
        "model": cfg.model.name,
        "input_layout": meta["input_layout"],
        "opset": cfg.export.opset,
        "pad_value": PAD_VALUE if meta["padded"] else "none",
        "labels": json.dumps(meta.get("labels")),
        "preprocessing": json.dumps(meta.get("normalization") or {"mode": "none"}),
        "tensorflow": tf.__version__,
        "tf2onnx": tf2onnx.__version__,
        "onnx": onnx.__version__,
    }
    onnx_model = to_onnx(model, cfg.export.opset, metadata)
    x_check = test.x[: cfg.export.parity_samples]
    runtime = OnnxModel(onnx_model.SerializeToString())
    differences = parity(model, runtime, x_check)
    worst = max(differences.values())
    if worst > cfg.export.parity_tolerance:
        raise stage.StageFailed(
            f"ONNX parity failed: max abs difference {worst:.3g} > export.parity_tolerance="
            f"{cfg.export.parity_tolerance:g} (per output: {differences}); "
            f"{stage.ONNX_MODEL} left unchanged"
        )
    report = {
        "export/parity_max_abs": worst,
        **{f"export/parity_max_abs_{name}": value for name, value in differences.items()},
        "export/parity_samples": len(x_check),
        "export/opset": cfg.export.opset,
        "export/onnx_bytes": onnx_model.ByteSize(),
    }
    with stage.atomic_path(stage.ONNX_MODEL) as tmp:
        onnx.save(onnx_model, tmp)
    stage.write_json(stage.EXPORT_REPORT, report)
    with tracking.resume_pipeline_run(cfg):
        tracking.log_params(flatten({"export": cfg.section("export")}))
        tracking.log_metrics({k: report[k] for k in report if "parity_max_abs" in k})
        example = x_check[:2]
        tracking.log_onnx_model(onnx_model, example, runtime.run(example))
    print(f"exported {stage.ONNX_MODEL}: parity max abs {worst:.2e} on {len(x_check)} samples")


if __name__ == "__main__":
    stage.run_stage(main)
