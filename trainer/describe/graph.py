"""Rebuilding the graph: the original's observation input and action output are chosen and checked against the spaces
(``signature``), then ``rebuild`` wraps the original, its names prefixed, between a feed (``observation`` ->
normalized, cast to the original input) and a head (the chosen output -> ``action``, and ``logits`` for a Discrete
space), pruned to what the declared outputs need."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from odetoode.modelfile import POLICY_INPUT, POLICY_LOGITS, POLICY_OUTPUT, Box, Discrete, Normalization, Space
from trainer.describe.errors import DescribeError, first_line
from trainer.describe.spaces import PolicySpaces

SCOPE = "policy/"
"""Prefix of every name of the original graph in the described one (our own names start with ``describe/``)."""
MIN_OPSET = 11
"""The oldest default-domain opset the added nodes (Clip with bound inputs, OneHot) exist in."""
_FLOATS = (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16)
_INTEGERS = (TensorProto.INT64, TensorProto.INT32, TensorProto.INT16, TensorProto.INT8, TensorProto.UINT64,
             TensorProto.UINT32, TensorProto.UINT16, TensorProto.UINT8)  # fmt: skip

DiscreteOutput = Literal["logits", "index"]


def graph_io(source: onnx.ModelProto) -> tuple[list[onnx.ValueInfoProto], list[onnx.ValueInfoProto]]:
    """The graph's real inputs (initializers that old exporters list as inputs left out) and its outputs."""
    constants = {i.name for i in source.graph.initializer} | {s.values.name for s in source.graph.sparse_initializer}
    return [i for i in source.graph.input if i.name not in constants], list(source.graph.output)


def choose(kind: str, candidates: Sequence[onnx.ValueInfoProto], chosen: str | None) -> onnx.ValueInfoProto:
    """The graph ``kind`` (input/output) named ``chosen``, or the only one; ``DescribeError`` listing them else."""
    names = [c.name for c in candidates]
    if chosen is not None:
        if chosen not in names:
            raise DescribeError(f"the graph has no {kind} {chosen!r}; its {kind}s are {names}")
        return candidates[names.index(chosen)]
    if len(candidates) != 1:
        role = "observation" if kind == "input" else "action"
        raise DescribeError(f"the graph has {len(names)} {kind}s {names}: name the {role} with --{kind}")
    return candidates[0]


def static_dim(value: onnx.ValueInfoProto, axis: int) -> int | None:
    """Dimension ``axis`` of a tensor's declared shape when it is a fixed number, else ``None``."""
    t = value.type.tensor_type
    if not t.HasField("shape") or len(t.shape.dim) <= axis:
        return None
    dim = t.shape.dim[axis]
    return dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else None


def signature(
    source: onnx.ModelProto, spaces: PolicySpaces, observation_input: str | None, action_output: str | None
) -> tuple[onnx.ValueInfoProto, onnx.ValueInfoProto, DiscreteOutput | None]:
    """The observation input and the action output, checked against the spaces, and what a Discrete output is."""
    inputs, outputs = graph_io(source)
    obs_in, act_out = choose("input", inputs, observation_input), choose("output", outputs, action_output)
    if len(inputs) > 1:
        others = [i.name for i in inputs if i.name != obs_in.name]
        raise DescribeError(f"the graph also reads {others}; a served policy reads only its observation "
                            f"({obs_in.name!r}): export a module whose only input is the observation")  # fmt: skip
    obs_type, act_type = obs_in.type.tensor_type.elem_type, act_out.type.tensor_type.elem_type
    obs, act = spaces.observation, spaces.action
    rank = len(obs_in.type.tensor_type.shape.dim) if obs_in.type.tensor_type.HasField("shape") else 2
    if obs_type not in _FLOATS or rank != 2 or static_dim(obs_in, 1) not in (None, obs.size):
        raise DescribeError(f"input {obs_in.name!r} is {TensorProto.DataType.Name(obs_type)} {_shape(obs_in)}; "
                            f"the observation space needs float [batch, {obs.size}] (flatten inside the exported "
                            "module)")  # fmt: skip
    discrete_output: DiscreteOutput | None = None
    if isinstance(act, Discrete):
        discrete_output = "index" if act_type in _INTEGERS else "logits" if act_type in _FLOATS else None
        logits_rank = len(act_out.type.tensor_type.shape.dim) if act_out.type.tensor_type.HasField("shape") else 2
        fits = discrete_output == "index" or (discrete_output == "logits" and logits_rank == 2)
        wanted = f"float logits [batch, {act.n}] or an integer index [batch]"
    else:
        fits, wanted = act_type in _FLOATS and static_dim(act_out, 1) in (None, act.size), f"float [batch, {act.size}]"
    if not fits:
        raise DescribeError(f"output {act_out.name!r} is {TensorProto.DataType.Name(act_type)} {_shape(act_out)}; "
                            f"the action space {_space_text(act)} needs {wanted}")  # fmt: skip
    opset = _default_opset(source)
    if opset is not None and opset < MIN_OPSET:
        raise DescribeError(f"opset {opset} is older than {MIN_OPSET}: re-export with a newer opset, or convert it "
                            f"(onnx.version_converter.convert_version(model, 17))")  # fmt: skip
    return obs_in, act_out, discrete_output


