"""Builds the served ONNX graph of an unrolled ``Program``: only MatMul / Add / Mul / Abs-like ops and constants
(plus one ``ArgMax`` in a discrete policy).

The graph is written with ``onnx.helper`` rather than traced through a torch exporter: the program is already a flat
chain of constant layers, so building it directly gives exact control over names, shared initializers (BaseODE reuses
one set of weights at every step), opset and IR version, with nothing to trace (no exporter handles
``matrix_exp``; unrolling removes it).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from odetoode.modelfile import (
    CLASSIFIER_INPUT,
    CLASSIFIER_OUTPUTS,
    IMAGE_SHAPE,
    POLICY_INPUT,
    POLICY_LOGITS,
    POLICY_OUTPUT,
    Discrete,
    Normalization,
    Space,
)
from trainer.program import Dense, Layer, Program, Residual

OPSET = 17
# IR 8 is the oldest IR that carries opset 17; keeping it low lets older runtimes (and TensorRT parsers) load our files.
IR_VERSION = 8
_ONNX_ACTIVATION = {"abs": "Abs", "relu": "Relu", "tanh": "Tanh"}
_POSITIVELY_HOMOGENEOUS = (None, "abs", "relu")  # f(h z) = h f(z) for h > 0


@dataclass
class _GraphBuilder:
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    _by_content: dict[tuple[str, tuple[int, ...], str], str] = field(default_factory=dict)
    _counter: int = 0

    def constant(self, name: str, value: np.ndarray) -> str:
        """Adds an initializer, reusing an identical one (same bytes, shape, dtype) if it exists."""
        value = np.ascontiguousarray(value)
        key = (hashlib.sha256(value.tobytes()).hexdigest(), value.shape, str(value.dtype))
        if key in self._by_content:
            return self._by_content[key]
        self.initializers.append(numpy_helper.from_array(value, name))
        self._by_content[key] = name
        return name

    def op(self, op_type: str, inputs: list[str], name: str, **attrs: Any) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [name], name=name, **attrs))
        return name

    def layers(self, layers: tuple[Layer, ...], x: str, scope: str) -> str:
        for index, layer in enumerate(layers):
            at = f"{scope}/{index}"
            if isinstance(layer, Dense):
                # Stored as W^T ([in, out]) so the node is x @ W^T with no Transpose at run time.
                w = self.constant(f"{at}/weight_t", np.asarray(layer.weight).T)
                y = self.op("MatMul", [x, w], f"{at}/matmul")
                if layer.bias is not None:
                    b = self.constant(f"{at}/bias", np.asarray(layer.bias))
                    y = self.op("Add", [y, b], f"{at}/add")
                if layer.activation is not None:
                    y = self.op(_ONNX_ACTIVATION[layer.activation], [y], f"{at}/{layer.activation}")
                x = y
            elif _foldable(layer):
                # x + h f(Wx + b) == x + f(hWx + hb) for positively homogeneous f and h > 0: one node fewer per
                # Euler step (a quarter of a policy's nodes; ORT's per-node cost dominates at batch 1).
                dense = layer.body[0]
                assert isinstance(dense, Dense)
                scaled_layer = Dense(
                    np.asarray(dense.weight) * np.float32(layer.scale),
                    None if dense.bias is None else np.asarray(dense.bias) * np.float32(layer.scale),
                    dense.activation,
                )
                body = self.layers((scaled_layer,), x, f"{at}/residual")
                x = self.op("Add", [x, body], f"{at}/euler")
            else:
                body = self.layers(layer.body, x, f"{at}/residual")
                scale = self.constant(f"{at}/step", np.asarray(layer.scale, dtype=np.float32))
                scaled = self.op("Mul", [body, scale], f"{at}/scaled")
                x = self.op("Add", [x, scaled], f"{at}/euler")
        return x


def _foldable(layer: Residual) -> bool:
    body = layer.body
    return (
        layer.scale > 0
        and len(body) == 1
        and isinstance(body[0], Dense)
        and body[0].activation in _POSITIVELY_HOMOGENEOUS
    )


def _model(
    builder: _GraphBuilder,
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    graph_name: str,
    doc: str,
) -> onnx.ModelProto:
    graph = helper.make_graph(builder.nodes, graph_name, inputs, outputs, builder.initializers, doc_string=doc)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="odetoode")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def policy_graph(program: Program, normalization: Normalization, action_space: Space, *, name: str
                 ) -> onnx.ModelProto:  # fmt: skip
    """The served policy: ``observation [batch, d]`` is normalized and clipped, then the program runs; then

    * ``Box`` action space: ``-> action [batch, m] float32``, clipped to the bounds;
    * ``Discrete(n)``: the program's ``n`` outputs are ``logits [batch, n] float32`` and
      ``action [batch] int64`` is their ``ArgMax`` (the first of equal maxima); outputs in that order, ``action``
      first, as ``odetoode.modelfile`` prescribes.

    Raises ``ValueError`` when the normalization or the action space does not fit the program's sizes.
    """
    program = program.numpy(np.float32)
    obs_dim, out_dim = program.in_features, program.out_features
    if len(normalization.mean) != obs_dim:
        raise ValueError(f"normalization has {len(normalization.mean)} entries, the policy reads {obs_dim}")
    expected = action_space.n if isinstance(action_space, Discrete) else action_space.size
    if expected != out_dim:
        what = "logits" if isinstance(action_space, Discrete) else "entries"
        raise ValueError(f"action space {action_space} needs {expected} {what}, the policy writes {out_dim}")
    g = _GraphBuilder()
    mean = g.constant("normalization/mean", np.asarray(normalization.mean, dtype=np.float32))
    std = g.constant("normalization/std", np.asarray(normalization.std, dtype=np.float32))
    lo = g.constant("normalization/clip_low", np.asarray(-normalization.clip, dtype=np.float32))
    hi = g.constant("normalization/clip_high", np.asarray(normalization.clip, dtype=np.float32))
    x = g.op("Sub", [POLICY_INPUT, mean], "normalization/centered")
    x = g.op("Div", [x, std], "normalization/scaled")
    x = g.op("Clip", [x, lo, hi], "normalization/clipped")
    y = g.layers(program.layers, x, "policy")
    observation = helper.make_tensor_value_info(POLICY_INPUT, TensorProto.FLOAT, ["batch", obs_dim])
    if isinstance(action_space, Discrete):
        g.op("Identity", [y], POLICY_LOGITS)
        g.op("ArgMax", [POLICY_LOGITS], POLICY_OUTPUT, axis=1, keepdims=0, select_last_index=0)
        outputs = [
            helper.make_tensor_value_info(POLICY_OUTPUT, TensorProto.INT64, ["batch"]),
            helper.make_tensor_value_info(POLICY_LOGITS, TensorProto.FLOAT, ["batch", out_dim]),
        ]
        doc = "odetoode discrete policy: normalized observation -> unrolled flow -> logits -> argmax action index"
        return _model(g, [observation], outputs, name, doc)
    low = np.asarray(action_space.low, dtype=np.float32)
    high = np.asarray(action_space.high, dtype=np.float32)
    if np.isfinite(high).any():
        y = g.op("Min", [y, g.constant("action/high", high)], "action/upper")
    if np.isfinite(low).any():
        y = g.op("Max", [y, g.constant("action/low", low)], "action/lower")
    g.op("Identity", [y], POLICY_OUTPUT)
    return _model(
        g,
        [observation],
        [helper.make_tensor_value_info(POLICY_OUTPUT, TensorProto.FLOAT, ["batch", out_dim])],
        name,
        "odetoode policy: normalized observation -> unrolled flow -> clipped action",
    )


def classifier_graph(program: Program, *, name: str) -> onnx.ModelProto:
    """``image [batch, 1, 28, 28] -> logits, probabilities [batch, classes]``."""
    program = program.numpy(np.float32)
    pixels = int(np.prod(IMAGE_SHAPE))
    if program.in_features != pixels:
        raise ValueError(f"a classifier reads {pixels} pixels, the program reads {program.in_features}")
    classes = program.out_features
    g = _GraphBuilder()
    x = g.op("Flatten", [CLASSIFIER_INPUT], "image/flatten", axis=1)
    y = g.layers(program.layers, x, "classifier")
    logits_name, probs_name = CLASSIFIER_OUTPUTS
    g.op("Identity", [y], logits_name)
    g.op("Softmax", [logits_name], probs_name, axis=-1)
    return _model(
        g,
        [helper.make_tensor_value_info(CLASSIFIER_INPUT, TensorProto.FLOAT, ["batch", *IMAGE_SHAPE])],
        [
            helper.make_tensor_value_info(logits_name, TensorProto.FLOAT, ["batch", classes]),
            helper.make_tensor_value_info(probs_name, TensorProto.FLOAT, ["batch", classes]),
        ],
        name,
        "odetoode classifier: flattened image -> unrolled flow -> logits and softmax probabilities",
    )
