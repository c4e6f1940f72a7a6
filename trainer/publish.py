"""Publishing a trained model: a checkpoint (or a run directory) -> a version in a model repository.

``export_checkpoint`` is the one path from training to serving, used by ``python -m trainer export``, by
``es --export`` and by ``supervised --export``; ``write_to_repository`` places an exported model as a new version,
atomically. What the model card and the ``odetoode.training`` record get beyond
the checkpoint's own record follows from what the source holds, never from who calls:

* every model with Stiefel/orthogonal parameters: how far training let them drift from their manifolds;
* a policy, when ``episodes > 0``: an evaluation of the exported file by ONNX Runtime alone, on episode seeds
  training never used: the card's Evaluation section, ``evaluation.json`` and ``evaluation.png``, written by
  ``trainer.evaluate.EvaluationReport`` exactly as ``python -m trainer evaluate ... --card`` writes them;
* a run directory with ``config.json`` and ``log.jsonl`` (an ES run): its learning curve, beside the model;
* a classifier: real test digits as golden inputs, and its ``test_accuracy_<corruption>`` metrics as a table.
"""

from __future__ import annotations

import dataclasses
import hashlib
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from odetoode.layout import MODEL_FILE, next_version, write_version
from trainer.checkpoint import Checkpoint
from trainer.evaluate import Evaluation, EvaluationReport, evaluate_onnx, evaluation_command
from trainer.export import ExportedModel, ExportError, PolicySpec, export_classifier, export_policy
from trainer.manifolds import Stiefel, orthogonality_error
from trainer.models import FlowModel

RUN_CHECKPOINTS = ("best.pt", "checkpoint.pt")
"""What a run directory exports, in order of preference: an ES run's best evaluated policy, else its (or a
supervised run's) latest checkpoint."""
ACCURACY_PREFIX = "test_accuracy_"


@dataclass(frozen=True)
class PublishedModel:
    """A version written to a repository: its directory and the model as exported."""

    path: Path
    exported: ExportedModel


def resolve_source(source: Path) -> tuple[Checkpoint, Path | None]:
    """The checkpoint a source names and the run directory around it (``None`` when it has no training log).

    ``source`` is a checkpoint file or a run directory (``RUN_CHECKPOINTS``); a checkpoint inside a run directory
    brings the run along.
    """
    if source.is_dir():
        found = next((source / f for f in RUN_CHECKPOINTS if (source / f).is_file()), None)
        if found is None:
            raise FileNotFoundError(f"{source}: a run directory needs one of {list(RUN_CHECKPOINTS)}")
        checkpoint, run = found, source
    else:
        checkpoint, run = source, source.parent
    has_log = (run / "log.jsonl").is_file() and (run / "config.json").is_file()
    return Checkpoint.load(checkpoint), run if has_log else None


def manifold_drift(model: FlowModel) -> float | None:
    """The largest orthogonality error of the Stiefel/orthogonal parameters (``None`` if the model has none).

    Riemannian updates keep them on their manifolds up to rounding (about 1e-13 in float64)."""
    errors = [float(orthogonality_error(p.detach()).max()) for name, p in model.named_parameters()
              if isinstance(model.manifolds[name], Stiefel)]  # fmt: skip
    return max(errors) if errors else None


