"""Inference benchmarks, all in one process on the same inputs; writes reports/bench.json.

    make bench                        # dvc repro (if needed), then python -m pipeline.tools.bench

On the pipeline's model (models/model.keras and models/model.onnx, test-split inputs):
    ONNX Runtime vs Keras `model.predict` vs a `tf.function` of the model: latency p50 and p99 at
    batch 1, throughput at batch 1024; the Predictor (input checks, labels) vs a bare
    `InferenceSession.run` of the same outputs at batch 1; the share of the CPU's peak FLOP rate ONNX Runtime reaches
    at batch 1024 (FLOPs counted from the ONNX graph, peak measured with a large float32 matmul).
On a deployment-size model (a 128-unit LSTM with additive attention over 100 steps of 6
features, 4 classes, trained briefly on a synthetic task): int8 vs fp32 throughput at batch 256,
with the int8 variant's gate against Keras.

Top-level figures: ort_vs_tf_function_batch1, ort_vs_keras_predict_batch1,
ort_vs_tf_function_batch1024, int8_vs_fp32_batch256_large (speed-ups, > 1: ONNX Runtime or int8
is faster), predictor_vs_raw_ort_batch1 (a slow-down) and flop_share_batch1024. The `serving`
section (the HTTP service under load) is written by pipeline.tools.loadbench, the second half of
`make bench`.
"""

from __future__ import annotations

import json
import time

import keras
import numpy as np
import onnx
import onnxruntime as ort
import tensorflow as tf

from pipeline.core import stage
from pipeline.core.config import RecurrentAttentionModel, load_config
from pipeline.core.contract import INPUT_NAME, OUTPUT_NAMES
from pipeline.core.errors import run_command
from pipeline.data.splits import load_split
from pipeline.models import TaskSpec, build_model, load_model
from pipeline.onnx.conversion import to_onnx
from pipeline.onnx.variants import convert, gate_failures, gate_report
from pipeline.serving.inference import Predictor, usable_cpus
from pipeline.tracking import DEFAULT_STORE, cpu_model, cpuinfo_field, repository_root

BENCH_FILE = stage.REPORTS / "bench.json"
TARGETS = {  # figure: (bound, "min" or "max")
    "ort_vs_tf_function_batch1": (30.0, "min"),
    "ort_vs_keras_predict_batch1": (1000.0, "min"),
    "ort_vs_tf_function_batch1024": (1.5, "min"),
    "int8_vs_fp32_batch256_large": (1.5, "min"),
    "predictor_vs_raw_ort_batch1": (1.5, "max"),
}
LARGE = {"time": 100, "features": 6, "classes": 4, "units": 128, "train_samples": 4096}
# The deployed real-data models: the default recipe (experiment=ucr: conv_attention) on a long
# univariate set and a multivariate one, seed 1, as the study logged them to MLflow.
DEPLOYED = ("OSULeaf", "JapaneseVowels")
DEPLOYED_SEED = 1
REAL_TARGETS = {  # figure on the deployed model: (bound, "min" or "max")
    "int8_qdq_vs_fp32_batch256": (2.0, "min"),
    "int8_qdq_accuracy_drop": (0.005, "max"),
    "ort_vs_openvino_batch1": (1.0, "min"),
    "ort_vs_tf_function_batch1": (30.0, "min"),
    "flop_share_batch1024": (0.7, "min"),
}
# The deployed model's figures printed, with what each says beside its target.
REAL_PRINTED = {
    **dict.fromkeys(REAL_TARGETS, ""),
    "ort_vs_tf_function_batch1_ceiling": "tf.function's batch-1 time over one series' FLOPs at the peak",
}
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile")


def call_seconds(call, repeats: int, warmup: int = 20) -> np.ndarray:
    """[repeats] wall times of one call, in seconds, after `warmup` calls."""
    for _ in range(warmup):
        call()
    times = np.empty(repeats)
    for i in range(repeats):
        started = time.perf_counter()
        call()
        times[i] = time.perf_counter() - started
    return times


def _percentiles_ms(times: np.ndarray) -> dict[str, float]:
    return {"p50_ms": float(np.percentile(times, 50) * 1e3), "p99_ms": float(np.percentile(times, 99) * 1e3)}


