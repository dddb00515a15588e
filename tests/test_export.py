"""ONNX export: the contract (names, dims, opset), parity with Keras, and the golden outputs."""

from __future__ import annotations

import functools
import json
import shutil

import keras
import numpy as np
import onnx
import pytest

from pipeline.core.config import SEQUENCE_MODELS
from pipeline.core.contract import OUTPUT_NAMES, PAD_VALUE
from pipeline.models import TaskSpec, build_model
from pipeline.onnx.conversion import to_onnx
from pipeline.serving.inference import OnnxModel
from tests import golden_models
from tests.conftest import parity, tiny_config

pytestmark = pytest.mark.numeric


def _runtime(onnx_model) -> OnnxModel:
    return OnnxModel(onnx_model.SerializeToString())


def _dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def _export(*overrides: str):
    keras.utils.set_random_seed(3)
    model = build_model(tiny_config(*overrides).model, TaskSpec((20, 2)))
    return model, to_onnx(model, 17, {"task": "planted_step"})


@pytest.fixture(scope="module")
def lstm_export():
    """A sequence model with a dynamic time dimension."""
    return _export("model.position_bias=false")


@pytest.mark.parametrize("overrides, time_dim", [(("model.position_bias=false",), "time"), ((), 20)])
def test_sequence_export_follows_the_contract(overrides, time_dim):
    _, onnx_model = _export(*overrides)
    graph = onnx_model.graph
    assert [i.name for i in graph.input] == ["x"]
    assert [o.name for o in graph.output] == [*OUTPUT_NAMES, "logit", "contribution"]
    assert _dims(graph.input[0]) == ["batch", time_dim, 2]
    assert _dims(graph.output[0]) == ["batch", 1]
    assert _dims(graph.output[1]) == ["batch", time_dim]
    assert _dims(graph.output[2]) == ["batch", 1]
    assert _dims(graph.output[3]) == ["batch", time_dim, 1]
    assert onnx_model.opset_import[0].version == 17
    assert {"LSTM"} <= {n.op_type for n in graph.node}, "unmasked LSTM exports as an LSTM node"
    assert "Loop" not in {n.op_type for n in graph.node}
    assert _runtime(onnx_model).metadata["task"] == "planted_step"


SMALL_CONV = ("model.filters=[8,8]", "model.kernel_sizes=[3,3]")
DECOMPOSED = {
    "lstm_attention": ("model=lstm_attention", "model.position_bias=false"),
    "lstm_values_inputs": ("model=lstm_attention", "model.values=inputs", "model.position_bias=false"),
    "multihead_pooling": ("model=multihead_pooling",),
    "conv_gap": ("model=conv_gap", *SMALL_CONV),
    "conv_attention": ("model=conv_attention", *SMALL_CONV),
    "conjunctive": ("model=conv_attention", "model.score=conjunctive", *SMALL_CONV),
    "instance": ("model=conv_attention", "model.score=instance", *SMALL_CONV),
    "instance_replicate": ("model=conv_attention", "model.score=instance", "model.padding=replicate", *SMALL_CONV),
    "class": ("model=conv_attention", "model.score=class", *SMALL_CONV),
}


