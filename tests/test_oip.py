"""The Open Inference Protocol codec: tensors survive the trip through JSON and binary bodies,
and any body at all is either decoded or refused with a ProtocolError (never another error)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pipeline.serving import oip

OUTPUTS = ("prediction", "attention", "label")


def _body(x: np.ndarray, binary: bool, nested: bool = False, outputs=None) -> tuple[bytes, str | None]:
    spec = {"name": "x", "shape": list(x.shape), "datatype": "FP32"}
    if binary:
        spec["parameters"] = {"binary_data_size": x.nbytes}
    else:
        spec["data"] = x.tolist() if nested else x.ravel().tolist()
    request = {"id": "a", "inputs": [spec], **({"outputs": outputs} if outputs is not None else {})}
    header = json.dumps(request).encode()
    return (header + x.tobytes(), str(len(header))) if binary else (header, None)


def _split_response(body: bytes, headers: dict) -> dict[str, np.ndarray]:
    """The outputs of an encoded response, as a client reads them."""
    length = int(headers.get(oip.BINARY_HEADER, len(body)))
    response, binary = json.loads(body[:length]), body[length:]
    arrays = {}
    for output in response["outputs"]:
        if "data" in output:
            arrays[output["name"]] = np.array(
                output["data"], dtype=object if output["datatype"] == "BYTES" else np.float32
            ).reshape(output["shape"])
            continue
        size = output["parameters"]["binary_data_size"]
        raw, binary = binary[:size], binary[size:]
        if output["datatype"] == "BYTES":
            items = []
            while raw:
                n = int.from_bytes(raw[:4], "little")
                items.append(raw[4 : 4 + n].decode())
                raw = raw[4 + n :]
            arrays[output["name"]] = np.array(items, dtype=object)
        else:
            arrays[output["name"]] = np.frombuffer(raw, dtype="<f4").reshape(output["shape"])
    assert binary == b""
    return arrays


finite_tensors = hnp.arrays(
    np.float32,
    hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=6),
    elements=st.floats(-1e6, 1e6, width=32),
)


@settings(max_examples=80, deadline=None)
@given(x=finite_tensors, binary=st.booleans(), nested=st.booleans())
def test_property_input_tensors_survive_json_and_binary(x, binary, nested):
    body, length = _body(x, binary, nested)
    decoded = oip.decode_request(body, length, "x", OUTPUTS, max_batch=10)
    np.testing.assert_array_equal(decoded.tensor, x)
    assert decoded.tensor.shape == x.shape and decoded.request_id == "a" and decoded.outputs == OUTPUTS


@settings(max_examples=60, deadline=None)
@given(
    x=hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=2, max_dims=2, min_side=0, max_side=6),
        elements=st.floats(-1e6, 1e6, width=32),
    ),
    labels=st.lists(st.text(max_size=5), min_size=0, max_size=6),
    binary=st.sets(st.sampled_from(OUTPUTS)),
)
def test_property_outputs_survive_the_response(x, labels, binary):
    outputs = {"prediction": x, "attention": x * 2, "label": np.array(labels, dtype=object)}
    requested = [{"name": n, "parameters": {"binary_data": n in binary}} for n in OUTPUTS]
    body, length = _body(np.zeros((1, 2), np.float32), False, outputs=requested)
    decoded = oip.decode_request(body, length, "x", OUTPUTS, max_batch=10)
    content, headers = oip.encode_response("m", decoded, outputs)
    assert (oip.BINARY_HEADER in headers) == bool(binary)
    got = _split_response(content, headers)
    np.testing.assert_array_equal(got["prediction"], x)
    np.testing.assert_array_equal(got["attention"], x * 2)
    assert list(got["label"]) == labels


near_valid_requests = st.fixed_dictionaries(
    {
        "inputs": st.lists(
            st.fixed_dictionaries(
                {
                    "name": st.sampled_from(["x", "y"]),
                    "shape": st.lists(st.integers(-2, 12), max_size=4),
                    "datatype": st.sampled_from([*oip.DATATYPES, "BYTES", "fp32"]),
                },
                optional={
                    "data": st.lists(
                        st.one_of(
                            st.floats(), st.integers(-300, 300), st.text(max_size=2), st.lists(st.floats(), max_size=3)
                        ),
                        max_size=12,
                    ),
                    "parameters": st.fixed_dictionaries({}, optional={"binary_data_size": st.integers(-4, 64)}),
                },
            ),
            min_size=0,
            max_size=2,
        )
    },
    optional={
        "outputs": st.lists(
            st.fixed_dictionaries(
                {"name": st.sampled_from([*OUTPUTS, "z"])},
                optional={
                    "parameters": st.fixed_dictionaries({"binary_data": st.one_of(st.booleans(), st.integers(0, 1))})
                },
            ),
            max_size=4,
        ),
        "parameters": st.fixed_dictionaries({"binary_data_output": st.booleans()}),
    },
)


@settings(max_examples=300, deadline=None)
@given(
    body=st.one_of(
        st.tuples(near_valid_requests.map(lambda v: json.dumps(v).encode()), st.binary(max_size=64)).map(
            lambda parts: parts[0] + parts[1]
        ),
        st.binary(max_size=300),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4),
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(
                    st.sampled_from(
                        [
                            "inputs",
                            "outputs",
                            "name",
                            "shape",
                            "datatype",
                            "data",
                            "parameters",
                            "binary_data_size",
                            "binary_data",
                            "id",
                            "x",
                        ]
                    ),
                    inner,
                    max_size=5,
                )
            ),
            max_leaves=30,
        ).map(lambda v: json.dumps(v).encode()),
    ),
    length=st.one_of(st.none(), st.text("0123456789-x", max_size=4)),
)
def test_property_any_body_is_decoded_or_refused_with_a_protocol_error(body, length):
    try:
        decoded = oip.decode_request(body, length, "x", OUTPUTS, max_batch=8)
    except oip.ProtocolError as err:
        assert err.status in (400, 413) and str(err)
        return
    assert isinstance(decoded.tensor, np.ndarray) and decoded.tensor.shape[0] <= 8


def test_binary_output_for_every_output_by_the_request_parameter():
    header = json.dumps(
        {
            "inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP64", "data": [2.5]}],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    decoded = oip.decode_request(header, None, "x", OUTPUTS, max_batch=1)
    assert decoded.tensor.dtype == np.float64 and decoded.binary_outputs == frozenset(OUTPUTS)
    with pytest.raises(oip.ProtocolError, match="binary_data_output must be true or false"):
        oip.decode_request(header.replace(b"true", b'"yes"'), None, "x", OUTPUTS, max_batch=1)
