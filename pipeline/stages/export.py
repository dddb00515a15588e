"""Stage `export`: convert the Keras model to ONNX with tf2onnx and gate it on parity with Keras.

    python -m pipeline.stages.export         # reads params.yaml: export, mlflow

Outputs: models/model.onnx (fp32; input `x`, outputs `prediction` and `attention`, dynamic `batch`
and, for sequence models, `time`), models/variants/model_<fp16|int8|int8_qdq>.onnx (the other
`export.variants`) with variants.json naming each variant's file, models/uniform_attention.onnx
(the uniform-attention ablation of the same weights, which evaluate scores; never deployed) and
reports/export.json. Every variant carries the same metadata (task, model, MLflow run id, config
digest, labels, preprocessing, input layout, opset, package versions) and must pass its gate
against Keras on held-out inputs (pipeline/onnx/variants.py); if one misses, the stage fails and writes
nothing.
"""

from __future__ import annotations

import json

import onnx
import tensorflow as tf
import tf2onnx

from pipeline import tracking
from pipeline.core import stage
from pipeline.core.config import flatten, load_config
from pipeline.core.contract import PAD_VALUE
from pipeline.core.digests import whole_config_digest
from pipeline.core.errors import run_command
from pipeline.data.splits import load_split
from pipeline.models import load_model, uniform_attention_copy
from pipeline.onnx.conversion import to_onnx
from pipeline.onnx.variants import gate_failures, gate_report, gated_variant
from pipeline.serving.inference import OnnxModel


def model_metadata(cfg, meta: dict, run_id: str) -> dict[str, str]:
    """What every exported variant carries in its ONNX metadata."""
    import keras
    import onnxruntime

    return {
        "task": cfg.data.name,
        "task_type": meta["task_type"],
        "model": cfg.model.name,
        "seed": cfg.seed,
        "mlflow_run_id": run_id,
        "config_digest": whole_config_digest(cfg),
        "labels": json.dumps(meta.get("labels")),
        "preprocessing": json.dumps(meta.get("normalization") or {"mode": "none"}),
        "input_layout": meta["input_layout"],
        "input_shape": json.dumps(meta["input_shape"]),
        "pad_value": PAD_VALUE if meta["padded"] else "none",
        "opset": cfg.export.opset,
        "precision": "fp32",
        "versions": json.dumps(
            {
                "tensorflow": tf.__version__,
                "keras": keras.__version__,
                "tf2onnx": tf2onnx.__version__,
                "onnx": onnx.__version__,
                "onnxruntime": onnxruntime.__version__,
            }
        ),
    }


def main() -> None:
    cfg = load_config()
    model = load_model(stage.KERAS_MODEL)
    test = load_split("test")
    meta = stage.read_json(stage.META_FILE)
    run_id = stage.read_json(stage.MLFLOW_RUN_FILE)["run_id"]
    metadata = model_metadata(cfg, meta, run_id)
    fp32_model = to_onnx(model, cfg.export.opset, metadata)
    uniform_model = to_onnx(
        uniform_attention_copy(model), cfg.export.opset, {**metadata, "ablation": "uniform attention"}
    )
    x_check, y_check = test.x[: cfg.export.parity_samples], test.y[: cfg.export.parity_samples]
    labels = None if meta["task_type"] == "regression" else y_check
    keras_out = model.predict(x_check, batch_size=1024, verbose=0)
    calibration = (
        load_split("train").x[: cfg.export.quantization.calibration_series]
        if "int8_qdq" in cfg.export.variants
        else None
    )
    variants, runtimes, report, failures = {}, {}, {}, []
    own_tolerance = getattr(cfg.model, "parity_tolerance", None)
    own_tolerance = own_tolerance and ("model.parity_tolerance", own_tolerance)
    for variant in cfg.export.variants:

        def check(candidate, variant=variant) -> list[str]:
            runtimes[variant] = OnnxModel(candidate.SerializeToString())
            figures = gate_report(variant, meta["task_type"], keras_out, runtimes[variant].run(x_check), labels)
            report.update(figures)
            return gate_failures(variant, figures, cfg.export, own_tolerance)

        variants[variant], problems = gated_variant(
            fp32_model, variant, check, calibration=calibration, quantization=cfg.export.quantization
        )
        if variant == "fp16":  # 1: the recurrent layers stayed float32 to pass the gate
            report["export/fp16/recurrent_float32"] = int(
                any(p.key == "float32_ops" for p in variants[variant].metadata_props)
            )
        failures += [f"{variant}: {problem}" for problem in problems]
    if failures:
        raise stage.StageFailed(
            "ONNX parity failed:\n  - "
            + "\n  - ".join(failures)
            + f"\n{stage.ONNX_MODEL} and {stage.VARIANTS_DIR} left unchanged"
        )
    worst = max(report["export/fp32/prediction_max_abs"], report["export/fp32/attention_max_abs"])
    report = {
        "export/parity_max_abs": worst,
        **report,
        "export/parity_samples": len(x_check),
        "export/opset": cfg.export.opset,
        **{f"export/{v}/bytes": m.ByteSize() for v, m in variants.items()},
    }
    with stage.atomic_path(stage.ONNX_MODEL) as tmp:
        onnx.save(fp32_model, tmp)
    with stage.atomic_path(stage.UNIFORM_ONNX) as tmp:
        onnx.save(uniform_model, tmp)
    with stage.atomic_dir(stage.VARIANTS_DIR) as folder:
        for variant, onnx_model in variants.items():
            if variant != "fp32":
                onnx.save(onnx_model, folder / stage.variant_file(variant).name)
        stage.write_json(folder / stage.VARIANTS_MANIFEST.name, {v: str(stage.variant_file(v)) for v in variants})
    stage.write_json(stage.EXPORT_REPORT, report)
    with tracking.resume_pipeline_run(cfg):
        tracking.log_params(flatten({"export": cfg.section("export")}))
        tracking.log_metrics(
            {
                k: v
                for k, v in report.items()
                if k.startswith("export/") and not k.endswith(("/bytes", "parity_samples", "opset"))
            }
        )
        example = x_check[:2]
        tracking.log_onnx_model(fp32_model, example, runtimes["fp32"].run(example))
        tracking.log_artifacts([stage.variant_file(v) for v in variants if v != "fp32"], artifact_path="onnx_variants")
        tracking.log_artifacts([stage.UNIFORM_ONNX], artifact_path="ablations")
    print(
        f"exported {', '.join(variants)}; largest difference from Keras on {len(x_check)} test samples: "
        + "; ".join(
            f"{v} prediction {report[f'export/{v}/prediction_max_abs']:.2e}, "
            f"attention {report[f'export/{v}/attention_max_abs']:.2e}"
            for v in variants
        )
    )


if __name__ == "__main__":
    run_command(main)
