"""odetoode service: serves ODEtoODE models from an ONNX model repository over gRPC and REST (no PyTorch)."""

import odetoode  # noqa: F401  (first: turns ONNX Runtime's telemetry off before any module here imports it)