def rebuild(source: onnx.ModelProto, spaces: PolicySpaces, obs_in: onnx.ValueInfoProto, act_out: onnx.ValueInfoProto,
            discrete_output: DiscreteOutput | None, baked: Normalization | None, clip_action: bool
            ) -> tuple[onnx.ModelProto, bool]:  # fmt: skip
    """The described graph (valid ONNX, no metadata yet) of ``source`` read from ``obs_in`` and answering from
    ``act_out`` as ``signature`` chose them, with ``baked`` normalization; and whether Box actions are clipped in it."""
    feed = _feed(baked, obs_in)
    head, outputs, clipped = _head(spaces.action, act_out, discrete_output, clip_action)
    return _assemble(source, obs_in, feed, head, outputs, spaces.observation.size), clipped


def _feed(baked: Normalization | None, obs_in: onnx.ValueInfoProto) -> _Builder:
    """``observation`` -> normalized and clipped (if baked) -> cast to the original input's type -> that input."""
    b = _Builder()
    x = POLICY_INPUT
    if baked is not None:
        x = b.op("Sub", [x, b.const("describe/normalization/mean", baked.mean)], "describe/normalization/centered")
        x = b.op("Div", [x, b.const("describe/normalization/std", baked.std)], "describe/normalization/scaled")
        if math.isfinite(baked.clip):
            bounds = [b.const(f"describe/normalization/clip_{side}", c) for side, c in
                      (("low", -baked.clip), ("high", baked.clip))]  # fmt: skip
            x = b.op("Clip", [x, *bounds], "describe/normalization/clipped")
    obs_type = obs_in.type.tensor_type.elem_type
    if obs_type != TensorProto.FLOAT:
        x = b.op("Cast", [x], "describe/observation/cast", to=obs_type)
    b.op("Identity", [x], SCOPE + obs_in.name)
    return b


def _head(act: Space, act_out: onnx.ValueInfoProto, discrete_output: DiscreteOutput | None, clip_action: bool
          ) -> tuple[_Builder, list[onnx.ValueInfoProto], bool]:  # fmt: skip
    """The original output -> ``action`` (and ``logits``): the declared outputs, and whether actions are clipped."""
    head = _Builder()
    y = SCOPE + act_out.name
    cast = act_out.type.tensor_type.elem_type != TensorProto.FLOAT
    if isinstance(act, Box):
        y = head.op("Cast", [y], "describe/action/cast", to=TensorProto.FLOAT) if cast else y
        low, high = np.asarray(act.low, np.float32), np.asarray(act.high, np.float32)
        clipped = clip_action and bool(np.isfinite(high).any() or np.isfinite(low).any())
        if clipped and np.isfinite(high).any():
            y = head.op("Min", [y, head.const("describe/action/high", high)], "describe/action/upper")
        if clipped and np.isfinite(low).any():
            y = head.op("Max", [y, head.const("describe/action/low", low)], "describe/action/lower")
        head.op("Identity", [y], POLICY_OUTPUT)
        return head, [helper.make_tensor_value_info(POLICY_OUTPUT, TensorProto.FLOAT, ["batch", act.size])], clipped
    if discrete_output == "logits":
        y = head.op("Cast", [y], "describe/logits/cast", to=TensorProto.FLOAT) if cast else y
        head.op("Identity", [y], POLICY_LOGITS)
        head.op("ArgMax", [POLICY_LOGITS], POLICY_OUTPUT, axis=1, keepdims=0)
    else:  # the graph's index, [batch] or [batch, 1], kept; its one-hot as the logits
        y = head.op("Reshape", [y, head.const("describe/action/flat", np.asarray([-1], np.int64))], "describe/flat")
        head.op("Cast", [y], POLICY_OUTPUT, to=TensorProto.INT64)
        depth, values = np.asarray([act.n], np.int64), np.asarray([0.0, 1.0], np.float32)
        head.op("OneHot", [POLICY_OUTPUT, head.const("describe/logits/depth", depth),
                           head.const("describe/logits/values", values)], POLICY_LOGITS, axis=-1)  # fmt: skip
    outputs = [helper.make_tensor_value_info(POLICY_OUTPUT, TensorProto.INT64, ["batch"]),
               helper.make_tensor_value_info(POLICY_LOGITS, TensorProto.FLOAT, ["batch", act.n])]  # fmt: skip
    return head, outputs, False


