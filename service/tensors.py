"""Open Inference Protocol tensors <-> numpy, with every validation of client data in this one module.

Every tensor header (name, datatype, shape) is checked against the model's ``Signature`` first -- before any of its
data is decoded, so that a request the model cannot take costs nothing to refuse. Transports then decode their wire
format (JSON, the binary-data extension, protobuf typed or raw contents) with the ``decode_*`` functions, and the data
plane checks the whole request against the signature with ``bind_inputs``.
Every error is an ``InvalidArgument``/``PayloadTooLarge`` whose message names the offending field, e.g.
``inputs[0].shape``.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from odetoode.client.datatypes import DATATYPE_OF, DATATYPES
from service.errors import InvalidArgument, PayloadTooLarge

# The wire is little-endian: these views decode raw bytes on any host without a per-request newbyteorder().
_WIRE_DTYPES = {name: dtype.newbyteorder("<") for name, dtype in DATATYPES.items() if name != "BYTES"}
_ONNX_TYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}
MAX_RANK = 16


@dataclass
class Tensor:
    """A named tensor as it travels: OIP datatype, shape, and the data as a numpy array of that shape."""

    name: str
    datatype: str
    data: np.ndarray
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.data.shape)


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a model's signature; ``-1`` marks a variable dimension (the batch)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


def datatype_of(array: np.ndarray) -> str:
    try:
        return DATATYPE_OF[array.dtype]
    except KeyError:
        raise InvalidArgument(f"numpy dtype {array.dtype} has no Open Inference Protocol datatype") from None


def datatype_of_onnx(onnx_type: str) -> str:
    try:
        return _ONNX_TYPES[onnx_type]
    except KeyError:
        raise InvalidArgument(f"ONNX type {onnx_type} is not servable over the Open Inference Protocol") from None


def check_datatype(datatype: Any, where: str) -> np.dtype[Any]:
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise InvalidArgument(f"{where}.datatype: {datatype!r} is not one of {', '.join(DATATYPES)}")
    return DATATYPES[datatype]


def check_shape(shape: Any, where: str, max_elements: int) -> tuple[int, ...]:
    """A list of non-negative integers whose product is at most ``max_elements``."""
    if not isinstance(shape, (list, tuple)) or len(shape) > MAX_RANK:
        raise InvalidArgument(f"{where}.shape: expected a list of at most {MAX_RANK} non-negative integers")
    dims = []
    for d in shape:
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 0:
            raise InvalidArgument(f"{where}.shape: dimensions must be non-negative integers, got {list(shape)}")
        dims.append(int(d))
    elements = math.prod(dims)
    if elements > max_elements:
        raise PayloadTooLarge(
            f"{where}.shape: {list(dims)} has {elements} elements, more than the limit {max_elements}"
        )
    if elements == 0 and math.prod(d for d in dims if d) > max_elements:  # numpy cannot even describe [0, 2**62, 2**62]
        raise PayloadTooLarge(f"{where}.shape: {list(dims)} is empty, but its other dimensions exceed the limit")
    return tuple(dims)


def check_against(spec: TensorSpec, shape: tuple[int, ...], where: str, max_rows: int) -> None:
    """``shape`` fits ``spec``: same rank, the fixed dimensions equal, a batch (if variable) of 1 to ``max_rows``."""
    if len(shape) != len(spec.shape) or any(e != -1 and e != d for e, d in zip(spec.shape, shape, strict=False)):
        raise InvalidArgument(
            f"{where}.shape: input {spec.name!r} expects {list(spec.shape)} (-1: any), got {list(shape)}"
        )
    if spec.shape and spec.shape[0] == -1:
        if shape[0] < 1:
            raise InvalidArgument(f"{where}.shape: the batch dimension must be at least 1, got {list(shape)}")
        if shape[0] > max_rows:
            raise PayloadTooLarge(
                f"{where}.shape: a batch of {shape[0]} rows is more than this model takes in one request "
                f"({max_rows}, max_request_rows)"
            )


class Declared(NamedTuple):
    """A request tensor as its header declares it, checked against the model before any of its data is decoded."""

    spec: TensorSpec
    dtype: np.dtype[Any]
    shape: tuple[int, ...]

    @property
    def elements(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Signature:
    """What a request to one model version may carry: its inputs, the most rows (batch) per request, and the most
    elements per tensor. Every tensor header is checked here first, so a request that cannot fit the model is
    refused before its data is looked at: a BYTES tensor for a numeric input is refused without iterating it, and a
    batch over ``max_rows`` without decoding it."""

    inputs: tuple[TensorSpec, ...]
    max_rows: int
    max_elements: int

    def spec(self, name: Any, where: str) -> TensorSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise InvalidArgument(
            f"{where}.name: unknown input {name!r}; the model's inputs are {sorted(s.name for s in self.inputs)}"
        )

    def declare(self, name: Any, datatype: Any, shape: Any, where: str) -> Declared:
        """Checks a tensor's header -- name, datatype, shape, rows, elements -- against the model."""
        spec = self.spec(name, where)
        dtype = check_datatype(datatype, where)
        if datatype != spec.datatype:
            raise InvalidArgument(f"{where}.datatype: input {spec.name!r} is {spec.datatype}, got {datatype}")
        dims = check_shape(shape, where, self.max_elements)
        check_against(spec, dims, where, self.max_rows)
        return Declared(spec, dtype, dims)

    def json_values(self) -> int | None:
        """The most values a JSON request may carry in all its inputs together -- ``max_rows`` rows of each input --
        or ``None`` if an input has a variable dimension besides the batch."""
        total = 0
        for spec in self.inputs:
            row = spec.shape[1:] if spec.shape and spec.shape[0] == -1 else spec.shape
            if any(d < 0 for d in row):
                return None
            total += (self.max_rows if spec.shape and spec.shape[0] == -1 else 1) * math.prod(row)
        return total

    def raw_size(self, declared: Declared) -> int | None:
        """The byte size raw data of ``declared`` must have (``None`` for BYTES: elements have their own lengths)."""
        return None if declared.spec.datatype == "BYTES" else declared.elements * declared.dtype.itemsize


