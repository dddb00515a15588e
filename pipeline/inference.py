"""Run an exported ONNX model with ONNX Runtime (no TensorFlow import).

    model = OnnxModel("models/model.onnx")
    outputs = model.run(x)            # {"prediction": [batch, 1], "attention": [batch, positions]}
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from pipeline.contract import INPUT_NAME, OUTPUT_NAMES


class OnnxModel:
    """An ONNX Runtime session bound to the pipeline's contract: input `x`, named outputs."""

    def __init__(self, model: str | Path | bytes, providers: tuple[str, ...] = ("CPUExecutionProvider",)):
        source = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(source, providers=list(providers))
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if inputs != [INPUT_NAME] or sorted(outputs) != sorted(OUTPUT_NAMES):
            raise ValueError(
                f"{model if not isinstance(model, bytes) else 'ONNX model'}: expected input "
                f"{INPUT_NAME!r} and outputs {list(OUTPUT_NAMES)}, found {inputs} and {outputs}"
            )

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self.session.get_modelmeta().custom_metadata_map)

    def run(self, x: np.ndarray, batch_size: int = 4096) -> dict[str, np.ndarray]:
        """x float32 [batch, ...] -> {"prediction": [batch, 1], "attention": [batch, positions]}."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        chunks = [
            self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: x[start : start + batch_size]})
            for start in range(0, len(x), batch_size)
        ]
        return {name: np.concatenate([c[i] for c in chunks]) for i, name in enumerate(OUTPUT_NAMES)}
