"""Export: a trained model -> a self-describing ONNX file with its flow unrolled, checked, in a model repository.

One pipeline (``export_model``) for both kinds; what differs between a policy and a classifier is its ``ExportSpec``
(``PolicySpec`` / ``ClassifierInputs``): the graph, the inputs it is checked on, the float64 reference, how outputs
are compared and golden pairs chosen, and the description fields. Steps:

1. ``model.unroll()``: every constant of the flow computed in float64 (``W_1..W_N`` by exact matrix exponentials);
2. the ONNX graph, with normalization and action clipping baked in for policies (``trainer.onnx_graph``);
3. parity: ONNX Runtime must reproduce the reference within ``PARITY_RTOL`` at batch 1 and 256, or export fails (a
   discrete policy: its logits within ``PARITY_RTOL``, and its action indices equal to the reference's argmax);
4. golden input/output pairs from the float64 torch reference, which the service re-checks at load;
5. ``metadata_props`` per ``odetoode.modelfile`` (kind, arch, spaces, normalization, Lipschitz bound, provenance).

``trainer.publish.write_to_repository`` then places ``<name>/<version>/model.onnx`` and a model card atomically, so
a server polling the repository never sees half a version; ``trainer.publish.export_checkpoint`` runs all of it for
a checkpoint or a run directory.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import onnx
import onnxruntime as ort
import torch

from odetoode.modelfile import (
    CLASSIFIER_INPUT,
    CLASSIFIER_OUTPUTS,
    IMAGE_SHAPE,
    POLICY_INPUT,
    POLICY_LOGITS,
    POLICY_OUTPUT,
    Box,
    Discrete,
    Golden,
    Kind,
    ModelDescription,
    Normalization,
    Space,
    TrainingRecord,
)
from trainer.model_card import model_card
from trainer.models import FlowModel
from trainer.onnx_graph import classifier_graph, policy_graph
from trainer.program import Program

PARITY_RTOL = 1e-5
"""Max-norm relative error allowed between ONNX Runtime (float32) and the float64 torch reference."""
CHECK_BATCH = 256
"""Inputs drawn for the parity check (batches 1 and ``CHECK_BATCH``); the golden pairs are chosen among them."""
GOLDEN_MARGIN = 1e-3
"""A discrete policy's golden inputs have a gap of at least this (relative to the largest logit, or 1) between the
best and second-best logit: 100 times the parity tolerance, so no correct float32 runtime can flip their index."""
GOLDEN_PER_ACTION = 4
"""A discrete policy of ``n`` actions records ``GOLDEN_PER_ACTION * n`` golden pairs (or ``golden``, if more), taken
from each action in turn; an action the check inputs rarely reach leaves its share to the others."""


class ExportError(RuntimeError):
    """The exported graph failed a check (parity, shapes) or the model lacks what its kind needs; nothing was
    written."""


class ExportSpec(Protocol):
    """What one kind of model file needs beyond the network: everything ``export_model`` does differently."""

    kind: ClassVar[Kind]
    input_name: ClassVar[str]

    def graph(self, program: Program, name: str) -> onnx.ModelProto:
        """The ONNX graph of the unrolled program."""
        ...

    def check_inputs(self, rng: np.random.Generator, in_features: int) -> np.ndarray:
        """``CHECK_BATCH`` float64 inputs, in the graph's input shape, for parity and golden pairs."""
        ...

    def reference(self, program: Program, inputs: np.ndarray) -> np.ndarray:
        """The float64 torch evaluation of the graph's float output that parity compares: the action of a ``Box``
        policy, the logits of a discrete policy or of a classifier."""
        ...

    def parity_error(self, outputs: Mapping[str, np.ndarray], reference: np.ndarray) -> float:
        """The max-norm relative error of ONNX Runtime's ``outputs`` (by name) against ``reference``; raises
        ``ExportError`` when an output that is not compared numerically is wrong (a discrete policy's index)."""
        ...

    def golden_pairs(self, inputs: np.ndarray, reference: Callable[[np.ndarray], np.ndarray], count: int) -> Golden:
        """Golden pairs for the service's load-time check of the graph's FIRST output, chosen among ``inputs``
        (already rounded to float32) with ``reference`` evaluating them."""
        ...

    def description_fields(self) -> dict[str, Any]:
        """The ``ModelDescription`` fields of this kind (spaces, normalization, environment)."""
        ...


