"""The HTTP service in a real uvicorn process on loopback: valid, malformed, oversized and
wrong-shape requests; a bad request is a 4xx with a message, never a 500."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import onnx
import pytest

from pipeline.export import to_onnx
from pipeline.models import TaskSpec, build_model
from tests.conftest import REPO_ROOT, subprocess_env, tiny_config

MAX_BODY = 200_000
MAX_BATCH = 64


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`python -m pipeline.serve` on a fixed-length LSTM attention model (20 steps x 2)."""
    folder = tmp_path_factory.mktemp("serve")
    keras.utils.set_random_seed(2)
    model = build_model(tiny_config().model, TaskSpec((20, 2)))
    onnx.save(to_onnx(model, 17, {"task_type": "binary", "labels": "null"}), folder / "model.onnx")
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.serve", "--model", str(folder / "model.onnx"), "--port", str(port),
         "--max-body-bytes", str(MAX_BODY), "--max-batch", str(MAX_BATCH)],
        cwd=REPO_ROOT, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if _request(port, "GET", "/health")[0] == 200:
                break
        except OSError:
            time.sleep(0.2)
    else:
        process.kill()
        pytest.fail(f"the service did not start: {process.stdout.read()}")
    yield port, model
    process.terminate()
    process.wait(timeout=10)


def _request(port: int, method: str, path: str, body: bytes | None = None, headers=None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    payload = response.read()
    connection.close()
    return response.status, json.loads(payload) if payload else None


def _post(port: int, payload) -> tuple[int, dict]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return _request(port, "POST", "/predict", body, {"Content-Type": "application/json"})


def test_health_and_metadata(server):
    port, _ = server
    assert _request(port, "GET", "/health") == (200, {"status": "ok", "provider": "CPUExecutionProvider"})
    status, body = _request(port, "GET", "/metadata")
    assert status == 200 and body["input"] == {"rank": 3, "time_steps": 20, "features": 2}


def test_valid_request_matches_keras(server):
    port, model = server
    x = np.random.default_rng(0).standard_normal((3, 20, 2)).astype(np.float32)
    status, body = _post(port, {"inputs": x.tolist()})
    assert status == 200, body
    expected = np.asarray(model(x)["prediction"])[:, 0]
    got = np.array([p["prediction"][0] for p in body["predictions"]])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert all(len(p["attention"]) == 20 and p["label"] in ("0", "1") for p in body["predictions"])


@pytest.mark.parametrize("case, payload, status, fragment", [
    ("not json", b"{inputs: oops", 400, "not valid JSON"),
    ("no inputs key", {"x": []}, 422, '{"inputs"'),
    ("inputs not a list", {"inputs": "abc"}, 422, "must be a list"),
    ("ragged", {"inputs": [[[0.0, 1.0]] * 20, [[0.0, 1.0]] * 3]}, 422, "not a rectangular array"),
    ("strings", {"inputs": [[["a", "b"]] * 20]}, 422, "not a rectangular array of numbers"),
    ("wrong rank", {"inputs": [[0.0, 1.0]]}, 422, "rank 3"),
    ("wrong features", {"inputs": [[[0.0, 1.0, 2.0]] * 20]}, 422, "3 features per step"),
    ("wrong length", {"inputs": [[[0.0, 1.0]] * 7]}, 422, "7 time steps"),
    ("nan", b'{"inputs": [[[NaN, 1.0]' + b', [0.0, 1.0]' * 19 + b"]]}", 422, "NaN or infinity"),
    ("empty batch", {"inputs": []}, 422, "got shape [0]"),
    ("too many samples", {"inputs": [[[0.0, 1.0]] * 20] * (MAX_BATCH + 1)}, 413, "limit of 64 per request"),
    ("oversized body", {"inputs": [[[0.0, 1.0]] * 20] * 4, "pad": "x" * MAX_BODY}, 413, "exceeds the limit"),
])
def test_bad_requests_get_a_4xx_with_a_message(server, case, payload, status, fragment):
    port, _ = server
    got_status, body = _post(port, payload)
    assert got_status == status, body
    assert fragment in body["error"]


def test_streamed_oversized_body_without_length_is_refused(server):
    port, _ = server
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.putrequest("POST", "/predict")
    connection.putheader("Transfer-Encoding", "chunked")
    connection.endheaders()
    chunk = b"[" * 50_000
    for _ in range(6):
        connection.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
    connection.send(b"0\r\n\r\n")
    response = connection.getresponse()
    assert response.status == 413 and b"exceeds the limit" in response.read()
    connection.close()


def test_unknown_routes_and_methods_are_4xx(server):
    port, _ = server
    assert _request(port, "GET", "/predict")[0] == 405
    assert _request(port, "GET", "/nowhere")[0] == 404


def test_service_binds_loopback_by_default():
    from pipeline.serve import build_parser

    assert build_parser().parse_args([]).host == "127.0.0.1"
