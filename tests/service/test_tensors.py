"""The tensor checks and decoders: ``float32_all_finite`` against its oracle (``np.isfinite(...).all()``) on both
sides of its size threshold; headers refused before data; the decoders' own errors; the top-level scan of a
``ModelInferRequest`` against protobuf's parser."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import given
from hypothesis import strategies as st

from odetoode.proto.inference import grpc_service_pb2 as pb
from service.binding import SMALL_OBSERVATION, float32_all_finite
from service.errors import InvalidArgument, PayloadTooLarge
from service.oip_codec import MAX_TOP_LEVEL_FIELDS, infer_request_from_proto, scan_infer_request
from service.tensors import (
    Signature,
    TensorSpec,
    decode_json,
    decode_raw,
    decode_typed,
)

SPECIALS = (np.nan, np.inf, -np.inf, 0.0, -0.0, np.finfo(np.float32).max, -np.finfo(np.float32).max,
            np.finfo(np.float32).smallest_subnormal)  # fmt: skip


@pytest.mark.parametrize("size", [1, 2, 17, SMALL_OBSERVATION, SMALL_OBSERVATION + 1, 4096])
def test_float32_all_finite_agrees_with_numpy(size: int) -> None:
    rng = np.random.default_rng(size)
    for trial in range(300):
        with np.errstate(over="ignore"):  # magnitudes up to 1e38: a cast may overflow to infinity, one more case
            values = (rng.normal(size=size) * 10.0 ** rng.integers(-40, 39)).astype(np.float32)
        # sprinkle special values: none, one, or several (a NaN among infinities, +inf with -inf, extremes everywhere)
        for _ in range(trial % 4):
            values[rng.integers(size)] = rng.choice(SPECIALS)
        if trial % 50 == 0:
            values[:] = np.float32(SPECIALS[5 + trial % 2])  # the largest finite magnitude in every slot
        assert float32_all_finite(values) == bool(np.isfinite(values).all()), (size, trial)


def test_float32_all_finite_takes_any_shape() -> None:
    rows = np.ones((3, 5), np.float32)
    assert float32_all_finite(rows)
    rows[2, 4] = np.inf
    assert not float32_all_finite(rows)


# -- headers are checked against the model before data is decoded -------------------------------------------------

POLICY = Signature((TensorSpec("observation", "FP32", (-1, 17)),), max_rows=64, max_elements=1 << 20)


def test_a_tensor_header_is_refused_before_its_data_is_looked_at() -> None:
    """``declare`` sees only name, datatype and shape: a BYTES tensor of 15M elements for an FP32 input, or a batch
    over the row bound, is refused without any data existing at all."""
    with pytest.raises(InvalidArgument, match=r"inputs\[0\].datatype: input 'observation' is FP32, got BYTES"):
        POLICY.declare("observation", "BYTES", [15_000_000], "inputs[0]")
    with pytest.raises(PayloadTooLarge, match=r"a batch of 65 rows is more than this model takes in one request"):
        POLICY.declare("observation", "FP32", [65, 17], "inputs[0]")
    with pytest.raises(InvalidArgument, match=r"inputs\[1\].name: unknown input 'obs'"):
        POLICY.declare("obs", "FP32", [1, 17], "inputs[1]")
    with pytest.raises(InvalidArgument, match=r"expects \[-1, 17\]"):
        POLICY.declare("observation", "FP32", [1, 16], "inputs[0]")
    declared = POLICY.declare("observation", "FP32", [64, 17], "inputs[0]")
    assert declared.elements == 64 * 17 and POLICY.raw_size(declared) == 64 * 17 * 4


def test_the_decoders_own_errors() -> None:
    """Errors only a model with such an input can reach (the served test models are all FP32)."""
    signature = Signature(
        (TensorSpec("i8", "INT8", (-1, 2)), TensorSpec("s", "BYTES", (-1,)), TensorSpec("h", "FP16", (-1, 2))),
        max_rows=8,
        max_elements=1024,
    )
    with pytest.raises(InvalidArgument, match=r"inputs\[0\].contents: values do not fit INT8"):
        decode_typed(signature.declare("i8", "INT8", [1, 2], "inputs[0]"), [1000, 1], "inputs[0]")
    with pytest.raises(InvalidArgument, match=r"inputs\[0\].data: values do not fit INT8"):
        decode_json(signature.declare("i8", "INT8", [1, 2], "inputs[0]"), [[1, -1000]], "inputs[0]")
    strings = signature.declare("s", "BYTES", [2], "inputs[1]")
    with pytest.raises(InvalidArgument, match=r"inputs\[1\]: BYTES element 0 runs past the end"):
        decode_raw(strings, b"\xff\xff\xff\x7f\x00\x00\x00\x00", "inputs[1]")
    with pytest.raises(InvalidArgument, match=r"inputs\[1\]: 4 bytes cannot hold 2 BYTES elements"):
        decode_raw(strings, b"\x00" * 4, "inputs[1]")
    assert list(decode_raw(strings, b"\x01\x00\x00\x00a\x00\x00\x00\x00", "inputs[1]")) == [b"a", b""]
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="h", datatype="FP16", shape=[1, 2]).contents.fp32_contents.extend([0.0, 1.0])
    with pytest.raises(InvalidArgument, match=r"inputs\[0\].contents: FP16 tensors travel in raw_input_contents"):
        infer_request_from_proto(request, signature)


# -- the top-level scan of a ModelInferRequest, against protobuf's own parser ----------------------------------------

text = st.text(max_size=40)


@st.composite
def infer_requests(draw: st.DrawFn) -> bytes:
    """Serialized ModelInferRequests, sometimes several concatenated (protobuf merges them: the last scalar wins),
    with inputs, outputs, parameters and raw contents around the scanned fields."""
    parts = []
    for _ in range(draw(st.integers(1, 3))):
        m = pb.ModelInferRequest(model_name=draw(text), model_version=draw(text), id=draw(text))
        for _ in range(draw(st.integers(0, 3))):
            t = m.inputs.add(name=draw(text), datatype="FP32", shape=draw(st.lists(st.integers(0, 9), max_size=3)))
            t.contents.fp32_contents.extend(draw(st.lists(st.floats(width=32), max_size=5)))
            m.raw_input_contents.append(draw(st.binary(max_size=64)))
        for key in draw(st.lists(text, max_size=3)):
            m.parameters[key].int64_param = draw(st.integers(-(2**63), 2**63 - 1))
        m.outputs.add(name=draw(text))
        parts.append(m.SerializeToString())
    return b"".join(parts)


@given(infer_requests())
def test_scan_agrees_with_protobuf(data: bytes) -> None:
    parsed = pb.ModelInferRequest.FromString(data)
    assert scan_infer_request(data) == (parsed.model_name, parsed.model_version, parsed.id)


@given(infer_requests(), st.data())
def test_scan_refuses_what_protobuf_refuses_at_the_top_level(data: bytes, draw: st.DataObject) -> None:
    """A truncated message either still scans to what protobuf reads from it, or is refused by both."""
    cut = data[: draw.draw(st.integers(0, max(0, len(data) - 1)))]
    try:
        parsed = pb.ModelInferRequest.FromString(cut)
    except DecodeError:
        with pytest.raises(InvalidArgument):
            scan_infer_request(cut)
        return
    assert scan_infer_request(cut) == (parsed.model_name, parsed.model_version, parsed.id)


def test_scan_reads_a_bounded_number_of_fields() -> None:
    many = pb.ModelInferRequest(model_name="m")
    for _ in range(MAX_TOP_LEVEL_FIELDS + 1):
        many.outputs.add(name="o")
    with pytest.raises(InvalidArgument, match="more than 1024 top-level fields"):
        scan_infer_request(many.SerializeToString())
