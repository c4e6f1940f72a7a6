"""Checking a request's decoded tensors against the model that will answer it, before anything is computed: every
input once, datatypes, ranks, fixed dimensions, a batch within the model's row bound, finite values; the same checks
for a robot's one observation (``bind_observation``) as for any OIP request (``bind_inputs``)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from service.classification import PARAMETER, check_classification
from service.errors import InvalidArgument
from service.inference import RequestedOutput
from service.tensors import Signature, Tensor, TensorSpec, check_against

SMALL_OBSERVATION = 256
"""Up to this many values, ``float32_all_finite`` sums in Python; above, numpy (whose fixed cost is then paid back)."""


def float32_all_finite(values: np.ndarray) -> bool:
    """Whether every value of a float32 array is finite (no NaN, no infinity).

    Small arrays -- a robot's observation, tens of values -- are summed as Python floats: float32 values cannot
    overflow a float64 sum, so the sum is finite exactly when every value is, and it costs well under a microsecond,
    where ``np.isfinite(...).all()`` goes through numpy's ufunc and reduction machinery (~1 us warm, ~10 us once a
    gRPC server has cooled the caches). Only for float32 (or narrower): float64 values can overflow their sum.
    """
    if values.size <= SMALL_OBSERVATION:
        flat = values if values.ndim == 1 else values.ravel()  # an observation is flat already: no view to make
        return math.isfinite(sum(flat.tolist()))
    return bool(np.isfinite(values).all())


def require_finite(values: np.ndarray, what: str) -> None:
    """Refuses NaN and infinity in a floating-point input (``what`` names it in the message)."""
    if values.dtype.kind != "f":
        return
    finite = float32_all_finite(values) if values.dtype.itemsize <= 4 else bool(np.isfinite(values).all())
    if not finite:
        raise InvalidArgument(f"{what} contains NaN or infinity")


def bind_observation(
    observation: np.ndarray, signature: Signature, policy: str, *, allow_non_finite: bool = False
) -> np.ndarray:
    """A robot's observation (flat float32, one row) checked as ``bind_inputs`` checks a policy's single input --
    its size against the model's row, its values finite -- and shaped as that input's one-row feed."""
    expected = signature.inputs[0].shape[1]
    if observation.size != expected:
        raise InvalidArgument(f"observation: {observation.size} values, policy {policy!r} expects {expected}")
    if not allow_non_finite:
        require_finite(observation, "observation:")
    return observation.reshape(1, expected)


def bind_inputs(
    tensors: Sequence[Tensor], signature: Signature, *, allow_non_finite: bool = False
) -> dict[str, np.ndarray]:
    """Checks decoded request tensors against a model's signature and returns ONNX Runtime feeds.

    Checks: every input given exactly once and no unknown ones, datatype, rank, fixed dimensions, a batch of 1 to
    ``max_rows`` shared by all inputs, and (unless the model allows it) finite values.
    """
    feeds: dict[str, np.ndarray] = {}
    batch: int | None = None
    for index, tensor in enumerate(tensors):
        where = f"inputs[{index}]"
        spec = signature.spec(tensor.name, where)
        if tensor.name in feeds:
            raise InvalidArgument(f"{where}.name: input {tensor.name!r} is given more than once")
        if tensor.datatype != spec.datatype:
            raise InvalidArgument(f"{where}.datatype: input {tensor.name!r} is {spec.datatype}, got {tensor.datatype}")
        shape = tensor.shape
        check_against(spec, shape, where, signature.max_rows)
        if spec.shape and spec.shape[0] == -1:
            if batch is not None and shape[0] != batch:
                raise InvalidArgument(f"{where}.shape: batch {shape[0]} differs from the other inputs' {batch}")
            batch = shape[0]
        if not allow_non_finite:
            require_finite(tensor.data, f"{where}.data: input {tensor.name!r}")
        feeds[tensor.name] = tensor.data
    missing = sorted({s.name for s in signature.inputs} - set(feeds))
    if missing:
        raise InvalidArgument(
            f"inputs: missing {missing}; the model's inputs are {sorted(s.name for s in signature.inputs)}"
        )
    return feeds


def rows_of(feeds: dict[str, np.ndarray], batched: bool) -> int:
    """The rows a request's checked feeds carry: their shared first dimension for a batched model, else one (the
    request is one run of its own). The batcher counts the same way on its hot path."""
    return int(next(iter(feeds.values())).shape[0]) if batched and feeds else 1


def check_requested_outputs(
    requested: Sequence[RequestedOutput], specs: Sequence[TensorSpec], *, batched: bool, feeds: dict[str, np.ndarray]
) -> list[str]:
    """The output names to compute: all of them when nothing is ``requested``. Each requested output once, known to
    the model, and -- asked as classes (``service.classification``) -- one that has that many, within the bound on
    classes per request for the rows of ``feeds`` (``batched``: whether the model's first dimension is the batch)."""
    rows = rows_of(feeds, batched)
    known = {spec.name: spec for spec in specs}
    if not requested:
        return list(known)
    seen = set()
    for index, out in enumerate(requested):
        spec = known.get(out.name)
        if spec is None:
            raise InvalidArgument(
                f"outputs[{index}].name: unknown output {out.name!r}; the model's outputs are {list(known)}"
            )
        if out.name in seen:
            raise InvalidArgument(f"outputs[{index}].name: output {out.name!r} is requested more than once")
        seen.add(out.name)
        if out.classification is not None:
            check_classification(spec, out.classification, batched, rows, f"outputs[{index}].parameters.{PARAMETER}")
    return [out.name for out in requested]
