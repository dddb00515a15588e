"""Load benchmark of the HTTP service: the real service in its own process, a real HTTP client
(aiohttp) with many concurrent connections, beside the in-process Predictor on the same inputs;
writes the `serving` section of reports/bench.json. No TensorFlow import.

    python -m pipeline.tools.loadbench                      # models/model.onnx; part of `make bench`
    python -m pipeline.tools.loadbench --connections 64 --seconds 5 --soak-requests 100000

Figures: for batch 1 and 1024, JSON tensors and binary tensors of the Open Inference Protocol:
samples/s, requests/s, latency p50/p99 of the answered requests, every status counted (503s
of a full service included: the client then waits the Retry-After it is given); /health latency
under each load, probed every 20 ms from a process of its own; the in-process Predictor's
samples/s. The soak: mixed good and
bad requests, the service's resident memory at start, after a warm-up and at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from urllib.request import urlopen

import numpy as np
import orjson

from pipeline.core import stage
from pipeline.core.contract import INPUT_NAME
from pipeline.core.errors import StageFailed, run_command
from pipeline.serving import oip
from pipeline.serving.inference import Predictor, usable_cpus
from pipeline.serving.serve import default_model_name


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_service(model: Path, port: int, *options: str, cwd=None, env=None) -> subprocess.Popen:
    """`python -m pipeline.serving.serve` on `port` (run in `cwd` with `env`, by default this process's),
    once /health answers; StageFailed with the service's output if it exits or stays silent."""
    import urllib.request

    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.serving.serve", "--model", str(model), "--port", str(port), *options],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return process
        except OSError:
            if process.poll() is not None:
                break
            time.sleep(0.2)
    process.kill()
    raise StageFailed(f"the service did not start: {process.stdout.read()}")


def infer_body(x: np.ndarray, binary: bool) -> tuple[bytes, dict[str, str]]:
    """An infer request for `x` float32 [batch, ...]: JSON tensors, or the binary extension
    with binary outputs."""
    tensor = {"name": INPUT_NAME, "shape": list(x.shape), "datatype": "FP32"}
    if not binary:
        return orjson.dumps({"inputs": [{**tensor, "data": x.ravel()}]}, option=orjson.OPT_SERIALIZE_NUMPY), {
            "Content-Type": "application/json"
        }
    header = orjson.dumps(
        {
            "inputs": [{**tensor, "parameters": {"binary_data_size": x.nbytes}}],
            "parameters": {"binary_data_output": True},
        }
    )
    return header + x.tobytes(), {"Content-Type": oip.BINARY_CONTENT_TYPE, oip.BINARY_HEADER: str(len(header))}


def response_outputs(body: bytes, headers) -> dict[str, np.ndarray]:
    """The numeric outputs of an infer response (JSON or binary)."""
    length = int(headers.get(oip.BINARY_HEADER, len(body)))
    response, offset = json.loads(body[:length]), length
    arrays = {}
    for output in response["outputs"]:
        if output["datatype"] == "BYTES":
            offset += output.get("parameters", {}).get("binary_data_size", 0)
            continue
        if "data" in output:
            arrays[output["name"]] = np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])
        else:
            size = output["parameters"]["binary_data_size"]
            arrays[output["name"]] = np.frombuffer(body[offset : offset + size], "<f4").reshape(output["shape"])
            offset += size
    return arrays


def _percentiles(seconds: list[float]) -> dict[str, float]:
    if not seconds:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan")}
    values = 1000 * np.asarray(seconds)
    return {
        "p50_ms": float(np.percentile(values, 50)),
        "p99_ms": float(np.percentile(values, 99)),
        "max_ms": float(values.max()),
    }


async def load(
    base_url: str,
    requests: list[tuple[str, bytes, dict]],
    connections: int,
    seconds: float | None = None,
    total: int | None = None,
    batch: int = 1,
) -> dict:
    """`connections` clients send `requests` (path, body, headers) round robin, for `seconds` or
    until `total` are sent: answered requests/s and samples/s (status 200, `batch` samples
    each), latencies of the 200s, and every status."""
    import aiohttp

    statuses, latencies, errors = Counter(), [], Counter()
    sent = 0
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + seconds if seconds is not None else float("inf")

    def more() -> bool:
        return loop.time() < deadline and (total is None or sent < total)

    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections + 1), timeout=aiohttp.ClientTimeout(total=120)
    ) as session:

        async def client():
            nonlocal sent
            while more():
                path, body, headers = requests[sent % len(requests)]
                sent += 1
                began = time.perf_counter()
                try:
                    async with session.post(base_url + path, data=body, headers=headers) as response:
                        await response.read()
                        status, retry = response.status, response.headers.get("Retry-After")
                except aiohttp.ClientError as err:
                    errors[type(err).__name__] += 1
                    continue
                statuses[status] += 1
                if status == 200:
                    latencies.append(time.perf_counter() - began)
                elif status == 503 and retry:
                    await asyncio.sleep(float(retry))

        await asyncio.gather(*[client() for _ in range(connections)])
        elapsed = loop.time() - started
    answered = statuses[200]
    return {
        "connections": connections,
        "batch": batch,
        "seconds": round(elapsed, 2),
        "requests_per_s": answered / elapsed,
        "samples_per_s": answered * batch / elapsed,
        "latency": _percentiles(latencies),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "client_errors": dict(errors),
    }


