"""The model card: the README.md beside every exported ``model.onnx`` -- what the model is, how it was made, how
well it does, how to call it. ``trainer.publish.write_to_repository`` writes it; ``trainer.evaluate`` later rewrites
its Evaluation section."""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING

from odetoode.modelfile import POLICY_LOGITS, POLICY_OUTPUT, Box, Discrete, Space
from trainer.onnx_graph import OPSET

if TYPE_CHECKING:
    from trainer.export import ExportedModel


def _fmt_box(box: Box | None) -> str:
    if box is None:
        return "-"
    lo, hi = min(box.low), max(box.high)
    return f"shape {list(box.shape)}, values in [{lo:g}, {hi:g}]"


def _fmt_action(space: Space | None) -> str:
    if isinstance(space, Discrete):
        return (f"`{POLICY_OUTPUT}` int64 [batch], an index in 0..{space.n - 1}: the argmax of `{POLICY_LOGITS}` "
                f"float32 [batch, {space.n}] (the second output)")  # fmt: skip
    return f"`{POLICY_OUTPUT}` float32, {_fmt_box(space)} (clipped in the graph)"


def model_card(exported: ExportedModel, name: str, version: int) -> str:
    """A markdown model card: what the model is, how it was made, how well it does, how to call it."""
    d = exported.description
    training = dict(d.training)
    metrics = training.pop("metrics", {}) or {}
    lines = [
        f"# {name} (version {version})",
        "",
        f"{'An' if d.arch[0] in 'aeiou' else 'A'} **{d.arch}** {d.kind} exported by odetoode "
        f"(ONNX opset {OPSET}, flow unrolled into constant matrices).",
        "",
        "| property | value |",
        "|---|---|",
        f"| kind | {d.kind} |",
        f"| architecture | {d.arch} |",
        f"| hidden size h / steps N | {d.hidden} / {d.steps} |",
        f"| parameters (trained) | {exported.parameters} |",
    ]
    if d.kind == "policy":
        lines += [
            f"| environment | {d.env_id or '-'} |",
            f"| observation | `observation` float32, {_fmt_box(d.observation_space)} |",
            f"| action | {_fmt_action(d.action_space)} |",
            f"| normalization | mean/std baked in, clip +-{d.obs_normalization.clip:g} |"
            if d.obs_normalization
            else "| normalization | none |",
        ]
    else:
        lines += [
            "| input | `image` float32 [batch, 1, 28, 28], pixels in [0, 1] |",
            "| outputs | `logits`, `probabilities` float32 [batch, classes] |",
        ]
    if d.lipschitz_bound is not None:
        units = "normalized-observation units" if d.kind == "policy" else "pixel units"
        units += ", on the logits" if d.discrete else ""
        lemma = (1 + 1 / d.steps) ** d.steps if d.steps else math.nan  # an external model may not state N
        note = " (Lemma 1: (1+1/N)^N, orthogonal flow and Stiefel projections)" if abs(
            d.lipschitz_bound / lemma - 1) < 1e-4 else ""  # fmt: skip
        lines.append(f"| certified Lipschitz bound | {d.lipschitz_bound:.6g} in {units}{note} |")
    parity = ", ".join(f"{k.replace('_', ' ')}: {v:.2e}" for k, v in exported.parity.items())
    parity += " (logits; every decided action index equal)" if d.discrete else ""
    lines += [f"| ONNX Runtime vs float64 torch (max rel. error) | {parity} |", ""]
    lines += ["## Provenance", ""]
    if training:
        lines += [f"- **{k}**: `{json.dumps(v)}`" for k, v in training.items()]
    else:
        lines.append("- no training record")
    lines += ["", "## Metrics", ""]
    if metrics:
        lines += [f"- **{k}**: {v}" for k, v in metrics.items()]
    else:
        lines.append("- none recorded")
    lines += ["", *exported.card_sections] if exported.card_sections else []
    lines += ["", "## Configuration", "", "```json", json.dumps(exported.config, indent=2, sort_keys=True), "```", ""]
    return "\n".join(lines)
