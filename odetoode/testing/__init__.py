"""What the server's tests and benchmarks share, importable without PyTorch: committed model files made by the
exporter (``models``), real servers on ephemeral ports (``servers``) and request builders (``clients``)."""

import odetoode.telemetry_off  # noqa: F401  (first: turns ONNX Runtime's telemetry off before any module here imports it)
