"""Supervised classifiers on digits-C (Sec. 5.2 of the paper): train on clean digits, test on every corruption.

Models are the paper's: Dense-k (k hidden layers), NODE (BaseODE), NANODE-k (degree k), HyperNet-k and
gated-ODEtoODE-k (k gates), all of width ``w`` with unconstrained input/output layers, step size eta = 0.01
(N = 100) for the continuous ones. ``W_0`` of ODEtoODE stays exactly orthogonal during training through PyTorch's
orthogonal parametrization with the matrix exponential (``W_0 = exp(A - A^T)`` applied to its initial value).
Dropout (Table 2) acts on the hidden state after the input layer and before the output layer.

Controlled choices the paper leaves open: every column uses the flows' ``f(x) = |x|`` (``ACTIVATION``; Dense-k too,
with weights scaled for it), and HyperNet-k's gates are ODEtoODE-k's (``TABLE_GATES``), so HyperNet-k and
ODEtoODE-k have equal parameter counts and differ only in the orthogonality constraint. ``dense-k-relu`` and
``hypernet-k-wide`` / ``odetoode-k-wide`` are the named alternatives, for ablations.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from torch.nn.utils.parametrizations import orthogonal
from tqdm import tqdm

from odetoode.modelfile import TrainingRecord
from trainer.checkpoint import Checkpoint
from trainer.data.digits import DIGITS_C_CORRUPTIONS, digits_c
from trainer.models import FlowModel, build_model
from trainer.models.gates import TIME_GATES, WIDE_TIME_GATES
from trainer.program import Program
from trainer.provenance import command_line
from trainer.rundir import prepare_run_directory

PIXELS, CLASSES = 28 * 28, 10
DATASET = "digits"
"""The training set (``TrainingRecord.env``): scikit-learn's handwritten digits at 28x28, clean."""


TABLE_GATES = TIME_GATES
"""The gate networks of every HyperNet-k and ODEtoODE-k column: one spec, so the two families differ only in the
orthogonality constraint (``-wide`` columns use ``WIDE_TIME_GATES`` instead, for the ablation)."""
ACTIVATION = "abs"
"""The nonlinearity of every column: the flows' ``f(x) = |x|`` (the paper's), Dense-k's too unless ``-relu``."""


@dataclass(frozen=True)
class ClassifierSpec:
    """One column of the paper's tables: ``Dense-1``, ``NANODE-10``, ``ODEtoODE-4``... or a named variant of one.

    ``options`` are every keyword argument the column's architecture is built with beyond the table's width and
    steps (so a cached run can be checked against them): the activation, and the gates' shape for HyperNet-k and
    ODEtoODE-k.
    """

    label: str
    arch: str
    options: dict[str, Any]

    VARIANTS: ClassVar[dict[str, dict[str, tuple[str, dict[str, Any]]]]] = {
        "dense": {"relu": ("ReLU", {"activation": "relu"})},
        "hypernet": {"wide": ("gates w16", WIDE_TIME_GATES.options())},
        "odetoode": {"wide": ("gates w16", WIDE_TIME_GATES.options())},
    }
    """Named variants ``family-k-variant``: their label suffix and the options they override."""

    @staticmethod
    def parse(label: str) -> ClassifierSpec:
        """``dense-k``, ``node``, ``nanode-k``, ``hypernet-k``, ``odetoode-k`` (case-insensitive), or a variant:
        ``dense-k-relu`` (Dense-k with ReLU instead of ``|x|``), ``hypernet-k-wide`` / ``odetoode-k-wide`` (gates of
        width 16 instead of ``TABLE_GATES``' 8)."""
        name, *rest = label.lower().split("-")
        if name == "node":
            if rest:
                raise ValueError(f"{label!r}: node (NODE) takes no k and has no variants")
            return ClassifierSpec("NODE", "baseode", {"activation": ACTIVATION})
        k, variant = (rest[0], rest[1:]) if rest else ("", [])
        if not k.isdigit() or len(variant) > 1:
            raise ValueError(
                f"{label!r}: expected dense-k, node, nanode-k, hypernet-k or odetoode-k, optionally with a variant "
                "(dense-k-relu, hypernet-k-wide, odetoode-k-wide)"
            )
        n = int(k)
        table = {
            "dense": ("Dense", "dense", {"depth": n}),
            "nanode": ("NANODE", "nanode", {"degree": n}),
            "hypernet": ("HyperNet", "hypernet", {"gates": n, **TABLE_GATES.options()}),
            "odetoode": ("ODEtoODE", "gated-odetoode", {"gates": n, **TABLE_GATES.options()}),
        }
        if name not in table:
            raise ValueError(f"{label!r}: unknown model family {name!r}")
        title, arch, options = table[name]
        options = {**options, "activation": ACTIVATION}
        title = f"{title}-{n}"
        if variant:
            known = ClassifierSpec.VARIANTS.get(name, {})
            if variant[0] not in known:
                raise ValueError(f"{label!r}: {name}-k has no variant {variant[0]!r}; known: {sorted(known) or 'none'}")
            suffix, override = known[variant[0]]
            title, options = f"{title} ({suffix})", {**options, **override}
        return ClassifierSpec(title, arch, options)


