"""Reduced-precision ONNX variants of the exported fp32 model, and the gate each must pass.

    fp32  the tf2onnx export itself
    fp16  float16 weights and compute for GPUs; graph inputs and outputs stay float32
          (onnxruntime.transformers.float16, which keeps a graph output that is also consumed
          inside the graph, such as `attention`, correct). Recurrent layers add up rounding
          over every time step: when full fp16 misses the gate, they stay float32 (the
          metadata `float32_ops` names them) and the rest is fp16
    int8  ONNX Runtime dynamic quantization (int8 weights, activations quantized at run time)
          for CPUs; an ONNX LSTM node becomes com.microsoft DynamicQuantizeLSTM

The gate compares each variant with Keras on held-out inputs: `prediction` max abs difference
within the variant's tolerance, attention rows summing to 1, and the same predicted class on
enough inputs. No TensorFlow import.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx

from pipeline.metrics import predicted_classes

VARIANTS = ("fp32", "fp16", "int8")
RECURRENT_OPS = ("LSTM", "GRU", "RNN")


def convert(fp32_model: onnx.ModelProto, variant: str, keep_float32: tuple[str, ...] = ()) -> onnx.ModelProto:
    """The `variant` of an fp32 model, with the same inputs, outputs (float32) and metadata; for
    fp16, the op types in `keep_float32` stay float32."""
    if variant == "fp32":
        return fp32_model
    if variant == "fp16":
        from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

        converted = convert_float_to_float16(fp32_model, keep_io_types=True,
                                             op_block_list=[*DEFAULT_OP_BLOCK_LIST, *keep_float32])
    elif variant == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        with tempfile.TemporaryDirectory() as folder:
            source, target = Path(folder) / "fp32.onnx", Path(folder) / "int8.onnx"
            onnx.save(fp32_model, source)
            quantize_dynamic(source, target, weight_type=QuantType.QInt8)
            converted = onnx.load(target)
    else:
        raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
    del converted.metadata_props[:]
    converted.metadata_props.extend(fp32_model.metadata_props)
    for prop in converted.metadata_props:
        if prop.key == "precision":
            prop.value = variant
    if keep_float32:
        onnx.helper.set_model_props(converted, {**{p.key: p.value for p in converted.metadata_props},
                                                "float32_ops": ",".join(keep_float32)})
    return converted


def gated_variant(fp32_model: onnx.ModelProto, variant: str, check) -> tuple[onnx.ModelProto, list[str]]:
    """The variant and what it misses of its gate (`check(model) -> failures`). fp16 is tried in
    full first, then with the recurrent layers kept float32; the first that passes, else the
    last tried."""
    attempts = [(), RECURRENT_OPS] if variant == "fp16" else [()]
    for keep_float32 in attempts:
        converted = convert(fp32_model, variant, keep_float32)
        failures = check(converted)
        if not failures:
            break
    return converted, failures


def gate_report(
    variant: str, task_type: str, keras_out: dict[str, np.ndarray], onnx_out: dict[str, np.ndarray]
) -> dict[str, float]:
    """export/<variant>/... figures: prediction and attention max abs difference from Keras,
    the largest |attention row sum - 1|, and the share of inputs with Keras's class."""
    report = {
        f"export/{variant}/prediction_max_abs":
            float(np.max(np.abs(onnx_out["prediction"] - keras_out["prediction"]))),
        f"export/{variant}/attention_max_abs":
            float(np.max(np.abs(onnx_out["attention"] - keras_out["attention"]))),
        f"export/{variant}/attention_sum_error":
            float(np.max(np.abs(onnx_out["attention"].astype(np.float64).sum(axis=1) - 1.0))),
    }
    if task_type != "regression":
        ours, theirs = (predicted_classes(task_type, out["prediction"]) for out in (onnx_out, keras_out))
        report[f"export/{variant}/class_agreement"] = float(np.mean(ours == theirs))
    return report


def gate_failures(variant: str, report: dict[str, float], export_cfg,
                  fp32_tolerance: tuple[str, float] | None = None) -> list[str]:
    """What the variant misses, naming each config key (empty: it passes). `fp32_tolerance`
    (key, value) replaces export.parity_tolerance for a model that sets its own."""
    failures = []
    key, tolerance = f"export.variant_tolerance.{variant}", export_cfg.variant_tolerance.get(variant)
    if variant == "fp32":
        key, tolerance = fp32_tolerance or ("export.parity_tolerance", export_cfg.parity_tolerance)
    difference = report[f"export/{variant}/prediction_max_abs"]
    if variant == "fp32":
        difference = max(difference, report["export/fp32/attention_max_abs"])
    if difference > tolerance:
        failures.append(f"max abs difference from Keras {difference:.3g} > {key}={tolerance:g}")
    sum_error = report[f"export/{variant}/attention_sum_error"]
    if sum_error > export_cfg.attention_sum_tolerance:
        failures.append(
            f"attention rows sum to 1 ± {sum_error:.3g} > export.attention_sum_tolerance="
            f"{export_cfg.attention_sum_tolerance:g}"
        )
    agreement = report.get(f"export/{variant}/class_agreement")
    if agreement is not None and agreement < export_cfg.min_class_agreement:
        failures.append(
            f"same class as Keras on {agreement:.2%} of inputs < export.min_class_agreement="
            f"{export_cfg.min_class_agreement:g}"
        )
    return failures
