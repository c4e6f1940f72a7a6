"""``python -m trainer <command>``: the trainer's command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from odetoode.modelfile import Box, Normalization
from trainer.checkpoint import Checkpoint
from trainer.export import ExportedModel, PolicySpec, export_classifier, export_policy, write_to_repository
from trainer.models import ARCHITECTURES, build_model


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


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m trainer", description="odetoode trainer")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    _export_parser(sub)
    args = parser.parse_args(argv)
    sys.exit(args.run(args))
