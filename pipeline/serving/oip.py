"""The Open Inference Protocol (KServe v2, spoken by Triton, KServe and Seldon MLServer): request
and response bodies, JSON tensors and the binary tensor data extension. Pure functions over bytes
and numpy arrays; the HTTP routes are in pipeline/serving/serve.py. No TensorFlow import.

A request body is a JSON object, optionally followed by raw tensor bytes; then the header
`Inference-Header-Content-Length` gives the length of the JSON part, and each binary input says
its byte count in `parameters.binary_data_size`:

    {"id": "7", "inputs": [{"name": "x", "shape": [2, 20, 2], "datatype": "FP32", "data": [...]}],
     "outputs": [{"name": "prediction", "parameters": {"binary_data": true}}, {"name": "attention"}]}

`data` is row-major, flat or nested. The response lists the requested outputs (all of them when
none is named) with their shapes and data, binary ones after the JSON part in the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

BINARY_HEADER = "Inference-Header-Content-Length"
BINARY_CONTENT_TYPE = "application/octet-stream"
DATATYPES = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
LABEL_OUTPUT = "label"  # BYTES [batch]: the predicted class label of each sample


class ProtocolError(ValueError):
    """A request that breaks the protocol; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RequestInput(_Strict):
    name: str
    shape: list[int] = Field(description="dimensions, row-major; the first is the batch")
    datatype: str = Field(description="FP32, FP64, FP16, INT8..INT64, UINT8..UINT64")
    parameters: dict[str, Any] | None = Field(None, description='{"binary_data_size": bytes} for binary data')
    data: list[Any] | None = Field(None, description="the values, row-major, flat or nested")


class RequestOutput(_Strict):
    name: str
    parameters: dict[str, Any] | None = Field(None, description='{"binary_data": true} for binary data')


class InferenceRequest(_Strict):
    """The JSON part of POST /v2/models/{name}/infer."""

    id: str | None = None
    parameters: dict[str, Any] | None = Field(None, description='{"binary_data_output": true}: every output binary')
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = None


@dataclass(frozen=True)
class DecodedRequest:
    """An infer request taken apart: the input tensor, the outputs asked for (in order) and which
    of them go back as binary data."""

    request_id: str | None
    tensor: np.ndarray
    outputs: tuple[str, ...]
    binary_outputs: frozenset[str]


def describe(error: ValidationError, limit: int = 3) -> str:
    """A pydantic error as 'field.path: problem; ...', field names and indices only."""
    parts = []
    for item in error.errors()[:limit]:
        path = ".".join(
            str(p)
            for p in item["loc"]
            if isinstance(p, int) or ("[" not in p and p not in {"float", "int", "list", "str"})
        )
        parts.append(f"{path or 'body'}: {item['msg']}")
    more = len(error.errors()) - limit
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def _flag(parameters: dict | None, key: str, where: str) -> bool:
    value = (parameters or {}).get(key, False)
    if not isinstance(value, bool):
        raise ProtocolError(400, f"{where}.parameters.{key} must be true or false, got {value!r}")
    return value


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """(JSON part, binary part) of a body, by the Inference-Header-Content-Length header."""
    if header_length is None:
        return body, b""
    if not header_length.isdigit() or int(header_length) > len(body):
        raise ProtocolError(
            400, f"{BINARY_HEADER}: {header_length!r} is not a length within the body of {len(body)} bytes"
        )
    return body[: int(header_length)], body[int(header_length) :]