def throughput(call, batch: int, seconds: float = 3.0) -> float:
    """Samples per second of repeated calls on one batch (after one warm-up call)."""
    call()
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        call()
        calls += 1
    return calls * batch / (time.perf_counter() - started)


def ort_session(
    model, threads: int | None = None, level: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
) -> ort.InferenceSession:
    """A CPU session of an ONNX model (proto or path): `threads` intra-op threads (default: every
    usable CPU) and graph optimization `level`."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or usable_cpus()
    options.graph_optimization_level = level
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def operator_profile(model: onnx.ModelProto, x: np.ndarray, runs: int = 20) -> dict[str, float]:
    """ONNX Runtime's own profile of `runs` runs on x (every CPU, all graph optimizations): each
    operator type's share of the time spent in the graph's nodes, largest first (what the
    optimized graph runs: FusedConv, QLinearConv, Reorder, ...)."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        options = ort.SessionOptions()
        options.intra_op_num_threads = usable_cpus()
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(folder) / "profile")
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        for _ in range(runs):
            session.run(None, {INPUT_NAME: x})
        events = json.loads(Path(session.end_profiling()).read_text())
    totals: dict[str, float] = {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            op_type = event["args"]["op_name"]
            totals[op_type] = totals.get(op_type, 0.0) + event["dur"]
    whole = sum(totals.values()) or 1.0
    return {op: duration / whole for op, duration in sorted(totals.items(), key=lambda item: -item[1])}


def count_flops(onnx_model: onnx.ModelProto, input_shape: list[int]) -> int:
    """Multiply-add FLOPs (2 per MAC) of the MatMul, Gemm, Conv and LSTM nodes for one input of
    `input_shape` (batch included); elementwise ops are not counted."""
    model = onnx.ModelProto()
    model.CopyFrom(onnx_model)
    for dim, value in zip(model.graph.input[0].type.tensor_type.shape.dim, input_shape):
        dim.Clear()
        dim.dim_value = value
    model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    shapes = {i.name: list(i.dims) for i in model.graph.initializer}
    for info in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        shapes[info.name] = [d.dim_value if d.HasField("dim_value") else None for d in info.type.tensor_type.shape.dim]
    total = 0
    for node in model.graph.node:
        known = [shapes.get(name) for name in (*node.input[:3], node.output[0])]
        if node.op_type in ("MatMul", "Gemm"):
            a, out = known[0], known[-1]
            if a and out and None not in a + out:
                total += 2 * int(np.prod(out)) * a[-1]
        elif node.op_type == "Conv":
            w, out = known[1], known[-1]
            if w and out and None not in w + out:
                total += 2 * int(np.prod(out)) * int(np.prod(w[1:]))
        elif node.op_type == "LSTM":
            x, w, r = known[:3]
            if x and None not in x:
                steps, batch, features = x
                directions, gates, hidden = w[0], w[1], r[2]
                total += 2 * steps * batch * directions * gates * (features + hidden)
    return total


def peak_flops(size: int = 2048, seconds: float = 3.0) -> float:
    """The machine's float32 FLOP rate on a large matmul, all usable cores: the faster of NumPy's
    BLAS and ONNX Runtime's MatMul (MLAS), which differ by CPU (on an AVX2-only AMD EPYC, ONNX
    Runtime's convolutions outran NumPy's matmul)."""
    a = np.random.default_rng(0).standard_normal((size, size)).astype(np.float32)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["a", "b"], ["c"])],
        "matmul",
        [onnx.helper.make_tensor_value_info("a", onnx.TensorProto.FLOAT, [size, size])],
        [onnx.helper.make_tensor_value_info("c", onnx.TensorProto.FLOAT, [size, size])],
        [onnx.numpy_helper.from_array(a, "b")],
    )
    session = ort_session(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]))
    rate = max(throughput(lambda: a @ a, 1, seconds), throughput(lambda: session.run(["c"], {"a": a}), 1, seconds))
    return rate * 2 * size**3


def _tile(x: np.ndarray, batch: int) -> np.ndarray:
    return np.ascontiguousarray(np.resize(x, (batch, *x.shape[1:])).astype(np.float32))