def _assemble(source: onnx.ModelProto, obs_in: onnx.ValueInfoProto, feed: _Builder, head: _Builder,
              outputs: list[onnx.ValueInfoProto], obs_size: int) -> onnx.ModelProto:  # fmt: skip
    """feed -> the original graph (names prefixed, opsets, functions and IR version kept) -> head, pruned to what the
    declared outputs need."""
    original = onnx.compose.add_prefix_graph(source.graph, SCOPE)
    graph = helper.make_graph(
        [*feed.nodes, *original.node, *head.nodes],
        source.graph.name or "external-policy",
        [helper.make_tensor_value_info(POLICY_INPUT, TensorProto.FLOAT, ["batch", obs_size])],
        outputs,
        [*feed.constants, *head.constants, *original.initializer],
        doc_string="a policy trained elsewhere, described by python -m trainer describe-policy",
        # shapes recorded at a fixed batch size would contradict the batches the server feeds
        value_info=[] if static_dim(obs_in, 0) is not None else list(original.value_info),
        sparse_initializer=list(original.sparse_initializer),
    )
    _prune(graph)
    proto = helper.make_model(graph, opset_imports=list(source.opset_import), functions=list(source.functions),
                              producer_name="odetoode describe-policy")  # fmt: skip
    if _default_opset(source) is None:
        proto.opset_import.append(helper.make_opsetid("", 17))
    proto.ir_version = max(source.ir_version, 4)  # IR 4+: initializers need not be listed as inputs
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        raise DescribeError(f"the described graph is not valid ONNX: {first_line(exc)}") from None
    return proto


def _default_opset(model: onnx.ModelProto) -> int | None:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


class _Builder:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.constants: list[onnx.TensorProto] = []

    def const(self, name: str, value: Any) -> str:
        """An initializer: floats as float32, integers as given."""
        array = np.asarray(value)
        self.constants.append(numpy_helper.from_array(array.astype(np.float32) if array.dtype.kind == "f" else array,
                                                      name))  # fmt: skip
        return name

    def op(self, op_type: str, inputs: list[str], name: str, **attrs: Any) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [name], name=name, **attrs))
        return name


def _space_text(space: Space) -> str:
    if isinstance(space, Discrete):
        return f"Discrete({space.n})"
    return f"Box({list(space.shape)}, low {min(space.low):g}, high {max(space.high):g})"


def _shape(value: onnx.ValueInfoProto) -> list[Any]:
    t = value.type.tensor_type
    return [d.dim_value if d.HasField("dim_value") else d.dim_param or "?" for d in t.shape.dim]


def _prune(graph: onnx.GraphProto) -> None:
    """Drops the nodes and initializers no graph output depends on (the outputs that were not chosen)."""
    needed = {o.name for o in graph.output}
    kept = []
    for node in reversed(graph.node):  # nodes are in topological order
        if any(name in needed for name in node.output):
            kept.append(node)
            needed.update(_reads(node))
    del graph.node[:]
    graph.node.extend(reversed(kept))
    initializers = [i for i in graph.initializer if i.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    value_info = [v for v in graph.value_info if v.name in needed]
    del graph.value_info[:]
    graph.value_info.extend(value_info)


def _reads(node: onnx.NodeProto) -> set[str]:
    """Every name a node reads, including what the subgraphs of If/Loop/Scan read from the outer scope."""
    names = set(node.input)
    for attribute in node.attribute:
        for sub in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
            for inner in sub.node:
                names |= _reads(inner)
    return names
