"""The transport-neutral inference request and response, and what a model tells about itself.

Kept apart from the data plane so that the codecs (``service.rest_codec``, ``service.converters``) -- which the bulk
worker processes run too -- import nothing of the server (repository, metrics, settings).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from service.batching import Timing
from service.tensors import Tensor, TensorSpec


@dataclass
class InferRequest:
    """A transport-neutral inference request; ``deadline_ns`` is on the ``time.monotonic_ns`` clock."""

    model: str
    inputs: list[Tensor]
    version: str | None = None
    id: str | None = None
    outputs: list[str] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    deadline_ns: int | None = None
    protocol: str = "rest"


@dataclass
class InferResponse:
    model: str
    version: str
    outputs: list[Tensor]
    timing: Timing
    total_ns: int
    id: str | None = None


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
