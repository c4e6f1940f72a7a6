"""Triton's classification extension: an output asked for with the parameter ``classification: k`` is answered as its
``k`` highest-valued classes instead of its values.

Each class is one BYTES element ``"<value>:<index>"``, or ``"<value>:<index>:<label>"`` when the model's
``config.yaml`` has ``labels`` for the output and one for that index; highest value first (compared in the output's
own datatype; ties: the lower index first; NaN ranks as minus infinity). Values are written as Triton writes them
(C's ``%f`` for floating point, ``10.000000``; integers as they are). Which values are one row's classes follows
Triton's rules:

- a batched model (``ModelRuntime.batched``, Triton's ``max_batch_size`` > 0): each row of the batch, its values after
  the batch dimension flattened row-major -- ``[batch, n]`` -> ``[batch, k]``, and ``[batch, a, b]`` -> ``[batch, k]``
  over ``a * b`` classes;
- a model without a batch dimension: the whole output is one row -- ``[n]`` or ``[a, b]`` -> ``[k]``.

``k`` must be a whole number from 1 to the row's class count (Triton clamps a larger one; here it is refused, naming
``outputs[i].parameters.classification``, so a client never silently gets fewer classes than it asked for). Only
numeric outputs are classified (integers and floating point, FP16 included; BOOL and BYTES have no order to rank by).

The data plane (requests computed in the server process) and the bulk worker processes both answer through
``answer_outputs`` here, so the two paths cannot drift apart.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from service.errors import InvalidArgument, ModelLoadError, PayloadTooLarge
from service.inference import RequestedOutput
from service.tensors import Tensor, TensorSpec, datatype_of

PARAMETER = "classification"
"""The requested output's parameter that asks for classes (REST JSON number, gRPC ``int64_param``)."""
CLASSIFIABLE = frozenset(
    {"UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64"}
)
"""The datatypes whose values rank classes."""
MAX_CLASSES_PER_REQUEST = 8192
"""The most class strings (rows x classes) one request may ask for. They are built in Python, about 0.6 us each, on
the event loop that answers robots for a small request: this bounds that work to a few milliseconds, whatever the
model's class count or the rows a small body can carry."""


def class_count(value: Any, where: str) -> int | None:
    """The number of classes a requested output's ``classification`` parameter asks for (``None``: not asked), as
    decoded from the wire; refused unless a whole number of at least 1 (``where`` names the parameter)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgument(f"{where}: expected a whole number of classes of at least 1, got {value!r}")
    return value


def classes_per_row(spec: TensorSpec, batched: bool) -> int | None:
    """How many classes one row of an output has: its values after the batch dimension (all of its values for a model
    without one); ``None`` when one of those dimensions is variable."""
    dims = spec.shape[1:] if batched else spec.shape
    return None if any(d < 0 for d in dims) else math.prod(dims)


def check_classification(spec: TensorSpec, count: int, batched: bool, rows: int, where: str) -> None:
    """Refuses, before anything is computed, classes of an output that has no order or fewer classes than asked
    (when its dimensions say so; a variable one is checked against the computed output by ``top_classes``), and more
    than ``MAX_CLASSES_PER_REQUEST`` classes for the request's ``rows``."""
    if spec.datatype not in CLASSIFIABLE:
        raise InvalidArgument(f"{where}: output {spec.name!r} is {spec.datatype}; only numeric outputs have classes")
    if rows * count > MAX_CLASSES_PER_REQUEST:
        raise PayloadTooLarge(
            f"{where}: {count} classes of {rows} rows are {rows * count} strings, more than one request may ask for "
            f"({MAX_CLASSES_PER_REQUEST}); ask fewer classes or send fewer rows per request"
        )
    classes = classes_per_row(spec, batched)
    if classes is not None and count > classes:
        raise _too_many(count, classes, spec.name, where)


def _too_many(count: int, classes: int, output: str, where: str) -> InvalidArgument:
    return InvalidArgument(f"{where}: {count} classes asked, output {output!r} has {classes}")


