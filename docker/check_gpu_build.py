"""Build-time check of docker/serve-gpu.Dockerfile: the CUDA provider is compiled in, and its CUDA major version
matches the base image's (``CUDA_VERSION``, set by the nvidia/cuda images). Needs no GPU."""

from __future__ import annotations

import os
import sys

import odetoode.telemetry_off  # noqa: F401  (first: turns ONNX Runtime's telemetry off before onnxruntime is imported)

# isort: split
import onnxruntime as ort

providers = ort.get_available_providers()
print("onnxruntime", ort.__version__, providers)
if "CUDAExecutionProvider" not in providers:
    sys.exit("onnxruntime has no CUDAExecutionProvider: is onnxruntime (CPU) installed beside onnxruntime-gpu?")
try:
    from onnxruntime.capi import build_and_package_info as info

    built = str(getattr(info, "cuda_version", "") or "")
except ImportError:
    built = ""
base = os.environ.get("CUDA_VERSION", "")
print(f"onnxruntime built for CUDA {built or '?'}; base image CUDA {base or '(none: not an nvidia/cuda base)'}")
if built and base and built.split(".")[0] != base.split(".")[0]:
    sys.exit(
        f"onnxruntime-gpu needs CUDA {built.split('.')[0]}.x but the base image has CUDA {base}: pick a base "
        f"image of the same CUDA major version (BASE_IMAGE build argument)"
    )
