"""``models/<name>/config.yaml``: a model's optional serving settings, validated, merged over the server defaults.

Example::

    version_policy: {latest: 2}       # or {all: true} or {specific: [1, 3]}
    max_batch_size: 64                # 0: no batch dimension (each request runs alone)
    max_queue_delay_us: 200
    providers: [cuda, cpu]
    allow_cpu_fallback: true
    control_rate_hz: 100              # a hint GetPolicy passes to robots
    max_request_rows: 4096            # the largest batch one request may carry
    labels: {probabilities: [cat, dog, bird]}   # class labels per output (the classification extension)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from service.errors import ModelLoadError

if TYPE_CHECKING:
    from service.settings import ServerSettings

Provider = Literal["cuda", "tensorrt", "cpu"]
CONFIG_FILE = "config.yaml"


class VersionPolicy(BaseModel):
    """Which versions of a model are served: the ``latest`` n, ``all``, or a ``specific`` list."""

    model_config = ConfigDict(extra="forbid")

    latest: int | None = Field(None, ge=1)
    all: bool | None = None
    specific: list[int] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _exactly_one(self) -> VersionPolicy:
        chosen = [k for k in ("latest", "all", "specific") if getattr(self, k) not in (None, False)]
        if len(chosen) > 1:
            raise ValueError(f"give one of latest, all, specific; got {chosen}")
        if not chosen:
            self.latest = 1
        return self

    def select(self, versions: list[int]) -> list[int]:
        """The versions to serve among ``versions`` (all present on disk), ascending."""
        ordered = sorted(versions)
        if self.all:
            return ordered
        if self.specific is not None:
            return [v for v in ordered if v in set(self.specific)]
        return ordered[-(self.latest or 1) :]


class ServingConfig(BaseModel):
    """The optional per-model file; every field left out falls back to the server's setting."""

    model_config = ConfigDict(extra="forbid")

    version_policy: VersionPolicy = Field(default_factory=VersionPolicy)
    max_batch_size: int | None = Field(None, ge=0)
    """The most rows one run stacks; 0: the model has no batch dimension (each request runs alone, with the shapes it
    brings), as in Triton. A model whose inputs and outputs do not all start with a variable dimension is never
    batched."""
    max_queue_delay_us: int | None = Field(None, ge=0)
    max_queue_size: int | None = Field(None, ge=1)
    providers: list[Provider] | None = Field(None, min_length=1)
    allow_cpu_fallback: bool | None = None
    intra_op_threads: int | None = Field(None, ge=1)
    control_rate_hz: float | None = Field(None, gt=0)
    allow_non_finite: bool = False
    """Accept NaN/Inf inputs. Off: a policy fed NaN would answer NaN actions, so such requests are rejected."""
    max_request_rows: int | None = Field(None, ge=1)
    """The largest batch one request may carry, whatever its size in bytes."""
    labels: dict[str, Annotated[list[str], Field(min_length=1)]] = Field(default_factory=dict)
    """Class labels per output name, in class-index order: Triton's classification extension answers
    ``"<value>:<index>:<label>"`` for such an output. Checked against the model when it loads
    (``service.classification.check_labels``): an output it has, one label per class."""


@dataclass(frozen=True)
class ResolvedConfig:
    """A model's effective serving settings: its ``config.yaml`` over the server defaults."""

    version_policy: VersionPolicy
    max_batch_size: int
    max_queue_delay_us: int
    max_queue_size: int
    providers: tuple[Provider, ...]
    allow_cpu_fallback: bool
    intra_op_threads: int
    control_rate_hz: float | None
    allow_non_finite: bool
    max_request_rows: int
    labels: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Class labels per output name (``ServingConfig.labels``)."""

    def to_wire(self) -> dict[str, Any]:
        """What a bulk worker process needs to open and run the model and to answer as the server would (labels
        included; JSON-able; the version policy stays here)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "version_policy"}
        labels = {name: list(names) for name, names in self.labels.items()}
        return {**fields, "providers": list(self.providers), "labels": labels}

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> ResolvedConfig:
        labels = {name: tuple(names) for name, names in wire.get("labels", {}).items()}
        return cls(version_policy=VersionPolicy(), **{**wire, "providers": tuple(wire["providers"]), "labels": labels})


def resolve(config: ServingConfig, settings: ServerSettings) -> ResolvedConfig:
    return ResolvedConfig(
        version_policy=config.version_policy,
        max_batch_size=settings.max_batch_size if config.max_batch_size is None else config.max_batch_size,
        max_queue_delay_us=(
            settings.max_queue_delay_us if config.max_queue_delay_us is None else config.max_queue_delay_us
        ),
        max_queue_size=config.max_queue_size or settings.max_queue_size,
        providers=tuple(config.providers or settings.providers),
        allow_cpu_fallback=(
            settings.allow_cpu_fallback if config.allow_cpu_fallback is None else config.allow_cpu_fallback
        ),
        intra_op_threads=config.intra_op_threads or settings.intra_op_threads or 1,
        control_rate_hz=config.control_rate_hz,
        allow_non_finite=config.allow_non_finite,
        max_request_rows=config.max_request_rows or settings.max_request_rows,
        labels={name: tuple(names) for name, names in config.labels.items()},
    )


def load_serving_config(model_dir: Path) -> ServingConfig:
    """Reads ``<model_dir>/config.yaml`` if present; raises ``ModelLoadError`` naming the file and the field."""
    path = model_dir / CONFIG_FILE
    if not path.is_file():
        return ServingConfig()
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{model_dir.name}/{CONFIG_FILE}: not valid YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{model_dir.name}/{CONFIG_FILE}: expected a mapping at the top level")
    try:
        return ServingConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ModelLoadError(f"{model_dir.name}/{CONFIG_FILE}: {problems}") from None
