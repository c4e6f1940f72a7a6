"""Execution providers, thread sizing and the load-time checks of ``service.runtime``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from odetoode.testing.models import add_policy
from service.errors import ModelLoadError
from service.model_config import ServingConfig, resolve
from service.runtime import ModelRuntime, available_cpus, choose_providers
from service.settings import ServerSettings

CPU_ONLY = ["AzureExecutionProvider", "CPUExecutionProvider"]
WITH_CUDA = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def test_cuda_requested_on_a_cpu_build_fails_loudly() -> None:
    with pytest.raises(ModelLoadError, match=r"\['cuda'\] requested but this ONNX Runtime build has only"):
        choose_providers(["cuda", "cpu"], allow_cpu_fallback=False, available=CPU_ONLY)


def test_cpu_fallback_only_when_allowed() -> None:
    assert choose_providers(["cuda"], allow_cpu_fallback=True, available=CPU_ONLY) == ["CPUExecutionProvider"]


def test_gpu_providers_are_kept_in_order_when_present() -> None:
    assert choose_providers(["tensorrt", "cuda", "cpu"], False, WITH_CUDA) == WITH_CUDA
    assert choose_providers(["cuda"], False, WITH_CUDA) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(["cpu"], False, WITH_CUDA) == ["CPUExecutionProvider"]


def test_a_model_that_asks_for_cuda_fails_to_load_here_and_falls_back_when_allowed(tmp_path: Path) -> None:
    path = add_policy(tmp_path, "m")
    settings = ServerSettings(repository=tmp_path)
    strict = resolve(ServingConfig(providers=["cuda", "cpu"]), settings)
    with pytest.raises(ModelLoadError, match="install odetoode\\[gpu\\]"):
        ModelRuntime(path, strict)
    relaxed = resolve(ServingConfig(providers=["cuda", "cpu"], allow_cpu_fallback=True), settings)
    runtime = ModelRuntime(path, relaxed)
    assert runtime.providers[0] == "CPUExecutionProvider" and not runtime.on_gpu
    runtime.check()
    assert runtime.compute_us_batch1 > 0


def test_threads_follow_the_cpus_this_process_may_use() -> None:
    cpus = available_cpus()
    assert 1 <= cpus <= len(os.sched_getaffinity(0))
    original = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(original)})
        assert available_cpus() == 1
    finally:
        os.sched_setaffinity(0, original)


def test_a_file_that_claims_a_description_is_held_to_it(tmp_path: Path) -> None:
    """One odetoode key is a claim: without its format key the file is refused, not served as an anonymous model."""
    import onnx

    path = add_policy(tmp_path, "m")
    model = onnx.load(str(path))
    kept = [p for p in model.metadata_props if p.key != "odetoode.format"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save_model(model, str(path))
    with pytest.raises(ModelLoadError, match=r"odetoode\.format: missing"):
        ModelRuntime(path, resolve(ServingConfig(), ServerSettings(repository=tmp_path)))


def test_a_file_without_odetoode_metadata_is_served_as_it_is(tmp_path: Path) -> None:
    import onnx

    path = add_policy(tmp_path, "m")
    model = onnx.load(str(path))
    del model.metadata_props[:]
    onnx.save_model(model, str(path))
    runtime = ModelRuntime(path, resolve(ServingConfig(), ServerSettings(repository=tmp_path)))
    runtime.check()
    assert runtime.description is None and runtime.self_check() is None
    assert runtime.batched and runtime.compute_us_batch1 > 0
