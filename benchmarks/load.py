"""Load: 64 robots on ``ActStream`` plus REST prediction traffic against one server process, for a fixed time.

What it shows is reliability under load, not peak throughput: every request sent is answered, none fails, latency
stays bounded and the server's memory does not grow. A server process (``python -m service``, loopback only) serves
one ISO-ODEtoODE policy (17 -> 6, untrained: the weights do not matter here). Clients:

* ``--streams`` robots (default 64), each one ``ActStream`` on a channel (connection) of its own, sending an
  observation every ``1/--hz`` seconds (default 100 Hz; 0: closed loop, the next as soon as the answer arrives) and
  checking that each answer is an action for the sequence number it sent;
* ``--rest-clients`` REST clients (default 4) alternating KServe V1 ``:predict`` and OIP v2 ``infer``, each at
  ``--rest-hz`` requests per second (default 50; 0: closed loop).

Clients are separate processes (``--procs`` for the robots, one more for REST), each an asyncio loop, so that the
client side has CPUs of its own: with ``--pin`` (the default with 2 or more CPUs) the server runs on the first CPU and
the clients on the others. Every ``--interval`` seconds the server's RSS and answered counts (from its ``/metrics``)
are printed; at the end, per traffic kind: sent / answered / failed, p50 / p99 / max latency, and RSS before/after.

    python benchmarks/load.py [--seconds 60] [--streams 64] [--hz 100] [--rest-clients 4] [--rest-hz 50]

Exits non-zero if any request failed or went unanswered.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from odetoode.testing.bench import add_pin_options, affinity, cpu_split, next_tick, open_fds, rss_mib
from odetoode.testing.bench.scrape import scrape, total

OBS = 17
ACT_STREAM = "/odetoode.v1.PolicyService/ActStream"
MODEL = "policy"


# -- client processes ----------------------------------------------------------------------------------------------


async def robots(target: str, count: int, hz: float, start: float, end: float, seed: int) -> dict[str, Any]:
    """``count`` robots, one ActStream and one channel each, until ``end`` (``time.time()``); counts and latencies."""
    import grpc

    from odetoode.client import channel_options
    from odetoode.proto.odetoode.v1 import policy_pb2 as pb

    rng = np.random.default_rng(seed)
    stats: dict[str, Any] = {"sent": 0, "answered": 0, "failed": 0, "errors": []}
    latencies: list[float] = []

    async def robot(k: int) -> None:
        observation = rng.normal(size=OBS).astype("<f4").tobytes()
        # A subchannel pool of its own: a connection of its own, as a separate robot would have (channels to the
        # same target in one process otherwise share one connection).
        options = [*channel_options(), ("grpc.use_local_subchannel_pool", 1)]
        async with grpc.aio.insecure_channel(target, options=options) as channel:
            call = channel.stream_stream(ACT_STREAM)()
            await asyncio.sleep(max(0.0, start - time.time()) + k * (1 / hz if hz else 0) / count)  # spread phases
            period = 1 / hz if hz else 0.0
            tick = time.monotonic()
            sequence = 0
            try:
                while time.time() < end:
                    first = sequence == 0
                    request = pb.ActRequest(policy=MODEL if first else "", observation=observation, sequence=sequence)
                    sent = time.perf_counter()
                    await call.write(request.SerializeToString())
                    stats["sent"] += 1
                    raw = await call.read()
                    latency = time.perf_counter() - sent
                    if raw is grpc.aio.EOF:
                        raise RuntimeError(f"stream ended: {await call.code()} {await call.details()}")
                    answer = pb.ActStreamResponse.FromString(raw)
                    if answer.WhichOneof("result") == "action" and answer.action.sequence == sequence:
                        stats["answered"] += 1
                        latencies.append(latency)
                    else:
                        stats["failed"] += 1
                        stats["errors"].append(str(answer)[:200])
                    sequence += 1
                    if period:
                        tick = await next_tick(tick, period)
                await call.done_writing()
                if await call.read() is not grpc.aio.EOF or await call.code() != grpc.StatusCode.OK:
                    raise RuntimeError(f"stream did not end cleanly: {await call.code()}")
            except Exception as exc:
                stats["failed"] += 1
                stats["errors"].append(f"robot {k}: {type(exc).__name__}: {exc}"[:300])

    await asyncio.gather(*(robot(k) for k in range(count)))
    return {**stats, "latencies": np.asarray(latencies)}


async def rest_clients(base: str, count: int, hz: float, start: float, end: float, seed: int) -> dict[str, Any]:
    """``count`` REST clients alternating KServe V1 predict and OIP v2 infer."""
    import httpx

    rng = np.random.default_rng(seed)
    stats: dict[str, Any] = {"sent": 0, "answered": 0, "failed": 0, "errors": []}
    latencies: list[float] = []

    async def client(k: int) -> None:
        x = rng.normal(size=OBS).astype(np.float32).tolist()
        v1 = {"instances": [x]}
        v2 = {"inputs": [{"name": "observation", "shape": [1, OBS], "datatype": "FP32", "data": x}]}
        period = 1 / hz if hz else 0.0
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            await asyncio.sleep(max(0.0, start - time.time()) + k * period / count)
            tick = time.monotonic()
            i = 0
            while time.time() < end:
                sent = time.perf_counter()
                stats["sent"] += 1
                try:
                    if i % 2:
                        r = await http.post(f"/v1/models/{MODEL}:predict", json=v1)
                        ok = r.status_code == 200 and len(r.json()["predictions"][0]) == 6
                    else:
                        r = await http.post(f"/v2/models/{MODEL}/infer", json=v2)
                        ok = r.status_code == 200 and r.json()["outputs"][0]["shape"] == [1, 6]
                except Exception as exc:
                    ok, r = False, exc  # type: ignore[assignment]
                latency = time.perf_counter() - sent
                if ok:
                    stats["answered"] += 1
                    latencies.append(latency)
                else:
                    stats["failed"] += 1
                    stats["errors"].append(str(getattr(r, "text", r))[:200])
                i += 1
                if period:
                    tick = await next_tick(tick, period)

    await asyncio.gather(*(client(k) for k in range(count)))
    return {**stats, "latencies": np.asarray(latencies)}


def client_process(conn: Connection, kind: str, job: dict[str, Any], cpus: set[int] | None) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)
    try:
        result = asyncio.run((robots if kind == "robots" else rest_clients)(**job))
        result["cpu_s"] = time.process_time()
        conn.send(result)
    except Exception as exc:  # reported to the parent, which fails the run
        conn.send({"error": f"{type(exc).__name__}: {exc}"})


# -- server side ---------------------------------------------------------------------------------------------------


def answered_by_protocol(metrics_url: str) -> dict[str, float]:
    """Requests answered so far, per protocol, from the server's /metrics."""
    samples = scrape(metrics_url)
    protocols = {s.labels["protocol"] for s in samples if s.name == "odetoode_requests_total"}
    return {p: total(samples, "odetoode_requests_total", protocol=p) for p in protocols}


