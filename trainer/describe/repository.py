"""Writing a described policy to a model repository (``<repository>/<name>/<version>/``, with a model card), as
``python -m trainer describe-policy`` does, and the summary it prints."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import onnx
from google.protobuf.message import DecodeError

from odetoode.layout import MODEL_FILE, write_version
from odetoode.modelfile import MODEL_NAME, Discrete
from trainer.describe.described import DescribedPolicy, describe_file
from trainer.describe.errors import DescribeError, OptionsError, first_line
from trainer.describe.graph import choose, graph_io
from trainer.describe.options import NormalizationOptions, SpaceOptions


def write_described(described: DescribedPolicy, repository: Path, name: str, version: int | None = None, *,
                    overwrite: bool = False) -> Path:  # fmt: skip
    """Writes ``<repository>/<name>/<version>/{model.onnx, README.md}`` and returns that directory. ``version``
    defaults to one past the highest; an existing version is refused unless ``overwrite``, which replaces its files
    one by one, each atomically (a polling server reloads the version once the model file changed)."""
    _check_destination(name, version)
    files = {MODEL_FILE: described.proto.SerializeToString(), "README.md": model_card(described, name).encode()}
    target = Path(repository) / name / str(version)
    if version is None or not target.exists():
        return write_version(repository, name, files, version)
    if not overwrite:
        raise DescribeError(f"{target} exists: versions are immutable; give another --version, or --overwrite")
    for filename, content in sorted(files.items(), key=lambda kv: kv[0] == MODEL_FILE):  # the model last
        staged = target / f".{filename}.staged"
        staged.write_bytes(content)
        os.replace(staged, target / filename)
    return target


def _check_destination(name: str, version: int | None) -> None:
    if not MODEL_NAME.fullmatch(name):
        raise OptionsError(f"--name {name!r} must match {MODEL_NAME.pattern}")
    if version is not None and version < 1:
        raise OptionsError(f"--version must be >= 1, got {version}")


def describe_to_repository(
    path: Path,
    name: str,
    repository: Path,
    *,
    spaces: SpaceOptions,
    normalization: NormalizationOptions,
    version: int | None = None,
    overwrite: bool = False,
    observation_input: str | None = None,
    action_output: str | None = None,
    **options: Any,
) -> tuple[DescribedPolicy, Path]:
    """What ``python -m trainer describe-policy`` does: reads ``path``, resolves the options against its graph,
    describes it (``options``: ``clip_action``, ``golden``, ``seed``, ``command``) and writes the version."""
    _check_destination(name, version)
    try:
        source = onnx.load(str(path), load_external_data=False)  # only the signature, to resolve the options
    except (OSError, DecodeError) as exc:
        raise DescribeError(f"{path}: not a readable ONNX file ({first_line(exc)})") from None
    inputs, outputs = graph_io(source)
    resolved = spaces.resolve(choose("input", inputs, observation_input), choose("output", outputs, action_output))
    described = describe_file(path, resolved, observation_input=observation_input, action_output=action_output,
                              normalization=normalization.resolve(), **options)  # fmt: skip
    return described, write_described(described, repository, name, version, overwrite=overwrite)


def summary(described: DescribedPolicy, directory: Path) -> list[str]:
    """What the command prints: where the model went, what it reads and answers, what was added or dropped."""
    d = described.description
    act = d.action_space
    assert d.observation_space is not None and act is not None
    answer = (f"action int64 [batch] (Discrete({act.n}), from {described.discrete_output}) + logits [batch, {act.n}]"
              if isinstance(act, Discrete) else f"action [batch, {act.size}]")  # fmt: skip
    lines = [
        f"wrote {directory / MODEL_FILE}",
        f"  external policy{' for ' + d.env_id if d.env_id else ''}: observation [batch, {d.observation_space.size}]"
        f" -> {answer}",
        f"  from graph input {described.observation_input!r} -> output {described.action_output!r}"
        + (f"; dropped outputs {list(described.dropped_outputs)}" if described.dropped_outputs else ""),
    ]
    if d.obs_normalization is not None:
        lines.append(f"  normalization baked in (clients send raw observations), clip {d.obs_normalization.clip:g}")
    if described.action_clipped:
        lines.append("  actions clipped to the Box bounds in the graph")
    lines.append(f"  {len(d.golden.inputs)} golden pairs; no Lipschitz bound (nothing certified)")
    return lines


def model_card(described: DescribedPolicy, name: str) -> str:
    """A markdown card: what the policy reads and answers, where it came from, what was added to its graph."""
    d = described.description
    record = dict(d.training)
    act = d.action_space
    if isinstance(act, Discrete):
        answer = (f"`action` int64 [batch], an index in 0..{act.n - 1}, and `logits` float32 [batch, {act.n}] "
                  + ("(one-hot of the graph's index)" if described.discrete_output == "index" else ""))  # fmt: skip
    else:
        assert act is not None
        clipped = "clipped in the graph" if described.action_clipped else "not clipped"
        answer = f"`action` float32 [batch, {act.size}], bounds [{min(act.low):g}, {max(act.high):g}] ({clipped})"
    norm = d.obs_normalization
    assert d.observation_space is not None
    lines = [
        f"# {name}",
        "",
        "An **external** policy: trained elsewhere, described by `python -m trainer describe-policy`.",
        "",
        "| property | value |",
        "|---|---|",
        f"| environment | {d.env_id or '-'} |",
        f"| observation | `observation` float32 [batch, {d.observation_space.size}], raw (unnormalized) |",
        f"| action | {answer} |",
        f"| normalization | {'baked in: mean/std, clip +-' + format(norm.clip, 'g') if norm else 'none'} |",
        f"| from | input `{described.observation_input}` -> output `{described.action_output}` of the original |",
        f"| outputs dropped | {', '.join(f'`{o}`' for o in described.dropped_outputs) or '-'} |",
        "| Lipschitz bound | none: nothing is certified for a network trained elsewhere |",
        f"| golden pairs | {len(d.golden.inputs)}, computed with ONNX Runtime when described |",
        "",
        "## Provenance",
        "",
        *(f"- **{k}**: `{json.dumps(v)}`" for k, v in record.items()),
        "",
    ]
    return "\n".join(lines)