def top_classes(
    values: np.ndarray, count: int, *, batched: bool, labels: Sequence[str] = (), output: str = "", where: str = ""
) -> np.ndarray:
    """The ``count`` highest-valued classes of each row of an output's ``values`` as ``"<value>:<index>[:<label>]"``
    (UTF-8 bytes), highest first: shape ``[rows, count]`` for a batched model, ``[count]`` otherwise (the module
    docstring has the rules). ``labels[i]`` names class ``i``; an index past the labels gets none, as in Triton.

    Raises ``InvalidArgument`` naming ``where`` (the parameter) and ``output`` when a row has fewer than ``count``
    classes."""
    rows = values.reshape(values.shape[0], math.prod(values.shape[1:])) if batched else values.reshape(1, values.size)
    classes = rows.shape[1]
    if count > classes:
        raise _too_many(count, classes, output, where)
    key = np.where(np.isnan(rows), -np.inf, rows) if rows.dtype.kind == "f" else rows
    # A stable sort of the reversed row, reversed: highest value first and, among equal values, the lower index first
    # (negating the values instead would wrap unsigned integers).
    index = (classes - 1) - np.argsort(key[:, ::-1], axis=1, kind="stable")[:, ::-1][:, :count]
    top = np.take_along_axis(rows, index, axis=1)
    text = "%f:%d%s" if rows.dtype.kind == "f" else "%d:%d%s"  # C's %f, as Triton's std::to_string writes values
    named = [f":{label}" for label in labels]
    texts = [
        (text % (value, i, named[i] if i < len(named) else "")).encode()
        for value, i in zip(top.ravel().tolist(), index.ravel().tolist(), strict=True)
    ]
    answer = np.empty(len(texts), dtype=object)
    answer[:] = texts
    return answer.reshape(index.shape if batched else (count,))


def answer_outputs(
    requested: Sequence[RequestedOutput],
    names: Sequence[str],
    results: Sequence[np.ndarray],
    *,
    batched: bool,
    labels: Mapping[str, Sequence[str]],
) -> list[Tensor]:
    """The answer's tensors for the computed outputs ``names`` (``results``, in that order): each as its values, or
    as its top classes when ``requested`` asked for them (``batched``: whether the model's first dimension is the
    batch; ``labels``: per output name)."""
    asked = {out.name: (index, out.classification) for index, out in enumerate(requested) if out.classification}
    tensors = []
    for name, array in zip(names, results, strict=True):
        if name not in asked:
            tensors.append(Tensor(name, datatype_of(array), array))
            continue
        index, count = asked[name]
        where = f"outputs[{index}].parameters.{PARAMETER}"
        classes = top_classes(array, count, batched=batched, labels=labels.get(name, ()), output=name, where=where)
        tensors.append(Tensor(name, "BYTES", classes))
    return tensors


def check_labels(
    labels: Mapping[str, Sequence[str]], outputs: Sequence[TensorSpec], batched: bool, source: str
) -> None:
    """A model's ``labels`` (``config.yaml``) against its outputs, when it loads: each names an output the model has,
    one that can be classified, with one label per class when its class count is fixed (for ``[batch, n]``: ``n``,
    its last dimension). Raises ``ModelLoadError`` naming ``source`` (the file) and the field."""
    specs = {spec.name: spec for spec in outputs}
    for name, names in labels.items():
        where = f"{source}: labels.{name}"
        spec = specs.get(name)
        if spec is None:
            raise ModelLoadError(f"{where}: the model has no output {name!r}; its outputs are {sorted(specs)}")
        if spec.datatype not in CLASSIFIABLE:
            raise ModelLoadError(f"{where}: output {name!r} is {spec.datatype}; only numeric outputs have classes")
        classes = classes_per_row(spec, batched)
        if classes is not None and len(names) != classes:
            raise ModelLoadError(
                f"{where}: {len(names)} labels, but output {name!r} (shape {list(spec.shape)}) has {classes} classes "
                "per row; give one label per class"
            )