def pipeline_model_figures() -> dict:
    """ORT vs Keras predict vs tf.function, Predictor overhead and FLOP share, default model (the
    runtimes taking turns: interleaved_speeds)."""
    model = load_model(stage.KERAS_MODEL)
    session = ort_session(stage.ONNX_MODEL)
    predictor = Predictor(stage.ONNX_MODEL)
    test = load_split("test").x
    x1, x1024 = _tile(test, 1), _tile(test, 1024)
    signature = tf.TensorSpec((None, *model.input.shape[1:]), tf.float32)
    graph_function = tf.function(lambda x: model(x, training=False), input_signature=[signature])
    names = list(OUTPUT_NAMES)

    def ort_run(x):
        return session.run(names, {INPUT_NAME: x})

    def ort_run_as_predictor(x):  # the outputs the Predictor fetches: its overhead is its checks alone
        return session.run(predictor.onnx.output_names, {INPUT_NAME: x})

    def tf_run(x):
        return {k: v.numpy() for k, v in graph_function(tf.constant(x)).items()}

    results = interleaved_speeds(
        {
            "onnxruntime": ort_run,
            "tf_function": tf_run,
            "predictor": predictor.predict,
            "onnxruntime_predictor_outputs": ort_run_as_predictor,
        },
        x1,
        {1024: x1024},
        repeats=3000,
        seconds=3.0,
    )
    results |= interleaved_speeds(
        {"keras_predict": lambda x: model.predict(x, batch_size=1024, verbose=0)},
        x1,
        {1024: x1024},
        repeats=100,
        seconds=3.0,
    )  # one call costs ms
    flops = count_flops(onnx.load(stage.ONNX_MODEL), list(x1024.shape))
    peak = peak_flops()
    achieved = flops * results["onnxruntime"]["batch1024_samples_per_s"] / 1024
    results["flops"] = {"per_batch1024": flops, "achieved_per_s": achieved, "peak_matmul_per_s": peak}
    return results


def large_model_figures(export_cfg) -> dict:
    """int8 vs fp32 throughput at batch 256 on a trained deployment-size model, with the gate."""
    shape = (LARGE["time"], LARGE["features"])
    rng = np.random.default_rng(0)
    n = LARGE["train_samples"] + 512
    y = rng.integers(0, LARGE["classes"], n)
    x = rng.standard_normal((n, *shape)).astype(np.float32)
    steps = rng.integers(0, LARGE["time"], n)
    x[np.arange(n), steps, y] += 3.0  # class c: a spike on feature c at a random step
    keras.utils.set_random_seed(0)
    model_cfg = RecurrentAttentionModel(
        name="bahdanau",
        cell="lstm",
        bidirectional=False,
        units=LARGE["units"],
        score="additive",
        query="learned",
        recurrent_l2=0.0,
        position_bias=False,
    )
    model = build_model(model_cfg, TaskSpec(shape, "multiclass", n_classes=LARGE["classes"]))
    trainer = keras.Model(model.input, model.output["prediction"])
    trainer.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = trainer.fit(x[:-512], y[:-512], epochs=2, batch_size=64, verbose=0)
    held_out = x[-512:]
    fp32 = to_onnx(model, 17, {"task_type": "multiclass"})
    int8 = convert(fp32, "int8")
    keras_out = model.predict(held_out, batch_size=512, verbose=0)
    gate = gate_report(
        "int8",
        "multiclass",
        keras_out,
        dict(zip(OUTPUT_NAMES, ort_session(int8).run(list(OUTPUT_NAMES), {INPUT_NAME: held_out}))),
    )
    batch = held_out[:256]
    sessions = {"fp32": ort_session(fp32), "int8": ort_session(int8)}
    rates = {
        name: throughput(lambda s=s: s.run(list(OUTPUT_NAMES), {INPUT_NAME: batch}), 256, 5.0)
        for name, s in sessions.items()
    }
    return {
        "model": {
            **LARGE,
            "train_accuracy": float(history.history["accuracy"][-1]),
            "flops_per_batch256": count_flops(fp32, [256, *shape]),
        },
        "batch256_samples_per_s": rates,
        "int8_gate": {**gate, "failures": gate_failures("int8", gate, export_cfg)},
    }


def cpu_flags() -> dict[str, bool]:
    """Which of CPU_FLAGS this CPU has (/proc/cpuinfo; all False elsewhere)."""
    present = set(cpuinfo_field("flags").split())
    return {flag: flag in present for flag in CPU_FLAGS}


