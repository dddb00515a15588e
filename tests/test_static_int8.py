"""The int8_qdq variant through the stages: a small trained convolutional model passes its gate and
reaches the deploy bundle; a gate it misses stops export with the key named and nothing written."""

from __future__ import annotations

import json
import re

import numpy as np
import onnx
import pytest

from pipeline.core import stage
from pipeline.serving.inference import OnnxModel
from tests.conftest import run_stage, stages_run

pytestmark = [pytest.mark.integration, pytest.mark.numeric]

QDQ = (
    "experiment=ucr",
    "data.name=ItalyPowerDemand",
    "model.filters=[16,16]",
    "model.kernel_sizes=[5,3]",
    "train.epochs=8",
    "export.parity_samples=512",
    "export.variants=[fp32,int8_qdq]",
)


def test_a_trained_conv_model_passes_the_int8_qdq_gate_and_a_missed_gate_writes_nothing(tmp_path, capsys):
    with stages_run(tmp_path, *QDQ) as workdir:
        report = json.loads((workdir / stage.EXPORT_REPORT).read_text())
        assert report["export/int8_qdq/accuracy_drop"] <= 0.005
        assert report["export/int8_qdq/attention_max_abs"] <= 0.02
        qdq_file = workdir / stage.variant_file("int8_qdq")
        deployed = next((workdir / "deploy").glob("model_int8_qdq.onnx"))
        assert deployed.read_bytes() == qdq_file.read_bytes()
        assert any(n.op_type == "QuantizeLinear" for n in onnx.load(deployed).graph.node)
        test = np.load(workdir / "data/prepared/test.npz")
        outputs = OnnxModel(deployed.read_bytes()).run(test["x"][:100])
        assert outputs["prediction"].shape == (100, 2)
        optimized = OnnxModel((workdir / "deploy/model_int8_qdq.optimized.onnx").read_bytes()).run(test["x"][:100])
        for name, values in outputs.items():
            np.testing.assert_allclose(optimized[name], values, atol=1e-5)

        before = {p.name: p.read_bytes() for p in (workdir / stage.VARIANTS_DIR).iterdir()}
        workdir.write_params(*QDQ, "export.variant_tolerance.int8_qdq=1e-9")
        capsys.readouterr()
        with pytest.raises(SystemExit) as exited:
            run_stage("export")
        assert exited.value.code == 2
        error = capsys.readouterr().err
        assert error.startswith("error: ONNX parity failed")
        assert re.search(
            r"int8_qdq: attention max abs difference from Keras .* > export.variant_tolerance.int8_qdq=1e-09", error
        )
        assert {p.name: p.read_bytes() for p in (workdir / stage.VARIANTS_DIR).iterdir()} == before