def export_checkpoint(
    source: Path | Checkpoint,
    name: str,
    repository: Path,
    *,
    version: int | None = None,
    episodes: int = 0,
) -> PublishedModel:
    """Exports ``source`` (a checkpoint file, a run directory, or a ``Checkpoint`` in memory) into ``repository``
    as ``name``, version ``version`` (default: the next). Raises ``ExportError`` when a policy checkpoint lacks its
    spaces or normalization, or when ``episodes > 0`` and it names no environment."""
    checkpoint, run = (source, None) if isinstance(source, Checkpoint) else resolve_source(Path(source))
    model = checkpoint.model(dtype=torch.float64)  # exact for float32 checkpoints, and ES trains in float64
    record = checkpoint.training
    metrics = dict(record.metrics)
    drift = manifold_drift(model)
    if drift is not None:
        metrics["stiefel_orthogonality_error_max"] = float(f"{drift:.3g}")
    version = next_version(repository / name) if version is None else version  # the card's command names the file
    sections: list[list[str]] = []  # markdown blocks for the card, in order
    extra_files: dict[str, bytes] = {}
    evaluation: Evaluation | None = None
    with tempfile.TemporaryDirectory() as tmp:
        if checkpoint.kind == "policy":
            exported = export_policy(model, _policy_spec(checkpoint))
            if episodes > 0:
                evaluation = _evaluate(exported, checkpoint.env_id, episodes, metrics)
        else:
            from trainer.data.digits import digits_c

            images, _ = digits_c("identity", split="test")
            exported = export_classifier(model, sample_images=images[:8, None])
            sections.append(_accuracy_table(metrics))
        evaluated_graph = exported.proto.graph
        exported = exported.with_training(dataclasses.replace(record, metrics=metrics))
        if evaluation is not None:
            # The returns were measured before they were written into the metadata; ONNX Runtime runs the graph,
            # which that left as it was, so they are the returns of the file the card describes (its sha256).
            assert exported.proto.graph == evaluated_graph
            report = EvaluationReport(
                evaluation, hashlib.sha256(exported.proto.SerializeToString()).hexdigest(),
                evaluation_command(repository / name / str(version) / MODEL_FILE, episodes),
            )  # fmt: skip
            sections.insert(0, report.section())
            extra_files.update(report.files())
        if run is not None:
            from trainer.plots import plot_learning_curves

            curve = plot_learning_curves([run], Path(tmp) / "learning_curve.png", title=name)
            extra_files[curve.name] = curve.read_bytes()
            sections.append(["## Learning curve", "", f"![learning curve]({curve.name})"])
    exported.card_sections = _blank_line_joined(sections)
    path = write_to_repository(exported, repository, name, version, extra_files=extra_files)
    return PublishedModel(path, exported)


def _blank_line_joined(blocks: list[list[str]]) -> list[str]:
    lines: list[str] = []
    for block in blocks:
        if block:
            lines += ([""] if lines else []) + block
    return lines


def _policy_spec(checkpoint: Checkpoint) -> PolicySpec:
    if checkpoint.observation_space is None or checkpoint.action_space is None or checkpoint.normalization is None:
        raise ExportError("a policy checkpoint needs its observation and action spaces and normalization to export")
    return PolicySpec(checkpoint.observation_space, checkpoint.action_space, checkpoint.normalization,
                      checkpoint.env_id)  # fmt: skip


def _evaluate(exported: ExportedModel, env_id: str | None, episodes: int, metrics: dict[str, object]) -> Evaluation:
    """Runs the exported graph with ONNX Runtime alone; adds its mean return and sample std to ``metrics``."""
    if not env_id:
        raise ExportError("evaluating a policy needs the environment it was trained on (the checkpoint names none)")
    evaluation = evaluate_onnx(exported.proto.SerializeToString(), env_id, episodes)
    seeds = f"{evaluation.seeds[0]}..{evaluation.seeds[-1]}"
    metrics.update({
        f"onnx_eval_return_{episodes}_episodes": round(evaluation.mean, 2),
        f"onnx_eval_return_std_{episodes}_episodes": round(evaluation.std, 2),
        "onnx_eval_seeds": f"{seeds} (never used in training)",
    })  # fmt: skip
    return evaluation


def _accuracy_table(metrics: dict[str, object]) -> list[str]:
    accuracies = {k.removeprefix(ACCURACY_PREFIX): v for k, v in metrics.items() if k.startswith(ACCURACY_PREFIX)}
    if not accuracies:
        return []
    return [
        "## Test accuracy on digits-C",
        "",
        "Trained on clean digits (scikit-learn's handwritten digits at 28x28), tested on each MNIST-C corruption of "
        "the held-out split (`identity` is the clean test set).",
        "",
        "| corruption | accuracy (%) |",
        "|---|---|",
        *(f"| {k.replace('_', ' ')} | {100 * float(v):.2f} |" for k, v in accuracies.items()),  # type: ignore[arg-type]
    ]


def write_to_repository(
    exported: ExportedModel,
    repository: str | Path,
    name: str,
    version: int | None = None,
    *,
    serving_config: Mapping[str, Any] | None = None,
    extra_files: Mapping[str, bytes] | None = None,
) -> Path:
    """Writes ``<repository>/<name>/<version>/{model.onnx, README.md}`` atomically; returns the version directory.

    ``version`` defaults to one past the highest existing version. ``serving_config`` (if given) replaces
    ``<name>/config.yaml``; ``extra_files`` (plain names, e.g. a learning-curve PNG) go beside the model. An existing
    version is never overwritten.
    """
    version = next_version(Path(repository) / name) if version is None else version
    files = {MODEL_FILE: exported.proto.SerializeToString(), "README.md": exported.card(name, version).encode()}
    for filename, content in (extra_files or {}).items():
        if filename in files:
            raise ValueError(f"extra file name {filename!r} is not a free name")
        files[filename] = content
    return write_version(repository, name, files, version, serving_config=serving_config)
