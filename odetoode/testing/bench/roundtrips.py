"""Sequential round trips on an open stream, each a call without arguments (what ``sample`` and ``Row`` time): send
one request, wait for its answer, check it."""

from __future__ import annotations

import itertools
import queue
from collections.abc import Iterable
from typing import Any

import numpy as np


class StreamRoundTrip:
    """One round trip on an open ``ActStream`` (``PolicyClient.stream``): send the next of ``observations`` (cycled)
    with the next sequence number (from 1), receive its action within ``timeout`` seconds; raises ``RuntimeError``
    for any other answer."""

    def __init__(self, stream: Any, observations: Iterable[np.ndarray], timeout: float = 30.0) -> None:
        self.stream, self.timeout, self.sequence = stream, timeout, 0
        self._observations = itertools.cycle(observations)

    def __call__(self) -> Any:
        from odetoode.client import Action

        self.sequence += 1
        self.stream.send(next(self._observations), self.sequence)
        result = self.stream.receive(timeout=self.timeout)
        if not isinstance(result, Action) or result.sequence != self.sequence:
            raise RuntimeError(f"stream answered {result!r} to observation {self.sequence}")
        return result


class ModelStreamCall:
    """One round trip on an OIP ``ModelStreamInfer`` stream of a ``tritonclient.grpc.InferenceServerClient``
    (started here): send ``inputs`` to ``model``, wait for its callback; raises the error it reports."""

    def __init__(self, client: Any, model: str, inputs: list[Any]) -> None:
        self.client, self.model, self.inputs = client, model, inputs
        self.results: queue.SimpleQueue[tuple[Any, Any]] = queue.SimpleQueue()
        client.start_stream(callback=lambda result, error: self.results.put((result, error)))

    def __call__(self) -> Any:
        self.client.async_stream_infer(self.model, self.inputs)
        result, error = self.results.get(timeout=30)
        if error is not None:
            raise error
        return result
