"""Stage `deploy`: the deploy bundle, everything a serving host needs and nothing else.

    python -m pipeline.stages.deploy         # reads params.yaml: export (the variants)

Output deploy/:
    model_<variant>.onnx          every exported variant (fp32, and fp16 / int8 / int8_qdq as configured)
    model_<variant>.optimized.onnx  each CPU variant after ONNX Runtime's graph optimizations
                                  (level "extended": fusions that run on any CPU, no layout
                                  changes tied to this one), saved offline so that a serving
                                  host skips them when it opens a session
    metadata.json                 the models' ONNX metadata, inputs, outputs and gate figures
    MODEL_CARD.md                 what the model is, how it was made and measured, how to serve it
    triton/attention_<variant>/   a Triton Inference Server model repository: config.pbtxt
                                  (inputs, outputs, dynamic batching; fp16 on GPU, others on CPU)
                                  and 1/model.onnx
No TensorFlow import.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx

from pipeline.core import stage
from pipeline.core.config import load_config
from pipeline.core.contract import INPUT_NAME
from pipeline.core.errors import run_command
from pipeline.onnx.variants import drop_unused_opsets

DEPLOY_DIR = Path("deploy")
CPU_VARIANTS = ("fp32", "int8", "int8_qdq")  # fp16 is for GPUs: its graph is optimized where it runs
TRITON_MAX_BATCH = 1024
TRITON_QUEUE_DELAY_US = 200


def _dims(value_info) -> list[int]:
    """Dims after the batch dim; -1 where dynamic (Triton's convention)."""
    dims = value_info.type.tensor_type.shape.dim[1:]
    return [d.dim_value if d.HasField("dim_value") else -1 for d in dims]


def triton_config(name: str, onnx_model: onnx.ModelProto, gpu: bool) -> str:
    """config.pbtxt for Triton's ONNX Runtime backend, names and dims read from the graph."""
    inputs = {i.name: i for i in onnx_model.graph.input}

    def tensor(value_info) -> str:
        return (
            f'  {{\n    name: "{value_info.name}"\n    data_type: TYPE_FP32\n'
            f"    dims: [ {', '.join(str(d) for d in _dims(value_info))} ]\n  }}"
        )

    return (
        "\n".join(
            [
                f'name: "{name}"',
                'platform: "onnxruntime_onnx"',
                f"max_batch_size: {TRITON_MAX_BATCH}",
                "input [\n" + tensor(inputs[INPUT_NAME]) + "\n]",
                "output [\n" + ",\n".join(tensor(output) for output in onnx_model.graph.output) + "\n]",
                f"dynamic_batching {{\n  max_queue_delay_microseconds: {TRITON_QUEUE_DELAY_US}\n}}",
                f"instance_group [\n  {{\n    kind: {'KIND_GPU' if gpu else 'KIND_CPU'}\n    count: 1\n  }}\n]",
            ]
        )
        + "\n"
    )


OUTPUT_MEANINGS = {
    "prediction": "float32 [batch, outputs]: class probabilities, or the regression value",
    "attention": "float32 [batch, positions]: the attention weights, 0 on padding",
    "logit": "float32 [batch, outputs]: the prediction before its softmax or sigmoid",
    "contribution": "float32 [batch, positions, outputs]: each step's signed share of each logit "
    "(Σ over the steps + a constant = logit; 0 on padding)",
}


def model_card(metadata: dict, variants: list[str], export_report: dict, metrics: dict, outputs: list[str]) -> str:
    """MODEL_CARD.md: identity, inputs and outputs (`outputs`: the graph's, in order), measured
    quality, gates, serving."""
    labels = json.loads(metadata.get("labels") or "null")
    lines = [
        f"# {metadata['model']} on {metadata['task']}",
        "",
        f"- task type: {metadata['task_type']}" + (f"; classes (index order): {labels}" if labels else ""),
        f"- MLflow run: `{metadata['mlflow_run_id']}`; config digest: `{metadata['config_digest'][:16]}`",
        f"- input `{INPUT_NAME}`: float32 {metadata['input_layout']}, sample shape "
        f"{metadata['input_shape']}; padding value {metadata['pad_value']}",
        f"- preprocessing (inside the graph): {metadata['preprocessing']}",
        f"- outputs (opset {metadata['opset']}):",
        *[f"  - `{name}`: {OUTPUT_MEANINGS[name]}" for name in outputs],
        f"- made with: {metadata['versions']}",
        "",
        "## Test metrics (ONNX Runtime, fp32)",
        "",
        *[f"- {k}: {v:.4g}" for k, v in metrics.items()],
        "",
        "## Variants and their gates against Keras",
        "",
        "| variant | file | prediction max abs | attention max abs | attention row-sum error | class agreement"
        " | accuracy drop |",
        "|---|---|---|---|---|---|---|",
    ]
    for variant in variants:
        agreement = export_report.get(f"export/{variant}/class_agreement")
        drop = export_report.get(f"export/{variant}/accuracy_drop")
        lines.append(
            f"| {variant} | model_{variant}.onnx | {export_report[f'export/{variant}/prediction_max_abs']:.2e}"
            f" | {export_report[f'export/{variant}/attention_max_abs']:.2e}"
            f" | {export_report[f'export/{variant}/attention_sum_error']:.2e} | "
            f"{'' if agreement is None else f'{agreement:.2%}'} | "
            f"{'' if drop is None else f'{100 * drop:.2f} points'} |"
        )
    lines += [
        "",
        "fp32 runs anywhere; fp16 is for GPUs (CUDA or TensorRT); int8_qdq (static quantization) is for",
        "CPUs with convolutional models; int8 (dynamic quantization) is the CPU option of recurrent",
        "models and pays off on large ones only.",
        "",
        "## Serving",
        "",
        "    python -m pipeline.serving.serve --model deploy/model_fp32.onnx      # HTTP on 127.0.0.1:8000",
        "    tritonserver --model-repository deploy/triton                # GPU: attention_fp16",
        "",
        "Both speak the Open Inference Protocol (KServe v2): POST /v2/models/attention_<variant>/infer",
        f"with JSON or binary tensors, input `x`, outputs {', '.join(f'`{name}`' for name in outputs)} (and `label`",
        "from pipeline.serving.serve).",
        "",
    ]
    return "\n".join(lines)


def save_optimized(source: Path, target: Path) -> None:
    """`source` after ONNX Runtime's extended graph optimizations (CPU), written to `target` with
    the source's metadata (ONNX Runtime drops it) and only the operator sets it uses."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(target)
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(target)
    drop_unused_opsets(optimized)
    del optimized.metadata_props[:]
    optimized.metadata_props.extend(onnx.load(source).metadata_props)
    onnx.save(optimized, target)


def main() -> None:
    cfg = load_config()
    export_report = stage.read_json(stage.EXPORT_REPORT)
    metrics = stage.read_json(stage.METRICS_FILE)
    models = {}
    for variant in cfg.export.variants:
        path = stage.variant_file(variant)
        if not path.is_file():
            raise stage.StageFailed(f"{path}: not found; run `dvc repro export` first")
        models[variant] = onnx.load(path)
    metadata = {p.key: p.value for p in models["fp32"].metadata_props}
    with stage.atomic_dir(DEPLOY_DIR) as folder:
        for variant in models:
            shutil.copyfile(stage.variant_file(variant), folder / f"model_{variant}.onnx")
            if variant in CPU_VARIANTS:
                save_optimized(stage.variant_file(variant), folder / f"model_{variant}.optimized.onnx")
            triton_model = folder / "triton" / f"attention_{variant}"
            (triton_model / "1").mkdir(parents=True)
            shutil.copyfile(stage.variant_file(variant), triton_model / "1" / "model.onnx")
            (triton_model / "config.pbtxt").write_text(
                triton_config(f"attention_{variant}", models[variant], gpu=variant == "fp16")
            )
        document = {
            "metadata": metadata,
            "input": {"name": INPUT_NAME, "dims": ["batch", *_dims(models["fp32"].graph.input[0])]},
            "outputs": {o.name: ["batch", *_dims(o)] for o in models["fp32"].graph.output},
            "variants": {
                v: {k.split("/")[-1]: value for k, value in export_report.items() if k.startswith(f"export/{v}/")}
                for v in models
            },
            "metrics": metrics,
        }
        (folder / "metadata.json").write_text(json.dumps(document, indent=2) + "\n")
        (folder / "MODEL_CARD.md").write_text(
            model_card(metadata, list(models), export_report, metrics, [o.name for o in models["fp32"].graph.output])
        )
    print(f"wrote {DEPLOY_DIR}/: {', '.join(models)} and a Triton repository")


if __name__ == "__main__":
    run_command(main)
