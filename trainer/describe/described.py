"""A described policy: the rebuilt graph, checked, with its ``ModelDescription`` attached as metadata."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import helper

from odetoode.modelfile import EXTERNAL, PREFIX, Discrete, Golden, ModelDescription, Normalization, TrainingRecord
from trainer.describe.checks import CHECK_BATCH, check_as_served, check_runs, golden_rows, sample_observations
from trainer.describe.errors import DescribeError, OptionsError, first_line
from trainer.describe.graph import DiscreteOutput, rebuild, signature
from trainer.describe.spaces import PolicySpaces


@dataclass(frozen=True)
class DescribedPolicy:
    """A described policy in memory: the servable graph (metadata included) and what was done to the original."""

    proto: onnx.ModelProto
    description: ModelDescription
    observation_input: str
    action_output: str
    dropped_outputs: tuple[str, ...]
    discrete_output: DiscreteOutput | None
    """``logits`` (ArgMax appended) or ``index`` (kept; one-hot logits) for a Discrete policy, else ``None``."""
    action_clipped: bool
    """A Box action is clipped to its finite bounds inside the graph."""


def describe_policy(
    source: onnx.ModelProto,
    spaces: PolicySpaces,
    *,
    observation_input: str | None = None,
    action_output: str | None = None,
    normalization: Normalization | None = None,
    clip_action: bool = True,
    golden: int = 4,
    seed: int = 0,
    command: str | None = None,
    source_name: str | None = None,
) -> DescribedPolicy:
    """Rebuilds ``source`` into the policy contract (the package docstring), runs the checks and attaches the metadata;
    raises ``DescribeError`` naming what to change. ``clip_action`` clips Box actions to the finite bounds inside the
    graph; ``seed`` draws the check observations, the first ``golden`` of which become the golden pairs."""
    if golden < 1:
        raise OptionsError(f"--golden must be >= 1, got {golden}")
    obs_in, act_out, discrete_output = signature(source, spaces, observation_input, action_output)
    obs, act = spaces.observation, spaces.action
    if normalization is not None and len(normalization.mean) != obs.size:
        raise DescribeError(f"the normalization has {len(normalization.mean)} values, the observation {obs.size}")
    baked = None if normalization is None else _as_float32(normalization)
    proto, clipped = rebuild(source, spaces, obs_in, act_out, discrete_output, baked, clip_action)

    observations = sample_observations(obs, baked, CHECK_BATCH, np.random.default_rng(seed))
    answers = check_runs(proto, observations, act)
    pairs = golden_rows(answers, golden, discrete=isinstance(act, Discrete))
    record = TrainingRecord(
        command=command,
        env=spaces.env_id,
        note=_note(source, obs_in.name, act_out.name, baked, discrete_output, clipped),
        other={"source": {"file": source_name, "sha256": hashlib.sha256(source.SerializeToString()).hexdigest(),
                          "producer": f"{source.producer_name} {source.producer_version}".strip(),
                          "input": obs_in.name, "output": act_out.name}},
    )  # fmt: skip
    description = ModelDescription(
        kind="policy",
        arch=EXTERNAL,
        steps=None,
        hidden=None,
        golden=Golden(
            inputs=tuple(tuple(float(v) for v in observations[i]) for i in pairs),
            outputs=tuple(tuple(float(v) for v in np.asarray(answers[0][i]).reshape(-1)) for i in pairs),
            rtol=1e-4,
            atol=1e-5 * max(1.0, float(np.max(np.abs(answers[0])))),
        ),
        env_id=spaces.env_id,
        observation_space=obs,
        action_space=act,
        obs_normalization=baked,
        training=record,
    )
    kept = {k.key: k.value for k in source.metadata_props if not k.key.startswith(PREFIX)}
    helper.set_model_props(proto, {**kept, **description.to_metadata_props()})
    check_as_served(proto)
    dropped = tuple(o.name for o in source.graph.output if o.name != act_out.name)
    return DescribedPolicy(proto, description, obs_in.name, act_out.name, dropped, discrete_output, clipped)


def describe_file(path: Path, spaces: PolicySpaces, **options: Any) -> DescribedPolicy:
    """``describe_policy`` of the ONNX file ``path`` (external data beside it is read in)."""
    try:
        source = onnx.load(str(path))
    except (OSError, DecodeError) as exc:
        raise DescribeError(f"{path}: not a readable ONNX file ({first_line(exc)})") from None
    return describe_policy(source, spaces, source_name=path.name, **options)


def _as_float32(norm: Normalization) -> Normalization:
    """The normalization as the graph computes it: every value rounded to float32 (recorded as baked)."""
    f32 = np.float32
    return Normalization(tuple(float(f32(v)) for v in norm.mean), tuple(float(f32(v)) for v in norm.std),
                         float(f32(norm.clip)))  # fmt: skip


def _note(source: onnx.ModelProto, obs_in: str, act_out: str, norm: Normalization | None,
          discrete: DiscreteOutput | None, clipped: bool) -> str:  # fmt: skip
    producer = f"{source.producer_name} {source.producer_version}".strip() or "an unknown exporter"
    parts = [f"trained elsewhere (ONNX by {producer}); graph input {obs_in!r} -> output {act_out!r}"]
    if norm is not None:
        parts.append(f"observation normalization baked in (clip {norm.clip:g})")
    if clipped:
        parts.append("actions clipped to the Box bounds in the graph")
    if discrete == "logits":
        parts.append("action = argmax of the logits (ArgMax appended)")
    elif discrete == "index":
        parts.append("the graph's action index kept; logits are its one-hot")
    return "; ".join(parts)
