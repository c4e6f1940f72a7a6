"""odetoode trainer: ODEtoODE models, manifold optimization, training and unrolled ONNX export (needs PyTorch)."""

import odetoode.telemetry_off  # noqa: F401  (first: turns ONNX Runtime's telemetry off before any module here imports it)
