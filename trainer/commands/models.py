"""``export``, ``evaluate`` and ``describe-policy``: the commands that make, check and bring in servable models."""

from __future__ import annotations

import errno
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import torch
import tyro

from odetoode.modelfile import Arch, Box, Kind, Normalization, TrainingRecord
from trainer.checkpoint import Checkpoint
from trainer.commands import TRAINED_REPOSITORY, Flattened, UsageError, one_line
from trainer.describe import NormalizationOptions, SpaceOptions
from trainer.evaluate import EVALUATION_SEED_BASE
from trainer.models import build_model
from trainer.provenance import PROG


@dataclass
class UntrainedModel:
    """With --init: the randomly initialized model to export (for tests and benchmarks)."""

    kind: Kind = "policy"
    """With --init: a policy (observation -> action) or a digits classifier (image -> logits)."""
    observation_dim: int = 17
    """With --init: the policy's input size."""
    action_dim: int = 6
    """With --init: the policy's output size."""
    action_bound: float = 1.0
    """With --init: actions are clipped to [-b, b]."""
    env_id: str | None = None
    """With --init: the environment the policy is meant for (recorded only)."""
    hidden: int = 16
    """With --init: hidden size h."""
    steps: int = 25
    """With --init: Euler steps N."""
    seed: int = 0
    """With --init: seeds the initialization."""

    def checkpoint(self, arch: Arch, command: str) -> Checkpoint:
        generator = torch.Generator().manual_seed(self.seed)
        note = "untrained: parameters randomly initialized, for tests and benchmarks"
        record = TrainingRecord(command=command, seed=self.seed, env=self.env_id, iterations=0, wall_s=0.0, note=note)
        if self.kind == "classifier":
            from trainer.supervised import CLASSES, PIXELS

            model = build_model(arch, PIXELS, CLASSES, hidden=self.hidden, steps=self.steps, generator=generator)
            return Checkpoint.from_model(model, "classifier", training=record)
        d, m, b = self.observation_dim, self.action_dim, self.action_bound
        model = build_model(arch, d, m, hidden=self.hidden, steps=self.steps, generator=generator)
        return Checkpoint.from_model(
            model, "policy", env_id=self.env_id, training=record,
            observation_space=Box((d,), (float("-inf"),) * d, (float("inf"),) * d),
            action_space=Box((m,), (-b,) * m, (b,) * m),
            normalization=Normalization((0.0,) * d, (1.0,) * d, 5.0),
        )  # fmt: skip


@dataclass
class ExportCommand:
    """Export a checkpoint, a run directory or a freshly initialized model to the model repository as unrolled ONNX.

    Writes <repository>/<name>/<version>/model.onnx with its flow unrolled, golden I/O, parity-checked against the
    float64 torch reference, plus a model card. Give exactly one of --checkpoint and --init.
    """

    name: str
    """Model name in the repository (letters, digits, '_', '-', '.')."""
    checkpoint: Path | None = None
    """A checkpoint, or a run directory (its best.pt, else checkpoint.pt; an ES run adds its learning curve)."""
    init: Arch | None = None
    """Export an untrained, randomly initialized model of this architecture instead."""
    repository: Path = TRAINED_REPOSITORY
    """Model repository root; the default is not served by make serve: serve it with python -m service
    --repository runs/models."""
    version: int | None = None
    """Version number (default: one past the latest)."""
    episodes: int = 0
    """Policies: episodes of an ONNX Runtime evaluation recorded in the model and its card (0: none)."""
    untrained: Annotated[UntrainedModel, Flattened] = field(default_factory=UntrainedModel)

    def run(self, command: str) -> int:
        from trainer.export import ExportError
        from trainer.publish import export_checkpoint

        if (self.checkpoint is None) == (self.init is None):
            raise UsageError("give exactly one of --checkpoint and --init")
        source = self.checkpoint if self.init is None else self.untrained.checkpoint(self.init, command)
        assert source is not None
        try:
            published = export_checkpoint(source, self.name, self.repository, version=self.version,
                                          episodes=self.episodes)  # fmt: skip
        except ExportError as exc:
            raise ExportError(f"{self.checkpoint or self.init}: {exc}") from None
        d = published.exported.description
        print(f"wrote {published.path / 'model.onnx'}")
        print(f"  {d.arch} {d.kind}, {published.exported.parameters} parameters")
        print(f"  parity vs float64 torch: {published.exported.parity}")
        if d.lipschitz_bound is not None:
            print(f"  certified Lipschitz bound: {d.lipschitz_bound:.6g}")
        return 0


