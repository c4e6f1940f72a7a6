"""``python -m trainer <command>``: the trainer's command line.

One ``tyro`` CLI: each subcommand is a dataclass below (``COMMANDS``), its docstring the help text, a docstring under
every field, so ``--help`` shows every default and every choice. A command's ``run`` gets the command line as typed,
which training records as its provenance.

``main`` turns the errors a user can cause (``EXPECTED_ERRORS``: an unknown environment, a missing file, a run
directory already taken, a bad argument) into one line on stderr and a non-zero exit status; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import errno
import os
import shlex
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol, Union

import torch
import tyro

from odetoode.modelfile import Arch, Box, Kind, ModelFormatError, Normalization, TrainingRecord
from trainer.checkpoint import Checkpoint, CheckpointError
from trainer.describe import NormalizationOptions, SpaceOptions
from trainer.envs import UnsupportedEnvironmentError
from trainer.es_training import ESConfig, ESRun
from trainer.evaluate import EVALUATION_SEED_BASE
from trainer.experiments.reproduce import Claim, ReproductionBudget
from trainer.models import build_model
from trainer.protocols import apply, deviations
from trainer.provenance import PROG
from trainer.rundir import RunDirectoryError, prepare_run_directory, run_files
from trainer.supervised import ClassifierSpec, SupervisedConfig

Flattened = tyro.conf.arg(name="")
"""A nested configuration whose fields read as the command's own (``--env``, not ``--config.env``)."""

TRAINED_REPOSITORY = Path("runs/models")
"""Where ``--export`` and ``export`` write by default: beside the runs, not the bundled ``models/`` that ``make serve``
serves (a half-trained export must not go live by accident). Serve it with ``python -m service --repository
runs/models``."""


class UsageError(Exception):
    """Arguments that parse but do not make sense together; ``main`` prints the message as a usage error (exit 2)."""


EXPECTED_ERRORS: tuple[type[BaseException], ...] = (
    UsageError,
    UnsupportedEnvironmentError,  # unknown environment id, unsupported observation or action space
    RunDirectoryError,  # --out holds another run
    FileNotFoundError,
    CheckpointError,
    ModelFormatError,
)
"""What a user's input can cause: ``main`` prints these as one line. ``ExportError`` joins them where the export
module is imported (it pulls in ONNX)."""


class Command(Protocol):
    def run(self, command: str) -> int:
        """Does the work; ``command`` is the command line as typed. Returns the exit status."""
        ...


@dataclass
class ESCommand:
    """Train a policy with evolution strategies (the paper's Sec. 4.2/5.1).

    Example: python -m trainer es --env HalfCheetah-v5 --protocol paper --iterations 100 --out runs/cheetah
    (--protocol sets every ES setting to a named protocol's, shown as the defaults by --protocol NAME --help;
    flags given explicitly override it).
    """

    config: Annotated[ESConfig, Flattened]
    out: Path = Path("runs/es")
    """Run directory: log.jsonl, config.json, checkpoint.pt (latest), best.pt (best evaluated). One that already
    holds a run is refused unless --resume or --overwrite is given."""
    resume: bool = False
    """Continue the run in --out from its checkpoint (an empty --out starts a new run). The saved configuration
    defines the experiment (and is the default of every flag); only --iterations, --time-budget-s, --backend,
    --workers, --ray-address and the step schedule (--sigma, --step-size, --step-decay) are taken from the command
    line, where given."""
    overwrite: bool = False
    """Replace the run in --out: its run files are deleted when training starts (other files stay)."""
    export: str | None = None
    """After training, export best.pt into --repository under this model name."""
    repository: Path = TRAINED_REPOSITORY
    """Model repository for --export; the default is not served by make serve: serve it with python -m service
    --repository runs/models."""
    export_episodes: int = 20
    """Episodes of the ONNX Runtime evaluation recorded in the exported model card."""

    def defaults(self) -> ESCommand | None:
        """The command whose values are the defaults this command line selects, or None for ``ESConfig``'s own:
        with --resume of a saved run, its configuration (a flag not given keeps the run's setting); with
        --protocol, the protocol's settings (a flag given overrides one)."""
        if self.resume and (self.out / "checkpoint.pt").is_file():
            try:
                saved = Checkpoint.load(self.out / "checkpoint.pt").extra["es_config"]
                return ESCommand(config=ESConfig(**saved))
            except (CheckpointError, OSError, KeyError, TypeError):
                return None  # ``run`` loads it again and reports what is wrong with it
        if self.config.protocol is not None:
            return ESCommand(config=apply(self.config.protocol, ESConfig()))
        return None

    def run(self, command: str) -> int:
        if self.resume and self.overwrite:
            raise UsageError("give at most one of --resume and --overwrite")
        _terminate_gracefully()
        if self.resume and (self.out / "checkpoint.pt").is_file():
            run = ESRun.resume(self.out, overrides=self.config, command=command)
            if self.config.protocol != run.config.protocol:
                raise UsageError(f"{self.out} was trained under protocol {run.config.protocol}; --protocol cannot "
                                 "change when resuming")  # fmt: skip
            print(f"resuming {self.out} at iteration {run.state.iteration}")
        else:
            found = run_files(self.out)
            if self.resume and found:
                raise RunDirectoryError(f"{self.out} holds no checkpoint.pt to resume from ({', '.join(found)}): "
                                        "give --overwrite to start over")  # fmt: skip
            run = ESRun(self.config, self.out, command=command)  # checks the environment before anything is deleted
            if self.overwrite:
                prepare_run_directory(self.out, overwrite=True)
        if run.config.protocol is not None:
            changed = ", ".join(
                f"{k} {v['run']} (protocol: {v['protocol']})" for k, v in deviations(run.config).items()
            )
            print(f"protocol {run.config.protocol}" + (f", except {changed}" if changed else "") +
                  f"; every setting in {self.out / 'config.json'}")  # fmt: skip
        try:
            state = run.train()
        except KeyboardInterrupt:
            print(f"interrupted after iteration {run.state.iteration}; continue with --out {self.out} --resume",
                  file=sys.stderr)  # fmt: skip
            return 130
        print(f"done: {state.iteration} iterations, {state.env_steps} env steps, {state.wall_s:.0f} s, "
              f"best evaluation return {state.best_reward:.1f}")  # fmt: skip
        if self.export:
            from trainer.publish import export_checkpoint

            published = export_checkpoint(self.out, self.export, self.repository, episodes=self.export_episodes)
            print(f"exported {published.path / 'model.onnx'}")
        return 0


