"""odetoode service: serves ODEtoODE models from an ONNX model repository over gRPC and REST (no PyTorch)."""

import functools

import odetoode.telemetry_off  # noqa: F401  (first: turns ONNX Runtime's telemetry off before any module here imports it)


@functools.cache
def server_version() -> str:
    """The installed distribution's version, looked up when first asked: importing ``importlib.metadata`` and
    scanning the installed distributions costs ~40 ms, which every process importing this package (bulk workers,
    the command-line tools) would otherwise pay at start."""
    from importlib.metadata import version

    return version("odetoode")
