"""An HTTP service for an exported model: FastAPI on uvicorn, ONNX Runtime underneath.

    python -m pipeline.serve                                  # models/model.onnx on 127.0.0.1:8000
    python -m pipeline.serve --model models/variants/model_fp16.onnx --providers cuda
    curl -s localhost:8000/predict -d '{"inputs": [[[0.1, 0.2], ...]]}'

Endpoints:
    GET  /health    {"status": "ok", "provider": ...}
    GET  /metadata  the model's ONNX metadata, input shape and provider
    POST /predict   {"inputs": [batch, time, features] nested lists} ->
                    {"provider": ..., "predictions": [{"prediction", "label", "attention"}, ...]}
A bad request gets a 4xx and a message: 400 (not JSON), 413 (body over --max-body-bytes, or more
than --max-batch samples), 422 (JSON of the wrong shape or values, e.g. NaN or a wrong feature
count). Bound to loopback unless --host says otherwise. No TensorFlow import.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from pipeline.errors import run_command
from pipeline.inference import InputError, Predictor
from pipeline.predict import load_predictor, to_records

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_BATCH = 1024


class RequestRefused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it passes `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestRefused(413, f"request body of {declared} bytes exceeds the limit of {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise RequestRefused(413, f"request body exceeds the limit of {limit} bytes")
    return bytes(body)


def _inputs(body: bytes, max_batch: int) -> np.ndarray:
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RequestRefused(400, f"body is not valid JSON: {err}") from None
    if not isinstance(payload, dict) or "inputs" not in payload:
        raise RequestRefused(422, 'expected a JSON object {"inputs": [batch, time, features]}')
    inputs = payload["inputs"]
    if not isinstance(inputs, list):
        raise RequestRefused(422, f'"inputs" must be a list, got {type(inputs).__name__}')
    if len(inputs) > max_batch:
        raise RequestRefused(413, f"{len(inputs)} samples exceed the limit of {max_batch} per request")
    try:
        return np.asarray(inputs, dtype=np.float32)
    except (ValueError, TypeError) as err:
        raise RequestRefused(422, f'"inputs" is not a rectangular array of numbers: {err}') from None


def create_app(predictor: Predictor, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               max_batch: int = DEFAULT_MAX_BATCH) -> FastAPI:
    app = FastAPI(title="attention model", docs_url=None, redoc_url=None)

    @app.exception_handler(RequestRefused)
    async def refused(_request, error: RequestRefused):
        return JSONResponse({"error": str(error)}, status_code=error.status)

    @app.exception_handler(InputError)
    async def bad_input(_request, error: InputError):
        return JSONResponse({"error": str(error)}, status_code=422)

    @app.get("/health")
    def health():
        return {"status": "ok", "provider": predictor.provider}

    @app.get("/metadata")
    def metadata():
        return {"metadata": predictor.metadata, "provider": predictor.provider,
                "input": {"rank": predictor.rank, "time_steps": predictor.time_steps,
                          "features": predictor.n_features}}

    @app.post("/predict")
    async def predict(request: Request):
        x = _inputs(await _read_body(request, max_body_bytes), max_batch)
        result = predictor.predict(x)
        return {"provider": predictor.provider, "predictions": to_records(result)}

    return app


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/model.onnx")
    parser.add_argument("--host", default="127.0.0.1", help="default: loopback only")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--providers", default="cpu", help="comma-separated, e.g. cuda,cpu")
    parser.add_argument("--allow-cpu-fallback", action="store_true")
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES)
    parser.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH)
    return parser


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    args = build_parser().parse_args(argv)
    predictor = load_predictor(args.model, args.providers, args.allow_cpu_fallback)
    print(f"serving {args.model} on {predictor.provider} at http://{args.host}:{args.port}", flush=True)
    uvicorn.run(create_app(predictor, args.max_body_bytes, args.max_batch), host=args.host,
                port=args.port, log_level="warning")


if __name__ == "__main__":
    run_command(main)
