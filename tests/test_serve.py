"""The HTTP service in a real uvicorn process on loopback: valid, malformed, oversized and
wrong-shape requests; a bad request is a 4xx with a message, never a 500."""

from __future__ import annotations

import http.client
import json

import keras
import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, settings

from pipeline.models import TaskSpec, build_model
from pipeline.onnx.conversion import to_onnx
from pipeline.tools.loadbench import free_port, start_service
from tests.conftest import REPO_ROOT, subprocess_env, tiny_config

pytestmark = pytest.mark.e2e

MAX_BODY = 200_000
MAX_BATCH = 64


def _start_server(model_path, *options: str):
    """`python -m pipeline.serving.serve` on a free port, once it answers /health: (process, port)."""
    port = free_port()
    return start_service(model_path, port, *options, cwd=REPO_ROOT, env=subprocess_env()), port


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A fixed-length LSTM attention model (20 steps x 2, binary) exported to ONNX: (path, keras model)."""
    folder = tmp_path_factory.mktemp("serve")
    keras.utils.set_random_seed(2)
    model = build_model(tiny_config().model, TaskSpec((20, 2)))
    onnx.save(to_onnx(model, 17, {"task_type": "binary", "labels": "null"}), folder / "model.onnx")
    return folder / "model.onnx", model


@pytest.fixture(scope="module")
def server(model_file):
    path, model = model_file
    process, port = _start_server(path, "--max-body-bytes", str(MAX_BODY), "--max-batch", str(MAX_BATCH))
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


@pytest.mark.parametrize(
    "case, payload, status, fragment",
    [
        ("not json", b"{inputs: oops", 400, "not valid JSON"),
        ("no inputs key", {"x": []}, 422, "inputs: Field required"),
        ("inputs not a list", {"inputs": "abc"}, 422, "inputs: Input should be a valid array"),
        ("ragged", {"inputs": [[[0.0, 1.0]] * 20, [[0.0, 1.0]] * 3]}, 422, "not a rectangular array"),
        ("strings", {"inputs": [[["a", "b"]] * 20]}, 422, "inputs.0.0.0: Input should be a valid number"),
        ("wrong rank", {"inputs": [[0.0, 1.0]]}, 422, "rank 3"),
        ("wrong features", {"inputs": [[[0.0, 1.0, 2.0]] * 20]}, 422, "3 features per step"),
        ("wrong length", {"inputs": [[[0.0, 1.0]] * 7]}, 422, "7 time steps"),
        ("nan", b'{"inputs": [[[NaN, 1.0]' + b", [0.0, 1.0]" * 19 + b"]]}", 422, "NaN or infinity"),
        ("empty batch", {"inputs": []}, 422, "got shape [0]"),
        ("too many samples", {"inputs": [[[0.0, 1.0]] * 20] * (MAX_BATCH + 1)}, 413, "limit of 64 per request"),
        ("oversized body", {"inputs": [[[0.0, 1.0]] * 20] * 4, "pad": "x" * MAX_BODY}, 413, "exceeds the limit"),
    ],
)
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
    from pipeline.serving.serve import build_parser

    assert build_parser().parse_args([]).host == "127.0.0.1"


def test_open_inference_protocol_with_a_triton_client(server, model_file):
    """tritonclient (the client of Triton and KServe) gets the same outputs as ONNX Runtime in
    process, with JSON tensors and with the binary tensor extension."""
    import tritonclient.http as triton

    from pipeline.serving.inference import Predictor

    port, _ = server
    client = triton.InferenceServerClient(url=f"127.0.0.1:{port}")
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("attention_fp32")
    metadata = client.get_model_metadata("attention_fp32")
    assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 20, 2]}]
    names = ["prediction", "attention", "logit", "contribution", "label"]
    assert [o["name"] for o in metadata["outputs"]] == names
    x = np.random.default_rng(1).standard_normal((5, 20, 2)).astype(np.float32)
    expected = Predictor(model_file[0]).predict(x)
    assert set(expected.explanations) == {"logit", "contribution"}
    for binary in (False, True):
        tensor = triton.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=binary)
        outputs = [triton.InferRequestedOutput(n, binary_data=binary) for n in names]
        result = client.infer("attention_fp32", [tensor], outputs=outputs, request_id="r1")
        assert result.get_response()["id"] == "r1"
        np.testing.assert_array_equal(result.as_numpy("prediction"), expected.prediction)
        np.testing.assert_array_equal(result.as_numpy("attention"), expected.attention)
        for name, value in expected.explanations.items():
            np.testing.assert_array_equal(result.as_numpy(name), value)
        assert [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("label")] == expected.labels
    with pytest.raises(triton.InferenceServerException, match="no model 'other'"):
        client.get_model_metadata("other")


def _infer(port: int, payload, headers=None, name: str = "attention_fp32"):
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return _request(port, "POST", f"/v2/models/{name}/infer", body, headers)


BINARY_HEADER = (
    b'{"inputs": [{"name": "x", "shape": [1, 20, 2], "datatype": "FP32", "parameters": {"binary_data_size": 160}}]}'
)


@pytest.mark.parametrize(
    "case, payload, headers, status, fragment",
    [
        ("not json", b"{oops", None, 400, "Invalid JSON"),
        ("no inputs", {"outputs": []}, None, 400, "inputs: Field required"),
        (
            "wrong input name",
            {"inputs": [{"name": "y", "shape": [1], "datatype": "FP32", "data": [1]}]},
            None,
            400,
            "one input named 'x'",
        ),
        (
            "unknown datatype",
            {"inputs": [{"name": "x", "shape": [1, 20, 2], "datatype": "FP8", "data": [0] * 40}]},
            None,
            400,
            "'FP8' is not one of",
        ),
        (
            "data size",
            {"inputs": [{"name": "x", "shape": [1, 20, 2], "datatype": "FP32", "data": [0] * 39}]},
            None,
            400,
            "39 values, shape [1, 20, 2] needs 40",
        ),
        (
            "wrong steps",
            {"inputs": [{"name": "x", "shape": [1, 10, 4], "datatype": "FP32", "data": [0] * 40}]},
            None,
            400,
            "4 features per step",
        ),
        (
            "strings",
            {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": ["a", "b"]}]},
            None,
            400,
            "not a rectangular array of FP32",
        ),
        (
            "unknown output",
            {
                "inputs": [{"name": "x", "shape": [1, 20, 2], "datatype": "FP32", "data": [0] * 40}],
                "outputs": [{"name": "logits"}],
            },
            None,
            400,
            "must name distinct outputs",
        ),
        (
            "binary size",
            BINARY_HEADER + bytes(100),
            {"Inference-Header-Content-Length": str(len(BINARY_HEADER))},
            400,
            "binary_data_size: 160, but 100 bytes follow",
        ),
        ("header length", b"{}", {"Inference-Header-Content-Length": "999"}, 400, "not a length within the body"),
        (
            "too many samples",
            {"inputs": [{"name": "x", "shape": [MAX_BATCH + 1, 20, 2], "datatype": "FP32", "data": []}]},
            None,
            413,
            "limit of 64 per request",
        ),
    ],
)
def test_bad_infer_requests_get_a_4xx_naming_the_field(server, case, payload, headers, status, fragment):
    port, _ = server
    got_status, body = _infer(port, payload, headers)
    assert got_status == status, body
    assert fragment in body["error"]


def test_unknown_model_is_404(server):
    port, _ = server
    status, body = _infer(port, {"inputs": []}, name="other")
    assert status == 404 and "serves 'attention_fp32' version 1" in body["error"]
    assert _request(port, "GET", "/v2/models/attention_fp32/versions/2")[0] == 404


def test_dynamic_batching_joins_concurrent_requests_and_gives_each_its_own_outputs(model_file):
    """With --max-delay-ms, concurrent small requests (OIP JSON and binary, /predict) run as joined
    batches (/metadata counts fewer batches than requests), every answer equals the in-process
    Predictor's for that request's own inputs, and a bad request among them fails alone."""
    import threading

    import tritonclient.http as triton

    from pipeline.serving.inference import Predictor

    process, port = _start_server(
        model_file[0], "--max-delay-ms", "50", "--workers", "2", "--max-batch", "64", "--max-in-flight", "64"
    )
    try:
        predictor = Predictor(model_file[0])
        rng = np.random.default_rng(5)
        inputs = [rng.standard_normal((1 + i % 3, 20, 2)).astype(np.float32) for i in range(24)]
        start = threading.Barrier(len(inputs))  # the 23 clients and the bad one
        answers, failures = {}, []

        def client(i: int):
            x = inputs[i]
            start.wait()
            if i % 3 == 2:  # the REST endpoint
                answers[i] = _post(port, {"inputs": x.tolist()})
                return
            connection = triton.InferenceServerClient(url=f"127.0.0.1:{port}")
            tensor = triton.InferInput("x", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x, binary_data=bool(i % 2))
            names = ("prediction", "attention", "contribution", "label")
            outputs = [triton.InferRequestedOutput(n, binary_data=bool(i % 2)) for n in names]
            result = connection.infer("attention_fp32", [tensor], outputs=outputs)
            answers[i] = {n: result.as_numpy(n) for n in names}

        def bad_client():
            start.wait()
            failures.append(_post(port, {"inputs": np.full((1, 20, 2), np.inf).tolist()}))

        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(inputs) - 1)]
        threads.append(threading.Thread(target=bad_client))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for i, answer in answers.items():
            expected = predictor.predict(inputs[i])
            if i % 3 == 2:
                status, body = answer
                assert status == 200, body
                got = np.array([p["prediction"] for p in body["predictions"]], dtype=np.float32)
                np.testing.assert_allclose(got, expected.prediction, atol=1e-6)
                assert [p["label"] for p in body["predictions"]] == expected.labels
                continue
            np.testing.assert_array_equal(answer["prediction"], expected.prediction)
            np.testing.assert_array_equal(answer["attention"], expected.attention)
            np.testing.assert_array_equal(answer["contribution"], expected.explanations["contribution"])
            assert [v.decode() if isinstance(v, bytes) else v for v in answer["label"]] == expected.labels
        assert len(answers) == len(inputs) - 1
        assert failures[0][0] == 422 and "NaN or infinity" in failures[0][1]["error"]
        load = _request(port, "GET", "/metadata")[1]["load"]
        assert load["batched_requests"] == len(inputs) - 1 and load["batches"] < load["batched_requests"], load
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_a_full_service_answers_503_and_health_stays_quick(model_file):
    """One worker and one request admitted: concurrent large requests beyond it get 503 with
    Retry-After (counted in /metadata), every other one 200, and /health answers meanwhile."""
    import threading

    process, port = _start_server(
        model_file[0],
        "--workers",
        "1",
        "--max-in-flight",
        "1",
        "--max-batch",
        "4096",
        "--max-body-bytes",
        str(16 * 2**20),
    )
    try:
        x = np.random.default_rng(2).standard_normal((4096, 20, 2)).astype(np.float32)
        payload = json.dumps(
            {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
        ).encode()
        start = threading.Barrier(9)
        statuses, retry_after = [], []

        def client():
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            start.wait()
            connection.request("POST", "/v2/models/attention_fp32/infer", body=payload)
            response = connection.getresponse()
            response.read()
            statuses.append(response.status)
            retry_after.append(response.getheader("Retry-After"))
            connection.close()

        threads = [threading.Thread(target=client) for _ in range(8)]
        for thread in threads:
            thread.start()
        start.wait()
        probes = 0
        while any(t.is_alive() for t in threads):
            assert _request(port, "GET", "/health")[0] == 200
            probes += 1
        for thread in threads:
            thread.join()
        assert sorted(set(statuses)) == [200, 503], statuses
        assert all(r == "1" for s, r in zip(statuses, retry_after) if s == 503)
        _status, metadata = _request(port, "GET", "/metadata")
        assert metadata["load"]["refused"] == statuses.count(503) and metadata["load"]["in_flight"] == 0
        assert probes > 0  # answered while the requests ran (its latency under load: make bench)
    finally:
        process.terminate()
        process.wait(timeout=10)


def _fuzz(operation, mode, base_url: str, max_examples: int, **path_parameters) -> int:
    """Run schemathesis's cases of one operation and generation mode against the service; the
    number of requests sent (0 where the mode has nothing to generate: no invalid request to a
    GET without parameters)."""
    from hypothesis import given
    from hypothesis.errors import Unsatisfiable

    sent = []

    @settings(max_examples=max_examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(case=operation.as_strategy(generation_mode=mode, path_parameters=path_parameters or None))
    def answers_below_500(case):
        sent.append(1)
        response = case.call(base_url=base_url, timeout=30)
        assert response.status_code < 500, (case.as_curl_command(), response.status_code, response.text[:300])

    try:
        answers_below_500()
    except Unsatisfiable:
        assert not sent
    return len(sent)


def test_fuzzed_requests_never_get_a_5xx(server, record_property):
    """schemathesis over every operation of the published OpenAPI document, requests valid by the
    schema and mutated ones: every answer is below 500 and comes within the timeout."""
    import schemathesis

    port, _ = server
    base_url = f"http://127.0.0.1:{port}"
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    counts = {
        f"{op.method.upper()} {op.path} {mode.value}": _fuzz(op, mode, base_url, max_examples=30)
        for op in operations
        for mode in schemathesis.GenerationMode
    }
    for op in operations:  # the served model's name, so that bodies reach the decoder
        if op.method == "post" and "{name}" in op.path:
            known = {"name": "attention_fp32", **({"version": "1"} if "{version}" in op.path else {})}
            for mode in schemathesis.GenerationMode:
                counts[f"{op.method.upper()} {op.path} {mode.value} (served model)"] = _fuzz(
                    op, mode, base_url, max_examples=60, **known
                )
    record_property(
        "generated cases",
        f"{sum(counts.values())} requests: " + ", ".join(f"{label} {n}" for label, n in counts.items()),
    )
    assert len(counts) == 2 * 11 + 4 and all(
        n > 0 for label, n in counts.items() if label.endswith("positive") or label.startswith("POST")
    ), counts


def test_the_service_answers_after_the_fuzzing(server):
    port, _ = server
    status, body = _post(port, {"inputs": np.zeros((1, 20, 2)).tolist()})
    assert status == 200 and len(body["predictions"]) == 1


def test_a_soak_in_miniature_counts_every_request_and_finds_no_5xx(server):
    """pipeline.tools.loadbench's client and request mix (good and bad, JSON and binary) against the
    service: every request answered, 2xx or 4xx, the bad ones refused."""
    import asyncio

    from pipeline.tools.loadbench import load, soak_requests

    port, _ = server
    x = np.random.default_rng(3).standard_normal((16, 20, 2)).astype(np.float32)
    mix = soak_requests(x, "/v2/models/attention_fp32/infer")
    result = asyncio.run(load(f"http://127.0.0.1:{port}", mix, connections=8, total=300))
    assert result["client_errors"] == {} and sum(result["statuses"].values()) == 300, result
    assert set(result["statuses"]) <= {"200", "400", "404", "503"}, result
    statuses = {status: result["statuses"].get(status, 0) for status in ("200", "400", "404", "503")}
    assert statuses["200"] + statuses["503"] == 210 and statuses["400"] == 60 and statuses["404"] == 30, result