def interleaved_speeds(
    runs: dict, x1: np.ndarray, batches: dict[int, np.ndarray], repeats: int, seconds: float, rounds: int = 3
) -> dict:
    """Per run(x) of `runs`: batch-1 latency (p50, p99 ms over every round's calls) and samples per
    second at each batch size (the best round's: a busy spell only slows a call down). The runs take
    turns in `rounds` rounds, so that a spell of other load on the machine hits them alike."""
    times = {name: [] for name in runs}
    rates = {name: {n: [] for n in batches} for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            times[name].append(call_seconds(lambda r=run: r(x1), max(repeats // rounds, 1)))
            for n, x in batches.items():
                rates[name][n].append(throughput(lambda r=run, x=x: r(x), n, seconds / rounds))
    return {
        name: {
            "batch1": _percentiles_ms(np.concatenate(times[name])),
            **{f"batch{n}_samples_per_s": max(rates[name][n]) for n in batches},
        }
        for name in runs
    }


def _openvino_run(onnx_model: onnx.ModelProto):
    """run(x) -> outputs of the ONNX model compiled by OpenVINO for the CPU, in float32
    (INFERENCE_PRECISION_HINT f32: no bf16 on CPUs that have it)."""
    import openvino

    core = openvino.Core()
    compiled = core.compile_model(
        core.read_model(onnx_model.SerializeToString()), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
    )
    request = compiled.create_infer_request()
    outputs = {o.get_any_name(): o for o in compiled.outputs}
    return lambda x: {name: request.infer({0: x})[port] for name, port in outputs.items()}


def int8_settings(quantization) -> dict:
    """The int8_qdq settings measured side by side, by their runtime name: the config's ("int8_qdq"),
    the other activation type (U8S8 kernels can saturate on CPUs without VNNI, S8S8 ones are slower
    on some that have it), and MatMul quantized too (the attention pooling's products)."""
    other = "int8" if quantization.activation_type == "uint8" else "uint8"
    settings = {
        "int8_qdq": quantization,
        f"int8_qdq_{other}_activations": quantization.model_copy(update={"activation_type": other}),
    }
    if "MatMul" not in quantization.quantized_ops:
        settings["int8_qdq_with_matmul"] = quantization.model_copy(
            update={"quantized_ops": [*quantization.quantized_ops, "MatMul"]}
        )
    return settings


def real_data_model_figures(
    model: keras.Model, fp32: onnx.ModelProto, splits: dict, export_cfg, repeats: int = 1000, seconds: float = 3.0
) -> dict:
    """A deployed model on its own test series, all runtimes in this process on the same inputs:
    ONNX Runtime fp32 (and fp32_unfused: without the export's fused convolution blocks), int8_qdq
    (static QDQ, calibrated on the training split, with its gate) and
    fp16 where the CPU has kernels for it; OpenVINO (CPU plugin, f32) on the same ONNX file; a
    tf.function of the Keras model with and without XLA (jit_compile). Batch-1 latency, batch 256
    and 1024 throughput (interleaved_speeds), ONNX Runtime's settings (threads, graph optimization),
    its per-operator profile of fp32 and int8_qdq at batch 256 (operator_profile), the FLOP share."""
    test, train = splits["test"], splits["train"]
    x1, batches = _tile(test.x, 1), {256: _tile(test.x, 256), 1024: _tile(test.x, 1024)}
    names = list(OUTPUT_NAMES)
    keras_out = model.predict(test.x, batch_size=256, verbose=0)
    quantized, gates = {}, {}
    for setting, quantization in int8_settings(export_cfg.quantization).items():
        quantized[setting] = convert(
            fp32, "int8_qdq", calibration=train.x[: quantization.calibration_series], quantization=quantization
        )
        gate = gate_report(
            "int8_qdq",
            "multiclass",
            keras_out,
            dict(zip(names, ort_session(quantized[setting]).run(names, {INPUT_NAME: test.x}))),
            test.y,
        )
        gates[setting] = {**gate, "failures": gate_failures("int8_qdq", gate, export_cfg)}
    qdq = quantized["int8_qdq"]
    runs = {}
    unfused = to_onnx(model, export_cfg.opset, fuse_blocks=False)  # tf2onnx's graph as it writes it
    for variant, onnx_model in (
        ("fp32", fp32),
        ("fp32_unfused", unfused),
        *quantized.items(),
        ("fp16", convert(fp32, "fp16")),
    ):
        try:
            session = ort_session(onnx_model)
        except Exception as error:
            runs[f"onnxruntime_{variant}"] = f"no session: {str(error).splitlines()[0][:200]}"
            continue
        runs[f"onnxruntime_{variant}"] = lambda x, s=session: s.run(names, {INPUT_NAME: x})
    openvino_fp32 = _openvino_run(fp32)
    runs["openvino_fp32"], runs["openvino_int8_qdq"] = openvino_fp32, _openvino_run(qdq)
    signature = [tf.TensorSpec((None, *model.input.shape[1:]), tf.float32)]
    for name, jit in (("tf_function", False), ("tf_function_xla", True)):
        function = tf.function(lambda x: model(x, training=False), input_signature=signature, jit_compile=jit)
        runs[name] = lambda x, f=function: {k: v.numpy() for k, v in f(tf.constant(x)).items()}
    measured = interleaved_speeds(
        {name: run for name, run in runs.items() if not isinstance(run, str)}, x1, batches, repeats, seconds
    )
    speeds = {name: measured.get(name, run) for name, run in runs.items()}  # a string: why there is no session
    ort_out = dict(zip(names, ort_session(fp32).run(names, {INPUT_NAME: test.x})))
    openvino_out = openvino_fp32(test.x)
    setting_runs = {}
    for level_name, level in (
        ("disabled", ort.GraphOptimizationLevel.ORT_DISABLE_ALL),
        ("basic", ort.GraphOptimizationLevel.ORT_ENABLE_BASIC),
        ("extended", ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED),
        ("all", ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
    ):
        for threads in sorted({1, usable_cpus()}):
            session = ort_session(fp32, threads, level)
            setting_runs[f"{level_name}_threads{threads}"] = lambda x, s=session: s.run(names, {INPUT_NAME: x})
    setting_speeds = interleaved_speeds(setting_runs, x1, {256: batches[256]}, repeats // 4, seconds / 2)
    settings = {
        name: {"batch1_p50_ms": speed["batch1"]["p50_ms"], "batch256_samples_per_s": speed["batch256_samples_per_s"]}
        for name, speed in setting_speeds.items()
    }
    profiles = {
        variant: operator_profile(onnx_model, batches[256])
        for variant, onnx_model in (("fp32", fp32), ("int8_qdq", qdq))
    }
    flops = count_flops(fp32, [1024, *test.x.shape[1:]])
    peak = peak_flops()
    ort_fp32 = speeds["onnxruntime_fp32"]
    return {
        "series": {"test": len(test), "time": int(test.x.shape[1]), "channels": int(test.x.shape[2])},
        "runtimes": speeds,
        "onnxruntime_settings": settings,
        "operator_share_batch256": profiles,
        "int8_qdq_gates": gates,
        "openvino_vs_onnxruntime_max_abs": {n: float(np.max(np.abs(openvino_out[n] - ort_out[n]))) for n in names},
        "flops": {
            "per_batch1024": flops,
            "achieved_per_s": flops * ort_fp32["batch1024_samples_per_s"] / 1024,
            "peak_matmul_per_s": peak,
        },
        "figures": {
            "int8_qdq_vs_fp32_batch256": speeds["onnxruntime_int8_qdq"]["batch256_samples_per_s"]
            / ort_fp32["batch256_samples_per_s"],
            "int8_qdq_accuracy_drop": gates["int8_qdq"]["export/int8_qdq/accuracy_drop"],
            "fused_vs_unfused_fp32_batch256": ort_fp32["batch256_samples_per_s"]
            / speeds["onnxruntime_fp32_unfused"]["batch256_samples_per_s"],
            "ort_vs_openvino_batch1": speeds["openvino_fp32"]["batch1"]["p50_ms"] / ort_fp32["batch1"]["p50_ms"],
            "ort_vs_tf_function_batch1": speeds["tf_function"]["batch1"]["p50_ms"] / ort_fp32["batch1"]["p50_ms"],
            # the most any runtime could gain on tf.function at batch 1: one series' FLOPs at the peak
            "ort_vs_tf_function_batch1_ceiling": speeds["tf_function"]["batch1"]["p50_ms"]
            / 1e3
            / (flops / 1024 / peak),
            "flop_share_batch1024": flops * ort_fp32["batch1024_samples_per_s"] / 1024 / peak,
        },
    }


def deployed_model_figures(tracking_uri: str, dataset: str, export_cfg) -> dict | str:
    """real_data_model_figures of the study's seed-1 conv_attention run on `dataset` (its logged
    Keras model, exported as the export stage exports it today, and the split it was tested on),
    or why there are none."""
    import mlflow

    from pipeline.data.splits import prepared_for
    from pipeline.experiments import study

    combination = study.Combination(dataset, "conv_attention", DEPLOYED_SEED)
    record = study.matching_runs(study.evaluated_runs(tracking_uri), [combination]).get(combination)
    if record is None:
        return f"no run in {tracking_uri}: `{combination.command}` makes it"
    folder = mlflow.artifacts.download_artifacts(
        run_id=record.run_id, artifact_path="keras_model", tracking_uri=tracking_uri
    )
    _, splits, _ = prepared_for(combination.overrides)
    model = load_model(f"{folder}/model.keras")
    figures = real_data_model_figures(model, to_onnx(model, export_cfg.opset), splits, export_cfg)
    return {"run": record.run_id, "command": combination.command, **figures}


def main() -> None:
    cfg = load_config()
    default = pipeline_model_figures()
    large = large_model_figures(cfg.export)
    ort1 = default["onnxruntime"]["batch1"]["p50_ms"]
    figures = {
        "ort_vs_tf_function_batch1": default["tf_function"]["batch1"]["p50_ms"] / ort1,
        "ort_vs_keras_predict_batch1": default["keras_predict"]["batch1"]["p50_ms"] / ort1,
        "ort_vs_tf_function_batch1024": default["onnxruntime"]["batch1024_samples_per_s"]
        / default["tf_function"]["batch1024_samples_per_s"],
        "int8_vs_fp32_batch256_large": large["batch256_samples_per_s"]["int8"]
        / large["batch256_samples_per_s"]["fp32"],
        "predictor_vs_raw_ort_batch1": default["predictor"]["batch1"]["p50_ms"]
        / default["onnxruntime_predictor_outputs"]["batch1"]["p50_ms"],
        "flop_share_batch1024": default["flops"]["achieved_per_s"] / default["flops"]["peak_matmul_per_s"],
    }
    met = {k: (figures[k] >= bound if kind == "min" else figures[k] <= bound) for k, (bound, kind) in TARGETS.items()}
    met["int8_vs_fp32_batch256_large"] &= not large["int8_gate"]["failures"]
    report = {
        **{k: round(v, 4) for k, v in figures.items()},
        "targets": {k: f"{'>=' if kind == 'min' else '<='} {bound:g}" for k, (bound, kind) in TARGETS.items()},
        "met": met,
        "model": cfg.model.name,
        "machine": {
            "cpus_usable": usable_cpus(),
            "processor": cpu_model(),
            "onnxruntime": ort.__version__,
            "tensorflow": tf.__version__,
        },
        "default_model": default,
        "large_model": large,
        "cpu_flags": cpu_flags(),
    }
    uri = f"sqlite:///{repository_root() / DEFAULT_STORE}"
    report["deployed_models"] = {dataset: deployed_model_figures(uri, dataset, cfg.export) for dataset in DEPLOYED}
    for dataset, deployed in report["deployed_models"].items():
        if isinstance(deployed, str):
            print(f"{dataset}: {deployed}")
            continue
        for key, note in REAL_PRINTED.items():
            value = deployed["figures"][key]
            if key in REAL_TARGETS:
                bound, kind = REAL_TARGETS[key]
                held = value >= bound if kind == "min" else value <= bound
                note = f"target {'>=' if kind == 'min' else '<='} {bound:g}: {'met' if held else 'NOT met'}"
            print(f"{dataset + ' ' + key:48s} {value:10.3f}  ({note})")
    if BENCH_FILE.exists():  # the service's figures are pipeline.tools.loadbench's, kept until it runs again
        serving = json.loads(BENCH_FILE.read_text()).get("serving")
        if serving is not None:
            report["serving"] = serving
    stage.write_json(BENCH_FILE, report)
    for key, value in figures.items():
        target = f"  (target {report['targets'][key]}: {'met' if met[key] else 'NOT met'})" if key in met else ""
        print(f"{key:32s} {value:10.3f}{target}")
    print(f"wrote {BENCH_FILE}")


if __name__ == "__main__":
    run_command(main)
