"""The real-data section of the benchmark: every runtime on the same inputs, OpenVINO reading the
same ONNX file as ONNX Runtime and giving the same outputs."""

from __future__ import annotations

import keras
import numpy as np

from pipeline.data.synthetic import Dataset
from pipeline.models import TaskSpec, build_model
from pipeline.onnx.conversion import to_onnx
from pipeline.tools.bench import real_data_model_figures
from tests.conftest import tiny_config

RUNTIMES = {
    "onnxruntime_fp32",
    "onnxruntime_fp32_unfused",
    "onnxruntime_int8_qdq",
    "onnxruntime_int8_qdq_int8_activations",
    "onnxruntime_int8_qdq_with_matmul",
    "onnxruntime_fp16",
    "openvino_fp32",
    "openvino_int8_qdq",
    "tf_function",
    "tf_function_xla",
}


def _split(n: int, rng: np.random.Generator) -> Dataset:
    x = rng.standard_normal((n, 30, 2)).astype(np.float32) * 3 + 1
    return Dataset(x, rng.integers(0, 3, (n, 1)).astype(np.float32), np.zeros((n, 0), np.int64))


def test_every_runtime_runs_the_deployed_model_and_openvino_agrees_with_onnx_runtime():
    cfg = tiny_config("experiment=ucr", "model.filters=[8,8]", "model.kernel_sizes=[3,3]")
    keras.utils.set_random_seed(3)
    model = build_model(cfg.model, TaskSpec((30, 2), "multiclass", n_classes=3, normalization={"mode": "per_series"}))
    rng = np.random.default_rng(3)
    splits = {"train": _split(40, rng), "test": _split(24, rng)}
    figures = real_data_model_figures(
        model, to_onnx(model, 17, {"task_type": "multiclass"}), splits, cfg.export, repeats=8, seconds=0.05
    )
    assert set(figures["runtimes"]) == RUNTIMES
    measured = {name: speeds for name, speeds in figures["runtimes"].items() if not isinstance(speeds, str)}
    assert {"onnxruntime_fp32", "onnxruntime_int8_qdq", "openvino_fp32", "tf_function"} <= set(measured)
    for speeds in measured.values():
        assert speeds["batch1"]["p50_ms"] > 0 and speeds["batch256_samples_per_s"] > 0
    assert max(figures["openvino_vs_onnxruntime_max_abs"].values()) < 1e-4
    assert len(figures["onnxruntime_settings"]) >= 4  # the graph optimization levels, each thread count
    assert figures["flops"]["per_batch1024"] > 2 * 1024 * 30 * (3 * 2 * 8 + 3 * 8 * 8)  # the two convolutions
    assert figures["series"] == {"test": 24, "time": 30, "channels": 2}
    ceiling = figures["figures"]["ort_vs_tf_function_batch1_ceiling"]  # no runtime beats the FLOP peak
    assert figures["figures"]["ort_vs_tf_function_batch1"] < ceiling
    assert set(figures["int8_qdq_gates"]) == {"int8_qdq", "int8_qdq_int8_activations", "int8_qdq_with_matmul"}
    assert all("failures" in gate for gate in figures["int8_qdq_gates"].values())
    profiles = figures["operator_share_batch256"]  # where ONNX Runtime's time goes, per operator type
    assert set(profiles) == {"fp32", "int8_qdq"}
    for shares in profiles.values():
        assert abs(sum(shares.values()) - 1) < 1e-6 and all(share >= 0 for share in shares.values())
    assert any("Conv" in op for op in profiles["fp32"]) and any(
        "QLinear" in op or "Conv" in op for op in profiles["int8_qdq"]
    )
