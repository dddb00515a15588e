"""Deployment: the fp16/int8 variants and their gates, the Predictor on every variant, its input
checks (a property test among them), provider selection, and the predict command."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import keras
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pipeline.core.contract import PAD_VALUE
from pipeline.models import TaskSpec, build_model
from pipeline.onnx.conversion import to_onnx
from pipeline.onnx.variants import VARIANTS, convert, gate_failures, gate_report, gated_variant
from pipeline.serving.inference import InputError, OnnxModel, Predictor, ProviderUnavailable
from tests.conftest import REPO_ROOT, subprocess_env, tiny_config

LABELS = ["walk", "run", "sit", "jump"]
RECURRENT_VARIANTS = tuple(v for v in VARIANTS if v != "int8_qdq")  # static int8 refuses an LSTM
HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


def _exported(task: TaskSpec, *overrides: str, labels=None) -> tuple[keras.Model, onnx.ModelProto]:
    keras.utils.set_random_seed(11)
    model = build_model(tiny_config(*overrides).model, task)
    metadata = {"task_type": task.task_type, "labels": json.dumps(labels), "precision": "fp32"}
    return model, to_onnx(model, 17, metadata)


@pytest.fixture(scope="module")
def binary_variants():
    """A fixed-length LSTM attention model (20 steps x 2 features) and its three variants."""
    model, fp32 = _exported(TaskSpec((20, 2)), "model=lstm_attention")
    return model, {variant: convert(fp32, variant) for variant in RECURRENT_VARIANTS}


@pytest.fixture(scope="module")
def multiclass_variants():
    """A masked, length-free conv attention model over 4 named classes and its variants."""
    task = TaskSpec((12, 3), "multiclass", padded=True, n_classes=4, normalization={"mode": "per_series"})
    model, fp32 = _exported(
        task, "model=conv_attention", "model.filters=[8,8]", "model.kernel_sizes=[3,3]", labels=LABELS
    )
    calibration = _inputs(16, 12, 3) * 5 + 3
    calibration[:4, 8:] = PAD_VALUE
    quantization = tiny_config().export.quantization
    return model, {
        variant: convert(fp32, variant, calibration=calibration, quantization=quantization) for variant in VARIANTS
    }


def _inputs(n: int, time: int, features: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, time, features)).astype(np.float32)


@pytest.mark.parametrize("variant", RECURRENT_VARIANTS)
@pytest.mark.numeric
def test_predictor_runs_every_variant_with_float32_outputs(binary_variants, variant):
    model, variants = binary_variants
    predictor = Predictor(variants[variant].SerializeToString())
    assert predictor.provider == "CPUExecutionProvider"
    x = _inputs(64, 20, 2)
    result = predictor.predict(x)
    assert result.prediction.dtype == np.float32 and result.prediction.shape == (64, 1)
    assert result.attention.shape == (64, 20)
    np.testing.assert_allclose(result.attention.sum(axis=1), 1.0, atol=1e-3)
    assert set(result.labels) <= {"0", "1"} and len(result.labels) == 64
    keras_prediction = np.asarray(model(x)["prediction"])
    tolerance = {"fp32": 1e-5, "fp16": 1e-2, "int8": 1e-1}[variant]
    np.testing.assert_allclose(result.prediction, keras_prediction, atol=tolerance)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.numeric
def test_predictor_gives_labels_of_a_masked_multiclass_variant(multiclass_variants, variant):
    _, variants = multiclass_variants
    predictor = Predictor(variants[variant].SerializeToString())
    x = _inputs(16, 12, 3) * 5 + 3  # raw values: the model normalises them itself
    x[:, 8:] = PAD_VALUE
    result = predictor.predict(x)
    assert result.prediction.shape == (16, 4) and set(result.labels) <= set(LABELS)
    assert result.labels == [LABELS[i] for i in result.prediction.argmax(axis=1)]
    assert (result.attention[:, 8:] == 0).all()


def test_fp16_keeps_float32_io_and_the_attention_output_consumed_inside(binary_variants):
    """`attention` is a graph output and an input of the weighted sum: both must stay right."""
    _, variants = binary_variants
    fp16 = variants["fp16"]
    for value in (*fp16.graph.input, *fp16.graph.output):
        assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT, value.name
    assert onnx.TensorProto.FLOAT16 in {i.data_type for i in fp16.graph.initializer}
    metadata = {p.key: p.value for p in fp16.metadata_props}
    assert metadata["precision"] == "fp16"


def test_fp16_keeps_the_recurrent_layers_float32_only_when_full_fp16_misses_its_gate(binary_variants):
    model, variants = binary_variants
    fp32 = variants["fp32"]
    tried = []

    def lstm_weights_float32(candidate):
        weights = {i.name: i.data_type for i in candidate.graph.initializer}
        lstm = next(n for n in candidate.graph.node if n.op_type == "LSTM")
        return weights[lstm.input[1]] == onnx.TensorProto.FLOAT

    def check(candidate):  # a gate that full fp16 misses
        tried.append(lstm_weights_float32(candidate))
        return [] if tried[-1] else ["too far from Keras"]

    chosen, failures = gated_variant(fp32, "fp16", check)
    assert tried == [False, True] and failures == []
    assert {p.key: p.value for p in chosen.metadata_props}["float32_ops"] == "LSTM,GRU,RNN"
    assert onnx.TensorProto.FLOAT16 in {i.data_type for i in chosen.graph.initializer}, "the rest is fp16"
    x = _inputs(64, 20, 2)
    np.testing.assert_allclose(
        OnnxModel(chosen.SerializeToString()).run(x)["prediction"], model.predict(x, verbose=0)["prediction"], atol=1e-3
    )
    full, _ = gated_variant(fp32, "fp16", lambda candidate: [])
    assert "float32_ops" not in {p.key for p in full.metadata_props} and not lstm_weights_float32(full)


def test_int8_quantizes_the_lstm_node(binary_variants):
    _, variants = binary_variants
    ops = {(n.domain, n.op_type) for n in variants["int8"].graph.node}
    assert ("com.microsoft", "DynamicQuantizeLSTM") in ops and ("", "LSTM") not in ops


def test_int8_qdq_quantizes_only_the_convolutions_and_refuses_a_recurrent_graph(multiclass_variants, binary_variants):
    """QDQ pairs feed every Conv but the first, which reads the input series in float (weights per
    channel); the attention's softmax and the head's MatMul read float tensors. An LSTM graph is
    refused, pointing at dynamic quantization."""
    qdq = multiclass_variants[1]["int8_qdq"]
    producers = {out: node for node in qdq.graph.node for out in node.output}
    first, *convs = [n for n in qdq.graph.node if n.op_type == "Conv"]
    assert convs and all(producers[n.input[0]].op_type == "DequantizeLinear" for n in convs)
    assert producers[first.input[0]].op_type != "DequantizeLinear" and first.input[1] in {
        i.name for i in qdq.graph.initializer
    }, "the first convolution stays float"
    weight_scales = [producers[n.input[1]].input[1] for n in convs]
    initializers = {i.name: onnx.numpy_helper.to_array(i) for i in qdq.graph.initializer}
    assert all(initializers[name].size == 8 for name in weight_scales), "one scale per output channel"
    for node in qdq.graph.node:
        if node.op_type in ("Softmax", "MatMul", "Sigmoid"):
            assert all(producers.get(i) is None or producers[i].op_type != "DequantizeLinear" for i in node.input)
    assert {p.key: p.value for p in qdq.metadata_props}["precision"] == "int8_qdq"

    chosen, failures = gated_variant(
        binary_variants[1]["fp32"],
        "int8_qdq",
        lambda candidate: [],
        calibration=_inputs(4, 20, 2),
        quantization=tiny_config().export.quantization,
    )
    assert chosen is None and "LSTM" in failures[0] and "use variant int8, dynamic quantization" in failures[0]


@pytest.mark.parametrize("activation_type, dtype", [("int8", np.int8), ("uint8", np.uint8)])
def test_int8_qdq_quantizes_activations_as_configured(multiclass_variants, activation_type, dtype):
    """export.quantization.activation_type sets the zero points of every quantized activation;
    weights stay signed int8; without float_first_conv every convolution reads int8."""
    model, _ = multiclass_variants
    quantization = tiny_config(
        f"export.quantization.activation_type={activation_type}", "export.quantization.float_first_conv=false"
    ).export.quantization
    qdq = convert(to_onnx(model, 17, {}), "int8_qdq", calibration=_inputs(8, 12, 3), quantization=quantization)
    producers = {out: node for node in qdq.graph.node for out in node.output}
    assert all(producers[n.input[0]].op_type == "DequantizeLinear" for n in qdq.graph.node if n.op_type == "Conv")
    initializers = {i.name: onnx.numpy_helper.to_array(i) for i in qdq.graph.initializer}
    activation_zero_points = {initializers[n.input[2]].dtype for n in qdq.graph.node if n.op_type == "QuantizeLinear"}
    assert activation_zero_points == {np.dtype(dtype)}
    weights = [
        initializers[n.input[0]]
        for n in qdq.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in initializers
    ]
    assert weights and all(w.dtype == np.int8 for w in weights)


def test_the_int8_qdq_gate_reads_attention_and_accuracy_not_prediction():
    export_cfg = tiny_config().export
    keras_out = {
        "prediction": np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]]),
        "attention": np.full((4, 5), 0.2),
    }
    labels = np.array([[0], [1], [0], [1]], np.float32)
    moved = {
        "prediction": keras_out["prediction"] + [[-0.2, 0.2], [0, 0], [0, 0], [0, 0]],
        "attention": keras_out["attention"] + [[0.001, -0.001, 0, 0, 0]],
    }
    figures = gate_report("int8_qdq", "multiclass", keras_out, moved, labels)
    assert figures["export/int8_qdq/accuracy_drop"] == 0.0
    assert gate_failures("int8_qdq", figures, export_cfg) == []
    flipped = {
        **moved,
        "prediction": keras_out["prediction"][:, ::-1].copy(),
        "attention": keras_out["attention"] + [[0.05, -0.05, 0, 0, 0]],
    }
    problems = gate_failures("int8_qdq", gate_report("int8_qdq", "multiclass", keras_out, flipped, labels), export_cfg)
    assert len(problems) == 2
    assert "export.variant_tolerance.int8_qdq=0.02" in problems[0]
    assert "test accuracy 100.00 points below Keras's > export.max_accuracy_drop=0.005" in problems[1]


def test_gates_name_what_each_variant_misses():
    export_cfg = tiny_config().export
    keras_out = {"prediction": np.array([[0.2], [0.7], [0.49]]), "attention": np.full((3, 4), 0.25)}
    good = gate_report("fp16", "binary", keras_out, {k: v + 1e-4 for k, v in keras_out.items()})
    assert gate_failures("fp16", good, export_cfg) == []
    bad_out = {"prediction": np.array([[0.2], [0.7], [0.52]]), "attention": np.full((3, 4), 0.26)}
    problems = gate_failures("int8", gate_report("int8", "binary", keras_out, bad_out), export_cfg)
    assert len(problems) == 3
    assert "export.variant_tolerance.int8=0.005" in problems[0]
    assert "export.attention_sum_tolerance" in problems[1]
    assert "66.67% of inputs < export.min_class_agreement=0.995" in problems[2]


BAD_REQUESTS = [
    ("rank", np.zeros((20, 2)), "rank 3"),
    ("features", np.zeros((1, 20, 3)), "3 features per step, the model takes 2"),
    ("fixed length", np.zeros((1, 19, 2)), "19 time steps, the model takes exactly 20"),
    ("nan", np.full((1, 20, 2), np.nan), "NaN or infinity (first in row 0)"),
    ("inf", np.concatenate([np.zeros((1, 20, 2)), np.full((1, 20, 2), np.inf)]), "first in row 1"),
    ("strings", np.full((1, 20, 2), "a"), "must be numbers"),
    ("empty batch", np.zeros((0, 20, 2)), "batch is empty"),
    ("ragged", [[[0.0, 1.0]] * 20, [[0.0, 1.0]] * 19], "not a rectangular array"),
]


@pytest.mark.parametrize("case, x, fragment", BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_predictor_refuses_bad_inputs(binary_variants, case, x, fragment):
    predictor = Predictor(binary_variants[1]["fp32"].SerializeToString())
    with pytest.raises(InputError, match=re.escape(fragment)):
        predictor.predict(x)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    x=hnp.arrays(
        dtype=st.sampled_from([np.float32, np.float64]),
        shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=24),
        elements=st.one_of(st.floats(-1e6, 1e6, width=32), st.sampled_from([np.nan, np.inf, -np.inf])),
    )
)
def test_property_every_input_is_either_refused_clearly_or_predicted(multiclass_variants, x):
    """Any array: InputError with a message, or a valid prediction; nothing else escapes."""
    predictor = Predictor(multiclass_variants[1]["fp32"].SerializeToString())
    valid = (
        x.ndim == 3
        and x.shape[0] > 0
        and x.shape[1] > 0
        and x.shape[2] == 3
        and np.isfinite(x.astype(np.float64)).all()
    )
    if not valid:
        with pytest.raises(InputError):
            predictor.predict(x)
        return
    result = predictor.predict(x)
    assert result.prediction.shape == (x.shape[0], 4) and np.isfinite(result.prediction).all()
    assert result.attention.shape == x.shape[:2]


def test_cuda_request_fails_clearly_unless_cpu_fallback_is_allowed(binary_variants):
    model_bytes = binary_variants[1]["fp32"].SerializeToString()
    if HAS_CUDA:
        assert Predictor(model_bytes, providers=("cuda",)).provider == "CUDAExecutionProvider"
        return
    with pytest.raises(ProviderUnavailable, match="CUDAExecutionProvider.*allow_cpu_fallback"):
        Predictor(model_bytes, providers=("cuda",))
    assert Predictor(model_bytes, providers=("cuda",), allow_cpu_fallback=True).provider == "CPUExecutionProvider"


@pytest.mark.skipif(not HAS_CUDA, reason="needs onnxruntime-gpu and an NVIDIA GPU")
def test_fp16_variant_on_cuda_matches_fp32(binary_variants):
    _, variants = binary_variants
    x = _inputs(32, 20, 2)
    gpu = Predictor(variants["fp16"].SerializeToString(), providers=("cuda",)).predict(x)
    cpu = Predictor(variants["fp32"].SerializeToString()).predict(x)
    np.testing.assert_allclose(gpu.prediction, cpu.prediction, atol=1e-3)


def test_intra_op_threads_default_to_the_cpus_this_process_may_use(binary_variants, monkeypatch):
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    predictor = Predictor(binary_variants[1]["fp32"].SerializeToString())
    assert predictor.onnx.session.get_session_options().intra_op_num_threads == 1


def _predict_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.serving.predict", *args],
        cwd=REPO_ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
    )


@pytest.mark.e2e
def test_predict_command_reads_npy_json_and_csv(tmp_path, multiclass_variants):
    model_path = tmp_path / "model.onnx"
    onnx.save(multiclass_variants[1]["int8"], model_path)
    x = _inputs(3, 12, 3)
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "x.json").write_text(json.dumps({"inputs": x.tolist()}))
    np.savetxt(tmp_path / "x.csv", x.reshape(3, -1), delimiter=",")
    documents = []
    for name in ("x.npy", "x.json", "x.csv"):
        result = _predict_cli(str(model_path), str(tmp_path / name))
        assert result.returncode == 0, result.stderr
        documents.append(json.loads(result.stdout))
    assert documents[0]["provider"] == "CPUExecutionProvider"
    first = documents[0]["predictions"]
    assert len(first) == 3 and first[0]["label"] in LABELS and len(first[0]["attention"]) == 12
    assert documents[1]["predictions"] == first and documents[2]["predictions"] == first
    out = tmp_path / "out.json"
    assert _predict_cli(str(model_path), str(tmp_path / "x.npy"), "--out", str(out)).returncode == 0
    assert json.loads(out.read_text())["predictions"] == first


@pytest.mark.parametrize(
    "inputs, fragment",
    [
        ("[[1, 2]]", "input must have rank 3"),
        ('{"inputs": [[[1, 2, 3]]], "x": 1', "cannot read json inputs"),
        ("[[[1, 2]]]", "2 features per step, the model takes 3"),
    ],
)
@pytest.mark.e2e
def test_predict_command_refuses_bad_inputs_with_exit_2(tmp_path, multiclass_variants, inputs, fragment):
    model_path = tmp_path / "model.onnx"
    onnx.save(multiclass_variants[1]["fp32"], model_path)
    (tmp_path / "bad.json").write_text(inputs)
    result = _predict_cli(str(model_path), str(tmp_path / "bad.json"))
    assert result.returncode == 2 and fragment in result.stderr and result.stdout == ""


def test_flop_count_of_an_lstm_attention_graph(binary_variants):
    """LSTM: 2 * T * B * 4H * (F + H); the head on the context and on every state (the
    contribution), and the location score, add their MatMuls."""
    from pipeline.tools.bench import count_flops

    fp32 = binary_variants[1]["fp32"]
    hidden = tiny_config("model=lstm_attention").model.units
    lstm = 2 * 20 * 8 * 4 * hidden * (2 + hidden)
    head = 2 * 8 * hidden + 2 * 8 * 20 * hidden  # the head's kernel on the context and on every state
    assert lstm + head <= count_flops(fp32, [8, 20, 2]) <= lstm + head + 2 * 8 * 20 * hidden * 2


def test_exported_lstm_has_no_run_time_zero_state_construction(binary_variants):
    """Keras's zero initial states are dropped: ONNX LSTM defaults to zeros."""
    graph = binary_variants[1]["fp32"].graph
    lstm = next(n for n in graph.node if n.op_type == "LSTM")
    assert not any(lstm.input[5:7])
    assert not {"Expand", "ConstantOfShape"} & {n.op_type for n in graph.node}
