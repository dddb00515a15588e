"""The deploy bundle: every variant, metadata, a model card, and a Triton model repository whose
config parses with Triton's own schema and names the ONNX graph's inputs and outputs."""

from __future__ import annotations

import json

import onnx
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from pipeline.serving.inference import Predictor

pytestmark = pytest.mark.integration

VARIANTS = ("fp32", "fp16", "int8")


@pytest.fixture
def bundle(trained_runs, tmp_path):
    """The pipeline on tiny data with all three variants (int8 gate loosened for an untrained
    model: this tests the bundle, test_inference tests the gates)."""
    workdir = trained_runs.copy(
        tmp_path,
        "export.variants=[fp32,fp16,int8]",
        "export.variant_tolerance.int8=0.2",
        "export.min_class_agreement=0.8",
    )
    return workdir / "deploy"


def test_bundle_holds_every_variant_with_its_metadata(bundle):
    document = json.loads((bundle / "metadata.json").read_text())
    assert set(document["variants"]) == set(VARIANTS)
    assert document["input"] == {"name": "x", "dims": ["batch", 20, 2]}
    metadata = document["metadata"]
    for key in (
        "task",
        "model",
        "mlflow_run_id",
        "config_digest",
        "labels",
        "preprocessing",
        "input_layout",
        "opset",
        "versions",
    ):
        assert metadata[key], key
    for variant in VARIANTS:
        predictor = Predictor(bundle / f"model_{variant}.onnx")
        assert predictor.metadata["precision"] == variant
        assert predictor.metadata["mlflow_run_id"] == metadata["mlflow_run_id"]
    card = (bundle / "MODEL_CARD.md").read_text()
    assert card.startswith("# lstm_attention on planted_step") and "| int8 | model_int8.onnx |" in card
    assert "  - `contribution`: float32 [batch, positions, outputs]" in card
    assert "outputs `prediction`, `attention`, `logit`, `contribution` (and `label`" in card
    assert list(json.loads((bundle / "metadata.json").read_text())["outputs"]) == [
        "prediction",
        "attention",
        "logit",
        "contribution",
    ]


@pytest.mark.parametrize("variant", VARIANTS)
def test_triton_config_parses_and_matches_the_onnx_graph(bundle, variant):
    folder = bundle / "triton" / f"attention_{variant}"
    config = text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    graph = onnx.load(folder / "1" / "model.onnx").graph
    assert config.name == f"attention_{variant}" and config.platform == "onnxruntime_onnx"
    assert [i.name for i in config.input] == [i.name for i in graph.input] == ["x"]
    outputs = ["prediction", "attention", "logit", "contribution"]
    assert [o.name for o in config.output] == [o.name for o in graph.output] == outputs
    for declared, value_info in zip([*config.input, *config.output], [*graph.input, *graph.output]):
        graph_dims = [d.dim_value if d.HasField("dim_value") else -1 for d in value_info.type.tensor_type.shape.dim]
        assert [-1, *declared.dims] == [-1, *graph_dims[1:]], declared.name
        assert declared.data_type == model_config_pb2.TYPE_FP32
    assert config.max_batch_size > 0 and config.HasField("dynamic_batching")
    expected_kind = (
        model_config_pb2.ModelInstanceGroup.KIND_GPU
        if variant == "fp16"
        else model_config_pb2.ModelInstanceGroup.KIND_CPU
    )
    assert config.instance_group[0].kind == expected_kind


@pytest.mark.parametrize("variant", ("fp32", "int8"))
def test_the_bundle_carries_each_cpu_variant_optimized_offline_with_the_same_outputs(bundle, variant):
    import numpy as np

    optimized = Predictor(bundle / f"model_{variant}.optimized.onnx")
    original = Predictor(bundle / f"model_{variant}.onnx")
    assert optimized.metadata == original.metadata
    assert (
        onnx.load(bundle / f"model_{variant}.optimized.onnx").SerializeToString()
        != onnx.load(bundle / f"model_{variant}.onnx").SerializeToString()
    ), "ONNX Runtime rewrote the graph"
    x = np.random.default_rng(5).standard_normal((64, 20, 2)).astype(np.float32)
    ours, theirs = optimized.predict(x), original.predict(x)
    np.testing.assert_allclose(ours.prediction, theirs.prediction, atol=1e-5)
    np.testing.assert_allclose(ours.attention, theirs.attention, atol=1e-5)
    assert not (bundle / "model_fp16.optimized.onnx").exists(), "fp16 is optimized where it runs (GPU)"
