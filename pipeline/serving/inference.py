"""Run an exported ONNX model with ONNX Runtime (no TensorFlow import).

model = OnnxModel("models/model.onnx")
outputs = model.run(x)            # {"prediction": [batch, 1], "attention": [batch, positions]}

predictor = Predictor("models/model.onnx")     # checked inputs, labels, chosen providers
result = predictor.predict(x)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import onnxruntime as ort

from pipeline.core.contract import CONTRIBUTION_NAME, INPUT_NAME, LOGIT_NAME, OUTPUT_NAMES
from pipeline.core.errors import PipelineError
from pipeline.core.metrics import predicted_classes


def resolve_model_source(model):
    """A local path (or bytes) for `model`; an MLflow URI such as models:/NAME@champion is
    downloaded from the tracking server (MLFLOW_TRACKING_URI) first."""
    if isinstance(model, str) and model.startswith(("models:/", "runs:/")):
        import mlflow

        folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=model))
        candidates = sorted(folder.glob("*.onnx"))
        if not candidates:
            raise FileNotFoundError(f"{model}: no .onnx file in the downloaded model")
        return candidates[0]
    return model


# The standard ONNX domains, and ONNX Runtime's own built-in operators (com.microsoft: the int8
# variant's DynamicQuantizeLSTM, fused kernels). Any other domain needs a custom-op library: code
# that ships with a model file is not loaded.
ALLOWED_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})


class ModelRefused(PipelineError, ValueError):
    """A model file that cannot be served: unreadable, or not of the contract."""


class UnsafeModel(ModelRefused):
    """A model file that would run code from outside the standard operator sets."""


def check_operator_domains(model: str | Path | bytes) -> None:
    """Refuse an ONNX model with an operator (or an opset import) outside ALLOWED_DOMAINS,
    subgraphs (Loop, If, Scan bodies) and local functions included."""
    import onnx

    label = "ONNX model" if isinstance(model, bytes) else str(model)
    try:
        proto = (
            onnx.load_model_from_string(model)
            if isinstance(model, bytes)
            else onnx.load_model(str(model), load_external_data=False)
        )
    except Exception as err:  # not a protobuf ONNX model at all
        raise UnsafeModel(f"{label}: not a readable ONNX model ({err})") from None
    local_functions = {(f.domain, f.name) for f in proto.functions}

    def graphs(graph):
        yield graph
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.GRAPH:
                    yield from graphs(attribute.g)
                for subgraph in attribute.graphs:
                    yield from graphs(subgraph)

    nodes = [n for g in graphs(proto.graph) for n in g.node] + [n for f in proto.functions for n in f.node]
    for node in nodes:
        if node.domain not in ALLOWED_DOMAINS and (node.domain, node.op_type) not in local_functions:
            raise UnsafeModel(
                f"{label}: refused: operator {node.op_type!r} of domain {node.domain!r} "
                f"is outside the standard ONNX domains (ai.onnx, ai.onnx.ml) and ONNX Runtime's "
                "built-in com.microsoft"
            )
    for opset in proto.opset_import:
        if opset.domain not in ALLOWED_DOMAINS and opset.domain not in {d for d, _ in local_functions}:
            raise UnsafeModel(
                f"{label}: refused: it imports the operator set {opset.domain!r}, "
                "outside the standard ONNX domains (ai.onnx, ai.onnx.ml) and ONNX Runtime's built-in "
                "com.microsoft"
            )


EXPLANATION_OUTPUTS = (LOGIT_NAME, CONTRIBUTION_NAME)


class OnnxModel:
    """An ONNX Runtime session bound to the pipeline's contract: input `x`, named outputs
    (`prediction` and `attention`, and `logit` and `contribution` where the model has them).
    Models with operators outside the standard domains are refused (UnsafeModel)."""

    def __init__(
        self,
        model: str | Path | bytes,
        providers: tuple[str, ...] = ("CPUExecutionProvider",),
        options: ort.SessionOptions | None = None,
    ):
        check_operator_domains(model)
        source = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(source, options, providers=list(providers))
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        extra = set(outputs) - set(OUTPUT_NAMES)
        if inputs != [INPUT_NAME] or not set(OUTPUT_NAMES) <= set(outputs) or not extra <= set(EXPLANATION_OUTPUTS):
            raise ModelRefused(
                f"{model if not isinstance(model, bytes) else 'ONNX model'}: expected input "
                f"{INPUT_NAME!r} and outputs {list(OUTPUT_NAMES)} (and optionally "
                f"{list(EXPLANATION_OUTPUTS)}), found {inputs} and {outputs}"
            )
        self.output_names = [name for name in (*OUTPUT_NAMES, *EXPLANATION_OUTPUTS) if name in outputs]

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self.session.get_modelmeta().custom_metadata_map)

    @property
    def takes_any_length(self) -> bool:
        """A sequence model whose time axis is dynamic (it takes shortened series)."""
        shape = self.session.get_inputs()[0].shape
        return len(shape) == 3 and not isinstance(shape[1], int)

    def run(self, x: np.ndarray, batch_size: int = 4096) -> dict[str, np.ndarray]:
        """x float32 [batch, ...] -> {"prediction": [batch, outputs], "attention": [batch, positions],
        and where the model has them "logit" [batch, outputs], "contribution" [batch, positions,
        outputs]}."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        names = self.output_names
        if len(x) <= batch_size:
            return dict(zip(names, self.session.run(names, {INPUT_NAME: x})))
        chunks = [
            self.session.run(names, {INPUT_NAME: x[start : start + batch_size]})
            for start in range(0, len(x), batch_size)
        ]
        return {name: np.concatenate([c[i] for c in chunks]) for i, name in enumerate(names)}


