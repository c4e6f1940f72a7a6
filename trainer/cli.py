"""``python -m trainer <command>``: the trainer's command line."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import torch
import tyro

from odetoode.modelfile import Box, Normalization
from trainer.checkpoint import Checkpoint
from trainer.es_training import ESConfig, ESRun, export_run
from trainer.export import ExportedModel, PolicySpec, export_classifier, export_policy, write_to_repository
from trainer.models import ARCHITECTURES, build_model
from trainer.plots import plot_learning_curves


def _export_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "export",
        help="export a checkpoint (or a freshly initialized model) to the model repository as unrolled ONNX",
        description="Export a model to <repository>/<name>/<version>/model.onnx with its flow unrolled, golden "
        "I/O, parity-checked against the float64 torch reference, plus a model card.",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="a checkpoint written by a trainer command")
    source.add_argument("--init", choices=sorted(ARCHITECTURES), help="export an untrained, randomly initialized model")
    p.add_argument("--name", required=True, help="model name in the repository (letters, digits, '_', '-', '.')")
    p.add_argument("--repository", type=Path, default=Path("models"), help="model repository root (default: models)")
    p.add_argument("--version", type=int, help="version number (default: one past the latest)")
    init = p.add_argument_group("with --init")
    init.add_argument("--kind", choices=["policy", "classifier"], default="policy")
    init.add_argument("--observation-dim", type=int, default=17, help="policy input size (default 17)")
    init.add_argument("--action-dim", type=int, default=6, help="policy output size (default 6)")
    init.add_argument("--action-bound", type=float, default=1.0, help="actions are clipped to [-b, b] (default 1)")
    init.add_argument("--env-id", help="environment the policy is meant for (recorded only)")
    init.add_argument("--hidden", type=int, default=16)
    init.add_argument("--steps", type=int, default=25)
    init.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    command = "python -m trainer " + " ".join(sys.argv[1:])
    if args.checkpoint is not None:
        ckpt = Checkpoint.load(args.checkpoint)
        model = ckpt.model()
        training = dict(ckpt.training) or {"command": command}
        if ckpt.kind == "policy":
            if ckpt.observation_space is None or ckpt.action_space is None or ckpt.normalization is None:
                raise SystemExit(f"{args.checkpoint}: a policy checkpoint needs spaces and normalization to export")
            spec = PolicySpec(ckpt.observation_space, ckpt.action_space, ckpt.normalization, ckpt.env_id)
            exported: ExportedModel = export_policy(model, spec, training=training)
        else:
            exported = export_classifier(model, training=training)
    else:
        torch.manual_seed(args.seed)
        generator = torch.Generator().manual_seed(args.seed)
        training = {
            "command": command,
            "seed": args.seed,
            "iterations": 0,
            "wall_s": 0.0,
            "metrics": {},
            "note": "untrained: parameters randomly initialized, for tests and benchmarks",
        }
        if args.kind == "policy":
            d, m = args.observation_dim, args.action_dim
            model = build_model(args.init, d, m, hidden=args.hidden, steps=args.steps, generator=generator)
            spec = PolicySpec(
                observation_space=Box((d,), (float("-inf"),) * d, (float("inf"),) * d),
                action_space=Box((m,), (-args.action_bound,) * m, (args.action_bound,) * m),
                normalization=Normalization((0.0,) * d, (1.0,) * d, 5.0),
                env_id=args.env_id,
            )
            exported = export_policy(model, spec, training=training)
        else:
            model = build_model(args.init, 784, 10, hidden=args.hidden, steps=args.steps, generator=generator)
            exported = export_classifier(model, training=training)
    target = write_to_repository(exported, args.repository, args.name, args.version)
    bound = exported.description.lipschitz_bound
    print(f"wrote {target / 'model.onnx'}")
    print(f"  {exported.description.arch} {exported.description.kind}, {exported.parameters} parameters")
    print(f"  parity vs float64 torch: {exported.parity}")
    if bound is not None:
        print(f"  certified Lipschitz bound: {bound:.6g}")
    return 0


@dataclass
class ESCommand:
    """Train a policy with evolution strategies (the paper's Sec. 4.2/5.1).

    Example: python -m trainer es --env HalfCheetah-v5 --arch iso-odetoode --iterations 100 --out runs/cheetah
    """

    config: Annotated[ESConfig, tyro.conf.arg(name="")]
    out: Path = Path("runs/es")
    """Run directory: log.jsonl, config.json, checkpoint.pt (latest), best.pt (best evaluated)."""
    resume: bool = False
    """Continue the run in --out from its checkpoint. The saved configuration defines the experiment; only
    --iterations, --time-budget-s, --backend, --workers, --ray-address and the step schedule (--sigma,
    --step-size, --step-decay) are taken from the command line."""
    export: str | None = None
    """After training, export best.pt into --repository under this model name."""
    repository: Path = Path("models")
    """Model repository for --export."""
    export_episodes: int = 20
    """Episodes of the ONNX Runtime evaluation recorded in the exported model card."""


def _terminate_gracefully() -> None:
    """SIGTERM ends a run like Ctrl-C: cleanup (worker pools) runs; the last iteration's checkpoint is on disk."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def _run_es(argv: Sequence[str]) -> int:
    cmd = tyro.cli(ESCommand, args=list(argv), prog="python -m trainer es",
                   config=(tyro.conf.FlagConversionOff,))  # fmt: skip
    _terminate_gracefully()
    if cmd.resume and (cmd.out / "checkpoint.pt").is_file():
        run = ESRun.resume(cmd.out, overrides=cmd.config, command="python -m trainer " + " ".join(sys.argv[1:]))
        print(f"resuming {cmd.out} at iteration {run.state.iteration}")
    else:
        run = ESRun(cmd.config, cmd.out)
    try:
        state = run.train()
    except KeyboardInterrupt:
        print(f"interrupted after iteration {run.state.iteration}; continue with --out {cmd.out} --resume True",
              file=sys.stderr)  # fmt: skip
        return 130
    print(f"done: {state.iteration} iterations, {state.env_steps} env steps, {state.wall_s:.0f} s, "
          f"best evaluation return {state.best_reward:.1f}")  # fmt: skip
    if cmd.export:
        target = export_run(cmd.out, cmd.export, cmd.repository, episodes=cmd.export_episodes)
        print(f"exported {target / 'model.onnx'}")
    return 0


def _plot_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("plot", help="draw learning curves (mean +- std over seeds) of ES runs to a PNG")
    p.add_argument("runs", nargs="+", type=Path, help="run directories (each with log.jsonl and config.json)")
    p.add_argument("--out", type=Path, required=True, help="PNG file to write")
    p.add_argument("--x", default="env_steps", help="x axis: env_steps, wall_s or iteration")
    p.add_argument("--y", default="eval_return", help="y axis: eval_return or reward_mean")

    def run(args: argparse.Namespace) -> int:
        print(f"wrote {plot_learning_curves(args.runs, args.out, x=args.x, y=args.y)}")
        return 0

    p.set_defaults(run=run)


def _supervised_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("supervised", help="train one classifier on clean digits and test it on every corruption")
    p.add_argument("--model", default="odetoode-1", help="dense-k, node, nanode-k, hypernet-k or odetoode-k")
    p.add_argument("--width", type=int, default=128, help="hidden width (Table 1: 128, Table 2: 256)")
    p.add_argument("--dropout", type=float, default=0.0, help="dropout rate (Table 2: 0.1)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/supervised"), help="run directory")
    p.add_argument("--export", help="export the trained classifier into --repository under this name")
    p.add_argument("--repository", type=Path, default=Path("models"))
    p.add_argument("--from-run", type=Path, help="export this finished run (e.g. a table cell) instead of training")

    def run(args: argparse.Namespace) -> int:
        from trainer.supervised import SupervisedConfig, export_classifier_run, export_saved_run, train

        if args.from_run is not None:
            if not args.export:
                raise SystemExit("--from-run needs --export NAME")
            print(f"exported {export_saved_run(args.from_run, args.export, args.repository)}")
            return 0

        config = SupervisedConfig(model=args.model, width=args.width, dropout=args.dropout, epochs=args.epochs,
                                  seed=args.seed)  # fmt: skip
        classifier, result = train(config, out=args.out)
        for name, acc in result.accuracies.items():
            print(f"  {name:<14} {100 * acc:6.2f}%")
        if args.export:
            print(f"exported {export_classifier_run(classifier, result, args.export, args.repository)}")
        return 0

    p.set_defaults(run=run)


