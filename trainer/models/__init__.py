"""Every architecture of the paper behind one registry: ``build_model("iso-odetoode", 17, 6, hidden=16)``.

The registry's names are the model-file contract's (``odetoode.modelfile.ARCHS``), in its order: an architecture
the contract does not name cannot be exported, and a name without a class fails at import.
"""

from __future__ import annotations

from typing import Any

from odetoode.modelfile import ARCHS
from trainer.models.base import FlowModel, WeightFlowModel
from trainer.models.baselines import NANODE, BaseODE, DeepNet, DeepResNet, DenseK, HyperNet, LayerStack
from trainer.models.gates import GatedWeightFlow
from trainer.models.odetoode import GatedODEtoODE, IsoODEtoODE

_CLASSES: dict[str, type[FlowModel]] = {
    cls.arch: cls for cls in (IsoODEtoODE, GatedODEtoODE, DeepNet, DeepResNet, BaseODE, NANODE, HyperNet, DenseK)
}
if set(_CLASSES) != set(ARCHS):
    raise ImportError(f"trainer.models and odetoode.modelfile.ARCHS disagree on {sorted(set(_CLASSES) ^ set(ARCHS))}")
ARCHITECTURES: dict[str, type[FlowModel]] = {arch: _CLASSES[arch] for arch in ARCHS}


def build_model(arch: str, in_features: int, out_features: int, **config: Any) -> FlowModel:
    """Instantiates ``arch`` (a key of ``ARCHITECTURES``); ``config`` holds the architecture's keyword arguments."""
    try:
        cls = ARCHITECTURES[arch]
    except KeyError:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {sorted(ARCHITECTURES)}") from None
    return cls(in_features, out_features, **config)


__all__ = [
    "ARCHITECTURES",
    "NANODE",
    "BaseODE",
    "DeepNet",
    "DeepResNet",
    "DenseK",
    "FlowModel",
    "GatedODEtoODE",
    "GatedWeightFlow",
    "HyperNet",
    "IsoODEtoODE",
    "LayerStack",
    "WeightFlowModel",
    "build_model",
]