@dataclass(frozen=True)
class PolicySpec:
    """What a policy graph needs beyond the network: its spaces and the observation normalization to bake in.

    ``action_space`` a ``Box``: the graph outputs the clipped action, compared with the reference and recorded in the
    golden pairs. A ``Discrete(n)``: the network's ``n`` outputs are logits; the graph outputs ``action`` (their
    argmax, int64) then ``logits``. Parity compares the logits within ``PARITY_RTOL`` and requires every index to
    equal the reference's argmax wherever the reference's two best logits are farther apart than the logits'
    tolerance allows to flip. The golden pairs record the *indices* (as floats, compared exactly): the service
    re-checks the first output, which is the index; to keep that check from being weak they are
    ``GOLDEN_PER_ACTION`` inputs per action (every action the check inputs reach), those nearest the decision
    boundary whose margin still exceeds ``GOLDEN_MARGIN``, so a file whose logits moved by more than that margin
    flips one of them, while a correct float32 runtime cannot.
    """

    observation_space: Box
    action_space: Space
    normalization: Normalization
    env_id: str | None = None

    kind: ClassVar[Kind] = "policy"
    input_name: ClassVar[str] = POLICY_INPUT

    @property
    def discrete(self) -> bool:
        return isinstance(self.action_space, Discrete)

    def graph(self, program: Program, name: str) -> onnx.ModelProto:
        return policy_graph(program, self.normalization, self.action_space, name=name)

    def check_inputs(self, rng: np.random.Generator, in_features: int) -> np.ndarray:
        # Observations spread over (and a little past) the normalization's clip range, in raw units.
        mean, std = np.asarray(self.normalization.mean), np.asarray(self.normalization.std)
        return mean + std * rng.normal(size=(CHECK_BATCH, in_features)) * 2.0

    def reference(self, program: Program, inputs: np.ndarray) -> np.ndarray:
        return policy_reference(program, self, inputs)

    def parity_error(self, outputs: Mapping[str, np.ndarray], reference: np.ndarray) -> float:
        if not self.discrete:
            return max_relative_error(outputs[POLICY_OUTPUT], reference)
        logits, action = outputs[POLICY_LOGITS], outputs[POLICY_OUTPUT]
        if action.dtype != np.int64 or action.shape != reference.shape[:1]:
            raise ExportError(f"a discrete policy's action must be int64 [batch], got {action.dtype} {action.shape}")
        error = max_relative_error(logits, reference)
        # Where the reference's best two logits are closer than twice the logits' tolerance, float32 may legitimately
        # pick the other one; everywhere else the index must be the reference's.
        decided = logit_margins(reference) > 2 * PARITY_RTOL * _logit_scale(reference)
        wrong = int(np.count_nonzero((action != reference.argmax(axis=1)) & decided))
        if wrong:
            raise ExportError(f"ONNX Runtime's action index differs from the argmax of the reference logits on {wrong} "
                              f"of {len(action)} observations")  # fmt: skip
        return error

    def golden_pairs(self, inputs: np.ndarray, reference: Callable[[np.ndarray], np.ndarray], count: int) -> Golden:
        if not isinstance(self.action_space, Discrete):
            return _golden(inputs[:count], reference(inputs[:count]))
        return _index_golden(inputs, reference(inputs), max(count, GOLDEN_PER_ACTION * self.action_space.n))

    def description_fields(self) -> dict[str, Any]:
        return {
            "env_id": self.env_id,
            "observation_space": self.observation_space,
            "action_space": self.action_space,
            "obs_normalization": self.normalization,
        }


@dataclass(frozen=True, eq=False)
class ClassifierInputs:
    """A classifier graph ``image [batch, 1, 28, 28] -> logits, probabilities`` needs only example images:
    ``samples`` (``[n, 1, 28, 28]`` in [0, 1]) become the first check inputs and so the golden pairs; uniform noise
    fills the rest."""

    samples: np.ndarray | None = None

    kind: ClassVar[Kind] = "classifier"
    input_name: ClassVar[str] = CLASSIFIER_INPUT

    def graph(self, program: Program, name: str) -> onnx.ModelProto:
        return classifier_graph(program, name=name)

    def check_inputs(self, rng: np.random.Generator, in_features: int) -> np.ndarray:
        inputs = rng.uniform(0.0, 1.0, size=(CHECK_BATCH, *IMAGE_SHAPE))
        if self.samples is not None:
            sample = np.asarray(self.samples, dtype=np.float64).reshape(-1, *IMAGE_SHAPE)[:CHECK_BATCH]
            inputs[: len(sample)] = sample
        return inputs

    def reference(self, program: Program, inputs: np.ndarray) -> np.ndarray:
        return classifier_reference(program, inputs)

    def parity_error(self, outputs: Mapping[str, np.ndarray], reference: np.ndarray) -> float:
        return max_relative_error(outputs[CLASSIFIER_OUTPUTS[0]], reference)

    def golden_pairs(self, inputs: np.ndarray, reference: Callable[[np.ndarray], np.ndarray], count: int) -> Golden:
        return _golden(inputs[:count], reference(inputs[:count]))

    def description_fields(self) -> dict[str, Any]:
        return {}