def _probe_health(url: str, stop, results) -> None:
    """In a process of its own (so that the load client's event loop does not delay it): GET
    `url` every 20 ms on one kept-alive connection until `stop` is set; the latencies (s) into
    the queue `results`."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    seconds = []
    while not stop.is_set():
        began = time.perf_counter()
        connection.request("GET", parts.path)
        connection.getresponse().read()
        seconds.append(time.perf_counter() - began)
        time.sleep(0.02)
    connection.close()
    results.put(seconds)


def with_health_probe(url: str, run):
    """run() while another process probes `url`: (run's result, the probe's latency percentiles)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    stop, results = context.Event(), context.Queue()
    prober = context.Process(target=_probe_health, args=(url, stop, results))
    prober.start()
    time.sleep(1.0)  # the prober's interpreter starts
    try:
        result = run()
    finally:
        stop.set()
    seconds = results.get(timeout=60)
    prober.join(timeout=10)
    return result, _percentiles(seconds)


def predictor_rate(predictor: Predictor, x: np.ndarray, seconds: float = 3.0) -> float:
    """In-process Predictor samples/s on `x`."""
    predictor.predict(x)
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        predictor.predict(x)
        calls += 1
    return calls * len(x) / (time.perf_counter() - started)


def soak_requests(x: np.ndarray, path: str) -> list[tuple[str, bytes, dict]]:
    """A mix of 10 requests, 7 good and 3 bad: JSON and binary at batch 1 and 16; /predict; not
    JSON; a wrong shape; an unknown model."""
    one, sixteen = x[:1], np.resize(x, (16, *x.shape[1:])).astype(np.float32)
    good = [
        (path, *infer_body(one, False)),
        (path, *infer_body(one, True)),
        (path, *infer_body(sixteen, True)),
        (path, *infer_body(sixteen, False)),
        ("/predict", orjson.dumps({"inputs": one.tolist()}), {}),
        (path, *infer_body(one, True)),
        (path, *infer_body(one, False)),
    ]
    wrong_shape = orjson.dumps({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]})
    bad = [
        (path, b"{not json", {}),
        (path, wrong_shape, {}),
        ("/v2/models/nobody/infer", infer_body(one, False)[0], {}),
    ]
    return good[:4] + bad[:1] + good[4:6] + bad[1:] + good[6:]


# The batched service beside the default one: dynamic batching of up to 2 ms, and enough admitted
# requests for a batch per connection (a waiting request holds no worker).
BATCHING_OPTIONS = ("--max-delay-ms", "2", "--max-in-flight", "256")


def batched_figures(model: Path, connections: int, seconds: float, predictor: Predictor, x: np.ndarray) -> dict:
    """Batch-1 load on a second service with BATCHING_OPTIONS (JSON and binary tensors, /health
    probed meanwhile), its outputs checked against the in-process Predictor, its batch count."""
    port = free_port()
    base_url, path = f"http://127.0.0.1:{port}", f"/v2/models/{default_model_name(str(model))}/infer"
    process = start_service(model, port, *BATCHING_OPTIONS)
    try:
        results: dict = {"options": " ".join(BATCHING_OPTIONS)}
        results["outputs_equal_in_process"] = asyncio.run(_check_outputs(base_url, path, x[:8], predictor))
        for encoding in ("json", "binary"):
            body, headers = infer_body(x[:1], encoding == "binary")
            key = f"http_{encoding}_batch1"
            results[key], results[key]["health_latency_under_load"] = with_health_probe(
                base_url + "/health",
                lambda body=body, headers=headers: asyncio.run(
                    load(base_url, [(path, body, headers)], connections, seconds, batch=1)
                ),
            )
        load_state = json.loads(urlopen(base_url + "/metadata", timeout=10).read())["load"]
        results["batches"], results["batched_requests"] = load_state["batches"], load_state["batched_requests"]
        return results
    finally:
        process.terminate()
        process.wait(timeout=10)


