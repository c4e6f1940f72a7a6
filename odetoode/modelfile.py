"""The contract between trainer and service: what an odetoode ONNX file says about itself.

Every exported model carries string ``metadata_props`` (structured values JSON-encoded) under the keys below, so any
ONNX tool can read it without our code, and the service can validate a model before it takes traffic. This module is
pure Python (no torch, no onnx) so both halves import it.

A policy graph maps ``observation [batch, obs_dim] float32 -> action [batch, act_dim] float32`` (a ``Box`` action
space) with normalization and action clipping inside, or, for a ``Discrete(n)`` action space, ``observation ->
action [batch] int64`` (the greedy index, the argmax of the logits) plus ``logits [batch, n] float32``; a classifier
maps ``image [batch, 1, 28, 28] float32 -> logits, probabilities [batch, 10] float32``.

Models this project did not train (``arch`` ``external``: a network from Stable-Baselines3, CleanRL or one's own
PyTorch, described by ``python -m trainer describe-policy``) state what is known about them: ``steps``, ``hidden``,
the normalization and the Lipschitz bound may be absent. Files without any ``odetoode.*`` key are not described at
all; the server still serves them over the Open Inference Protocol.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

FORMAT_VERSION = "1"
PREFIX = "odetoode."

Kind = Literal["policy", "classifier"]
KINDS: tuple[str, ...] = ("policy", "classifier")
Arch = Literal["iso-odetoode", "gated-odetoode", "deepnet", "deepresnet", "baseode", "nanode", "hypernet", "dense"]
"""The architectures this project trains; the trainer's registry (``trainer.models.ARCHITECTURES``) has exactly
these keys."""
ARCHS: tuple[str, ...] = get_args(Arch)
EXTERNAL = "external"
"""The ``arch`` of a model trained elsewhere and described afterwards (``steps``, ``hidden`` and the normalization
are then optional)."""

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
"""Model names a repository may hold: no path separators, no leading dot, at most 64 characters."""
VERSION_NAME = re.compile(r"^[1-9][0-9]{0,8}$")
"""Version directory names: positive integers without leading zeros."""

POLICY_INPUT, POLICY_OUTPUT = "observation", "action"
POLICY_LOGITS = "logits"
"""The second output of a discrete policy: the scores its ``action`` index is the argmax of."""
CLASSIFIER_INPUT, CLASSIFIER_OUTPUTS = "image", ("logits", "probabilities")
IMAGE_SHAPE = (1, 28, 28)


class ModelFormatError(ValueError):
    """A model's metadata is missing, malformed or inconsistent; the message names the key."""


@dataclass(frozen=True)
class Box:
    """A box space: ``shape`` and per-element ``low``/``high`` (``+-inf`` for unbounded, flattened row-major)."""

    shape: tuple[int, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def to_json(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "low": [_num(v) for v in self.low], "high": [_num(v) for v in self.high]}

    @classmethod
    def from_json(cls, value: Any, key: str) -> Box:
        if not isinstance(value, dict) or not {"shape", "low", "high"} <= value.keys():
            raise ModelFormatError(f"{key}: expected an object with shape, low and high")
        shape = tuple(int(v) for v in value["shape"])
        low = tuple(_float(v, key) for v in value["low"])
        high = tuple(_float(v, key) for v in value["high"])
        box = cls(shape, low, high)
        if len(low) != box.size or len(high) != box.size:
            raise ModelFormatError(f"{key}: low/high must have {box.size} values for shape {list(shape)}")
        if any(lo > hi for lo, hi in zip(low, high, strict=True)):
            raise ModelFormatError(f"{key}: low must not exceed high")
        return box


@dataclass(frozen=True)
class Discrete:
    """A discrete space of ``n`` actions, indices ``0 .. n-1`` (Gymnasium's ``Discrete(n)`` with ``start`` 0)."""

    n: int

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n}

    @classmethod
    def from_json(cls, value: Any, key: str) -> Discrete:
        n = value.get("n") if isinstance(value, dict) else None
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ModelFormatError(f"{key}: a discrete space needs a positive integer n, got {n!r}")
        return cls(n)