def _table_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("table", help="reproduce Table 1 or 2 of the paper on digits-C (markdown + heat map)")
    p.add_argument("--table", type=int, choices=[1, 2], default=1)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--models", nargs="+", help="a subset of the table's columns")
    p.add_argument("--runs", type=Path, default=Path("runs/supervised"), help="cache of trained cells")
    p.add_argument("--docs", type=Path, default=Path("docs"), help="where tableN.md and figures/ go")

    def run(args: argparse.Namespace) -> int:
        from trainer.experiments.tables import reproduce

        print(f"wrote {reproduce(args.table, args.seeds, args.epochs, args.runs, args.docs, args.models)}")
        return 0

    p.set_defaults(run=run)


def _reproduce_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("reproduce", help="regenerate the figures and tables of docs/REPRODUCTION.md (cached runs)")
    p.add_argument("claims", nargs="+", help="gradients, deep, rl, table1, table2 or all")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--runs", type=Path, default=Path("runs/reproduce"), help="cache of trained runs")
    p.add_argument("--docs", type=Path, default=Path("docs"))
    from trainer.experiments.reproduce import BUDGET  # numpy only: keeps --help fast

    for key, default in BUDGET.items():  # defaults: the budgets of the committed results
        help_ = "random instances per gradient-band cell" if key == "instances" else None
        p.add_argument("--" + key.replace("_", "-"), type=int, default=default, help=help_)

    def run(args: argparse.Namespace) -> int:
        from trainer.experiments.reproduce import run as reproduce

        options = {k: getattr(args, k) for k in BUDGET}
        for path in reproduce(args.claims, docs=args.docs, runs=args.runs, seeds=args.seeds, options=options):
            print(f"wrote {path}")
        return 0

    p.set_defaults(run=run)


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["es"]:
        sys.exit(_run_es(argv[1:]))
    parser = argparse.ArgumentParser(prog="python -m trainer", description="odetoode trainer")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    sub.add_parser("es", help="train a policy with evolution strategies (see: python -m trainer es --help)")
    _export_parser(sub)
    _plot_parser(sub)
    _supervised_parser(sub)
    _table_parser(sub)
    _reproduce_parser(sub)
    args = parser.parse_args(argv)
    sys.exit(args.run(args))