class InputError(PipelineError, ValueError):
    """An inference request the model cannot take; the message says what is wrong and where."""


class ProviderUnavailable(PipelineError, RuntimeError):
    """An execution provider was asked for that this ONNX Runtime cannot use."""


GRAPH_OPTIMIZATION = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity, e.g. a container's share), not the host's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Prediction:
    """prediction float32 [batch, 1] or [batch, classes]; attention float32 [batch, positions];
    explanations: the model's "logit" [batch, outputs] and "contribution" [batch, positions,
    outputs] where it exports them (Σ_positions contribution + a constant = logit); labels: the
    predicted class label of each row (None for regression), found from `class_labels` when
    first read, so a caller that needs only the numbers does not pay for them."""

    prediction: np.ndarray
    attention: np.ndarray
    explanations: dict[str, np.ndarray] = field(default_factory=dict)
    task_type: str = "regression"
    class_labels: tuple[str, ...] | None = None

    @cached_property
    def labels(self) -> list[str] | None:
        if self.task_type == "regression" or not self.class_labels:
            return None
        return [self.class_labels[c] for c in predicted_classes(self.task_type, self.prediction)]

    def rows(self, start: int, stop: int) -> Prediction:
        """The samples start..stop-1 of this prediction (one request's share of a joined batch)."""
        return Prediction(
            self.prediction[start:stop],
            self.attention[start:stop],
            {name: value[start:stop] for name, value in self.explanations.items()},
            self.task_type,
            self.class_labels,
        )


