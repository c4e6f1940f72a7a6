"""A server watched the way a deployment watches it, while a benchmark runs: a liveness probe every 100 ms on a new
connection (as a kubelet does), a scrape of its metrics every second (Prometheus' part), and its process tree (the
server and its workers) sampled for RSS and open file descriptors every 100 ms -- each a ``Series`` to read back by
time window."""

from __future__ import annotations

import threading
import time
import urllib.request

from odetoode.testing.bench.host import Series, tree_usage


def series_count(metrics_url: str) -> int:
    """Samples (lines that are not comments) at ``metrics_url`` now."""
    with urllib.request.urlopen(metrics_url, timeout=5) as r:
        return sum(1 for line in r.read().decode().splitlines() if line and not line.startswith("#"))


class Watch:
    """The prober (``health``: seconds per probe, and whether it answered 200), the scraper (``scrape``: seconds per
    scrape) and the sampler (``rss``: MiB, ``fds``), each a thread, from construction until ``stop``."""

    def __init__(self, health_url: str, metrics_url: str, pid: int) -> None:
        self.health_url, self.metrics_url, self.pid = health_url, metrics_url, pid
        self.health, self.scrape, self.rss, self.fds = Series(), Series(), Series(), Series()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=f, daemon=True) for f in (self._probe, self._scrape, self._sample)]
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(5)

    def count_series(self) -> int:
        return series_count(self.metrics_url)

    def _probe(self) -> None:
        while not self._stop.wait(0.1):
            start = time.monotonic()
            try:
                with urllib.request.urlopen(self.health_url, timeout=1) as r:
                    ok = r.status == 200
            except OSError:
                ok = False
            self.health.add(time.monotonic() - start, ok)

    def _scrape(self) -> None:
        while not self._stop.wait(1.0):
            start = time.monotonic()
            try:
                self.count_series()
                ok = True
            except OSError:
                ok = False
            self.scrape.add(time.monotonic() - start, ok)

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            rss, fds = tree_usage(self.pid)
            self.rss.add(rss)
            self.fds.add(fds)
