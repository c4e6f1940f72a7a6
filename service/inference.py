"""The transport-neutral inference request and response, and what a model tells about itself.

Kept apart from the data plane so that the codecs (``service.rest_codec``, ``service.v1_codec``,
``service.oip_codec``) -- which the bulk worker processes run too -- import nothing of the server (repository,
metrics, settings).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from service.batching import Timing
from service.tensors import Tensor, TensorSpec


@dataclass(frozen=True)
class RequestedOutput:
    """An output a request names; ``classification``: answer its top that many classes instead of its values
    (Triton's classification extension, ``service.classification``), ``None``: its values."""

    name: str
    classification: int | None = None


@dataclass
class InferRequest:
    """A transport-neutral inference request; ``deadline_ns`` is on the ``time.monotonic_ns`` clock. ``outputs``:
    the outputs asked for, in the request's order (empty: all of them, as values)."""

    model: str
    inputs: list[Tensor]
    version: str | None = None
    id: str | None = None
    outputs: list[RequestedOutput] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    deadline_ns: int | None = None
    protocol: str = "rest"


class Acted(NamedTuple):
    """What ``act_on`` answers: the version that answered, its action (one row, float32), where the time went."""

    version: str
    action: np.ndarray
    timing: Timing
    total_ns: int


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


@dataclass(frozen=True)
class ModelConfig:
    """Triton's model-configuration extension for one served version, plus what the model file says about itself
    (``description``: its ``odetoode.*`` metadata without the prefix). Each transport renders it its own way."""

    name: str
    version: str
    platform: str
    backend: str
    max_batch_size: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    max_queue_delay_us: int
    max_queue_size: int
    execution_providers: list[str]
    execution: str
    description: dict[str, str]
    labels: dict[str, list[str]] = field(default_factory=dict)
    """Class labels per output name, from ``config.yaml`` (the classification extension's labels)."""

    def dims(self, spec: TensorSpec) -> tuple[int, ...]:
        """A tensor's dimensions as Triton's configuration states them: without the batch dimension when the model
        is batched (``max_batch_size`` > 0), all of them when it is not."""
        return spec.shape[1:] if self.max_batch_size > 0 else spec.shape