def serving_figures(model: Path, connections: int, seconds: float, soak_total: int) -> dict:
    import psutil

    predictor = Predictor(model)
    shape = [d if isinstance(d, int) else 20 for d in predictor.onnx.session.get_inputs()[0].shape[1:]]
    x = np.random.default_rng(0).standard_normal((1024, *shape)).astype(np.float32)
    port = free_port()
    base_url, path = f"http://127.0.0.1:{port}", f"/v2/models/{default_model_name(str(model))}/infer"
    process = start_service(model, port)
    try:
        server = psutil.Process(process.pid)
        rss_start = server.memory_info().rss
        results: dict = {"model": str(model), "service": {"workers": usable_cpus(), "connections": connections}}
        check = asyncio.run(_check_outputs(base_url, path, x[:8], predictor))
        results["outputs_equal_in_process"] = check
        for batch in (1, 1024):
            inputs = x[:batch]
            results[f"in_process_batch{batch}_samples_per_s"] = predictor_rate(predictor, inputs)
            for encoding in ("json", "binary"):
                body, headers = infer_body(inputs, encoding == "binary")
                key = f"http_{encoding}_batch{batch}"
                results[key], results[key]["health_latency_under_load"] = with_health_probe(
                    base_url + "/health",
                    lambda body=body, headers=headers, batch=batch: asyncio.run(
                        load(base_url, [(path, body, headers)], connections, seconds, batch=batch)
                    ),
                )
        mix = soak_requests(x, path)
        asyncio.run(load(base_url, mix, connections, total=2000))  # warm-up
        rss_warm = server.memory_info().rss
        soak = asyncio.run(load(base_url, mix, connections, total=soak_total))
        rss_end = server.memory_info().rss
        results["batched"] = batched_figures(model, connections, seconds, predictor, x)
        results["soak"] = {
            "requests": soak_total,
            "statuses": soak["statuses"],
            "client_errors": soak["client_errors"],
            "seconds": soak["seconds"],
            "rss_start_mb": rss_start / 2**20,
            "rss_after_warmup_mb": rss_warm / 2**20,
            "rss_end_mb": rss_end / 2**20,
            "rss_growth_after_warmup": rss_end / rss_warm - 1,
        }
        return results
    finally:
        process.terminate()
        process.wait(timeout=10)


async def _check_outputs(base_url: str, path: str, x: np.ndarray, predictor: Predictor) -> bool:
    """Whether JSON and binary infer responses equal the in-process Predictor's outputs."""
    import aiohttp

    expected = predictor.predict(x)
    async with aiohttp.ClientSession() as session:
        for binary in (False, True):
            body, headers = infer_body(x, binary)
            async with session.post(base_url + path, data=body, headers=headers) as response:
                outputs = response_outputs(await response.read(), response.headers)
            if not (
                np.array_equal(outputs["prediction"], expected.prediction)
                and np.array_equal(outputs["attention"], expected.attention)
            ):
                return False
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=stage.ONNX_MODEL)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=5.0, help="per load figure")
    parser.add_argument("--soak-requests", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=stage.REPORTS / "bench.json")
    args = parser.parse_args(argv)
    figures = serving_figures(args.model, args.connections, args.seconds, args.soak_requests)
    in_process = figures["in_process_batch1024_samples_per_s"]
    binary = figures["http_binary_batch1024"]
    figures["summary"] = {
        "binary_vs_in_process_batch1024": binary["samples_per_s"] / in_process,
        "health_p99_ms_under_load": max(
            f["health_latency_under_load"]["p99_ms"] for key, f in figures.items() if key.startswith("http_")
        ),
        "soak_rss_growth_after_warmup": figures["soak"]["rss_growth_after_warmup"],
        "batched_vs_default_binary_batch1_requests_per_s": figures["batched"]["http_binary_batch1"]["requests_per_s"]
        / figures["http_binary_batch1"]["requests_per_s"],
        "batched_health_p99_ms_under_load": max(
            f["health_latency_under_load"]["p99_ms"] for key, f in figures["batched"].items() if key.startswith("http_")
        ),
        "failed_requests": sum(
            sum(n for status, n in f["statuses"].items() if status not in ("200", "503"))
            + sum(f["client_errors"].values())
            for key, f in [*figures.items(), *figures["batched"].items()]
            if key.startswith("http_")
        ),
    }
    report = json.loads(args.out.read_text()) if args.out.exists() else {}
    report["serving"] = figures
    stage.write_json(args.out, report)
    for key in ("in_process_batch1_samples_per_s", "in_process_batch1024_samples_per_s"):
        print(f"{key:40s} {figures[key]:12.0f}")
    for key, value in figures.items():
        if key.startswith("http_"):
            print(
                f"{key:40s} {value['samples_per_s']:12.0f} samples/s  p50 {value['latency']['p50_ms']:.2f} ms  "
                f"p99 {value['latency']['p99_ms']:.2f} ms  statuses {value['statuses']}"
            )
    for key, value in figures["batched"].items():
        if key.startswith("http_"):
            print(
                f"batched {key:32s} {value['requests_per_s']:12.0f} requests/s  p50 {value['latency']['p50_ms']:.2f} ms"
                f"  p99 {value['latency']['p99_ms']:.2f} ms  statuses {value['statuses']}"
            )
    for key, value in figures["summary"].items():
        print(f"{key:40s} {value:12.4g}")
    print(f"soak: {figures['soak']}")
    print(f"wrote the serving section of {args.out}")


if __name__ == "__main__":
    run_command(main)