@dataclass
class ExportedModel:
    """An exported model in memory: the ONNX proto, its description, and the parity it reached."""

    proto: onnx.ModelProto
    description: ModelDescription
    parity: dict[str, float]
    parameters: int
    config: dict[str, Any] = field(default_factory=dict)
    card_sections: list[str] = field(default_factory=list)
    """Extra markdown appended to the model card (an evaluation, a figure)."""

    def save(self, path: str | Path) -> None:
        onnx.save_model(self.proto, str(path))

    def card(self, name: str, version: int) -> str:
        return model_card(self, name, version)

    def with_training(self, training: TrainingRecord) -> ExportedModel:
        """The same model with its ``odetoode.training`` record replaced (e.g. to add an evaluation)."""
        description = dataclasses.replace(self.description, training=training)
        proto = onnx.ModelProto()
        proto.CopyFrom(self.proto)
        del proto.metadata_props[:]
        onnx.helper.set_model_props(proto, description.to_metadata_props())
        return dataclasses.replace(self, proto=proto, description=description)


def max_relative_error(actual: np.ndarray, reference: np.ndarray) -> float:
    """``max |actual - reference| / max |reference|`` (max-norm relative error; robust to entries near zero)."""
    scale = max(float(np.max(np.abs(reference))), 1e-12)
    return float(np.max(np.abs(actual.astype(np.float64) - reference)) / scale)