TABLE_1 = ("dense-1", "dense-10", "node", "nanode-1", "nanode-10", "hypernet-1", "hypernet-10", "odetoode-1",
           "odetoode-10")  # fmt: skip
TABLE_2 = ("dense-1", "dense-2", "dense-4", "node", "nanode-1", "nanode-2", "nanode-4", "hypernet-1", "hypernet-2",
           "hypernet-4", "odetoode-1", "odetoode-2", "odetoode-4")  # fmt: skip


@dataclass
class SupervisedConfig:
    """One classifier of the tables: its column, width, regularization and training budget."""

    model: str = "odetoode-1"
    """A table column: dense-k (k hidden layers), node (NODE: BaseODE), nanode-k (NANODE, degree k), hypernet-k
    (HyperNet, k gates) or odetoode-k (gated-ODEtoODE, k gates), all of width --width with f(x) = |x|; HyperNet-k and
    ODEtoODE-k share one gate-network shape (width 8, networks of t). Variants: dense-k-relu (ReLU), hypernet-k-wide
    and odetoode-k-wide (gates of width 16). The continuous ones take N = 1 / --step Euler steps. E.g. odetoode-1
    with the defaults: gated-ODEtoODE, one gate, h = 128, N = 100."""
    width: int = 128
    """Hidden width w (Table 1: 128; Table 2: 256)."""
    dropout: float = 0.0
    """Dropout rate (Table 1: 0; Table 2: 0.1)."""
    step: float = 0.01
    """Discretization eta of the continuous models: N = 1 / eta steps."""
    epochs: int = 20
    """Passes over the training split (the paper: 100)."""
    batch_size: int = 128
    """Images per Adam step."""
    learning_rate: float = 1e-3
    """Adam learning rate."""
    seed: int = 0
    """Seeds the initialization, the data order and dropout."""


class Classifier(nn.Module):
    """A ``FlowModel`` on flattened images, with optional dropout around the flow."""

    def __init__(self, model: FlowModel, dropout: float) -> None:
        super().__init__()
        self.model = model
        self.dropout = nn.Dropout(dropout)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        m = self.model
        p = {name: getattr(m, name) for name in m.manifolds}  # parametrized values (orthogonal W_0)
        x = Program(m.input_layers(p))(images.reshape(images.shape[0], -1))
        x = Program(m.flow_layers(p))(self.dropout(x))
        return Program(m.output_layers(p))(self.dropout(x))


def build_classifier(config: SupervisedConfig) -> Classifier:
    spec = ClassifierSpec.parse(config.model)
    generator = torch.Generator().manual_seed(config.seed)
    steps = max(1, round(1 / config.step))
    model = build_model(spec.arch, PIXELS, CLASSES, hidden=config.width, steps=steps, projection="linear",
                        generator=generator, **spec.options)  # fmt: skip
    if "w0" in model.manifolds and spec.arch == "gated-odetoode":
        orthogonal(model, "w0", orthogonal_map="matrix_exp")
    return Classifier(model, config.dropout)


@torch.no_grad()
def predict(classifier: Classifier, images: np.ndarray, batch: int = 512) -> np.ndarray:
    """The predicted class of every image (``[n]`` int64), in evaluation mode."""
    classifier.eval()
    out = [
        classifier(torch.from_numpy(images[i : i + batch]).float()).argmax(dim=1) for i in range(0, len(images), batch)
    ]
    return torch.cat(out).numpy().astype(np.int64) if out else np.zeros(0, dtype=np.int64)


def accuracy(classifier: Classifier, images: np.ndarray, labels: np.ndarray, batch: int = 512) -> float:
    return float((predict(classifier, images, batch) == labels).mean())


def encode_predictions(classes: np.ndarray) -> str:
    """Predicted classes 0-9 as one digit per image (``"3170..."``): 360 characters for the digits-C test split."""
    if classes.size and not (classes.min() >= 0 and classes.max() < CLASSES):
        raise ValueError(f"predicted classes must lie in [0, {CLASSES}), got {classes.min()}..{classes.max()}")
    return "".join(map(str, classes.tolist()))


