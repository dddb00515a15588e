"""Re-evaluating logged study runs: a run that predates the faithfulness metrics gets them from
its logged ONNX model; a run whose model no longer scores its logged accuracy is left alone."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from pipeline.core.config import compose_defaults, validate
from pipeline.core.metrics import TASK_METRICS
from pipeline.data.splits import prepared
from pipeline.serving.inference import OnnxModel
from pipeline.tools import reevaluate, study

DATASET, STEPS, USED = "ItalyPowerDemand", 24, 5


def one_step_classifier():
    """x [batch, 24, 1] -> prediction softmax([v, -v]) with v = x[:, 5, 0] [batch, 2], and the
    attention one-hot on step 5 (the only step it reads)."""
    nodes = [
        helper.make_node("Gather", ["x", "used"], ["step"], axis=1),  # [batch, 1]
        helper.make_node("MatMul", ["step", "weights"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["prediction"], axis=-1),
        helper.make_node("Mul", ["x", "zero"], ["nothing"]),
        helper.make_node("ReduceSum", ["nothing", "last_axis"], ["zeros"], keepdims=0),
        helper.make_node("Add", ["zeros", "row"], ["attention"]),
    ]
    initializers = [
        numpy_helper.from_array(np.array(USED, np.int64), "used"),
        numpy_helper.from_array(np.array([[1.0, -1.0]], np.float32), "weights"),
        numpy_helper.from_array(np.array(0, np.float32), "zero"),
        numpy_helper.from_array(np.array([2], np.int64), "last_axis"),
        numpy_helper.from_array(np.eye(STEPS, dtype=np.float32)[USED], "row"),
    ]
    graph = helper.make_graph(
        nodes,
        "one_step",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", STEPS, 1])],
        [
            helper.make_tensor_value_info("prediction", TensorProto.FLOAT, ["batch", 2]),
            helper.make_tensor_value_info("attention", TensorProto.FLOAT, ["batch", STEPS]),
        ],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_runs_without_the_metrics_get_them_and_changed_ones_are_left_alone(tmp_path, capsys):
    import mlflow
    import mlflow.onnx

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(
        experiment_id=mlflow.create_experiment("study", artifact_location=(tmp_path / "artifacts").as_uri())
    )
    kept, changed = (study.Combination(DATASET, "conv_gap", seed) for seed in (1, 2))
    cfg = validate(compose_defaults(overrides=kept.overrides), "test")
    test = prepared(cfg)[0]["test"]
    model = one_step_classifier()
    accuracy = TASK_METRICS["multiclass"](OnnxModel(model.SerializeToString()).run(test.x)["prediction"], test.y)[
        "test/accuracy"
    ]
    run_ids = {}
    for combination, logged in ((kept, accuracy), (changed, accuracy - 0.1)):
        with mlflow.start_run() as run:
            mlflow.log_params(study.expected_params(combination))
            mlflow.log_metric("faithfulness/no_longer_defined", 0.5)  # as if an older version had measured it
            mlflow.log_metrics({"test/accuracy": logged, "attention/entropy": 0.0})  # as evaluate logs
            mlflow.onnx.log_model(model, name="onnx_model")
        run_ids[combination] = run.info.run_id
    assert {c for c, _ in reevaluate.lacking(uri, [kept, changed])} == {kept, changed}

    reevaluate.main(["--tracking-uri", uri, "--datasets", DATASET, "--models", "conv_gap"])

    client = mlflow.MlflowClient(uri)
    metrics = client.get_run(run_ids[kept]).data.metrics
    # the model reads step 5 alone, and its attention says so: deleting it costs, random steps do not
    first = cfg.evaluate.samples  # the faithfulness metrics use the first evaluate.samples series
    prediction = OnnxModel(model.SerializeToString()).run(test.x[:first])["prediction"]
    assert metrics["faithfulness/sufficiency_top1"] == pytest.approx(
        TASK_METRICS["multiclass"](prediction, test.y[:first])["test/accuracy"]
    )
    assert metrics["faithfulness/deletion_random1"] > metrics["faithfulness/deletion_top1"]
    assert metrics["faithfulness/deletion_aopc_gain"] > 0
    assert "faithfulness/uniform_drop" not in metrics  # no Keras model logged: no ablation
    assert np.isnan(metrics["faithfulness/no_longer_defined"])  # an old figure is not left standing
    assert reevaluate.MARKER not in client.get_run(run_ids[changed]).data.metrics
    assert "left alone: conv_gap seed 2" in capsys.readouterr().out
    assert [c for c, _ in reevaluate.lacking(uri, [kept, changed])] == [changed]