def _flatten_json(data: Any, where: str, depth: int = 0) -> list[Any]:
    """Row-major flattening of nested JSON lists (OIP allows both flat and nested ``data``), at most ``MAX_RANK``
    levels deep (JSON parsers accept ~1000 levels, more than Python's recursion limit leaves for this)."""
    if not isinstance(data, list):
        return [data]
    if not data or not isinstance(data[0], list):
        if any(isinstance(x, list) for x in data):
            raise InvalidArgument(f"{where}.data: nested lists must be regular")
        return data
    if depth >= MAX_RANK:
        raise InvalidArgument(f"{where}.data: lists nested more than {MAX_RANK} levels deep")
    out: list[Any] = []
    for row in data:
        if not isinstance(row, list):
            raise InvalidArgument(f"{where}.data: nested lists must be regular")
        out.extend(_flatten_json(row, where, depth + 1))
    return out


def decode_json(declared: Declared, data: Any, where: str) -> np.ndarray:
    """The ``data`` member of a JSON tensor (flat or nested, row-major) as an array of the declared shape."""
    datatype, dims, expected = declared.spec.datatype, declared.shape, declared.elements
    values = _flatten_json(data, where)
    if len(values) != expected:
        raise InvalidArgument(f"{where}.data: {len(values)} values for shape {list(dims)}, expected {expected}")
    if datatype == "BYTES":
        if not all(isinstance(v, (str, bytes)) for v in values):
            raise InvalidArgument(f"{where}.data: BYTES tensors take strings")
        array = np.empty(expected, dtype=object)
        array[:] = [v.encode() if isinstance(v, str) else v for v in values]
        return array.reshape(dims)
    if datatype == "BOOL":
        if not all(isinstance(v, bool) for v in values):
            raise InvalidArgument(f"{where}.data: BOOL tensors take true/false")
    elif not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise InvalidArgument(f"{where}.data: {datatype} tensors take numbers")
    try:
        with np.errstate(over="raise", invalid="raise"):
            array = np.asarray(values, dtype=declared.dtype)
    except (OverflowError, FloatingPointError, ValueError):
        raise InvalidArgument(f"{where}.data: values do not fit {datatype}") from None
    return array.reshape(dims)


