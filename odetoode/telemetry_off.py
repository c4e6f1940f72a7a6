"""Importing this module turns ONNX Runtime's telemetry off for this process and its children.

ONNX Runtime 1.29+ on Linux sends usage events and keeps a device id under ``$HOME/.cache`` (``$XDG_CACHE_HOME``)
unless ``ORT_DISABLE_TELEMETRY=1`` is in the environment *before* ``onnxruntime`` is imported (importing it is enough
to start). ``service``, ``trainer`` and ``odetoode.testing`` import this module first, so every entry point of the
project -- server, trainer, benchmarks, tests -- is covered. The robot client never loads ONNX Runtime.
"""

import os

os.environ["ORT_DISABLE_TELEMETRY"] = "1"