Space = Box | Discrete


def space_from_json(value: Any, key: str) -> Space:
    """A ``Box`` (``shape``/``low``/``high``) or a ``Discrete`` (``n``) from its JSON object."""
    if isinstance(value, dict) and "n" in value:
        return Discrete.from_json(value, key)
    return Box.from_json(value, key)


@dataclass(frozen=True)
class Normalization:
    """``clip((obs - mean) / std, -clip, clip)``, as baked into a policy graph."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    clip: float

    def to_json(self) -> dict[str, Any]:
        return {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std], "clip": _num(self.clip)}

    @classmethod
    def from_json(cls, value: Any, key: str) -> Normalization:
        if not isinstance(value, dict) or not {"mean", "std", "clip"} <= value.keys():
            raise ModelFormatError(f"{key}: expected an object with mean, std and clip")
        norm = cls(
            tuple(_float(v, key) for v in value["mean"]),
            tuple(_float(v, key) for v in value["std"]),
            _float(value["clip"], key),
        )
        if len(norm.mean) != len(norm.std):
            raise ModelFormatError(f"{key}: mean and std differ in length")
        if any(not (s > 0 and math.isfinite(s)) for s in norm.std):
            raise ModelFormatError(f"{key}: every std must be positive and finite")
        if not norm.clip > 0:
            raise ModelFormatError(f"{key}: clip must be positive")
        return norm


@dataclass(frozen=True)
class Golden:
    """Input/output pairs the service re-checks at load: rows of the first input and of the first output."""

    inputs: tuple[tuple[float, ...], ...]
    outputs: tuple[tuple[float, ...], ...]
    rtol: float = 1e-4
    atol: float = 1e-5

    def to_json(self) -> dict[str, Any]:
        return {
            "inputs": [list(r) for r in self.inputs],
            "outputs": [list(r) for r in self.outputs],
            "rtol": self.rtol,
            "atol": self.atol,
        }

    @classmethod
    def from_json(cls, value: Any, key: str) -> Golden:
        if not isinstance(value, dict) or not {"inputs", "outputs"} <= value.keys():
            raise ModelFormatError(f"{key}: expected an object with inputs and outputs")
        inputs = tuple(tuple(_float(v, key) for v in row) for row in value["inputs"])
        outputs = tuple(tuple(_float(v, key) for v in row) for row in value["outputs"])
        if len(inputs) != len(outputs) or not inputs:
            raise ModelFormatError(f"{key}: needs as many (>= 1) outputs as inputs")
        return cls(inputs, outputs, float(value.get("rtol", 1e-4)), float(value.get("atol", 1e-5)))


@dataclass(frozen=True, eq=False)
class TrainingRecord(Mapping[str, Any]):
    """How a model was made: the provenance stored as ``odetoode.training`` (a JSON object).

    Every field is optional: ``None`` (and empty ``metrics``) are left out of the JSON. The record reads as the
    mapping it serializes to (``dict(record)``, ``record["metrics"]``), which is what the server shows. Reading is
    tolerant: keys written by other exporters, and known keys holding a value of an unexpected type, are kept
    verbatim in ``other`` so a round trip loses nothing.
    """

    command: str | None = None
    """The command line that made the model (``python -m trainer ...``); a resumed run joins its commands with
    `` && ``."""
    seed: int | None = None
    """The seed of parameters, perturbations and data order."""
    env: str | None = None
    """What the model learned from: the environment id of a policy, the training set of a classifier."""
    iterations: int | None = None
    """ES iterations or supervised epochs completed (0 for an untrained model)."""
    env_steps: int | None = None
    """Environment steps consumed by training (policies)."""
    wall_s: float | None = None
    """Training wall time in seconds."""
    metrics: Mapping[str, Any] = field(default_factory=dict)
    """Named results: ``eval_return``, ``test_accuracy_<corruption>``, ``onnx_eval_return_<n>_episodes``..."""
    note: str | None = None
    """Free text, e.g. why a model is untrained."""
    other: Mapping[str, Any] = field(default_factory=dict)
    """Keys this version does not know, kept as read."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON object: known fields in declaration order (``None`` and empty ``metrics`` left out), then
        ``other``."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value: Any = getattr(self, f.name)
            if f.name == "other" or value is None or (f.name == "metrics" and not value):
                continue
            out[f.name] = dict(value) if f.name == "metrics" else value
        out.update(self.other)
        return out

    @classmethod
    def from_mapping(cls, value: Mapping[str, Any]) -> TrainingRecord:
        """A record from its JSON object (any key set; see the class docstring for what is kept where)."""
        known: dict[str, Any] = {}
        other: dict[str, Any] = {}
        for key, item in value.items():
            accepts = _TRAINING_TYPES.get(key)
            if accepts is not None and item is None:
                continue  # a known key left empty reads as the field's default
            if accepts is not None and isinstance(item, accepts) and not isinstance(item, bool):
                known[key] = dict(item) if isinstance(item, dict) else item
            else:
                other[key] = item
        return cls(**known, other=other)

    @functools.cached_property
    def _json(self) -> dict[str, Any]:
        """``to_dict()``, built once: the mapping methods below read it (the record is frozen)."""
        return self.to_dict()

    def __getitem__(self, key: str) -> Any:
        return self._json[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._json)

    def __len__(self) -> int:
        return len(self._json)

    def __repr__(self) -> str:
        return f"TrainingRecord({self.to_dict()!r})"


