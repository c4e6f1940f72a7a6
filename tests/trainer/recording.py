"""A rollout backend without an environment, for tests of what reaches the optimizer and which seeds are drawn."""

from __future__ import annotations

import numpy as np

from trainer.rollouts import RolloutRequest, RolloutResult


class RecordingBackend:
    """Scores member ``i`` with ``i % 7`` (no environment) and keeps every request."""

    workers = 1

    def __init__(self, obs_dim: int) -> None:
        self.obs_dim = obs_dim
        self.requests: list[RolloutRequest] = []

    def evaluate(self, request: RolloutRequest) -> RolloutResult:
        self.requests.append(request)
        n = len(request.seeds)
        returns = np.arange(n, dtype=np.float64) % 7
        zeros = np.zeros(self.obs_dim)
        return RolloutResult(returns, returns.copy(), np.ones(n, dtype=np.int64), float(n), zeros, zeros + 1.0)

    def close(self) -> None:
        pass
