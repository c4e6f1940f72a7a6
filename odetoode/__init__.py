"""odetoode: ODEtoODE policies and classifiers, trained offline and served online.

This package holds what both halves share and nothing heavy: the model-file contract (``odetoode.modelfile``).
The trainer lives in ``trainer`` (needs PyTorch), the server in ``service`` (ONNX Runtime, no PyTorch).

Importing it turns ONNX Runtime's telemetry off for this process and its children: ONNX Runtime 1.29+ on Linux
sends usage events and keeps a device id under ``$HOME/.cache`` unless ``ORT_DISABLE_TELEMETRY=1`` is in the
environment *before* ``onnxruntime`` is imported (importing it is enough to start). ``service`` and ``trainer`` import
this package first, so every entry point of the project -- server, trainer, benchmarks, tests -- is covered.
"""

import os

os.environ["ORT_DISABLE_TELEMETRY"] = "1"

__version__ = "0.1.0"