def decode_request(
    body: bytes, header_length: str | None, input_name: str, output_names: tuple[str, ...], max_batch: int
) -> DecodedRequest:
    """Check a request against the protocol and the model (one input named `input_name`, the
    outputs `output_names`, at most `max_batch` samples); ProtocolError names what is wrong."""
    header, binary = split_body(body, header_length)
    try:
        request = InferenceRequest.model_validate_json(header)
    except ValidationError as err:
        raise ProtocolError(400, describe(err)) from None
    if [i.name for i in request.inputs] != [input_name]:
        raise ProtocolError(
            400, f"inputs: the model takes one input named {input_name!r}, got {[i.name for i in request.inputs]}"
        )
    tensor_spec = request.inputs[0]
    if any(d < 0 for d in tensor_spec.shape) or not tensor_spec.shape:
        raise ProtocolError(400, f"inputs.0.shape: {tensor_spec.shape} is not a shape of sizes >= 0")
    if tensor_spec.shape[0] > max_batch:
        raise ProtocolError(
            413, f"inputs.0.shape: {tensor_spec.shape[0]} samples exceed the limit of {max_batch} per request"
        )
    dtype = DATATYPES.get(tensor_spec.datatype)
    if dtype is None:
        raise ProtocolError(400, f"inputs.0.datatype: {tensor_spec.datatype!r} is not one of {sorted(DATATYPES)}")
    count = math.prod(tensor_spec.shape)
    binary_size = (tensor_spec.parameters or {}).get("binary_data_size")
    if binary_size is not None:
        if tensor_spec.data is not None:
            raise ProtocolError(400, "inputs.0: both data and parameters.binary_data_size are given")
        if not isinstance(binary_size, int) or isinstance(binary_size, bool) or binary_size != len(binary):
            raise ProtocolError(
                400,
                f"inputs.0.parameters.binary_data_size: {binary_size!r}, but {len(binary)} bytes follow the JSON part",
            )
        if binary_size != count * dtype.itemsize:
            raise ProtocolError(
                400,
                f"inputs.0: {binary_size} bytes of binary data, shape {tensor_spec.shape} "
                f"of {tensor_spec.datatype} needs {count * dtype.itemsize}",
            )
        tensor = np.frombuffer(binary, dtype=dtype.newbyteorder("<")).reshape(tensor_spec.shape)
    else:
        if binary:
            raise ProtocolError(
                400, f"{len(binary)} bytes follow the JSON part, but no input has parameters.binary_data_size"
            )
        if tensor_spec.data is None:
            raise ProtocolError(400, "inputs.0: neither data nor parameters.binary_data_size is given")
        try:
            values = np.asarray(tensor_spec.data, dtype=dtype)
        except (ValueError, TypeError, OverflowError) as err:
            raise ProtocolError(
                400, f"inputs.0.data: not a rectangular array of {tensor_spec.datatype} values ({err})"
            ) from None
        if values.size != count:
            raise ProtocolError(400, f"inputs.0.data: {values.size} values, shape {tensor_spec.shape} needs {count}")
        tensor = values.reshape(tensor_spec.shape)
    binary_all = _flag(request.parameters, "binary_data_output", "request")
    if request.outputs is None:
        names = output_names
        binary_outputs = frozenset(names) if binary_all else frozenset()
    else:
        names = tuple(o.name for o in request.outputs)
        unknown = [n for n in names if n not in output_names]
        if unknown or len(set(names)) != len(names):
            raise ProtocolError(400, f"outputs: {list(names)} must name distinct outputs of {list(output_names)}")
        binary_outputs = frozenset(
            o.name
            for i, o in enumerate(request.outputs)
            if binary_all or _flag(o.parameters, "binary_data", f"outputs.{i}")
        )
    return DecodedRequest(request.id, tensor, names, binary_outputs)


def _datatype(array: np.ndarray) -> str:
    if array.dtype.kind in "OUS":
        return "BYTES"
    return next(name for name, dtype in DATATYPES.items() if dtype == array.dtype)


def _bytes_elements(array: np.ndarray) -> bytes:
    """BYTES tensor data: each element as a 4-byte little-endian length and its UTF-8 bytes."""
    chunks = []
    for item in array.ravel():
        encoded = item.encode() if isinstance(item, str) else bytes(item)
        chunks += [len(encoded).to_bytes(4, "little"), encoded]
    return b"".join(chunks)


def encode_response(model_name: str, decoded: DecodedRequest, outputs: dict[str, np.ndarray]) -> tuple[bytes, dict]:
    """(body, headers) of the response: the requested outputs in order, binary ones appended
    after the JSON part (whose length the Inference-Header-Content-Length header then gives)."""
    described, binary_parts = [], []
    for name in decoded.outputs:
        array = outputs[name]
        entry = {"name": name, "datatype": _datatype(array), "shape": list(array.shape)}
        if name in decoded.binary_outputs:
            data = (
                _bytes_elements(array)
                if entry["datatype"] == "BYTES"
                else np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
            )
            entry["parameters"] = {"binary_data_size": len(data)}
            binary_parts.append(data)
        else:
            entry["data"] = array.ravel().tolist() if array.dtype.kind in "OUS" else np.ascontiguousarray(array).ravel()
        described.append(entry)
    response = {"model_name": model_name, "outputs": described}
    if decoded.request_id is not None:
        response["id"] = decoded.request_id
    header = orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)
    if not binary_parts:
        return header, {"content-type": "application/json"}
    return header + b"".join(binary_parts), {"content-type": BINARY_CONTENT_TYPE, BINARY_HEADER: str(len(header))}