def _terminate_gracefully() -> None:
    """SIGTERM ends a run like Ctrl-C: cleanup (worker pools) runs; the last iteration's checkpoint is on disk."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


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
class PlotCommand:
    """Draw learning curves (mean +- std over seeds) of ES runs to a PNG."""

    runs: tyro.conf.Positional[tuple[Path, ...]]
    """Run directories (each with log.jsonl and config.json)."""
    out: Path
    """PNG file to write."""
    x: Literal["env_steps", "wall_s", "iteration"] = "env_steps"
    """The x axis."""
    y: Literal["eval_return", "reward_mean"] = "eval_return"
    """The y axis."""

    def run(self, command: str) -> int:
        from trainer.plots import plot_learning_curves

        if not self.runs:
            raise UsageError("give at least one run directory")
        print(f"wrote {plot_learning_curves(self.runs, self.out, x=self.x, y=self.y)}")
        return 0


@dataclass
class SupervisedCommand:
    """Train one classifier on clean digits and test it on every corruption (a cell of Table 1 or 2)."""

    config: Annotated[SupervisedConfig, Flattened]
    out: Path = Path("runs/supervised")
    """Run directory: result.json and checkpoint.pt. One that already holds a run is refused unless --overwrite is
    given."""
    overwrite: bool = False
    """Replace the run in --out: its run files are deleted when training starts (other files stay)."""
    export: str | None = None
    """Export the trained classifier into --repository under this name (a finished run: trainer export
    --checkpoint RUN)."""
    repository: Path = TRAINED_REPOSITORY
    """Model repository for --export; the default is not served by make serve: serve it with python -m service
    --repository runs/models."""

    def run(self, command: str) -> int:
        from trainer.supervised import train

        try:
            ClassifierSpec.parse(self.config.model)
        except ValueError as exc:
            raise UsageError(f"--model {exc}") from None
        _, result = train(self.config, out=self.out, command=command, overwrite=self.overwrite)
        for name, acc in result.accuracies.items():
            print(f"  {name:<14} {100 * acc:6.2f}%")
        if self.export:
            from trainer.publish import export_checkpoint

            print(f"exported {export_checkpoint(self.out, self.export, self.repository).path}")
        return 0


@dataclass
class TableCommand:
    """Reproduce Table 1 or 2 of the paper on digits-C (markdown + heat map), training the missing cells."""

    table: Literal[1, 2] = 1
    """Table 1 (width 128) or Table 2 (width 256, dropout 0.1)."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Seeds per cell."""
    epochs: int = 20
    """Epochs per cell."""
    models: tuple[str, ...] | None = None
    """A subset of the table's columns, named as supervised --model names them (default: all of them)."""
    runs: Path = Path("runs/supervised")
    """Cache of trained cells."""
    docs: Path = Path("docs")
    """Where tableN.md and figures/ go."""

    def run(self, command: str) -> int:
        from trainer.experiments.tables import reproduce

        print(f"wrote {reproduce(self.table, self.seeds, self.epochs, self.runs, self.docs, self.models)}")
        return 0