def summary(name: str, results: list[dict[str, Any]], seconds: float) -> tuple[str, int, int]:
    sent = sum(r["sent"] for r in results)
    answered = sum(r["answered"] for r in results)
    failed = sum(r["failed"] for r in results)
    lat = np.concatenate([r["latencies"] for r in results]) * 1e3 if answered else np.asarray([np.nan])
    row = (f"{name:<22}{sent:>10}{answered:>10}{failed:>8}{answered / seconds:>10.0f}"
           f"{np.percentile(lat, 50):>9.2f}{np.percentile(lat, 99):>9.2f}{lat.max():>9.2f}")  # fmt: skip
    return row, sent - answered, failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the traffic runs")
    parser.add_argument("--streams", type=int, default=64, help="concurrent ActStream robots")
    parser.add_argument("--hz", type=float, default=100.0, help="observations per second per robot (0: closed loop)")
    parser.add_argument("--rest-clients", type=int, default=4, help="concurrent REST clients")
    parser.add_argument("--rest-hz", type=float, default=50.0, help="requests per second per REST client (0: closed)")
    parser.add_argument("--procs", type=int, default=2, help="client processes for the robots (plus one for REST)")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between progress lines")
    parser.add_argument("--delay-us", type=int, default=0, help="the policy's max_queue_delay_us (batching)")
    add_pin_options(parser)
    args = parser.parse_args()

    from odetoode.testing.models import add_policy
    from odetoode.testing.servers import server_process

    server_cpus, client_cpus = cpu_split(args.pin)
    ctx = mp.get_context("spawn")  # no fork after grpc or torch have started threads

    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        repo = Path(tmp)
        add_policy(repo, MODEL, serving_config={"max_batch_size": 64, "max_queue_delay_us": args.delay_us})
        with affinity(server_cpus):
            server = stack.enter_context(server_process(repo, "--model-control-mode", "none"))
        pid = server.process.pid
        metrics_url = f"http://127.0.0.1:{server.metrics_port}/metrics"
        print(
            f"{os.cpu_count()} CPUs; server (pid {pid}) "
            + (
                f"pinned to CPUs {sorted(server_cpus)}, clients on CPUs {sorted(client_cpus or [])}"
                if server_cpus
                else "unpinned"
            )
            + f"; {args.streams} ActStream robots at {args.hz:g} Hz in {args.procs} process(es) + {args.rest_clients} "
            f"REST clients at {args.rest_hz:g} req/s in 1 process; {args.seconds:g} s"
        )
        rss_before, fds_before = rss_mib(pid), open_fds(pid)
        start = time.time() + 3.0  # time for the client processes to start and connect
        end = start + args.seconds
        shares = [len(a) for a in np.array_split(np.arange(args.streams), args.procs) if len(a)]
        jobs: list[tuple[str, dict[str, Any]]] = [
            ("robots", {"target": server.grpc, "count": n, "hz": args.hz, "start": start, "end": end, "seed": i})
            for i, n in enumerate(shares)
        ]
        if args.rest_clients:
            jobs.append(("rest", {"base": server.http, "count": args.rest_clients, "hz": args.rest_hz,
                                  "start": start, "end": end, "seed": 99}))  # fmt: skip
        pipes: list[tuple[str, Connection]] = []
        for kind, job in jobs:
            parent, child = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=client_process, args=(child, kind, job, client_cpus), daemon=True)
            proc.start()
            pipes.append((kind, parent))
            stack.callback(proc.join, 10)

        time.sleep(max(0.0, start - time.time()))
        print(f"\n{'t (s)':>6}{'server RSS MiB':>16}{'fds':>6}{'policy answered':>17}{'rest answered':>15}")
        last = answered_by_protocol(metrics_url)
        rss_peak = rss_mib(pid)
        print(f"{0:>6.0f}{rss_mib(pid):>16.1f}{open_fds(pid):>6}{0:>17.0f}{0:>15.0f}")
        while time.time() < end:
            time.sleep(min(args.interval, max(0.0, end - time.time())))
            counts = answered_by_protocol(metrics_url)
            rss = rss_mib(pid)
            rss_peak = max(rss_peak, rss)
            print(f"{time.time() - start:>6.0f}{rss:>16.1f}{open_fds(pid):>6}"
                  f"{counts.get('policy', 0) - last.get('policy', 0):>17.0f}"
                  f"{counts.get('rest', 0) - last.get('rest', 0):>15.0f}", flush=True)  # fmt: skip
            last = counts

        results: dict[str, list[dict[str, Any]]] = {"robots": [], "rest": []}
        for kind, conn in pipes:
            result = conn.recv()
            if "error" in result:
                print(f"client process failed: {result['error']}")
                return 2
            results[kind].append(result)
        time.sleep(1.0)
        rss_after, fds_after = rss_mib(pid), open_fds(pid)
        client_cpu = sum(r["cpu_s"] for rs in results.values() for r in rs)

        print(f"\n{'':<22}{'sent':>10}{'answered':>10}{'failed':>8}{'per s':>10}"
              f"{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}")  # fmt: skip
        unanswered = failed = 0
        for name, kind in (("ActStream", "robots"), ("REST (V1 + v2)", "rest")):
            if results[kind]:
                row, lost, bad = summary(name, results[kind], args.seconds)
                print(row)
                unanswered += lost
                failed += bad
        for kind in results:
            for r in results[kind]:
                for error in r["errors"][:3]:
                    print(f"  {kind} error: {error}")
        print(f"\nserver RSS {rss_before:.1f} MiB before, {rss_peak:.1f} peak, {rss_after:.1f} after "
              f"({rss_after - rss_before:+.1f}); open fds {fds_before} before, {fds_after} after; "
              f"client processes used {client_cpu:.1f} CPU s")  # fmt: skip
        ok = unanswered == 0 and failed == 0
        print("zero errors" if ok else f"ERRORS: {failed} failed, {unanswered} unanswered")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