def logit_margins(logits: np.ndarray) -> np.ndarray:
    """``[batch]``: how far each row's largest logit is above its second largest (``inf`` with a single action)."""
    if logits.shape[1] < 2:
        return np.full(logits.shape[0], np.inf)
    top2 = np.sort(logits, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def _logit_scale(logits: np.ndarray) -> float:
    return max(1.0, float(np.max(np.abs(logits))))


def policy_reference(program: Program, spec: PolicySpec, observations: np.ndarray) -> np.ndarray:
    """The float64 torch evaluation of the exported policy: normalize, clip, program, then clip to the action
    bounds (a ``Box`` policy, ``[batch, m]``) or nothing more (a discrete policy: its logits, ``[batch, n]``)."""
    obs = torch.as_tensor(observations, dtype=torch.float64)
    mean = torch.tensor(spec.normalization.mean, dtype=torch.float64)
    std = torch.tensor(spec.normalization.std, dtype=torch.float64)
    z = ((obs - mean) / std).clamp(-spec.normalization.clip, spec.normalization.clip)
    action = program(z)
    if not isinstance(spec.action_space, Box):
        return action.numpy()
    low = torch.tensor(spec.action_space.low, dtype=torch.float64)
    high = torch.tensor(spec.action_space.high, dtype=torch.float64)
    return torch.maximum(torch.minimum(action, high), low).numpy()


def classifier_reference(program: Program, images: np.ndarray) -> np.ndarray:
    """Float64 logits of ``images: [batch, 1, 28, 28]``."""
    x = torch.as_tensor(images, dtype=torch.float64).reshape(images.shape[0], -1)
    return program(x).numpy()


def cpu_session(proto: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _parity(
    session: ort.InferenceSession, spec: ExportSpec, reference: Callable[[np.ndarray], np.ndarray], inputs: np.ndarray
) -> dict[str, float]:
    out: dict[str, float] = {}
    names = [o.name for o in session.get_outputs()]
    for batch in (1, CHECK_BATCH):
        x = inputs[:batch].astype(np.float32)
        outputs = dict(zip(names, session.run(None, {spec.input_name: x}), strict=True))
        out[f"batch_{batch}"] = spec.parity_error(outputs, reference(x.astype(np.float64)))
    worst = max(out.values())
    if not worst <= PARITY_RTOL:
        raise ExportError(f"ONNX Runtime differs from the torch reference by {worst:.3g} (> {PARITY_RTOL}): {out}")
    return out


def _golden(inputs: np.ndarray, outputs: np.ndarray) -> Golden:
    # Tolerances scale with the outputs so a policy with actions ~1 and a classifier with logits ~20 are judged alike.
    scale = max(1.0, float(np.max(np.abs(outputs))))
    return Golden(
        inputs=tuple(tuple(float(v) for v in row) for row in inputs.reshape(inputs.shape[0], -1)),
        outputs=tuple(tuple(float(v) for v in row) for row in outputs.reshape(outputs.shape[0], -1)),
        rtol=1e-4,
        atol=1e-5 * scale,
    )


def _index_golden(inputs: np.ndarray, logits: np.ndarray, count: int) -> Golden:
    """Golden pairs of a discrete policy: ``inputs`` rows with the index of their largest logit as the output, the
    ones nearest the decision boundary with a margin of at least ``GOLDEN_MARGIN``, taken in turn from each action
    (so every action the inputs reach is checked), compared exactly."""
    actions = logits.argmax(axis=1)
    margins = logit_margins(logits) / _logit_scale(logits)
    queues: list[list[int]] = []
    for action in range(logits.shape[1]):
        rows = np.flatnonzero((actions == action) & (margins >= GOLDEN_MARGIN))
        queues.append([int(i) for i in rows[np.argsort(margins[rows], kind="stable")]])
    chosen: list[int] = []
    while len(chosen) < count and any(queues):
        for queue in queues:
            if queue and len(chosen) < count:
                chosen.append(queue.pop(0))
    if not chosen:
        raise ExportError(f"no check input has a clear best action (every logit margin is below {GOLDEN_MARGIN})")
    return Golden(
        inputs=tuple(tuple(float(v) for v in inputs[i].ravel()) for i in chosen),
        outputs=tuple((float(actions[i]),) for i in chosen),
        rtol=0.0,
        atol=0.0,
    )


def _record(training: TrainingRecord | Mapping[str, Any] | None) -> TrainingRecord:
    if isinstance(training, TrainingRecord):
        return training
    return TrainingRecord.from_mapping(training or {})


def export_model(
    model: FlowModel,
    spec: ExportSpec,
    *,
    training: TrainingRecord | Mapping[str, Any] | None = None,
    golden: int = 4,
    seed: int = 0,
) -> ExportedModel:
    """Exports ``model`` as the kind ``spec`` describes; raises ``ExportError`` if ONNX Runtime disagrees with
    torch. ``training`` (a mapping is read as ``TrainingRecord.from_mapping`` does) becomes ``odetoode.training``;
    ``seed`` draws the check inputs, among which ``spec`` chooses the golden pairs (the first ``golden``; a discrete
    policy more, see ``PolicySpec``)."""
    program = model.unroll()
    proto = spec.graph(program, f"{model.arch}-{spec.kind}")
    inputs = spec.check_inputs(np.random.default_rng(seed), model.in_features)

    def reference(x: np.ndarray) -> np.ndarray:
        return spec.reference(program, x)

    session = cpu_session(proto)
    parity = _parity(session, spec, reference, inputs)
    rounded = inputs.astype(np.float32).astype(np.float64)  # what the service will feed, exactly
    description = ModelDescription(
        kind=spec.kind,
        arch=model.arch,
        steps=model.steps,
        hidden=model.hidden,
        golden=spec.golden_pairs(rounded, reference, golden),
        lipschitz_bound=program.lipschitz_bound(),
        training=_record(training),
        **spec.description_fields(),
    )
    names = [o.name for o in session.get_outputs()]
    if names != list(description.output_names):
        raise ExportError(f"the graph's outputs {names} are not the {list(description.output_names)} its description "
                          "promises")  # fmt: skip
    onnx.helper.set_model_props(proto, description.to_metadata_props())
    return ExportedModel(proto, description, parity, model.num_parameters(), dict(model.config))


def export_policy(
    model: FlowModel,
    spec: PolicySpec,
    *,
    training: TrainingRecord | Mapping[str, Any] | None = None,
    golden: int = 4,
    seed: int = 0,
) -> ExportedModel:
    """Exports a policy ``observation -> action`` (``export_model`` with a ``PolicySpec``); a discrete one also
    outputs ``logits``."""
    return export_model(model, spec, training=training, golden=golden, seed=seed)


def export_classifier(
    model: FlowModel,
    *,
    training: TrainingRecord | Mapping[str, Any] | None = None,
    sample_images: np.ndarray | None = None,
    golden: int = 4,
    seed: int = 0,
) -> ExportedModel:
    """Exports a classifier ``image -> logits, probabilities`` (``export_model`` with ``ClassifierInputs``):
    ``sample_images`` (``[n, 1, 28, 28]`` in [0, 1]) become the golden inputs when given, uniform noise otherwise."""
    return export_model(model, ClassifierInputs(sample_images), training=training, golden=golden, seed=seed)
