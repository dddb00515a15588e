"""Re-evaluating logged study runs: a run that predates the logit AOPCR gets it from its logged
ONNX model, or from today's model of its config with its logged Keras weights where the logged
ONNX model lacks the logit; a run whose model no longer scores its logged accuracy is left alone."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from pipeline.core.config import compose_defaults, validate
from pipeline.core.metrics import TASK_METRICS
from pipeline.data.splits import prepared
from pipeline.experiments import ledger, study
from pipeline.serving.inference import OnnxModel
from pipeline.tools import reevaluate

DATASET, STEPS, USED = "ItalyPowerDemand", 24, 5


def one_step_classifier():
    """x [batch, time, 1] -> logit [v, -v] with v = x[:, 5, 0] [batch, 2], prediction its softmax,
    and the attention one-hot on step 5 (the only step it reads), at any length above 5."""
    nodes = [
        helper.make_node("Gather", ["x", "used"], ["step"], axis=1),  # [batch, 1]
        helper.make_node("MatMul", ["step", "weights"], ["logit"]),
        helper.make_node("Softmax", ["logit"], ["prediction"], axis=-1),
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "time_axis"], ["time"], axis=0),
        helper.make_node("Range", ["start", "time", "one"], ["positions"]),
        helper.make_node("Equal", ["positions", "used"], ["is_used"]),
        helper.make_node("Cast", ["is_used"], ["row"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["x", "zero"], ["nothing"]),
        helper.make_node("ReduceSum", ["nothing", "last_axis"], ["zeros"], keepdims=0),
        helper.make_node("Add", ["zeros", "row"], ["attention"]),
    ]
    initializers = [
        numpy_helper.from_array(np.array(USED, np.int64), "used"),
        numpy_helper.from_array(np.array([[1.0, -1.0]], np.float32), "weights"),
        numpy_helper.from_array(np.array(1, np.int64), "time_axis"),
        numpy_helper.from_array(np.array(0, np.int64), "start"),
        numpy_helper.from_array(np.array(1, np.int64), "one"),
        numpy_helper.from_array(np.array(0, np.float32), "zero"),
        numpy_helper.from_array(np.array([2], np.int64), "last_axis"),
    ]
    graph = helper.make_graph(
        nodes,
        "one_step",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "time", 1])],
        [
            helper.make_tensor_value_info("prediction", TensorProto.FLOAT, ["batch", 2]),
            helper.make_tensor_value_info("attention", TensorProto.FLOAT, ["batch", "time"]),
            helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["batch", 2]),
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
            mlflow.log_params(ledger.expected_params(combination))
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
    assert metrics["faithfulness/aopcr_attention"] > 0  # its attention finds the logit's one step
    assert "faithfulness/aopcr_contribution" not in metrics  # it exports none
    assert "faithfulness/uniform_drop" not in metrics  # no Keras model logged: no ablation
    assert np.isnan(metrics["faithfulness/no_longer_defined"])  # an old figure is not left standing
    assert reevaluate.MARKER not in client.get_run(run_ids[changed]).data.metrics
    assert "left alone: conv_gap seed 2" in capsys.readouterr().out
    assert [c for c, _ in reevaluate.lacking(uri, [kept, changed])] == [changed]


@pytest.mark.integration
def test_a_model_logged_without_logit_is_explained_by_its_weights_in_today_s_model(tmp_path):
    """A run whose logged ONNX model has only prediction and attention (as before the logit and
    contribution outputs existed) gets the AOPCR of its contribution from its logged Keras
    weights, rebuilt in today's model of its config; the rebuilt model predicts as the logged one."""
    import keras
    import mlflow
    import mlflow.onnx

    from pipeline.core.contract import OUTPUT_NAMES
    from pipeline.models import TaskSpec, build_model
    from pipeline.onnx.conversion import to_onnx

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(
        experiment_id=mlflow.create_experiment("study", artifact_location=(tmp_path / "artifacts").as_uri())
    )
    combination = study.Combination(DATASET, "conv_gap", 1)
    cfg = validate(compose_defaults(overrides=combination.overrides), "test")
    splits, meta = prepared(cfg)
    keras.utils.set_random_seed(1)
    model = build_model(cfg.model, TaskSpec.from_meta(meta))
    exported = to_onnx(model, cfg.export.opset)
    kept = [o for o in exported.graph.output if o.name in OUTPUT_NAMES]
    del exported.graph.output[:]
    exported.graph.output.extend(kept)  # as logged before the extra outputs
    accuracy = TASK_METRICS["multiclass"](
        OnnxModel(exported.SerializeToString()).run(splits["test"].x)["prediction"], splits["test"].y
    )["test/accuracy"]
    model.save(tmp_path / "model.keras")
    with mlflow.start_run() as run:
        mlflow.log_params(ledger.expected_params(combination))
        mlflow.log_metrics({"test/accuracy": accuracy, "attention/entropy": 0.0})
        mlflow.onnx.log_model(exported, name="onnx_model")
        mlflow.log_artifact(str(tmp_path / "model.keras"), artifact_path="keras_model")

    reevaluate.main(["--tracking-uri", uri, "--datasets", DATASET, "--models", "conv_gap"])

    metrics = mlflow.MlflowClient(uri).get_run(run.info.run_id).data.metrics
    assert {"faithfulness/aopcr_attention", "faithfulness/aopcr_contribution", "faithfulness/uniform_drop"} <= set(
        metrics
    )
    assert np.isfinite(metrics["faithfulness/aopcr_contribution"])
    assert reevaluate.lacking(uri, [combination]) == []
