"""KServe V1 predict bodies <-> the model's input tensors, and ``{"predictions": ...}`` answers.

The V1 wire format (``POST /v1/models/{model}:predict``): rows (``instances``) or columns (``inputs``) of plain JSON,
told apart by rank against the model's ``Signature`` and checked there before any data is decoded
(``service.tensors``). Image requests (``service.images``) are answered in the same ``predictions`` form. Like the
OIP v2 codec (``service.rest_codec``, whose JSON budget check and parsing it shares), bytes in, bytes out: the REST
transport and the bulk worker processes run the very same functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from service.errors import InvalidArgument
from service.rest_codec import JSON_OPTIONS, Buffer, check_json_budget, json_object
from service.tensors import MAX_RANK, Signature, Tensor, TensorSpec, decode_json


def parse_predict(body: Buffer, signature: Signature) -> list[Tensor]:
    """A KServe V1 predict body as the model's input tensors (one per input, with the same rows), in either form:

    * ``{"instances": [...]}``, rows: for a model with one input, each row a (nested) list of the input's row shape
      -- or one such row alone, without the outer list -- or an object ``{input: row}``; for a model with several
      inputs, one object per row with a key per input (``[{"observation": [...], "goal": [...]}, ...]``);
    * ``{"inputs": ...}``, columns (TensorFlow Serving's columnar form, which KServe also accepts): the batched tensor
      of a model's one input, or an object ``{input: batched tensor}`` with the same rows in each.

    A row may leave out the input's size-1 dimensions (a ``[28, 28]`` image for a ``[batch, 1, 28, 28]`` input). The
    forms are told apart by rank: a list whose shape is the row's shape is one row, one rank more is a list of rows;
    any other shape is refused with the form expected."""
    check_json_budget(body, signature)
    obj = json_object(body, "request body")
    if ("instances" in obj) == ("inputs" in obj):
        raise InvalidArgument("request body: expected one of instances (a list of rows) or inputs (columns)")
    if "instances" in obj:
        return _instances(obj["instances"], signature)
    return _columns(obj["inputs"], signature)


def _instances(instances: Any, signature: Signature) -> list[Tensor]:
    if not isinstance(instances, list) or not instances:
        raise InvalidArgument(f"instances: expected a non-empty list of {_row_forms(signature)}")
    if isinstance(instances[0], dict):
        return _named_rows(instances, signature)
    if len(signature.inputs) > 1:
        raise InvalidArgument(f"instances: the model takes several inputs; expected {_row_forms(signature)}")
    return [_rows(signature.inputs[0], instances, signature, "instances")]


def _named_rows(instances: list[Any], signature: Signature) -> list[Tensor]:
    """``[{input: row, ...}, ...]``: one object per row, a key per input of the model."""
    names = [spec.name for spec in signature.inputs]
    columns: dict[str, list[Any]] = {name: [] for name in names}
    for index, instance in enumerate(instances):
        if not isinstance(instance, dict) or instance.keys() != columns.keys():
            got = f"keys {sorted(instance)}" if isinstance(instance, dict) else f"a {type(instance).__name__}"
            raise InvalidArgument(f"instances[{index}]: expected an object with keys {names}, got {got}")
        for name in names:
            columns[name].append(instance[name])
    tensors = []
    for spec in signature.inputs:
        where = f"instances[].{spec.name}"
        row, shape = _row_shape(spec), _nested_shape(columns[spec.name][0])
        filled = _fill(shape, row)
        if filled is None:
            raise InvalidArgument(f"{where}: expected a row of shape {_shape_text(row)}, got shape {list(shape)}")
        tensors.append(_decode_rows(spec, len(instances), filled, columns[spec.name], signature, where))
    return tensors


def _columns(inputs: Any, signature: Signature) -> list[Tensor]:
    """``inputs``: the batched tensor of the model's one input, or ``{input: batched tensor}``."""
    names = [spec.name for spec in signature.inputs]
    if isinstance(inputs, list) and inputs and len(names) == 1:
        return [_rows(signature.inputs[0], inputs, signature, "inputs")]
    if not isinstance(inputs, dict) or inputs.keys() != set(names):
        got = f"got keys {sorted(inputs)}" if isinstance(inputs, dict) else f"got a {type(inputs).__name__}"
        single = " or a list of rows" if len(names) == 1 else ""
        raise InvalidArgument(f"inputs: expected an object with keys {names} (a tensor of rows each){single}; {got}")
    tensors = [_rows(spec, inputs[spec.name], signature, f"inputs.{spec.name}") for spec in signature.inputs]
    if len({t.shape[0] for t in tensors}) > 1:
        rows = {t.name: t.shape[0] for t in tensors}
        raise InvalidArgument(f"inputs: every input must have the same number of rows, got {rows}")
    return tensors


def _rows(spec: TensorSpec, value: Any, signature: Signature, where: str) -> Tensor:
    """``value``, a list of rows of ``spec`` -- or one row alone -- as its tensor."""
    row, shape = _row_shape(spec), _nested_shape(value)
    if not isinstance(value, list) or not value:
        raise InvalidArgument(f"{where}: expected a non-empty list of rows of shape {_shape_text(row)}")
    filled = _fill(shape[1:], row)
    if filled is not None:
        return _decode_rows(spec, shape[0], filled, value, signature, where)
    filled = _fill(shape, row)
    if filled is not None:
        return _decode_rows(spec, 1, filled, [value], signature, where)
    raise InvalidArgument(
        f"{where}: expected rows of shape {_shape_text(row)} (a list of them, or one alone), got shape {list(shape)}"
    )


def _decode_rows(
    spec: TensorSpec, rows: int, row: tuple[int, ...], data: list[Any], signature: Signature, where: str
) -> Tensor:
    declared = signature.declare(spec.name, spec.datatype, [rows, *row], where)
    return Tensor(spec.name, spec.datatype, decode_json(declared, data, where))


def _row_shape(spec: TensorSpec) -> tuple[int, ...]:
    """The shape of one row of an input (``-1``: any size), after its batch dimension."""
    return spec.shape[1:]


def _nested_shape(value: Any) -> tuple[int, ...]:
    """The shape of nested JSON lists, along their first elements (regularity is checked when the data is decoded)."""
    shape: list[int] = []
    while isinstance(value, list) and len(shape) <= MAX_RANK:
        shape.append(len(value))
        value = value[0] if value else None
    return tuple(shape)


def _fill(shape: tuple[int, ...], row: tuple[int, ...]) -> tuple[int, ...] | None:
    """The row's dimensions with its variable ones taken from ``shape``, if ``shape`` is that row -- or that row
    without its size-1 dimensions; ``None`` if it is neither."""
    for form in (row, tuple(d for d in row if d != 1)):
        if len(shape) == len(form) and all(f in (-1, d) for f, d in zip(form, shape, strict=True)):
            given = iter(shape)
            return tuple(next(given) if d != 1 else 1 for d in row) if form is not row else shape
    return None


def _shape_text(row: tuple[int, ...]) -> str:
    squeezed = [d for d in row if d != 1]
    alone = f" (or {squeezed})" if len(squeezed) != len(row) else ""
    return f"{list(row)}{alone}"


def _row_forms(signature: Signature) -> str:
    """The row forms a model's ``instances`` may take, for error messages."""
    names = [spec.name for spec in signature.inputs]
    if len(names) == 1:
        return f"rows of shape {_shape_text(_row_shape(signature.inputs[0]))}, or objects with key {names}"
    return f"objects with keys {names}, one per row"


def render_predict(outputs: Sequence[Tensor], rows: int) -> bytes:
    """``{"predictions": ...}``: the output itself for one output, else one object of outputs per row."""
    if len(outputs) == 1:
        return orjson.dumps({"predictions": outputs[0].data}, option=JSON_OPTIONS)
    predictions = [{t.name: t.data[i] for t in outputs} for i in range(rows)]
    return orjson.dumps({"predictions": predictions}, option=JSON_OPTIONS)