_TRAINING_TYPES: dict[str, type | tuple[type, ...]] = {
    "command": str,
    "seed": int,
    "env": str,
    "iterations": int,
    "env_steps": int,
    "wall_s": (int, float),
    "metrics": dict,
    "note": str,
}
"""What ``TrainingRecord.from_mapping`` accepts for each known key (``bool`` is never taken for a number)."""


@dataclass(frozen=True)
class ModelDescription:
    """Everything an odetoode ONNX file states about itself (docs/models.md lists the keys)."""

    kind: Kind
    arch: str
    steps: int | None
    hidden: int | None
    golden: Golden
    env_id: str | None = None
    observation_space: Box | None = None
    action_space: Space | None = None
    obs_normalization: Normalization | None = None
    lipschitz_bound: float | None = None
    training: TrainingRecord = field(default_factory=TrainingRecord)
    format: str = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ModelFormatError(f"{PREFIX}kind: expected one of {list(KINDS)}, got {self.kind!r}")
        if self.arch not in (*ARCHS, EXTERNAL):
            raise ModelFormatError(f"{PREFIX}arch: expected one of {[*ARCHS, EXTERNAL]}, got {self.arch!r}")
        if self.arch != EXTERNAL:
            for name in ("steps", "hidden"):
                if getattr(self, name) is None:
                    raise ModelFormatError(f"{PREFIX}{name}: required for a model of arch {self.arch}")
        if self.kind == "policy":
            required = ("observation_space", "action_space", *(("obs_normalization",) if self.arch != EXTERNAL else ()))
            for name in required:
                if getattr(self, name) is None:
                    raise ModelFormatError(f"{PREFIX}{name}: required for a policy")
            assert self.observation_space is not None
            if self.obs_normalization is not None and len(self.obs_normalization.mean) != self.observation_space.size:
                raise ModelFormatError(f"{PREFIX}obs_normalization: size differs from the observation space")

    @property
    def input_name(self) -> str:
        return POLICY_INPUT if self.kind == "policy" else CLASSIFIER_INPUT

    @property
    def discrete(self) -> bool:
        """A policy whose action is an index (``Discrete`` action space)."""
        return isinstance(self.action_space, Discrete)

    @property
    def output_names(self) -> tuple[str, ...]:
        if self.kind == "classifier":
            return CLASSIFIER_OUTPUTS
        return (POLICY_OUTPUT, POLICY_LOGITS) if self.discrete else (POLICY_OUTPUT,)

    def to_metadata_props(self) -> dict[str, str]:
        props: dict[str, Any] = {"format": self.format, "kind": self.kind, "arch": self.arch}
        if self.steps is not None:
            props["steps"] = str(self.steps)
        if self.hidden is not None:
            props["hidden"] = str(self.hidden)
        props["golden"] = self.golden.to_json()
        props["training"] = self.training.to_dict()
        if self.env_id is not None:
            props["env_id"] = self.env_id
        if self.observation_space is not None:
            props["observation_space"] = self.observation_space.to_json()
        if self.action_space is not None:
            props["action_space"] = self.action_space.to_json()
        if self.obs_normalization is not None:
            props["obs_normalization"] = self.obs_normalization.to_json()
        if self.lipschitz_bound is not None:
            props["lipschitz_bound"] = repr(float(self.lipschitz_bound))
        return {
            PREFIX + k: v if isinstance(v, str) else json.dumps(v, separators=(",", ":"), allow_nan=False)
            for k, v in props.items()
        }

    @classmethod
    def from_metadata_props(cls, props: Mapping[str, str]) -> ModelDescription:
        """Parses and validates metadata; raises ``ModelFormatError`` naming the offending key."""

        def get(key: str, required: bool = True) -> str | None:
            value = props.get(PREFIX + key)
            if value is None and required:
                raise ModelFormatError(f"{PREFIX}{key}: missing from the model's metadata_props")
            return value

        def parsed(key: str, required: bool = True) -> Any:
            raw = get(key, required)
            if raw is None:
                return None
            try:
                return json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ModelFormatError(f"{PREFIX}{key}: not valid JSON ({exc.msg})") from None

        fmt = get("format")
        if fmt != FORMAT_VERSION:
            raise ModelFormatError(f"{PREFIX}format: this service reads format {FORMAT_VERSION}, got {fmt!r}")
        obs, act, norm = (
            parsed("observation_space", False),
            parsed("action_space", False),
            parsed("obs_normalization", False),
        )
        bound = get("lipschitz_bound", False)
        training = parsed("training", False) or {}
        if not isinstance(training, dict):
            raise ModelFormatError(f"{PREFIX}training: expected an object")
        return cls(
            kind=get("kind"),  # type: ignore[arg-type]
            arch=str(get("arch")),
            steps=_optional_int(get("steps", False), "steps"),
            hidden=_optional_int(get("hidden", False), "hidden"),
            golden=Golden.from_json(parsed("golden"), PREFIX + "golden"),
            env_id=get("env_id", False),
            observation_space=None if obs is None else Box.from_json(obs, PREFIX + "observation_space"),
            action_space=None if act is None else space_from_json(act, PREFIX + "action_space"),
            obs_normalization=None if norm is None else Normalization.from_json(norm, PREFIX + "obs_normalization"),
            lipschitz_bound=None if bound is None else _float(bound, PREFIX + "lipschitz_bound"),
            training=TrainingRecord.from_mapping(training),
            format=str(fmt),
        )


