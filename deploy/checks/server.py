"""What the server expects of a deployment: its settings as a container's environment yields them, and the rules
that every deployment form (Kubernetes, KServe, Compose, images) shares.

The server is read, never restated: ``service.settings.ServerSettings`` (the installed project) decides which
variables exist, how they parse and what the defaults are.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from service.settings import ServerSettings

# Seconds that terminationGracePeriodSeconds must leave beyond preStop + drain ("comfortably above").
GRACE_MARGIN_S = 5.0
TELEMETRY_OFF = ("ORT_DISABLE_TELEMETRY", "1")
"""ONNX Runtime 1.29+ phones home on Linux unless this is in the environment before it is imported: every image and
manifest sets it, beside the server setting it for its own process."""


@contextlib.contextmanager
def _only_env(env: dict[str, str]) -> Iterator[None]:
    """Within the block, the ODETOODE_* variables of the process are exactly ``env``; restored afterwards."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("ODETOODE_")}
    for k in saved:
        del os.environ[k]
    os.environ.update(env)
    try:
        yield
    finally:
        for k in env:
            os.environ.pop(k, None)
        os.environ.update(saved)


def effective_settings(env: dict[str, str]) -> ServerSettings:
    """ServerSettings as the server would build them from ``env`` (ODETOODE_* only; no command line).

    Raises ValueError naming the ODETOODE_* keys that are not ServerSettings fields, and pydantic's ValidationError
    for a value the server would refuse.
    """
    fields = set(ServerSettings.model_fields)
    unknown = sorted(k for k in env if k.startswith("ODETOODE_") and k.removeprefix("ODETOODE_").lower() not in fields)
    if unknown:
        raise ValueError(f"not ServerSettings fields: {unknown}")
    # The settings read the process environment: the caller's own ODETOODE_* must not leak into the answer.
    with _only_env({k: v for k, v in env.items() if k.startswith("ODETOODE_")}):
        return ServerSettings()