def decode_predictions(digits: str) -> np.ndarray:
    """Inverse of ``encode_predictions``: ``[n]`` int64."""
    return np.frombuffer(digits.encode("ascii"), dtype=np.uint8).astype(np.int64) - ord("0")


def evaluate_corruptions(classifier: Classifier, corruptions: tuple[str, ...] = tuple(DIGITS_C_CORRUPTIONS)
                         ) -> dict[str, np.ndarray]:  # fmt: skip
    """The predicted class of every test image under every corruption (``identity`` is the clean test set); the
    images are in ``digits_c``'s order, so ``digits_c(name, split="test")[1]`` are their labels."""
    return {name: predict(classifier, digits_c(name, split="test")[0]) for name in corruptions}


@dataclass
class SupervisedResult:
    config: SupervisedConfig
    accuracies: dict[str, float]
    epochs: int
    wall_s: float
    parameters: int
    final_loss: float
    loss_history: list[float] = dataclasses.field(default_factory=list)
    """Mean training loss of every epoch."""
    predictions: dict[str, str] = dataclasses.field(default_factory=dict)
    """Every test image's predicted class per corruption (``encode_predictions``), for paired tests between models."""
    model_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    """The column's architecture options (``ClassifierSpec.options``: activation, gate shape...) it was built with."""

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "config": dataclasses.asdict(self.config)}


def train(
    config: SupervisedConfig,
    *,
    progress: bool = True,
    out: Path | None = None,
    command: str | None = None,
    overwrite: bool = False,
) -> tuple[Classifier, SupervisedResult]:
    """Trains on the clean training split, evaluates on every corruption; writes ``out/result.json`` and
    ``out/checkpoint.pt`` (which ``trainer.publish.export_checkpoint`` exports) when ``out`` is given. ``command``
    is recorded as provenance (default: the configuration spelled as a command line).

    ``out`` is claimed before training (``trainer.rundir.prepare_run_directory``): a directory already holding a run
    raises ``ExistingRunError`` unless ``overwrite``, which deletes that run's files first. Raises ``ValueError`` for
    a ``config.model`` that names no table column."""
    torch.manual_seed(config.seed)
    images, labels = digits_c("identity", split="train")
    x, y = torch.from_numpy(images).float(), torch.from_numpy(labels).long()
    classifier = build_classifier(config)
    if out is not None:  # after the configuration proved valid (an old run is not deleted for a typo), before the work
        prepare_run_directory(out, overwrite=overwrite, resumable=False)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=config.learning_rate)
    rng = np.random.default_rng(config.seed)
    started = time.perf_counter()
    loss_value = float("nan")
    history: list[float] = []
    bar = tqdm(range(config.epochs), desc=f"{config.model} w={config.width}", disable=not progress, unit="epoch")
    for _ in bar:
        classifier.train()
        order = torch.from_numpy(rng.permutation(len(x)))
        total, seen = 0.0, 0
        for i in range(0, len(x), config.batch_size):
            index = order[i : i + config.batch_size]
            loss = F.cross_entropy(classifier(x[index]), y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(index)
            seen += len(index)
        loss_value = total / seen
        history.append(round(loss_value, 5))
        bar.set_postfix(loss=f"{loss_value:.4f}")
    wall = time.perf_counter() - started
    predictions = evaluate_corruptions(classifier)
    labels = digits_c("identity", split="test")[1]  # every corruption keeps the test split's labels and order
    result = SupervisedResult(
        config,
        accuracies={name: float((pred == labels).mean()) for name, pred in predictions.items()},
        epochs=config.epochs,
        wall_s=round(wall, 1),
        parameters=sum(p.numel() for p in classifier.parameters()),
        final_loss=round(loss_value, 5),
        loss_history=history,
        predictions={name: encode_predictions(pred) for name, pred in predictions.items()},
        model_options=ClassifierSpec.parse(config.model).options,
    )
    if out is not None:
        (out / "result.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
        checkpoint(classifier, result, command or command_line("supervised", config, out=out)).save(
            out / "checkpoint.pt"
        )
    return classifier, result


def checkpoint(classifier: Classifier, result: SupervisedResult, command: str) -> Checkpoint:
    """The trained classifier's ``FlowModel`` (``W_0``'s parametrization folded in) with its provenance: the
    test accuracy on every corruption as ``test_accuracy_<corruption>`` metrics."""
    config = result.config
    return Checkpoint.from_model(
        classifier.model, "classifier",
        training=TrainingRecord(
            command=command, seed=config.seed, env=DATASET, iterations=result.epochs, wall_s=result.wall_s,
            metrics={f"test_accuracy_{k}": round(v, 4) for k, v in result.accuracies.items()},
        ),
        extra={"supervised_config": dataclasses.asdict(config)},
    )  # fmt: skip