def description_of(props: Mapping[str, str]) -> ModelDescription | None:
    """What a file's ``metadata_props`` say about it: ``None`` when no key is an ``odetoode.*`` key (any ONNX model:
    served as it is), else the validated description (``ModelFormatError`` if it is incomplete or malformed: a file
    that claims to be described is held to it)."""
    if not any(key.startswith(PREFIX) for key in props):
        return None
    return ModelDescription.from_metadata_props(props)


def _num(v: float) -> float | str:
    """JSON has no infinities: unbounded box limits travel as the strings "inf" / "-inf"."""
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return float(v)  # also turns numpy scalars into plain floats


def _float(v: Any, key: str) -> float:
    try:
        out = float(v)
    except (TypeError, ValueError):
        raise ModelFormatError(f"{key}: {v!r} is not a number") from None
    if math.isnan(out):
        raise ModelFormatError(f"{key}: NaN is not allowed")
    return out


def _optional_int(v: Any, key: str) -> int | None:
    return None if v is None else _int(v, key)


def _int(v: Any, key: str) -> int:
    try:
        out = int(v)
    except (TypeError, ValueError):
        raise ModelFormatError(f"{PREFIX}{key}: {v!r} is not an integer") from None
    if out < 1:
        raise ModelFormatError(f"{PREFIX}{key}: must be >= 1, got {out}")
    return out