@pytest.mark.parametrize("case", DECOMPOSED)
@pytest.mark.numeric
def test_contribution_sums_to_the_logit_in_keras_and_onnx(case):
    """Σ over valid steps of `contribution`, plus one constant per output, is the `logit`, within
    1e-5, in Keras and in ONNX Runtime; padded steps contribute exactly 0."""
    keras.utils.set_random_seed(3)
    task = TaskSpec((24, 2), "multiclass", padded=True, n_classes=3, normalization={"mode": "none"})
    model = build_model(tiny_config(*DECOMPOSED[case]).model, task)
    rng = np.random.default_rng(3)
    for weight in model.weights:  # weights far from their start, so every step counts differently
        if weight.trainable:
            weight.assign(weight + rng.normal(0, 0.3, weight.shape).astype("float32"))
    onnx_model = to_onnx(model, 17)
    time, padded = 24, True
    x = rng.standard_normal((6, time, 2)).astype("float32")
    x[:3, time // 2 :] = PAD_VALUE
    keras_out = {k: np.asarray(v) for k, v in model(x).items()}
    onnx_out = _runtime(onnx_model).run(x)
    bias = keras_out["logit"] - keras_out["contribution"].sum(axis=1)
    for out in (keras_out, onnx_out):
        np.testing.assert_allclose(out["contribution"].sum(axis=1) + bias[0], out["logit"], atol=1e-5)
        if padded:
            assert (out["contribution"][:3, time // 2 :] == 0).all()
    assert np.ptp(keras_out["contribution"], axis=1).max() > 1e-3, "steps that differ"


@pytest.mark.parametrize("length", [20, 7, 33])
def test_sequence_parity_at_any_length(lstm_export, length):
    model, onnx_model = lstm_export
    x = np.random.default_rng(length).standard_normal((16, length, 2)).astype("float32")
    differences = parity(model, _runtime(onnx_model), x)
    assert max(differences.values()) <= 1e-5, differences
    attention = _runtime(onnx_model).run(x)["attention"]
    assert (attention >= 0).all()
    np.testing.assert_allclose(attention.sum(axis=1), 1.0, atol=1e-5)


@functools.cache
def _golden_export(case: str):
    """(Keras model, ONNX model) of a golden case's stored weights: built and exported once per
    session, for the parity and the golden tests alike."""
    model = golden_models.stored_model(case)
    return model, to_onnx(model, golden_models.OPSET)


@pytest.mark.parametrize("variant", SEQUENCE_MODELS)
def test_every_sequence_model_exports_with_parity(variant):
    """Every sequence model (its golden case's trained weights) gives Keras's outputs in ONNX."""
    model, onnx_model = _golden_export(variant)
    cfg_model = json.loads((golden_models.GOLDEN_DIR / f"{variant}.json").read_text())["model"]
    assert cfg_model["name"] == variant
    lengths = (20,) if model.input.shape[1] else (20, 9)  # fixed-length models take 20 only
    for length in lengths:
        x = np.random.default_rng(length).standard_normal((16, length, 2)).astype("float32")
        assert max(parity(model, _runtime(onnx_model), x).values()) <= 1e-5
    ops = {n.op_type for n in onnx_model.graph.node}
    if cfg_model.get("cell") == "lstm":  # tf2onnx 1.17 turns Keras GRUs into a Loop
        assert "LSTM" in ops and "Loop" not in ops


def test_vector_export_follows_the_contract():
    keras.utils.set_random_seed(3)
    model = build_model(tiny_config("experiment=dense_attention").model, TaskSpec((32,)))
    onnx_model = to_onnx(model, 17)
    assert _dims(onnx_model.graph.input[0]) == ["batch", 32]
    assert _dims(onnx_model.graph.output[1]) == ["batch", 32]
    x = np.random.default_rng(0).standard_normal((50, 32)).astype("float32")
    assert max(parity(model, _runtime(onnx_model), x).values()) <= 1e-5


def test_onnx_model_with_other_names_is_refused(tmp_path):
    node = onnx.helper.make_node("Identity", ["input"], ["output"])
    graph = onnx.helper.make_graph(
        [node],
        "g",
        [onnx.helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("output", onnx.TensorProto.FLOAT, [1])],
    )
    path = tmp_path / "other.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), path)
    with pytest.raises(ValueError, match="expected input 'x' and outputs"):
        OnnxModel(path)


@pytest.mark.parametrize("case", golden_models.CASES)
def test_exported_outputs_match_the_golden_files(case):
    """Stored weights through today's model definition, tf2onnx and ONNX Runtime give the stored
    outputs, every one (logit and contribution where the model has them): no training on this
    path, so the comparison holds on any CPU."""
    golden = golden_models.load(case)
    outputs = _runtime(_golden_export(case)[1]).run(golden["x"])
    assert sorted(outputs) == sorted(set(golden) - {"x"}), f"{case}: the outputs differ from tests/golden's"
    for name in outputs:
        np.testing.assert_allclose(
            outputs[name],
            golden[name],
            rtol=0,
            atol=golden_models.TOLERANCE,
            err_msg=f"{case}: {name} differs from tests/golden (see `make golden`)",
        )


def test_a_changed_layer_misses_the_golden_files(monkeypatch):
    """A change to a layer's computation (here: the attention scores scaled by 1.1) fails the test."""
    from pipeline.models.layers import TemporalAttention

    golden = golden_models.load("lstm_attention")
    scores = TemporalAttention._scores
    monkeypatch.setattr(TemporalAttention, "_scores", lambda self, *args: 1.1 * scores(self, *args))
    outputs = _runtime(golden_models.exported("lstm_attention")).run(golden["x"])
    assert np.abs(outputs["attention"] - golden["attention"]).max() > golden_models.TOLERANCE


def test_weights_that_no_longer_fit_the_model_are_refused_naming_the_case(tmp_path, monkeypatch):
    for path in golden_models.GOLDEN_DIR.glob("conv_attention.*"):
        shutil.copy(path, tmp_path / path.name)
    record = json.loads((tmp_path / "conv_attention.json").read_text())
    record["model"]["filters"] = [2 * f for f in record["model"]["filters"]]  # as if a layer grew
    (tmp_path / "conv_attention.json").write_text(json.dumps(record))
    monkeypatch.setattr(golden_models, "GOLDEN_DIR", tmp_path)
    with pytest.raises(golden_models.GoldenMismatch, match=r"conv_attention: the model built from .*make golden"):
        golden_models.stored_model("conv_attention")


def _padded_batch(n: int, time: int, min_length: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, size=(n, time, 1)).astype("float32")
    lengths = rng.integers(min_length, time + 1, size=n)
    x[np.arange(time)[None, :] >= lengths[:, None]] = PAD_VALUE
    return x


@pytest.mark.parametrize(
    "variant, extra",
    [
        ("lstm_attention", ("model.position_bias=false",)),
        ("bahdanau", ()),
        ("luong_dot", ()),
        ("lstm_baseline", ()),
        ("multihead_pooling", ()),
        ("bilstm_attention", ()),
    ],
)
def test_masked_models_give_padding_exactly_zero_attention_in_keras_and_onnx(variant, extra):
    cfg = tiny_config("data=find_max", "data.min_length=5", f"model={variant}", *extra)
    assert cfg.padded
    keras.utils.set_random_seed(5)
    model = build_model(cfg.model, TaskSpec((20, 1), cfg.task_type, cfg.padded))
    onnx_model = to_onnx(model, 17)
    for time in (20, 31):  # 31: longer than any training sequence
        x = _padded_batch(24, time, 3, seed=time)
        padding = (x == PAD_VALUE).all(axis=-1)
        assert max(parity(model, _runtime(onnx_model), x).values()) <= 1e-5
        for attention in (np.asarray(model(x)["attention"]), _runtime(onnx_model).run(x)["attention"]):
            assert (attention[padding] == 0).all()
            np.testing.assert_allclose(attention.sum(axis=1), 1.0, atol=1e-5)
    if variant == "lstm_baseline":  # reads the last valid state
        last = (~padding).sum(axis=1) - 1
        np.testing.assert_array_equal(_runtime(onnx_model).run(x)["attention"].argmax(axis=1), last)


@pytest.mark.parametrize("model_name", ["conv_attention", "conv_gap"])
def test_conv_encoder_runs_as_one_fused_convolution_per_block(model_name, tmp_path):
    """BatchNormalization is folded into each Conv1D, and bias and ReLU follow the convolution
    directly, so ONNX Runtime fuses each block into one FusedConv; the outputs still match Keras,
    whose BatchNormalization is given statistics far from the identity so that a wrong fold
    would show."""
    import onnxruntime as ort

    keras.utils.set_random_seed(11)
    task = TaskSpec((30, 2), "multiclass", n_classes=3, normalization={"mode": "per_series"})
    model = build_model(
        tiny_config(f"model={model_name}", "model.filters=[8,6]", "model.kernel_sizes=[5,3]").model, task
    )
    rng = np.random.default_rng(0)
    for _, norm in model.get_layer("conv_encoder").blocks:
        shape = norm.get_weights()[0].shape
        norm.set_weights(
            [rng.uniform(0.5, 2, shape), rng.normal(0, 1, shape), rng.normal(0, 1, shape), rng.uniform(0.2, 3, shape)]
        )
    onnx_model = to_onnx(model, 17)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(onnx_model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    encoder_ops = [n.op_type for n in onnx.load(tmp_path / "optimized.onnx").graph.node if "conv_encoder" in n.name]
    assert encoder_ops.count("FusedConv") == 2 and not {"Conv", "Relu", "Add", "Mul"} & set(encoder_ops)
    x = rng.standard_normal((16, 30, 2)).astype("float32")
    assert max(parity(model, _runtime(onnx_model), x).values()) <= 1e-5


def test_padded_conv_encoder_applies_its_mask_without_leaving_the_convolution_layout():
    """Between the blocks of a padded series, the padding mask's product stays in the
    convolutions' [batch, channels, 1, time] layout (no transposes out and back), and padded
    series still give Keras's outputs."""
    keras.utils.set_random_seed(12)
    task = TaskSpec((None, 2), "multiclass", padded=True, n_classes=3, normalization={"mode": "per_series"})
    cfg = tiny_config("model=conv_attention", "model.filters=[8,6,4]", "model.kernel_sizes=[5,3,3]")
    model = build_model(cfg.model, task)
    onnx_model = to_onnx(model, 17)
    ops = [node.op_type for node in onnx_model.graph.node]
    first_conv, last_conv = ops.index("Conv"), len(ops) - 1 - ops[::-1].index("Conv")
    between = ops[first_conv:last_conv]
    assert between.count("Mul") == 2 and "Transpose" not in between, between
    x = _padded_batch(24, 25, 4, seed=3)
    x = np.concatenate([x, np.where(x == PAD_VALUE, PAD_VALUE, 1 - x)], axis=-1)  # 2 channels, padded alike
    assert max(parity(model, _runtime(onnx_model), x).values()) <= 1e-5
