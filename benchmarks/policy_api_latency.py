"""Round-trip latency of one batch-1 observation through ``odetoode.v1.PolicyService``, against a bare server.

The floor is the harness's floor server (``odetoode.testing.bench.floor``, serving PolicyService only): a separate
process running a bare grpc.aio server, generic handlers on the same method paths (``/odetoode.v1.PolicyService/Act``
and ``.../ActStream``), with the same channel options, that parse the same ``ActRequest`` bytes with the same
generated message class, run the same ONNX Runtime session (same model file, same session options, one intra-op
thread) on the packed float32 observation and answer with the packed action (an ``ActResponse``, or an
``ActStreamResponse(action=...)`` per request on the stream). So the floor is gRPC transport +
protobuf + ONNX Runtime and nothing else; the server under test (``python -m service``, also its own process) adds
everything else: validation, the batcher, metrics, timing fields, the stream's reader task and overflow queue.

The client is the same for floor and server: ``odetoode.client.PolicyClient`` in this process (``act`` for unary
calls; ``stream`` for the stream, one observation at a time: send, receive its action, send the next). Because the
floor answers on the same method paths, the SDK talks to it unchanged, so the client's cost is identical in both
rows of a pair. For reference, OIP ``ModelInfer`` (tritonclient.grpc) and REST ``infer`` with binary tensors
(tritonclient.http) against the same server are measured in the same rounds; their ratio is to the unary floor
(another client, so it says what the robot API saves, not what the server adds).

Floor and server rows alternate in chunks over several rounds (the order flips every round) so drift on a shared
machine hits both; every figure is printed with its ratio to its own floor. With two CPUs or more, the server and the
floor run on the first CPU and the client on the others (``--no-pin``: let the OS place them): unpinned, two
identical floor processes differ by up to 15% in p50 depending on where the scheduler puts them, which is more than
the overhead being measured. Targets: Act and ActStream p50 <= 1.15x their floors.

Then a 1 kHz control loop (``PolicyClient.control_loop(..., realtime=True)``) against the server, and the same loop
against the floor for comparison (what the machine and the client allow). Targets: p99 < 1 ms, < 0.1% missed cycles.
On a shared machine most missed cycles are the host's, not the server's. Two things show it: a wake-up probe (what
cyclictest measures: a process on each CPU the loop uses, at the loop's priority, sleeping to every 1 ms tick with
nothing else running; a tick woken later than 1 ms minus the server's median round trip is a cycle the loop loses to
the host whatever serves it), and ``--rt-priority 50``, which runs the loop the way a robot runs its control loop,
every thread of the client, the server and the floor under ``SCHED_FIFO`` (needs CAP_SYS_NICE; the latency rows
before it run at normal priority either way).

    python benchmarks/policy_api_latency.py [--requests 4000] [--rounds 10] [--loop-seconds 30] [--no-loop-floor]
                                            [--rt-priority 50] [--no-pin] [--providers cuda]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import Any

import odetoode.telemetry_off  # noqa: F401  (first: turns ONNX Runtime's telemetry off before onnxruntime is imported)

# isort: split
import numpy as np
import onnxruntime as ort

from odetoode.testing.bench import (
    Row,
    StreamRoundTrip,
    add_pin_options,
    affinity,
    alternate,
    cpu_session,
    cpu_split,
    floor_process,
    format_ratios,
    ratio,
    ratio_table,
    value,
    verdict,
)
from odetoode.testing.gpu import add_provider_option, matches_floor

POLICY = "policy"
OBS = 17
COLUMNS = [
    value("p50_us", "p50 us"), value("p90_us", "p90 us"), value("p99_us", "p99 us"), value("mean_us", "mean us"),
    ratio("p50_us", "p50 x floor"), ratio("p99_us", "p99 x floor"), value("server_cpu_us", "server CPU us", 15),
    ratio("server_cpu_us", "x floor", 9),
]  # fmt: skip
"""p50/p90/p99/mean, the p50 and p99 ratios to the row's floor, the answering process's CPU time per call."""


def set_fifo_priority(pid: int, priority: int) -> int:
    """Moves every thread of ``pid`` to ``SCHED_FIFO`` (threads started later inherit it); returns how many."""
    tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    for tid in tids:
        os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(priority))
    return len(tids)


def wakeup_probe(cpu: int, start_ns: int, seconds: float, priority: int) -> None:
    """The host wake-up probe (``policy_api_latency.py --wakeup-probe CPU START_NS SECONDS PRIORITY``), what
    cyclictest measures: on ``cpu``, under ``SCHED_FIFO`` ``priority`` (0: normal priority), sleeps to each 1 ms tick
    after ``start_ns`` (``time.monotonic_ns``, shared by the probes on other CPUs) for ``seconds`` and prints, as JSON,
    how late it woke up at each tick (us). Nothing runs but the probes: a late wake-up is the host's (hypervisor,
    kernel, other tenants), and a control loop on that CPU would start late too."""
    os.sched_setaffinity(0, {cpu})
    if priority:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    else:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    ticks = int(seconds * 1000)
    late = np.empty(ticks)
    for i in range(ticks):
        tick = start_ns + (i + 1) * 1_000_000
        now = time.monotonic_ns()
        if tick > now:
            time.sleep((tick - now) / 1e9)
        late[i] = (time.monotonic_ns() - tick) / 1e3
    print(json.dumps(late.round(1).tolist()), flush=True)


def host_wakeups(cpus: list[int], seconds: float, priority: int) -> dict[int, np.ndarray]:
    """Runs the wake-up probe on every CPU in ``cpus`` at once, on the same ticks: each CPU's lateness per 1 ms tick
    (us), tick ``i`` of every CPU at the same moment."""
    start_ns = time.monotonic_ns() + 1_000_000_000  # after the probes' interpreters have started
    script = str(Path(__file__).resolve())
    probes = {
        cpu: subprocess.Popen(
            [sys.executable, script, "--wakeup-probe", *(str(a) for a in (cpu, start_ns, seconds, priority))],
            stdout=subprocess.PIPE,
            text=True,
        )
        for cpu in cpus
    }
    return {cpu: np.asarray(json.loads(p.communicate()[0])) for cpu, p in probes.items()}


def control_loop(client: Any, seconds: float, observations: np.ndarray) -> tuple[Any, str]:
    """``PolicyClient.control_loop`` at 1 kHz (realtime) for ``seconds``, cycling through ``observations``.

    Returns the ``LoopReport`` and a line on how the missed cycles are spread: cycles skipped because the loop
    itself fell more than a cycle behind (the client process did not run: a busy machine), and cycles sent whose
    action came late, grouped into bursts of consecutive ones (long bursts: a stall; single ones: the latency tail).
    """
    sent: list[int] = []
    answered: set[int] = set()

    def observe(sequence: int, previous: Any) -> np.ndarray:
        sent.append(sequence)
        return observations[sequence % len(observations)]

    report = client.control_loop(
        POLICY,
        hz=1000,
        on_observation=observe,
        on_action=lambda action: answered.add(action.sequence),
        duration_s=seconds,
        realtime=True,
    )
    late = [seq for seq in sent if seq not in answered]
    bursts = np.split(np.asarray(late), np.flatnonzero(np.diff(late) != 1) + 1) if late else []
    lengths = sorted((len(b) for b in bursts), reverse=True)
    spread = (
        f"missed: {report.missed - len(late)} skipped (loop behind), {len(late)} late in {len(bursts)} burst(s)"
        + (f", longest {lengths[0]}, single {lengths.count(1)}" if lengths else "")
    )
    return report, spread


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=4000, help="timed round trips per row (after warm-up)")
    parser.add_argument("--rounds", type=int, default=10, help="alternating floor/server chunks per row")
    parser.add_argument("--warmup", type=int, default=300, help="untimed round trips per row before the rounds")
    parser.add_argument("--no-reference", action="store_true", help="skip the OIP (tritonclient) reference rows")
    parser.add_argument("--loop-seconds", type=float, default=30.0, help="1 kHz control loop length (0: skip it)")
    parser.add_argument("--no-loop-floor", action="store_true", help="run the control loop against the server only")
    parser.add_argument("--rt-priority", type=int, default=0, help="SCHED_FIFO priority (1-99) for client, server "
                        "and floor during the loop (0: off)")  # fmt: skip
    add_pin_options(parser)
    add_provider_option(parser)
    parser.add_argument("--wakeup-probe", nargs=4, type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.wakeup_probe is not None:
        cpu, start_ns, seconds, priority = args.wakeup_probe
        wakeup_probe(int(cpu), int(start_ns), seconds, int(priority))
        return

    import grpc

    from odetoode.client import PolicyClient
    from odetoode.testing.models import add_policy
    from odetoode.testing.servers import server_process

    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        repo = Path(tmp)
        model_file = add_policy(repo, POLICY)
        server_cpus, client_cpus = cpu_split(args.pin)
        with affinity(server_cpus):  # server and floor on the same CPU(s): the same placement for both
            ours = stack.enter_context(
                server_process(repo, "--model-control-mode", "none", "--providers", ",".join(args.providers))
            )
            floor = stack.enter_context(floor_process(model_file, "policy"))
        if client_cpus:
            os.sched_setaffinity(0, client_cpus)

        rng = np.random.default_rng(0)
        obs = rng.normal(size=(1, OBS)).astype(np.float32)

        def policy_client(target: str) -> PolicyClient:
            client = PolicyClient(target, timeout=30.0)  # a generous deadline: a noisy machine must not fail a call
            stack.callback(client.close)
            client.wait_ready(30)
            return client

        def stream(client: PolicyClient) -> StreamRoundTrip:
            s = client.stream(POLICY)
            stack.callback(s.close)
            return StreamRoundTrip(s, [obs[0]])

        floor_client, our_client = policy_client(floor.grpc), policy_client(ours.grpc)
        act_floor, stream_floor = "floor  Act (PolicyClient.act)", "floor  ActStream (PolicyClient.stream)"
        server_pid = ours.process.pid
        rows = [
            Row(act_floor, partial(floor_client.act, POLICY, obs[0]), answered_by=floor.pid),
            Row("server Act (PolicyClient.act)", partial(our_client.act, POLICY, obs[0]), act_floor, server_pid),
            Row(stream_floor, stream(floor_client), answered_by=floor.pid),
            Row("server ActStream (PolicyClient.stream)", stream(our_client), stream_floor, server_pid),
        ]
        reference = cpu_session(model_file).run(None, {"observation": obs})[0]
        checks: list[Callable[[Any], np.ndarray]] = [lambda a: a.values] * len(rows)
        if not args.no_reference:
            import tritonclient.grpc as grpcclient
            import tritonclient.http as httpclient

            g_in = grpcclient.InferInput("observation", [1, OBS], "FP32")
            g_in.set_data_from_numpy(obs)
            h_in = httpclient.InferInput("observation", [1, OBS], "FP32")
            h_in.set_data_from_numpy(obs, binary_data=True)
            g_client = grpcclient.InferenceServerClient(ours.grpc)
            stack.callback(g_client.close)
            h_client = httpclient.InferenceServerClient(f"127.0.0.1:{ours.http_port}")
            stack.callback(h_client.close)
            # another client: their ratio is to the unary floor
            rows += [
                Row("server OIP ModelInfer (tritonclient.grpc)", partial(g_client.infer, POLICY, [g_in]), act_floor,
                    server_pid),
                Row("server REST infer binary (tritonclient.http)", partial(h_client.infer, POLICY, [h_in]), act_floor,
                    server_pid),
            ]  # fmt: skip
            checks += [lambda r: r.as_numpy("action")] * 2

        # every row computes the same action (bit for bit on CPU)
        same = matches_floor(model_file, args.providers)
        for row, action_of in zip(rows, checks, strict=True):
            got = np.asarray(action_of(row.call())).reshape(reference.shape)
            assert same(got, reference), row.name

        placement = (
            f"server and floor on CPU {sorted(server_cpus)}, client on {sorted(client_cpus)}"
            if server_cpus and client_cpus
            else "placed by the OS"
        )
        print(
            f"ISO-ODEtoODE policy {OBS} -> 6 (h=16, N=25), batch 1; {os.cpu_count()} CPUs ({placement}); client "
            f"PolicyClient (grpcio {version('grpcio')}), onnxruntime {ort.__version__}; {args.requests} timed round "
            f"trips per row in {args.rounds} alternating rounds"
        )
        # floor/server pairs alternate (order flipped every round); the reference rows run after each pair
        groups = [rows[0:2], rows[2:4], *([rows[4:]] if len(rows) > 4 else [])]
        measured = alternate(groups, requests=args.requests, rounds=args.rounds, warmup=args.warmup)
        print(f"measured in {measured.seconds:.1f} s")
        ratio_table(measured.pairs(rows), COLUMNS, name_width=44)

        print()
        for row in (rows[1], rows[3]):
            assert row.floor is not None
            p50_ratio = measured.timing(row.name).p50_us / measured.timing(row.floor).p50_us
            method = row.name.split()[1]
            print(
                f"{method} p50 = {p50_ratio:.2f}x its floor: {verdict(p50_ratio <= 1.15)} the target (<= 1.15x); "
                f"per round {format_ratios(measured.per_round(row.name, row.floor))}"
            )

        if args.loop_seconds > 0:
            observations = rng.normal(size=(1000, OBS)).astype(np.float32)
            targets = [("server", our_client)] + ([] if args.no_loop_floor else [("floor", floor_client)])
            gc.collect()
            gc.freeze()  # as the server does after start-up, and as a robot process should before its loop
            scheduling = "normal priority"
            if args.rt_priority:
                pids = (os.getpid(), server_pid, floor.pid)
                threads = sum(set_fifo_priority(pid, args.rt_priority) for pid in pids)
                scheduling = f"SCHED_FIFO {args.rt_priority} on {threads} threads of client, server and floor"
            print(
                f"\n1 kHz control loop (PolicyClient.control_loop, realtime), {args.loop_seconds:g} s each, "
                f"{scheduling}:"
            )
            server_p50_us: float | None = None
            for label, client in targets:
                control_loop(client, 0.5, observations)  # warm-up: a fresh stream, untimed
                try:
                    report, spread = control_loop(client, args.loop_seconds, observations)
                except grpc.RpcError as exc:  # pragma: no cover - reported, not hidden
                    print(f"  {label}: failed: {exc}")
                    continue
                print(f"  {label:<7}{report.summary()}\n  {'':<7}{spread}")
                if label == "server":
                    server_p50_us = report.percentile(50)
                    ok = report.percentile(99) < 1000 and report.missed_fraction < 0.001
                    print(
                        f"  server: p99 {report.percentile(99):.0f} us (< 1000), missed "
                        f"{100 * report.missed_fraction:.3f}% (< 0.1%): {verdict(ok)} the target"
                    )
            # The host's share of missed cycles: a cycle whose thread wakes up later than 1 ms minus a median round
            # trip cannot be answered in time, whatever serves it. The loop needs two CPUs each cycle -- the client's
            # and the server's -- so both are probed, at the loop's priority, and a tick counts once if either is late.
            if server_p50_us is not None:
                if server_cpus and client_cpus:
                    cpus = [min(server_cpus), min(client_cpus)]
                else:  # unpinned: the loop's threads may run anywhere; two CPUs stand for them
                    cpus = sorted(os.sched_getaffinity(0))[:2]
                late = host_wakeups(cpus, args.loop_seconds, args.rt_priority)
                budget = 1000 - server_p50_us
                lost = int(np.logical_or.reduce([lateness > budget for lateness in late.values()]).sum())
                per_cpu = ", ".join(
                    f"CPU {cpu} {int((lateness > budget).sum())} (p99 {np.percentile(lateness, 99):.0f} us, max "
                    f"{lateness.max() / 1e3:.1f} ms)"
                    for cpu, lateness in late.items()
                )
                print(
                    f"  host   nothing but a wake-up probe on CPUs {cpus} ({scheduling.split(' on ')[0]}, 1 ms ticks, "
                    f"{args.loop_seconds:g} s): ticks woken more than {budget:.0f} us late (1 ms minus the server's "
                    f"p50): {per_cpu}\n  {'':<7}-> {lost} cycles ({100 * lost / (1000 * args.loop_seconds):.3f}%) "
                    "with either CPU late: what a 1 kHz loop loses to the host before any server runs"
                )


if __name__ == "__main__":
    main()
