"""Throughput of ``ActStream`` under 1, 16 and 64 concurrent closed-loop robots, dynamic batching on vs off.

One server process (``python -m service``) serves two models with identical weights (exported once, the version
directory copied): ``batched`` (``config.yaml``: ``max_batch_size: 64``, ``max_queue_delay_us: --delay-us``) and
``unbatched`` (``max_batch_size: 64``, ``max_queue_delay_us: 0``, so every observation is computed alone, at once, on
the event loop). Each run opens N streams against one of them; each stream is closed-loop: it sends its next
observation when the previous action arrives. Batched and unbatched runs of the same N follow each other (the order
flips every round), so drift on a shared machine hits both.

What is measured is the server, not the client, as far as a small machine allows:

* the clients are separate processes (``--procs``, default one per CPU left to them), each driving its share of the
  streams from one asyncio loop over ``grpc.aio``, one channel (connection) per stream as separate robots would
  have. The client does the least a client can: the request bytes are serialized once and written as they are, the
  answer is not parsed (its first byte says whether it is an action: ``ActStreamResponse.action`` is field 1), and
  a round trip costs two awaits and two clock reads;
* with ``--pin`` (the default when there are at least 2 CPUs) the server runs on CPU 0 and the clients on the others,
  so clients cannot steal the server's CPU; the server then sees one CPU (as ``available_cpus()`` reports it);
* each run also reports the client processes' CPU use: near 100% of their CPUs means the clients, not the server,
  set the pace (such rows are marked "client-bound?");
* the server's own figures over the measured window: the mean batch size (``odetoode_batch_size`` from its
  ``/metrics``, scraped at the start and end of the window) and the server process's CPU time per action (from
  ``/proc``), which depends less on what else the machine runs than actions/s does.

Target: batching >= 1.5x the unbatched throughput at 64 streams, with p99 < 10 ms.

    python benchmarks/policy_throughput.py [--seconds 5] [--rounds 1] [--streams 1 16 64] [--delay-us 300]
                                           [--providers cuda]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client.samples import Sample

from odetoode.testing.bench import add_pin_options, affinity, cpu_seconds, cpu_split, verdict
from odetoode.testing.bench.scrape import scrape, total
from odetoode.testing.gpu import add_provider_option

OBS = 17
MAX_BATCH = 64
METHOD = "/odetoode.v1.PolicyService/ActStream"
ACTION_TAG = 0x0A  # ActStreamResponse.action: field 1, length-delimited


# -- client processes ----------------------------------------------------------------------------------------------


async def drive_streams(target: str, model: str, streams: int, start_ns: int, end_ns: int, seed: int) -> dict:
    """``streams`` closed-loop ``ActStream`` calls, one channel each; counts and times answers in the window."""
    import grpc

    from odetoode.client import channel_options
    from odetoode.proto.odetoode.v1 import policy_pb2 as pb

    rng = np.random.default_rng(seed)
    # A local subchannel pool per channel: otherwise channels to one address share one connection, and 64 "robots"
    # would be 64 streams on a handful of connections.
    options = [*channel_options(), ("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(target, options=options) for _ in range(streams)]
    latencies: list[np.ndarray] = []
    errors = 0

    async def robot(channel: Any) -> None:
        nonlocal errors
        observation = rng.normal(size=OBS).astype("<f4").tobytes()
        first = pb.ActRequest(policy=model, observation=observation).SerializeToString()
        following = pb.ActRequest(observation=observation).SerializeToString()
        call = channel.stream_stream(METHOD)()  # no (de)serializers: bytes in, bytes out
        mine = np.empty(1 << 16, dtype=np.int64)
        n = 0
        request = first
        while True:
            sent = time.monotonic_ns()
            await call.write(request)
            answer = await call.read()
            now = time.monotonic_ns()
            if answer is grpc.aio.EOF:
                raise RuntimeError(f"stream ended: {await call.code()} {await call.details()}")
            request = following
            if answer[0] != ACTION_TAG:
                errors += 1
            if now >= end_ns:
                break
            if now >= start_ns:
                if n == len(mine):
                    latencies.append(mine)
                    mine, n = np.empty(len(mine), dtype=np.int64), 0
                mine[n] = now - sent
                n += 1
        latencies.append(mine[:n])
        await call.done_writing()  # the server ends the stream once it has answered everything
        if await call.read() is not grpc.aio.EOF or await call.code() != grpc.StatusCode.OK:
            raise RuntimeError(f"stream did not end cleanly: {await call.code()} {await call.details()}")

    cpu0, wall0 = time.process_time(), time.monotonic_ns()
    try:
        await asyncio.gather(*(robot(c) for c in channels))
    finally:
        for c in channels:
            await c.close()
    return {
        "latencies": np.concatenate(latencies) if latencies else np.empty(0, np.int64),
        "errors": errors,
        "cpu_s": time.process_time() - cpu0,
        "wall_s": (time.monotonic_ns() - wall0) / 1e9,
    }


def client_worker(conn: Connection, cpus: set[int] | None) -> None:
    """A client process: runs each job sent over ``conn`` and sends back its result; ``None`` ends it."""
    if cpus:
        os.sched_setaffinity(0, cpus)
    while True:
        job = conn.recv()
        if job is None:
            return
        try:
            conn.send(asyncio.run(drive_streams(**job)))
        except Exception as exc:  # reported to the parent, which fails the run
            conn.send({"error": f"{type(exc).__name__}: {exc}"})


# -- server side figures -------------------------------------------------------------------------------------------


def batch_stats(before: list[Sample], after: list[Sample], model: str) -> tuple[float, float]:
    """(batches, rows) computed for ``model`` between two scrapes."""

    def delta(name: str) -> float:
        return total(after, name, model=model, version="1") - total(before, name, model=model, version="1")

    return delta("odetoode_batch_size_count"), delta("odetoode_batch_size_sum")


# -- the runs ------------------------------------------------------------------------------------------------------


@dataclass
class Result:
    actions: int = 0
    seconds: float = 0.0
    errors: int = 0
    batches: float = 0.0
    rows: float = 0.0
    server_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    client_core_s: float = 0.0
    """Wall time x the CPUs the client processes could use: ``client_cpu_s / client_core_s`` is how busy they were."""
    latencies_ns: list[np.ndarray] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.actions / self.seconds if self.seconds else 0.0

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(np.concatenate(self.latencies_ns), q)) / 1e6 if self.actions else float("nan")


def run_once(
    workers: list[Connection],
    server: Any,
    model: str,
    streams: int,
    seconds: float,
    warmup: float,
    result: Result,
    client_cores: int,
) -> None:
    """One closed-loop run of ``streams`` streams on ``model``, split over the client processes."""
    shares = [len(a) for a in np.array_split(np.arange(streams), min(streams, len(workers)))]
    start_ns = time.monotonic_ns() + int(warmup * 1e9)
    end_ns = start_ns + int(seconds * 1e9)
    for i, (conn, share) in enumerate(zip(workers, shares, strict=False)):
        conn.send(dict(target=server.grpc, model=model, streams=share, start_ns=start_ns, end_ns=end_ns, seed=i))
    metrics_url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    time.sleep(max(0.0, (start_ns - time.monotonic_ns()) / 1e9))
    before, cpu_before = scrape(metrics_url), cpu_seconds(server.process.pid)
    time.sleep(max(0.0, (end_ns - time.monotonic_ns()) / 1e9))
    after, cpu_after = scrape(metrics_url), cpu_seconds(server.process.pid)
    for conn in workers[: len(shares)]:
        answer = conn.recv()
        if "error" in answer:
            raise RuntimeError(f"client process failed: {answer['error']}")
        result.latencies_ns.append(answer["latencies"])
        result.actions += len(answer["latencies"])
        result.errors += answer["errors"]
        result.client_cpu_s += answer["cpu_s"]
        result.client_core_s += answer["wall_s"] * min(len(shares), client_cores) / len(shares)
    result.seconds += seconds
    batches, rows = batch_stats(before, after, model)
    result.batches += batches
    result.rows += rows
    result.server_cpu_s += cpu_after - cpu_before


def make_repository(repo: Path, delay_us: int) -> None:
    """``batched`` and ``unbatched``: one export, the version directory copied, different ``config.yaml``."""
    import yaml

    from odetoode.testing.models import add_policy

    add_policy(repo, "batched", serving_config={"max_batch_size": MAX_BATCH, "max_queue_delay_us": delay_us})
    (repo / "unbatched").mkdir()
    shutil.copytree(repo / "batched" / "1", repo / "unbatched" / "1")
    config = {"max_batch_size": MAX_BATCH, "max_queue_delay_us": 0}
    (repo / "unbatched" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds each run's streams run before the window")
    parser.add_argument("--rounds", type=int, default=1, help="runs per (streams, batching), order flipped per round")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--delay-us", type=int, default=300, help="max_queue_delay_us of the batched model")
    parser.add_argument("--procs", type=int, default=0, help="client processes (0: one per client CPU)")
    add_pin_options(parser)
    add_provider_option(parser)
    args = parser.parse_args()

    from odetoode.testing.servers import server_process

    server_cpus, client_cpus = cpu_split(args.pin)
    client_cores = len(client_cpus or os.sched_getaffinity(0))
    procs = args.procs or client_cores

    ctx = mp.get_context("spawn")  # no fork after grpc or torch have started threads
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        repo = Path(tmp)
        make_repository(repo, args.delay_us)
        with affinity(server_cpus):
            server = stack.enter_context(
                server_process(repo, "--model-control-mode", "none", "--providers", ",".join(args.providers))
            )
        workers: list[Connection] = []
        for _ in range(procs):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=client_worker, args=(child, client_cpus), daemon=True)
            proc.start()
            workers.append(parent)
            stack.callback(proc.join, 10)
            stack.callback(parent.send, None)

        loaded = [line.strip() for line in server.log_lines if re.search(r"loaded (un)?batched", line)]
        print(
            f"ISO-ODEtoODE policy {OBS} -> 6, ActStream closed loop; {os.cpu_count()} CPUs; "
            + (f"server pinned to CPUs {sorted(server_cpus)}, " if server_cpus else "unpinned, ")
            + f"{procs} client process(es){' on CPUs ' + str(sorted(client_cpus)) if client_cpus else ''}; "
            f"batched: max_batch_size {MAX_BATCH}, max_queue_delay_us {args.delay_us}; unbatched: delay 0; "
            f"{args.seconds:g} s per run x {args.rounds} round(s)"
        )
        for line in loaded:
            print("  server: " + line.split(": ", 1)[-1])

        for model in ("unbatched", "batched"):  # warm-up, not reported
            run_once(workers, server, model, max(args.streams), 1.0, 0.5, Result(), client_cores)
        results: dict[tuple[int, str], Result] = {}
        per_round: dict[tuple[int, str], list[float]] = {}  # actions/s of each run, for the per-round ratios
        for r in range(args.rounds):
            for streams in args.streams:
                order = ("batched", "unbatched") if r % 2 == 0 else ("unbatched", "batched")
                for model in order:
                    result = results.setdefault((streams, model), Result())
                    before = (result.actions, result.seconds)
                    run_once(workers, server, model, streams, args.seconds, args.warmup, result, client_cores)
                    run_rate = (result.actions - before[0]) / max(result.seconds - before[1], 1e-9)
                    per_round.setdefault((streams, model), []).append(run_rate)

        header = (
            f"\n{'streams':>7} {'batching':<10}{'actions/s':>11}{'p50 ms':>9}{'p99 ms':>9}{'mean batch':>12}"
            f"{'server CPU us/action':>22}{'client CPU':>12}"
        )
        print(header)
        for streams in args.streams:
            for model in ("batched", "unbatched"):
                res = results[(streams, model)]
                mean_batch = res.rows / res.batches if res.batches else float("nan")
                server_us = 1e6 * res.server_cpu_s / res.actions if res.actions else float("nan")
                busy = res.client_cpu_s / res.client_core_s if res.client_core_s else float("nan")
                note = f"  (errors: {res.errors})" if res.errors else ""
                note += "  client-bound?" if busy > 0.9 else ""
                print(
                    f"{streams:>7} {'on' if model == 'batched' else 'off':<10}{res.rate:>11.0f}"
                    f"{res.percentile_ms(50):>9.2f}{res.percentile_ms(99):>9.2f}{mean_batch:>12.1f}"
                    f"{server_us:>22.1f}{100 * busy:>11.0f}%{note}"
                )

        top = max(args.streams)
        on, off = results[(top, "batched")], results[(top, "unbatched")]
        ratio = on.rate / off.rate if off.rate else float("nan")
        p99 = on.percentile_ms(99)
        ok = ratio >= 1.5 and p99 < 10
        print(
            f"\nat {top} streams: batched/unbatched throughput {ratio:.2f}x (>= 1.5x), batched p99 {p99:.2f} ms "
            f"(< 10 ms): {verdict(ok)} the target; server CPU per action batched/unbatched "
            f"{(on.server_cpu_s / on.actions) / (off.server_cpu_s / off.actions):.2f}x"
        )
        if args.rounds > 1:
            ratios = np.array(per_round[(top, "batched")]) / np.array(per_round[(top, "unbatched")])
            print(
                f"throughput ratio per round: {' '.join(f'{x:.2f}' for x in ratios)} (median {np.median(ratios):.2f})"
            )


if __name__ == "__main__":
    main()