class Predictor:
    """An ONNX model behind input checks, with explicit session options and providers.

        predictor = Predictor("models/model.onnx")                  # CPU
        predictor = Predictor(path, providers=("cuda",))            # fails if CUDA is missing
        predictor = Predictor(path, providers=("cuda",), allow_cpu_fallback=True)
        result = predictor.predict(x)        # x [batch, time, features] (or [batch, features])
        result.labels, result.attention, predictor.provider

    Args:
        model: path or bytes of an ONNX model following the contract (input `x`, outputs
            `prediction` and `attention`).
        providers: in order of preference: "cpu", "cuda", "tensorrt" or full ONNX Runtime names.
        allow_cpu_fallback: run on CPU when a requested provider is not available, instead of
            raising ProviderUnavailable.
        intra_op_threads: threads of one inference; default: the CPUs this process may use.
        graph_optimization: "disabled", "basic", "extended" or "all".
    """

    def __init__(
        self,
        model,
        providers=("cpu",),
        allow_cpu_fallback: bool = False,
        intra_op_threads: int | None = None,
        graph_optimization: str = "all",
    ):
        requested = [PROVIDER_ALIASES.get(p.lower(), p) for p in providers]
        available = ort.get_available_providers()
        missing = [p for p in requested if p not in available]
        if missing and not allow_cpu_fallback:
            raise ProviderUnavailable(
                f"execution provider(s) {missing} not available in this onnxruntime "
                f"(available: {available}); install onnxruntime-gpu with CUDA, or pass "
                "allow_cpu_fallback=True to run on CPU"
            )
        chosen = [p for p in requested if p in available] or ["CPUExecutionProvider"]
        if "CPUExecutionProvider" not in chosen:
            chosen.append("CPUExecutionProvider")
        if graph_optimization not in GRAPH_OPTIMIZATION:
            raise ValueError(f"graph_optimization must be one of {list(GRAPH_OPTIMIZATION)}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads or usable_cpus()
        options.graph_optimization_level = GRAPH_OPTIMIZATION[graph_optimization]
        self.onnx = OnnxModel(resolve_model_source(model), tuple(chosen), options)
        self.provider = self.onnx.session.get_providers()[0]
        metadata = self.onnx.metadata
        self.task_type = metadata.get("task_type", "binary")
        labels = json.loads(metadata.get("labels") or "null")
        if labels is None and self.task_type == "binary":
            labels = ["0", "1"]
        self.class_labels = None if labels is None else tuple(labels)
        shape = self.onnx.session.get_inputs()[0].shape  # e.g. ["batch", "time", 2] or ["batch", 20, 2]
        self.rank = len(shape)
        self.time_steps = shape[1] if self.rank == 3 and isinstance(shape[1], int) else None
        self.n_features = shape[-1] if isinstance(shape[-1], int) else None
        self._explanation_names = self.onnx.output_names[len(OUTPUT_NAMES) :]

    @property
    def metadata(self) -> dict[str, str]:
        return self.onnx.metadata

    def validate(self, x) -> np.ndarray:
        """x as float32 [batch, ...], or InputError naming the problem."""
        if type(x) is not np.ndarray or x.dtype != np.float32:
            x = _as_float32(x)
        if x.ndim != self.rank:
            layout = "[batch, time, features]" if self.rank == 3 else "[batch, features]"
            raise InputError(f"input must have rank {self.rank} {layout}, got shape {list(x.shape)}")
        if x.shape[0] == 0:
            raise InputError("input batch is empty")
        if self.n_features is not None and x.shape[-1] != self.n_features:
            raise InputError(f"input has {x.shape[-1]} features per step, the model takes {self.n_features}")
        if self.rank == 3:
            if self.time_steps is not None and x.shape[1] != self.time_steps:
                raise InputError(f"input has {x.shape[1]} time steps, the model takes exactly {self.time_steps}")
            if x.shape[1] == 0:
                raise InputError("input has 0 time steps")
        if not np.isfinite(x).all():
            row = int(np.argwhere(~np.isfinite(x))[0][0])
            raise InputError(f"input holds NaN or infinity (first in row {row})")
        return x

    def predict(self, x) -> Prediction:
        """Checked inputs in, prediction, attention and predicted labels out."""
        return self.predict_valid(self.validate(x))

    def predict_valid(self, x: np.ndarray) -> Prediction:
        """predict for inputs that `validate` has returned (or a concatenation of them)."""
        prediction, attention, *explained = self.onnx.run(x).values()  # in OnnxModel.output_names' order
        explanations = dict(zip(self._explanation_names, explained))
        return Prediction(prediction, attention, explanations, self.task_type, self.class_labels)


def _as_float32(x) -> np.ndarray:
    """Any array-like of numbers as a float32 ndarray, or InputError."""
    try:
        x = np.asarray(x)
    except ValueError as err:  # ragged nested lists
        raise InputError(f"input is not a rectangular array: {err}") from None
    if x.dtype.kind not in "fiu":
        raise InputError(f"input must be numbers (float32), got dtype {x.dtype}")
    return x.astype(np.float32, copy=False)


def to_records(result, n_decimals: int = 6) -> list[dict]:
    """One JSON-ready dict per sample."""
    records = []
    for i in range(len(result.prediction)):
        record = {
            "prediction": np.round(result.prediction[i].astype(float), n_decimals).tolist(),
            "attention": np.round(result.attention[i].astype(float), n_decimals).tolist(),
        }
        if result.labels is not None:
            record["label"] = result.labels[i]
        records.append(record)
    return records


def load_predictor(
    model: str, providers: str, allow_cpu_fallback: bool, intra_op_threads: int | None = None
) -> Predictor:
    """The Predictor of a command line's --model and --providers (comma-separated)."""
    try:
        return Predictor(
            model,
            providers=tuple(providers.split(",")),
            allow_cpu_fallback=allow_cpu_fallback,
            intra_op_threads=intra_op_threads,
        )
    except PipelineError:
        raise
    except Exception as err:  # not a readable ONNX model of the contract
        raise PipelineError(f"{model}: cannot load the model ({err})") from None