def decode_raw(declared: Declared, raw: bytes | memoryview, where: str) -> np.ndarray:
    """Raw little-endian row-major bytes (gRPC ``raw_input_contents``, the REST binary extension)."""
    datatype, dims, expected = declared.spec.datatype, declared.shape, declared.elements
    if datatype == "BYTES":
        return _decode_bytes_elements(raw, expected, where).reshape(dims)
    if len(raw) != expected * declared.dtype.itemsize:
        raise InvalidArgument(
            f"{where}: {len(raw)} bytes of raw data for shape {list(dims)} {datatype}, "
            f"expected {expected * declared.dtype.itemsize}"
        )
    return np.frombuffer(raw, dtype=_WIRE_DTYPES[datatype]).astype(declared.dtype, copy=False).reshape(dims)


def decode_typed(declared: Declared, values: Sequence[Any], where: str) -> np.ndarray:
    """gRPC typed contents (``fp32_contents`` etc., already the right Python types) as an array of the declared
    shape."""
    datatype, dims, expected = declared.spec.datatype, declared.shape, declared.elements
    if len(values) != expected:
        raise InvalidArgument(f"{where}.contents: {len(values)} values for shape {list(dims)}, expected {expected}")
    if datatype == "BYTES":
        array = np.empty(expected, dtype=object)
        array[:] = list(values)
        return array.reshape(dims)
    try:
        with np.errstate(over="raise", invalid="raise"):
            return np.asarray(values, dtype=declared.dtype).reshape(dims)
    except (OverflowError, FloatingPointError, ValueError):
        raise InvalidArgument(f"{where}.contents: values do not fit {datatype}") from None


def _decode_bytes_elements(raw: bytes | memoryview, count: int, where: str) -> np.ndarray:
    """BYTES wire form: each element is a 4-byte little-endian length followed by that many bytes."""
    if len(raw) < 4 * count:  # every element takes at least its length prefix: refuse before iterating
        raise InvalidArgument(f"{where}: {len(raw)} bytes cannot hold {count} BYTES elements")
    out = np.empty(count, dtype=object)
    offset = 0
    for i in range(count):
        if offset + 4 > len(raw):
            raise InvalidArgument(f"{where}: BYTES data ends inside element {i}")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise InvalidArgument(f"{where}: BYTES element {i} runs past the end of the data")
        out[i] = bytes(raw[offset : offset + length])
        offset += length
    if offset != len(raw):
        raise InvalidArgument(f"{where}: {len(raw) - offset} bytes left over after {count} BYTES elements")
    return out


def encode_raw(array: np.ndarray) -> bytes:
    """The raw wire form of ``array`` (row-major, little-endian; length-prefixed elements for BYTES)."""
    if array.dtype == object:
        parts = []
        for item in array.reshape(-1):
            b = item if isinstance(item, bytes) else str(item).encode()
            parts.append(struct.pack("<I", len(b)) + b)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def encode_json(array: np.ndarray) -> list[Any]:
    """Flat row-major JSON values; BYTES as UTF-8 strings (lossy bytes are replaced, as Triton does)."""
    flat = array.reshape(-1)
    if array.dtype == object:
        return [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in flat]
    return flat.tolist()


_TRITON_TYPES = {"BYTES": "STRING"}  # every other OIP datatype keeps its name after TYPE_


def triton_type(datatype: str) -> str:
    """The name of an OIP datatype in Triton's model configuration (``FP32`` -> ``TYPE_FP32``, ``BYTES`` ->
    ``TYPE_STRING``)."""
    return f"TYPE_{_TRITON_TYPES.get(datatype, datatype)}"


def parameters_of(value: Any, where: str) -> dict[str, Any]:
    """A JSON ``parameters`` object: string keys, scalar values."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidArgument(f"{where}: expected an object")
    for key, v in value.items():
        if not isinstance(v, (str, int, float, bool)):
            raise InvalidArgument(f"{where}.{key}: parameters take strings, numbers or booleans")
    return dict(value)
