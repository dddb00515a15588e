"""Reduced-precision ONNX variants of the exported fp32 model, and the gate each must pass.

    fp32  the tf2onnx export itself
    fp16  float16 weights and compute for GPUs; graph inputs and outputs stay float32
          (onnxruntime.transformers.float16, which keeps a graph output that is also consumed
          inside the graph, such as `attention`, correct). Recurrent layers add up rounding
          over every time step: when full fp16 misses the gate, they stay float32 (the
          metadata `float32_ops` names them) and the rest is fp16
    int8  ONNX Runtime dynamic quantization (int8 weights, activations quantized at run time)
          for CPUs; an ONNX LSTM node becomes com.microsoft DynamicQuantizeLSTM. The opt-in of
          recurrent models
    int8_qdq  ONNX Runtime static quantization in QDQ format for convolutional models on CPUs:
          signed int8 activations and per-channel int8 weights, activation ranges calibrated
          on training series (`export.quantization`), only the op types listed there quantized
          (Conv), so the attention's softmax and the head stay float. Refused for a graph with
          recurrent nodes

The gate compares each variant with Keras on held-out inputs: attention rows summing to 1, and
`prediction` within the variant's tolerance with the same predicted class on enough inputs; for
int8_qdq instead the attention within its tolerance and test accuracy at most
`export.max_accuracy_drop` below Keras's. No TensorFlow import.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx

from pipeline.core.contract import VARIANTS
from pipeline.core.metrics import predicted_classes

RECURRENT_OPS = ("LSTM", "GRU", "RNN")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


class RefusedVariant(ValueError):
    """A variant that does not apply to this model (the message says why and what to use)."""


def _static_int8(fp32_model: onnx.ModelProto, calibration: np.ndarray, quantization) -> onnx.ModelProto:
    """QDQ static quantization: quant_pre_process (ONNX shape inference and graph optimisation; no
    symbolic shapes), then quantize_static with `quantization.activation_type` activations and
    per-channel S8 weights, ranges from `calibration` [series, ...] (float32 inputs, one series per
    calibration batch); the first convolution stays float with `quantization.float_first_conv`."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    recurrent = sorted({n.op_type for n in fp32_model.graph.node if n.op_type in (*RECURRENT_OPS, "Loop")})
    if recurrent:
        raise RefusedVariant(
            f"static quantization covers convolutional models; this graph has {recurrent} "
            "nodes (use variant int8, dynamic quantization)"
        )
    input_name = fp32_model.graph.input[0].name

    class Series(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{input_name: calibration[i : i + 1]} for i in range(len(calibration))])

        def get_next(self):
            return next(self.batches, None)

    activation_types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    methods = dict(
        zip(CALIBRATION_METHODS, (CalibrationMethod.MinMax, CalibrationMethod.Entropy, CalibrationMethod.Percentile))
    )
    with tempfile.TemporaryDirectory() as folder:
        source, prepared, target = (Path(folder) / f"{n}.onnx" for n in ("fp32", "prepared", "int8_qdq"))
        onnx.save(fp32_model, source)
        quant_pre_process(source, prepared, skip_symbolic_shape=True)
        # the prepared model's node names, not the fp32 model's: pre-processing may rename
        convs = [node.name for node in onnx.load(prepared).graph.node if node.op_type == "Conv"]  # graph order
        quantize_static(
            prepared,
            target,
            Series(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            nodes_to_exclude=convs[:1] if quantization.float_first_conv else [],
            activation_type=activation_types[quantization.activation_type],
            weight_type=QuantType.QInt8,
            op_types_to_quantize=list(quantization.quantized_ops),
            calibrate_method=methods[quantization.calibration_method],
        )
        quantized = onnx.load(target)
    drop_unused_opsets(quantized)
    return quantized


def drop_unused_opsets(onnx_model: onnx.ModelProto) -> None:
    """Remove the operator-set imports no node uses, such as the ai.onnx.training that ONNX
    Runtime's optimizer adds to a model it saves (and the model loader refuses)."""
    used = {node.domain for node in onnx_model.graph.node} | {"", "ai.onnx"}
    for opset in [o for o in onnx_model.opset_import if o.domain not in used]:
        onnx_model.opset_import.remove(opset)


def convert(
    fp32_model: onnx.ModelProto,
    variant: str,
    keep_float32: tuple[str, ...] = (),
    calibration: np.ndarray | None = None,
    quantization=None,
) -> onnx.ModelProto:
    """The `variant` of an fp32 model, with the same inputs, outputs (float32) and metadata; for
    fp16, the op types in `keep_float32` stay float32; int8_qdq needs `calibration` series and
    the `export.quantization` config (RefusedVariant for a recurrent graph)."""
    if variant == "fp32":
        return fp32_model
    if variant == "fp16":
        from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

        converted = convert_float_to_float16(
            fp32_model, keep_io_types=True, op_block_list=[*DEFAULT_OP_BLOCK_LIST, *keep_float32]
        )
    elif variant == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        with tempfile.TemporaryDirectory() as folder:
            source, target = Path(folder) / "fp32.onnx", Path(folder) / "int8.onnx"
            onnx.save(fp32_model, source)
            quantize_dynamic(source, target, weight_type=QuantType.QInt8)
            converted = onnx.load(target)
    elif variant == "int8_qdq":
        converted = _static_int8(fp32_model, calibration, quantization)
    else:
        raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
    del converted.metadata_props[:]
    converted.metadata_props.extend(fp32_model.metadata_props)
    for prop in converted.metadata_props:
        if prop.key == "precision":
            prop.value = variant
    if keep_float32:
        onnx.helper.set_model_props(
            converted, {**{p.key: p.value for p in converted.metadata_props}, "float32_ops": ",".join(keep_float32)}
        )
    return converted


def gated_variant(
    fp32_model: onnx.ModelProto, variant: str, check, **convert_args
) -> tuple[onnx.ModelProto | None, list[str]]:
    """The variant and what it misses of its gate (`check(model) -> failures`). fp16 is tried in
    full first, then with the recurrent layers kept float32; the first that passes, else the
    last tried. A refused variant is (None, [why])."""
    attempts = [(), RECURRENT_OPS] if variant == "fp16" else [()]
    for keep_float32 in attempts:
        try:
            converted = convert(fp32_model, variant, keep_float32, **convert_args)
        except RefusedVariant as refusal:
            return None, [str(refusal)]
        failures = check(converted)
        if not failures:
            break
    return converted, failures


def gate_report(
    variant: str,
    task_type: str,
    keras_out: dict[str, np.ndarray],
    onnx_out: dict[str, np.ndarray],
    labels: np.ndarray | None = None,
) -> dict[str, float]:
    """export/<variant>/... figures: prediction and attention max abs difference from Keras,
    the largest |attention row sum - 1|, the share of inputs with Keras's class and, given the
    inputs' `labels` [n, 1], the accuracy lost against Keras (points / 100)."""
    report = {
        f"export/{variant}/prediction_max_abs": float(np.max(np.abs(onnx_out["prediction"] - keras_out["prediction"]))),
        f"export/{variant}/attention_max_abs": float(np.max(np.abs(onnx_out["attention"] - keras_out["attention"]))),
        f"export/{variant}/attention_sum_error": float(
            np.max(np.abs(onnx_out["attention"].astype(np.float64).sum(axis=1) - 1.0))
        ),
    }
    if task_type != "regression":
        ours, theirs = (predicted_classes(task_type, out["prediction"]) for out in (onnx_out, keras_out))
        report[f"export/{variant}/class_agreement"] = float(np.mean(ours == theirs))
        if labels is not None:
            truth = labels[:, 0].astype(np.int64)
            report[f"export/{variant}/accuracy_drop"] = float(np.mean(theirs == truth) - np.mean(ours == truth))
    return report


def gate_failures(
    variant: str, report: dict[str, float], export_cfg, fp32_tolerance: tuple[str, float] | None = None
) -> list[str]:
    """What the variant misses, naming each config key (empty: it passes). `fp32_tolerance`
    (key, value) replaces export.parity_tolerance for a model that sets its own."""
    if variant == "int8_qdq":
        return _static_int8_failures(report, export_cfg)
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


def _static_int8_failures(report: dict[str, float], export_cfg) -> list[str]:
    """int8_qdq's gate: attention within export.variant_tolerance.int8_qdq of Keras (max abs),
    rows summing to 1, and (classification) test accuracy at most export.max_accuracy_drop below
    Keras's. Its `prediction` may move more than the other variants' as long as the classes hold."""
    failures = []
    difference, tolerance = report["export/int8_qdq/attention_max_abs"], export_cfg.variant_tolerance["int8_qdq"]
    if difference > tolerance:
        failures.append(
            f"attention max abs difference from Keras {difference:.3g} > "
            f"export.variant_tolerance.int8_qdq={tolerance:g}"
        )
    sum_error = report["export/int8_qdq/attention_sum_error"]
    if sum_error > export_cfg.attention_sum_tolerance:
        failures.append(
            f"attention rows sum to 1 ± {sum_error:.3g} > export.attention_sum_tolerance="
            f"{export_cfg.attention_sum_tolerance:g}"
        )
    drop = report.get("export/int8_qdq/accuracy_drop")
    if drop is not None and drop > export_cfg.max_accuracy_drop:
        failures.append(
            f"test accuracy {100 * drop:.2f} points below Keras's > export.max_accuracy_drop="
            f"{export_cfg.max_accuracy_drop:g}"
        )
    return failures
