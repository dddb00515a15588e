"""An HTTP service for an exported model: FastAPI on uvicorn, ONNX Runtime underneath, speaking
the Open Inference Protocol (KServe v2, as Triton, KServe and Seldon MLServer do).

    python -m pipeline.serving.serve                                  # models/model.onnx on 127.0.0.1:8000
    python -m pipeline.serving.serve --model models/variants/model_fp16.onnx --providers cuda
    curl -s localhost:8000/v2/models/attention_fp32/infer \\
      -d '{"inputs": [{"name": "x", "shape": [1, 20, 2], "datatype": "FP32", "data": [0.1, 0.2, ...]}]}'

Endpoints (the OpenAPI document is GET /openapi.json):
    GET  /v2/health/live, /v2/health/ready, /v2, /v2/models/{name}, /v2/models/{name}/ready
    POST /v2/models/{name}/infer        JSON tensors, or the binary tensor data extension
                                        (header Inference-Header-Content-Length); outputs
                                        `prediction`, `attention` and, with labels, `label` (BYTES)
    GET  /health, /metadata             liveness with the provider; the ONNX metadata and load
    POST /predict                       {"inputs": [batch, time, features] nested lists} ->
                                        {"provider", "predictions": [{"prediction", "label", "attention"}]}
The model's name is --model-name (default attention_<variant> of a model_<variant>.onnx file,
else attention_fp32: the names of the deploy bundle's Triton repository), version 1.

Requests are read on the event loop but decoded and run in a pool of --workers threads (each
ONNX Runtime run on --threads-per-worker threads, at --worker-niceness below the loop's
priority), and at most --max-in-flight are admitted at once: one more gets 503 with
Retry-After, so a liveness probe never waits behind a queue of large requests. With
--max-delay-ms, concurrent requests whose samples have the same shape run as one batch of at
most --max-batch samples (the first waits at most that long for others), each getting its own
rows of the outputs back; a request with bad values fails alone, before it joins a batch. A bad request
gets a 4xx and {"error": ...} naming the field: 400 (not JSON, or a protocol error), 404
(unknown model), 413 (body over --max-body-bytes, or more than --max-batch samples), 422
(/predict: inputs of the wrong shape or values). Bound to loopback unless --host says
otherwise. No TensorFlow import.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.core.contract import INPUT_NAME
from pipeline.core.errors import run_command
from pipeline.serving import oip
from pipeline.serving.inference import InputError, Prediction, Predictor, load_predictor, to_records, usable_cpus

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_BATCH = 1024
ADMITTED_PER_WORKER = 8  # default --max-in-flight: this many requests per worker thread
DEFAULT_WORKER_NICENESS = 5  # the workers' nice value above the event loop's
MODEL_VERSION = "1"
# With dynamic batching, requests up to this size are decoded and encoded on the event loop (tens
# of microseconds) rather than in a worker thread (two hand-overs cost more than the work).
INLINE_BODY_BYTES = 16 * 1024


class RequestRefused(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.headers = headers


class PredictRequest(BaseModel):
    """The body of POST /predict."""

    model_config = ConfigDict(extra="forbid")
    inputs: list[list[list[float]] | list[float]] = Field(
        description="[batch, time, features] (or [batch, features] for feature attention) numbers"
    )


def _lower_priority(niceness: int) -> None:
    """Raise this thread's nice value (Linux schedules threads one by one), so that the event
    loop, which answers health probes and reads requests, runs first when the CPUs are busy."""
    if niceness > 0 and hasattr(os, "setpriority"):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + niceness)


class InferenceWorkers:
    """Decoding and inference in `workers` threads, at most `max_in_flight` requests admitted
    (running or waiting); `refused` counts the 503s. Used from the event loop only."""

    def __init__(self, workers: int, max_in_flight: int, niceness: int = 0):
        self.executor = ThreadPoolExecutor(
            workers, thread_name_prefix="inference", initializer=_lower_priority, initargs=(niceness,)
        )
        self.workers, self.max_in_flight = workers, max_in_flight
        self.in_flight = 0
        self.refused = 0

    @contextlib.asynccontextmanager
    async def admitted(self):
        """One request admitted for the block's duration, or RequestRefused (503) at the limit."""
        if self.in_flight >= self.max_in_flight:
            self.refused += 1
            raise RequestRefused(
                503,
                f"{self.in_flight} requests in flight, the limit of this service; retry shortly",
                {"Retry-After": "1"},
            )
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    async def execute(self, function, *args):
        """function(*args) in a worker thread, for a request already admitted."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, function, *args)

    async def run(self, function, *args):
        """function(*args) in a worker thread as one admitted request."""
        async with self.admitted():
            return await self.execute(function, *args)


class DynamicBatcher:
    """Joins the validated inputs of concurrent requests with the same sample shape into one model
    run of at most `max_samples` samples: the first request of a batch waits at most `max_delay_s`
    for others, a full batch runs at once. Each batch runs in `workers`' threads (off the event
    loop) and each request gets its own rows of the outputs back. `batches` and `batched` count
    the runs and the requests they served. Used from the event loop only."""

    def __init__(self, predictor: Predictor, workers: InferenceWorkers, max_samples: int, max_delay_s: float):
        self.predictor, self.workers = predictor, workers
        self.max_samples, self.max_delay_s = max_samples, max_delay_s
        self.pending: dict[tuple, list[tuple[np.ndarray, asyncio.Future]]] = {}
        self.timers: dict[tuple, asyncio.TimerHandle] = {}
        self.running: set[asyncio.Task] = set()
        self.batches = self.batched = 0

    async def predict(self, x: np.ndarray) -> Prediction:
        """The Prediction of x [samples, ...] (validated), run with whatever joins it."""
        loop = asyncio.get_running_loop()
        shape = x.shape[1:]
        group = self.pending.get(shape, [])
        if group and sum(len(rows) for rows, _ in group) + len(x) > self.max_samples:
            self._start(shape)  # x does not fit: the waiting batch goes as it is
            group = []
        future = loop.create_future()
        group.append((x, future))
        self.pending[shape] = group
        if sum(len(rows) for rows, _ in group) >= self.max_samples:
            self._start(shape)
        elif len(group) == 1:
            self.timers[shape] = loop.call_later(self.max_delay_s, self._start, shape)
        return await future

    def _start(self, shape: tuple) -> None:
        timer = self.timers.pop(shape, None)
        if timer is not None:
            timer.cancel()
        group = self.pending.pop(shape, [])
        if group:
            self.batches += 1
            self.batched += len(group)
            task = asyncio.ensure_future(self._run(group))
            self.running.add(task)  # the loop holds tasks weakly
            task.add_done_callback(self.running.discard)

    async def _run(self, group: list[tuple[np.ndarray, asyncio.Future]]) -> None:
        inputs = [rows for rows, _ in group]
        try:
            joined = inputs[0] if len(inputs) == 1 else np.concatenate(inputs)
            result = await self.workers.execute(self.predictor.predict_valid, joined)
        except Exception as error:  # every request of the batch learns why
            for _, future in group:
                if not future.done():
                    future.set_exception(error)
            return
        start = 0
        for rows, future in group:
            if not future.done():  # a client gone away leaves a cancelled future
                future.set_result(result.rows(start, start + len(rows)))
            start += len(rows)


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


def _predict_inputs(body: bytes, max_batch: int) -> np.ndarray:
    """The inputs of a /predict body as an array; RequestRefused names the problem."""
    try:
        request = PredictRequest.model_validate_json(body)
    except ValidationError as err:
        first = err.errors()[0]
        if first["type"] == "json_invalid":
            raise RequestRefused(400, f"body is not valid JSON: {first['msg']}") from None
        raise RequestRefused(422, oip.describe(err)) from None
    if len(request.inputs) > max_batch:
        raise RequestRefused(413, f"{len(request.inputs)} samples exceed the limit of {max_batch} per request")
    try:
        return np.asarray(request.inputs, dtype=np.float32)
    except ValueError as err:
        raise RequestRefused(422, f"inputs: not a rectangular array of numbers: {err}") from None


def default_model_name(model: str) -> str:
    """attention_<variant> for a model_<variant>.onnx file, else attention_fp32."""
    stem = Path(model).stem
    return f"attention_{stem.removeprefix('model_')}" if stem.startswith("model_") else "attention_fp32"


def _openapi_body(schema: dict, binary: bool = False) -> dict:
    content = {"application/json": {"schema": schema}}
    if binary:
        content[oip.BINARY_CONTENT_TYPE] = {"schema": {"type": "string", "format": "binary"}}
    return {"requestBody": {"required": True, "content": content}}


def create_app(
    predictor: Predictor,
    model_name: str = "attention_fp32",
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_batch: int = DEFAULT_MAX_BATCH,
    workers: int | None = None,
    max_in_flight: int | None = None,
    worker_niceness: int = DEFAULT_WORKER_NICENESS,
    max_delay_ms: float = 0.0,
) -> FastAPI:
    """The service of `predictor`; max_delay_ms > 0 joins concurrent requests into batches of at
    most `max_batch` samples (DynamicBatcher), 0 runs each request alone."""
    app = FastAPI(title="attention model", version=MODEL_VERSION, docs_url=None, redoc_url=None)
    workers = workers or usable_cpus()
    pool = InferenceWorkers(workers, max_in_flight or ADMITTED_PER_WORKER * workers, worker_niceness)
    batcher = DynamicBatcher(predictor, pool, max_batch, max_delay_ms / 1000) if max_delay_ms > 0 else None
    has_labels = predictor.task_type != "regression" and bool(predictor.class_labels)
    output_names = (*predictor.onnx.output_names, *([oip.LABEL_OUTPUT] if has_labels else []))
    schemas = {"InferenceRequest": oip.InferenceRequest, "PredictRequest": PredictRequest}
    definitions: dict[str, Any] = {}
    for name, model in schemas.items():
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        definitions.update(schema.pop("$defs", {}))
        definitions[name] = schema

    def openapi() -> dict:
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version=app.version, routes=app.routes)
            document.setdefault("components", {}).setdefault("schemas", {}).update(definitions)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi

    @app.exception_handler(RequestRefused)
    async def refused(_request, error: RequestRefused):
        return JSONResponse({"error": str(error)}, status_code=error.status, headers=error.headers)

    @app.exception_handler(oip.ProtocolError)
    async def protocol_error(_request, error: oip.ProtocolError):
        return JSONResponse({"error": str(error)}, status_code=error.status)

    @app.exception_handler(InputError)
    async def bad_input(request: Request, error: InputError):
        status = 400 if request.url.path.startswith("/v2/") else 422
        return JSONResponse({"error": str(error)}, status_code=status)

    def known_model(name: str, version: str | None = None) -> None:
        if name != model_name or version not in (None, MODEL_VERSION):
            raise RequestRefused(
                404,
                f"no model {name!r}"
                + (f" version {version!r}" if version else "")
                + f"; this service serves {model_name!r} version {MODEL_VERSION}",
            )

    @app.get("/health")
    async def health():
        return {"status": "ok", "provider": predictor.provider}

    @app.get("/metadata")
    async def metadata():
        return {
            "metadata": predictor.metadata,
            "provider": predictor.provider,
            "input": {"rank": predictor.rank, "time_steps": predictor.time_steps, "features": predictor.n_features},
            "load": {
                "workers": pool.workers,
                "max_in_flight": pool.max_in_flight,
                "in_flight": pool.in_flight,
                "refused": pool.refused,
                "max_delay_ms": max_delay_ms,
                "batches": 0 if batcher is None else batcher.batches,
                "batched_requests": 0 if batcher is None else batcher.batched,
            },
        }

    def predict_inputs(body: bytes) -> np.ndarray:
        return predictor.validate(_predict_inputs(body, max_batch))

    def predict_work(body: bytes) -> list[dict]:
        return to_records(predictor.predict_valid(predict_inputs(body)))

    @app.post("/predict", openapi_extra=_openapi_body({"$ref": "#/components/schemas/PredictRequest"}))
    async def predict(request: Request):
        body = await _read_body(request, max_body_bytes)
        if batcher is None:
            records = await pool.run(predict_work, body)
        else:
            async with pool.admitted():
                result = await batcher.predict(await pool.execute(predict_inputs, body))
                records = await pool.execute(to_records, result)
        return {"provider": predictor.provider, "predictions": records}

    @app.get("/v2/health/live")
    async def live():
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready():
        return {"ready": True}

    @app.get("/v2")
    async def server_metadata():
        return {"name": "attention-pipeline", "version": MODEL_VERSION, "extensions": ["binary_tensor_data"]}

    def model_metadata_body() -> dict:
        sample = [d if isinstance(d, int) else -1 for d in predictor.onnx.session.get_inputs()[0].shape[1:]]
        outputs = [
            {"name": o.name, "datatype": "FP32", "shape": [-1, *[d if isinstance(d, int) else -1 for d in o.shape[1:]]]}
            for o in predictor.onnx.session.get_outputs()
        ]
        if has_labels:
            outputs.append({"name": oip.LABEL_OUTPUT, "datatype": "BYTES", "shape": [-1]})
        return {
            "name": model_name,
            "versions": [MODEL_VERSION],
            "platform": "onnxruntime_onnx",
            "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, *sample]}],
            "outputs": outputs,
        }

    @app.get("/v2/models/{name}")
    async def model_metadata(name: str):
        known_model(name)
        return model_metadata_body()

    @app.get("/v2/models/{name}/versions/{version}")
    async def model_version_metadata(name: str, version: str):
        known_model(name, version)
        return model_metadata_body()

    @app.get("/v2/models/{name}/ready")
    async def model_ready(name: str):
        known_model(name)
        return {"name": name, "ready": True}

    def infer_decode(body: bytes, header_length: str | None) -> oip.DecodedRequest:
        decoded = oip.decode_request(body, header_length, INPUT_NAME, output_names, max_batch)
        return dataclasses.replace(decoded, tensor=predictor.validate(decoded.tensor))

    def infer_encode(decoded: oip.DecodedRequest, result: Prediction) -> tuple[bytes, dict]:
        outputs = {"prediction": result.prediction, "attention": result.attention, **result.explanations}
        if has_labels:
            outputs[oip.LABEL_OUTPUT] = np.array(result.labels, dtype=object)
        return oip.encode_response(model_name, decoded, outputs)

    def infer_work(body: bytes, header_length: str | None) -> tuple[bytes, dict]:
        decoded = infer_decode(body, header_length)
        return infer_encode(decoded, predictor.predict_valid(decoded.tensor))

    async def infer_response(request: Request) -> Response:
        body = await _read_body(request, max_body_bytes)
        header_length = request.headers.get(oip.BINARY_HEADER)
        if batcher is None:
            content, headers = await pool.run(infer_work, body, header_length)
        else:
            async with pool.admitted():
                small = len(body) <= INLINE_BODY_BYTES  # cheaper on the loop than two thread hops
                decoded = (
                    infer_decode(body, header_length)
                    if small
                    else await pool.execute(infer_decode, body, header_length)
                )
                result = await batcher.predict(decoded.tensor)
                content, headers = (
                    infer_encode(decoded, result) if small else await pool.execute(infer_encode, decoded, result)
                )
        return Response(content, headers=headers, media_type=headers.pop("content-type"))

    infer_body = _openapi_body({"$ref": "#/components/schemas/InferenceRequest"}, binary=True)

    @app.post("/v2/models/{name}/infer", openapi_extra=infer_body)
    async def infer(name: str, request: Request):
        known_model(name)
        return await infer_response(request)

    @app.post("/v2/models/{name}/versions/{version}/infer", openapi_extra=infer_body)
    async def infer_version(name: str, version: str, request: Request):
        known_model(name, version)
        return await infer_response(request)

    return app


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/model.onnx")
    parser.add_argument("--model-name", help="the name of /v2/models/{name} (default: attention_<variant>)")
    parser.add_argument("--host", default="127.0.0.1", help="default: loopback only")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--providers", default="cpu", help="comma-separated, e.g. cuda,cpu")
    parser.add_argument("--allow-cpu-fallback", action="store_true")
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES)
    parser.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH)
    parser.add_argument("--workers", type=int, help="threads that decode and run requests (default: the usable CPUs)")
    parser.add_argument(
        "--threads-per-worker",
        type=int,
        default=1,
        help="ONNX Runtime's threads within one request (default 1: the workers share the CPUs)",
    )
    parser.add_argument(
        "--worker-niceness",
        type=int,
        default=DEFAULT_WORKER_NICENESS,
        help="nice value of the worker threads above the event loop's (0: the same)",
    )
    parser.add_argument(
        "--max-delay-ms",
        type=float,
        default=0.0,
        help="join concurrent requests into batches of at most --max-batch samples, the first waiting "
        "at most this long for others (default 0: each request runs alone)",
    )
    parser.add_argument(
        "--max-in-flight",
        type=int,
        help=f"requests admitted at once, beyond them 503 (default: {ADMITTED_PER_WORKER} per worker)",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.max_delay_ms < 0:
        parser.error(f"--max-delay-ms must be 0 or more, got {args.max_delay_ms:g}")
    predictor = load_predictor(args.model, args.providers, args.allow_cpu_fallback, args.threads_per_worker)
    name = args.model_name or default_model_name(args.model)
    print(f"serving {args.model} as {name} on {predictor.provider} at http://{args.host}:{args.port}", flush=True)
    app = create_app(
        predictor,
        name,
        args.max_body_bytes,
        args.max_batch,
        args.workers,
        args.max_in_flight,
        args.worker_niceness,
        args.max_delay_ms,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    run_command(main)
