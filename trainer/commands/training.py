"""``es`` and ``supervised``: the commands that train."""

from __future__ import annotations

import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from trainer.checkpoint import Checkpoint, CheckpointError
from trainer.commands import TRAINED_REPOSITORY, Flattened, UsageError
from trainer.es_training import ESConfig, ESRun
from trainer.protocols import apply, deviations
from trainer.rundir import RunDirectoryError, prepare_run_directory, run_files
from trainer.supervised import ClassifierSpec, SupervisedConfig


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
