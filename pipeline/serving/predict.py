"""Predict with an exported ONNX model from a file of inputs; writes predictions with attention.

    python -m pipeline.serving.predict models/model.onnx inputs.npy
    python -m pipeline.serving.predict models/model.onnx inputs.json --out predictions.json
    python -m pipeline.serving.predict deploy/model_int8.onnx inputs.csv --providers cpu

INPUT is .npy (an array [batch, time, features] or [batch, features]), .json (that array as
nested lists, bare or as {"inputs": [...]}) or .csv (one sample per line, its values flattened
row-major: time-major for sequences). The output (stdout unless --out) is JSON: the provider used
and, per sample, its prediction, predicted label and attention weights. A bad model or input
exits 2 with the problem. No TensorFlow import.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from pipeline.core.errors import run_command
from pipeline.serving.inference import InputError, Predictor, load_predictor, to_records


def read_inputs(path: Path, predictor: Predictor) -> np.ndarray:
    """The array a .npy, .json or .csv file holds (not yet validated)."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if suffix == ".json":
            payload = json.loads(path.read_text(encoding="utf-8"))
            return np.asarray(payload["inputs"] if isinstance(payload, dict) else payload, dtype=np.float64)
        if suffix == ".csv":
            rows = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2)
            if predictor.rank == 2:
                return rows
            per_step = predictor.n_features or 1
            if rows.shape[1] % per_step:
                raise InputError(
                    f"{rows.shape[1]} values per line is not a multiple of the model's {per_step} features per step"
                )
            return rows.reshape(len(rows), -1, per_step)
    except FileNotFoundError:
        raise InputError(f"{path}: not found") from None
    except (ValueError, KeyError, TypeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: cannot read {suffix[1:]} inputs ({err})") from None
    raise InputError(f"{path}: unknown input type {suffix!r}; expected .npy, .json or .csv")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="an ONNX model file, or an MLflow URI such as models:/NAME@champion")
    parser.add_argument("inputs", type=Path, help=".npy, .json or .csv")
    parser.add_argument("--out", type=Path, help="write the JSON here instead of stdout")
    parser.add_argument("--providers", default="cpu", help="comma-separated, e.g. cuda,cpu")
    parser.add_argument("--allow-cpu-fallback", action="store_true")
    args = parser.parse_args(argv)
    predictor = load_predictor(args.model, args.providers, args.allow_cpu_fallback)
    try:
        result = predictor.predict(read_inputs(args.inputs, predictor))
    except InputError as err:
        if str(err).startswith(str(args.inputs)):
            raise
        raise InputError(f"{args.inputs}: {err}") from None
    document = json.dumps({"model": str(args.model), "provider": predictor.provider, "predictions": to_records(result)})
    if args.out:
        args.out.write_text(document + "\n", encoding="utf-8")
    else:
        print(document)


if __name__ == "__main__":
    run_command(main)