@dataclass
class ReproduceCommand:
    """Regenerate the figures and tables of docs/REPRODUCTION.md (trained runs are cached)."""

    claims: tyro.conf.Positional[tuple[Claim, ...]]
    """What to regenerate."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Seeds of the trained claims."""
    runs: Path = Path("runs/reproduce")
    """Cache of trained runs."""
    docs: Path = Path("docs")
    """Where results/ and figures/ go."""
    budget: Annotated[ReproductionBudget, Flattened] = field(default_factory=ReproductionBudget)

    def run(self, command: str) -> int:
        from trainer.experiments.reproduce import run

        if not self.claims:
            raise UsageError("name at least one claim (or all)")
        for path in run(self.claims, docs=self.docs, runs=self.runs, seeds=self.seeds, budget=self.budget):
            print(f"wrote {path}")
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
class GradientsCommand:
    """Print the band of gradient-norm ratios (Lemma 4.1) each architecture reaches on random instances."""

    arch: tuple[Arch, ...] = ("iso-odetoode", "gated-odetoode", "baseode", "nanode", "hypernet")
    """Architectures to measure."""
    steps: tuple[int, ...] = (10, 100, 1000)
    """Depths N."""
    hidden: int = 16
    """Hidden size h."""
    instances: int = 5
    """Random instances per (architecture, depth)."""

    def run(self, command: str) -> int:
        from trainer.experiments.gradient_stability import band_report

        for line in band_report(self.arch, self.steps, hidden=self.hidden, instances=self.instances):
            print(line, flush=True)
        return 0


@dataclass
class GridCommand:
    """Draw every digits-C corruption (rows) on the same few test digits (columns) to a PNG."""

    out: Path = Path("docs/figures/digits_c.png")
    """PNG to write."""
    examples: int = 8
    """Test digits per row."""
    seed: int = 0
    """Corruption seed."""

    def run(self, command: str) -> int:
        from trainer.data.grid import render_grid

        print(render_grid(self.out, examples=self.examples, seed=self.seed))
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


COMMANDS: dict[str, Callable[..., Command]] = {
    "es": ESCommand,
    "export": ExportCommand,
    "supervised": SupervisedCommand,
    "evaluate": EvaluateCommand,
    "plot": PlotCommand,
    "table": TableCommand,
    "reproduce": ReproduceCommand,
    "gradients": GradientsCommand,
    "grid": GridCommand,
    "describe-policy": DescribePolicyCommand,
}


def parse(argv: Sequence[str]) -> Command:
    """The command ``argv`` (without the program name) asks for; exits with usage on bad arguments or --help.

    ``es`` is parsed twice: the first pass reads which defaults the command line selects (``ESCommand.defaults``:
    a protocol, or the saved run it resumes), the second parses it against them, so that only the flags given
    override them (and ``--help`` shows them)."""
    argv = list(argv)
    default = _es_defaults(argv) if argv[:1] == ["es"] else None
    return _parse(argv, es_default=default)


def _parse(argv: Sequence[str], *, es_default: ESCommand | None = None, console_outputs: bool = True) -> Command:
    """``tyro.extras.subcommand_cli_from_dict(COMMANDS)``, spelled out so that ``es`` can take a default instance."""
    choices: list[Any] = []
    for name, constructor in COMMANDS.items():
        if name == "es" and es_default is not None:
            marker = tyro.conf.subcommand(name=name, constructor=constructor, default=es_default)
        else:
            marker = tyro.conf.subcommand(name=name, constructor=constructor)
        choices.append(Annotated[Any, marker])
    command: Command = tyro.cli(
        Union[tuple(choices)],  # type: ignore[call-overload]  # noqa: UP007 - a union built at run time
        prog=PROG, description="odetoode trainer: train, export and evaluate ODEtoODE models.", args=list(argv),
        console_outputs=console_outputs,
    )  # fmt: skip
    return command


def _es_defaults(argv: Sequence[str]) -> ESCommand | None:
    """The defaults an ``es`` command line selects; None where it does not parse (the real parse reports why)."""
    try:
        first = _parse([word for word in argv if word not in ("-h", "--help")], console_outputs=False)
    except SystemExit:
        return None
    return first.defaults() if isinstance(first, ESCommand) else None


def one_line(error: BaseException) -> str:
    """The error's message on one line (a missing file as ``PATH: reason``)."""
    if isinstance(error, OSError) and error.filename is not None:
        return f"{error.filename}: {error.strerror}"
    return " ".join(str(error).split()) or type(error).__name__


def main(argv: Sequence[str] | None = None) -> None:
    """Runs the command ``argv`` asks for and exits with its status. An expected error (``EXPECTED_ERRORS``, an
    ``ExportError``) exits with one line on stderr, ``python -m trainer <command>: <message>``: status 2 for a
    ``UsageError`` (as for arguments that do not parse), 1 otherwise."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = parse(argv)
    try:
        status = command.run(shlex.join([*PROG.split(), *argv]))
    except Exception as exc:
        if not isinstance(exc, _expected_errors()):
            raise
        print(f"{PROG} {argv[0]}: {one_line(exc)}", file=sys.stderr)
        sys.exit(2 if isinstance(exc, UsageError) else 1)
    sys.exit(status)


def _expected_errors() -> tuple[type[BaseException], ...]:
    export = sys.modules.get("trainer.export")  # imported by the commands that export; importing it here costs ONNX
    return EXPECTED_ERRORS if export is None else (*EXPECTED_ERRORS, export.ExportError)
