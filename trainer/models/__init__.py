"""Every architecture of the paper behind one registry: ``build_model("iso-odetoode", 17, 6, hidden=16)``."""

from __future__ import annotations

from typing import Any

from trainer.models.base import FlowModel
from trainer.models.baselines import NANODE, BaseODE, DeepNet, DeepResNet, DenseK, HyperNet
from trainer.models.odetoode import GatedODEtoODE, IsoODEtoODE

ARCHITECTURES: dict[str, type[FlowModel]] = {
    cls.arch: cls for cls in (IsoODEtoODE, GatedODEtoODE, DeepNet, DeepResNet, BaseODE, NANODE, HyperNet, DenseK)
}


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
    "HyperNet",
    "IsoODEtoODE",
    "build_model",
]