@dataclass
class EvaluateCommand:
    """Evaluate an exported ONNX policy in its environment; the policy runs on ONNX Runtime alone.

    Example: python -m trainer evaluate models/halfcheetah/1/model.onnx --episodes 50 --card
    """

    model: tyro.conf.Positional[Path]
    """Path to model.onnx."""
    env: str | None = None
    """Environment id (default: the model's odetoode.env_id)."""
    episodes: int = 20
    """Episodes, with seeds --seed, --seed + 1, ..."""
    seed: int = EVALUATION_SEED_BASE
    """First episode seed (training draws its seeds below the default)."""
    card: bool = False
    """Write the result beside the model: the Evaluation section of its README.md (the rest of the card is kept),
    evaluation.json (every seed, return and length, the file's sha256, this command) and evaluation.png (the
    histogram of the returns)."""

    def run(self, command: str) -> int:
        from trainer.evaluate import evaluate_onnx, evaluate_to_card

        if not self.model.is_file():  # ONNX Runtime would say so in a multi-line error of its own
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(self.model))
        if self.episodes < 1:
            raise UsageError(f"--episodes must be at least 1, got {self.episodes}")
        if self.card:
            card = self.model.parent / "README.md"
            if not card.is_file():  # checked before the episodes run, not after
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(card))
            report, written = evaluate_to_card(self.model, self.episodes, self.seed, self.env)
            result = report.evaluation
        else:
            result, written = evaluate_onnx(self.model, self.env, self.episodes, self.seed), []
        s = result.summary()
        print(f"{result.env_id}: mean return {s['mean']:.1f} +- {s['std']:.1f} (sample std), min {s['min']:.1f}, "
              f"5th percentile {s['p5']:.1f}, max {s['max']:.1f} over {len(result.returns)} episodes "
              f"(seeds {result.seeds[0]}..{result.seeds[-1]})")  # fmt: skip
        for path in written:
            print(f"wrote {path}")
        return 0


@dataclass
class DescribePolicyCommand:
    """Make a policy trained elsewhere (Stable-Baselines3, CleanRL, one's own PyTorch) servable over PolicyService.

    Rebuilds its ONNX file into the policy contract (input observation, output action; for Discrete(n) also logits),
    bakes in an observation normalization that lived outside the graph and the action clipping, checks it with ONNX
    Runtime and writes <repository>/<name>/<version>/model.onnx with its metadata (arch external, spaces, golden
    pairs; no Lipschitz bound). docs/external-policies.md has a worked example.

    Example: python -m trainer describe-policy policy.onnx --name pendulum --env Pendulum-v1 --normalization stats.npz
    """

    model: tyro.conf.Positional[Path]
    """The ONNX file, e.g. from torch.onnx.export."""
    name: str
    """Model name in the repository (letters, digits, '_', '-', '.')."""
    repository: Path = TRAINED_REPOSITORY
    """Model repository root (serve it with python -m service --repository ...)."""
    version: int | None = None
    """Version number (default: one past the latest)."""
    overwrite: bool = False
    """Replace the files of an existing --version (refused without it)."""
    input: str | None = None
    """The graph input that is the observation (default: the only one)."""
    output: str | None = None
    """The graph output that is the action (default: the only one); the others are dropped. Box: the action;
    Discrete: float logits (ArgMax is appended) or an integer index (kept; logits become its one-hot)."""
    spaces: Annotated[SpaceOptions, Flattened] = field(default_factory=SpaceOptions)
    normalization: Annotated[NormalizationOptions, Flattened] = field(default_factory=NormalizationOptions)
    clip_action: bool = True
    """Clip Box actions to the action space's finite bounds inside the graph."""
    golden: int = 4
    """Golden observation/action pairs recorded for the server's load-time self-check."""
    seed: int = 0
    """Seeds the in-space observations the graph is checked on (and the golden pairs are taken from)."""

    def run(self, command: str) -> int:
        from trainer.describe import DescribeError, OptionsError, describe_to_repository, summary

        try:
            described, path = describe_to_repository(
                self.model, self.name, self.repository, spaces=self.spaces, normalization=self.normalization,
                version=self.version, overwrite=self.overwrite, observation_input=self.input,
                action_output=self.output, clip_action=self.clip_action, golden=self.golden, seed=self.seed,
                command=command,
            )  # fmt: skip
        except OptionsError as exc:
            raise UsageError(str(exc)) from None
        except DescribeError as exc:  # the file cannot be served as asked: one line, status 1
            print(f"{PROG} describe-policy: {one_line(exc)}", file=sys.stderr)
            return 1
        print("\n".join(summary(described, path)))
        return 0
