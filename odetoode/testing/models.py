"""Model repositories for tests and benchmarks, from the committed files in ``fixtures/``.

The files were made by the real exporter (``python -m trainer.fixtures``; a test checks they still match it), so a
repository laid out here is exactly what ``trainer export`` would have written -- without PyTorch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from odetoode.layout import MODEL_FILE, write_version

FIXTURES = Path(__file__).resolve().parent / "fixtures"
OBS, ACT = 17, 6
"""The policies' observation and action sizes (HalfCheetah's)."""
POLICY_SEEDS = range(5)
"""The untrained ISO-ODEtoODE policies committed, one per seed: different seeds give different actions."""


def policy_fixture(seed: int) -> Path:
    if seed not in POLICY_SEEDS:
        raise ValueError(f"no committed policy for seed {seed}: seeds {POLICY_SEEDS.start}..{POLICY_SEEDS.stop - 1}")
    return FIXTURES / f"policy-seed{seed}.onnx"


def add_policy(
    repository: Path,
    name: str = "policy",
    version: int | None = None,
    *,
    seed: int = 0,
    serving_config: dict[str, Any] | None = None,
) -> Path:
    """An ISO-ODEtoODE policy 17 -> 6 as ``<repository>/<name>/<version>/model.onnx``; returns that file."""
    files = {MODEL_FILE: policy_fixture(seed).read_bytes()}
    return write_version(repository, name, files, version, serving_config=serving_config) / MODEL_FILE


def add_classifier(repository: Path, name: str = "digits", version: int | None = None) -> Path:
    """A gated-ODEtoODE digits classifier (1x28x28 -> 10 logits)."""
    return write_version(repository, name, {MODEL_FILE: (FIXTURES / "digits.onnx").read_bytes()}, version) / MODEL_FILE


def add_garbage(repository: Path, name: str, version: int = 1, content: bytes = b"not an onnx file") -> Path:
    """A version directory whose model.onnx is not a model (what a truncated copy or a bad upload looks like)."""
    path = repository / name / str(version) / MODEL_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def add_runtime_failure(repository: Path, name: str = "fragile") -> Path:
    """A valid policy file whose graph fails at run time when the first observation entry is 20 or more: it loads,
    warms up on zeros and passes its golden self-check, then raises inside ONNX Runtime on such an observation."""
    return write_version(repository, name, {MODEL_FILE: (FIXTURES / "fragile.onnx").read_bytes()}, 1) / MODEL_FILE


def add_graph(repository: Path, name: str, graph: Any, serving_config: dict[str, Any] | None = None) -> Path:
    """Any ONNX graph (an ``onnx.GraphProto`` made by a test, no odetoode metadata) as version 1 of ``name``, opset 17,
    checked by ``onnx.checker``; with an optional ``config.yaml``. Needs the ``onnx`` package (imported here only)."""
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="a-test")
    onnx.checker.check_model(model, full_check=True)
    files = {MODEL_FILE: model.SerializeToString()}
    return write_version(repository, name, files, 1, serving_config=serving_config) / MODEL_FILE
