"""``benchmarks/gpu_check.py`` as a user runs it, on a host whose ONNX Runtime has no CUDA provider: it says what it
runs on, then fails loudly -- a non-zero exit naming ``CUDAExecutionProvider`` -- and writes no results that could
pass for a measurement. (Its measuring parts are tested on CPU in tests/odetoode/test_gpu.py.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import onnxruntime as ort
import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_without_a_cuda_provider_it_fails_loudly_and_writes_nothing(tmp_path: Path) -> None:
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this ONNX Runtime has CUDA")
    results = tmp_path / "results"
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py", str(results)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode != 0
    assert "gpu_check FAILED" in done.stderr and "no CUDAExecutionProvider" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr  # a message, not a crash
    assert f"ONNX Runtime: {ort.__version__}" in done.stdout  # the versions come first, to say what failed where
    assert "passed" not in done.stdout
    assert not results.exists()
