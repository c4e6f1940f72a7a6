"""odetoode service: serves ODEtoODE models from an ONNX model repository over gRPC and REST (no PyTorch)."""

from importlib.metadata import version

import odetoode.telemetry_off  # noqa: F401  (first: turns ONNX Runtime's telemetry off before any module here imports it)

__version__ = version("odetoode")
