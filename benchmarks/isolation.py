"""Isolation: a robot's round trips while another client abuses the server, one kind of abuse at a time.

A server process (``python -m service``, the bundled repository, loopback, started with the open-file limits systemd
gives a service: 1,024 soft, 4,096 hard) serves a robot that calls ``PolicyService/Act`` every 5 ms and runs an
``ActStream`` loop at 200 Hz on the ``halfcheetah`` policy (``odetoode.client.AsyncPolicyClient``, a process of its
own). The floor is that robot with
nothing else running, measured first in the same run. Then each kind of abuse runs back-to-back (the next request as
soon as the last is answered) for ``--seconds``, from a process of its own scheduled ``SCHED_IDLE`` (in a deployment
the abuser is another machine; on a two-core test host its own CPU use would otherwise count against the server --
``--abuser-sched normal`` shows that). With two CPUs or more the server (and its bulk workers) run on the first CPU
and the robot, the prober and the sampler on the others, as in a deployment where they are different machines; the
abuser runs on the server's CPU, where the system's network work for its traffic (which runs in the sender's
context on loopback, whatever its priority) lands as it would on a server receiving it (``--no-pin``: unpinned):

    json-60MiB                  REST v2 infer, a valid FP32 JSON body just under 60 MiB, to the policy
    json-60MiB-unknown-model    the same body to a model that does not exist
    bytes-15M                   REST binary extension: a BYTES tensor of 15M empty elements for the FP32 input
    grpc-typed-64MiB            gRPC ModelInfer with 64 MiB of typed fp32_contents
    act-16.7M-values            one Act with 16.7M observation_values
    binary-1e6-rows             REST binary extension: 1e6 rows for the policy (computed inline before)
    made-up-versions            ~3,000 requests naming made-up versions (REST, gRPC, Act), one of them 1 MiB long
    half-open-800               800 sockets that send half a request line (REST 400, gRPC 200, metrics 200)
    silent-1100                 1,100 sockets that send nothing (REST 500, gRPC 400, metrics 200)
    disconnect-mid-body-500     500 clients that send half a body and hang up
    largest-json                the largest JSON request the server accepts for the policy (max_request_rows)
    largest-binary              the largest binary-extension request it accepts for the policy
    largest-grpc                the largest gRPC ModelInfer it accepts for the policy (grpc_max_message_bytes)

Meanwhile a prober asks ``/v2/health/live`` every 100 ms on a new connection (as a kubelet does), Prometheus' part
is played by a scrape of the metrics port every second, and the server's process tree (server and bulk workers) is
sampled for RSS and open file descriptors every 100 ms. Per kind it prints the robot's p50 / p99 / worst round trip,
failed cycles (an error, or no answer within 50 ms), the worst health and scrape latency, peak and final RSS and open
fds, the metrics series count, the server's log volume, and the abuser's outcomes; and checks the targets: worst
<= 50 ms, p99 <= 2x the floor's p99, no failed cycle, health within 1 s, final RSS within 50 MiB of the start,
series count unchanged by made-up versions.

    python benchmarks/isolation.py [--seconds 10] [--kinds json-60MiB,silent-1100] [--abuser-sched idle]
                                   [--out docs/results/isolation.json] [--plot docs/figures/isolation.png]

Exits non-zero if a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import odetoode.telemetry_off  # noqa: F401  (first: turns ONNX Runtime's telemetry off before onnxruntime is imported)

# isort: split
import numpy as np

from odetoode.testing.abuse import KINDS, Ports, abuse, http_exchange, policy_json, post_head, server_settings
from odetoode.testing.bench import add_pin_options, affinity, cpu_split
from odetoode.testing.bench.host import stop
from odetoode.testing.bench.watch import Watch
from odetoode.testing.robot import FAILED_S, PERIOD_S, robot

ROOT = Path(__file__).resolve().parents[1]
POLICY = "halfcheetah"
FD_LIMIT = (1024, 4096)
"""The server's open-file limits (soft, hard) as systemd starts a service: it raises the soft one as it needs."""


# -- the server and what is measured around it --------------------------------------------------------------------


@contextlib.contextmanager
def server(
    repository: Path, log: Path, extra: list[str], cpus: set[int] | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], Ports]]:
    """``python -m service`` on ephemeral loopback ports, its open-file limits at ``FD_LIMIT``, on ``cpus`` (its bulk
    workers inherit them); its log to ``log``."""

    def limit_files() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, FD_LIMIT)
        if cpus:
            os.sched_setaffinity(0, cpus)

    cmd = [sys.executable, "-m", "service", "--repository", str(repository), "--host", "127.0.0.1", "--http-port",
           "0", "--grpc-port", "0", "--metrics-port", "0", "--model-control-mode", "none", *extra]  # fmt: skip
    with log.open("wb") as sink:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT, preexec_fn=limit_files)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                found = re.search(r"http :(\d+), grpc :(\d+), metrics :(\d+)", log.read_text(errors="replace"))
                if found:
                    yield proc, Ports(*(int(g) for g in found.groups()))
                    break
                if proc.poll() is not None:
                    raise RuntimeError("server exited:\n" + log.read_text(errors="replace"))
                time.sleep(0.1)
            else:
                raise RuntimeError("server did not start:\n" + log.read_text(errors="replace"))
        finally:
            stop(proc, 30)


def abuser_sched(policy: str, cpus: set[int] | None) -> Callable[[], None]:
    def apply() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)
        if policy == "idle":
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))

    return apply


@dataclass
class Row:
    kind: str
    robot_p50_ms: float
    robot_p99_ms: float
    robot_worst_ms: float
    robot_calls: int
    failed_cycles: int
    health_worst_ms: float
    health_failed: int
    scrape_worst_ms: float
    rss_peak_mib: float
    rss_final_mib: float
    fds_peak: int
    fds_final: int
    series: int
    log_kib: float
    abuser: dict[str, int]
    targets: dict[str, bool] = field(default_factory=dict)


def summarize(kind: str, robot_rows: np.ndarray, watch: Watch, start: float, end: float, log_bytes: int,
              abuser: dict[str, int], series: int) -> Row:  # fmt: skip
    window = robot_rows[(robot_rows[:, 1] >= start) & (robot_rows[:, 1] < end)]
    rtt_ms = window[:, 2] * 1e3
    health, health_ok = watch.health.window(start, end)
    scrape, _ = watch.scrape.window(start, end)
    rss, _ = watch.rss.window(start, end)
    fds, _ = watch.fds.window(start, end)
    return Row(
        kind=kind,
        robot_p50_ms=float(np.percentile(rtt_ms, 50)),
        robot_p99_ms=float(np.percentile(rtt_ms, 99)),
        robot_worst_ms=float(rtt_ms.max()),
        robot_calls=len(window),
        failed_cycles=int((window[:, 3] == 0).sum()),
        health_worst_ms=float(health.max() * 1e3) if len(health) else float("nan"),
        health_failed=int((~health_ok).sum()),
        scrape_worst_ms=float(scrape.max() * 1e3) if len(scrape) else float("nan"),
        rss_peak_mib=float(rss.max()),
        rss_final_mib=float(rss[-1]),
        fds_peak=int(fds.max()),
        fds_final=int(fds[-1]),
        series=series,
        log_kib=log_bytes / 1024,
        abuser=abuser,
    )


def check_targets(rows: list[Row]) -> list[tuple[str, str]]:
    """Sets the targets of every row but the first (the floor, which they are measured against); returns the
    (kind, target) pairs missed, an abuser that failed among them."""
    floor = rows[0]
    for row in rows[1:]:
        row.targets = {
            "worst<=50ms": row.robot_worst_ms <= 50,
            "p99<=2xfloor": row.robot_p99_ms <= 2 * floor.robot_p99_ms,
            "no-failed-cycle": row.failed_cycles == 0,
            "health<=1s": row.health_failed == 0 and row.health_worst_ms <= 1000,
            "rss<=start+50MiB": row.rss_final_mib <= floor.rss_final_mib + 50,
        }
        if row.kind == "made-up-versions":
            seen = row.abuser.pop("series after the first round"), row.abuser.pop("series at the end")
            row.targets["series-unchanged"] = seen[0] == seen[1]
    missed = [(r.kind, name) for r in rows for name, ok in r.targets.items() if not ok]
    return missed + [(r.kind, "abuser ran") for r in rows if "ABUSER FAILED" in r.abuser]


def print_row(row: Row) -> None:
    met = " ".join(f"{name}:{'ok' if ok else 'MISSED'}" for name, ok in row.targets.items())
    outcomes = ", ".join(f"{k} x{v}" for k, v in sorted(row.abuser.items(), key=lambda kv: -kv[1]))
    print(
        f"{row.kind:<26}{row.robot_p50_ms:>7.2f}{row.robot_p99_ms:>7.2f}{row.robot_worst_ms:>8.1f}{row.failed_cycles:>6}"
        f"{row.health_worst_ms:>8.1f}{row.scrape_worst_ms:>8.1f}{row.rss_peak_mib:>7.0f}{row.rss_final_mib:>7.0f}"
        f"{row.fds_peak:>6}{row.fds_final:>6}{row.series:>7}{row.log_kib:>7.1f}  {met}\n{'':<26}abuser: {outcomes}",
        flush=True,
    )


def markdown(rows: list[Row], meta: dict[str, Any], missed: list[tuple[str, str]], command: str) -> str:
    """The rows as a Markdown table, with how they were measured."""
    floor = rows[0]
    lines = [
        "# Isolation: a robot's round trips while another client abuses the server",
        "",
        f"`{command}`: {meta['seconds']:g} s per kind, "
        f"{meta['cpus']} CPUs ({'server on the first, clients on the other' if meta['pinned'] else 'unpinned'}), "
        f"abuser scheduled {meta['abuser_sched']}, server open-file limits {meta['fd_limit']}"
        + (f", server flags {' '.join(meta['server_args'])}" if meta["server_args"] else "")
        + ". A robot calls Act every 5 ms and runs an ActStream loop at 200 Hz throughout; a failed cycle is an error "
        "or no answer within 50 ms. Targets per kind: worst <= 50 ms, p99 <= 2x the floor's "
        f"({2 * floor.robot_p99_ms:.2f} ms), no failed cycle, health within 1 s, final RSS within 50 MiB of the "
        "start, series unchanged by made-up versions.",
        "",
        "| kind | robot p50 ms | p99 ms | worst ms | failed | health worst ms | RSS peak / final MiB "
        "| fds peak / final | series | log KiB | targets | the abuser's requests |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        missing = [k for k, ok in row.targets.items() if not ok]
        met = "floor" if row is floor else ("MISSED " + ", ".join(missing) if missing else "all met")
        outcomes = ", ".join(f"{k} x{v}" for k, v in sorted(row.abuser.items(), key=lambda kv: -kv[1]))
        lines.append(
            f"| {row.kind} | {row.robot_p50_ms:.2f} | {row.robot_p99_ms:.2f} | {row.robot_worst_ms:.1f} | "
            f"{row.failed_cycles} | {row.health_worst_ms:.1f} | {row.rss_peak_mib:.0f} / {row.rss_final_mib:.0f} | "
            f"{row.fds_peak} / {row.fds_final} | {row.series} | {row.log_kib:.1f} | {met} | {outcomes} |"
        )
    lines += ["", "All targets met." if not missed else f"Missed: {missed}.", ""]
    return "\n".join(lines)


def plot(rows: list[Row], robot_rows: np.ndarray, phases: list[tuple[str, float, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(13, 4.5))
    t0 = phases[0][1]
    for kind, loop, color in ((0, "Act", "tab:blue"), (1, "ActStream", "tab:orange")):
        sel = robot_rows[robot_rows[:, 0] == kind]
        ax.plot(sel[:, 1] - t0, sel[:, 2] * 1e3, ".", ms=1.5, color=color, label=f"robot {loop}")
    for i, (name, start, end) in enumerate(phases):
        if i % 2:
            ax.axvspan(start - t0, end - t0, color="0.93", zorder=0)
        ax.text((start + end) / 2 - t0, 0.98, name, rotation=90, va="top", ha="center", fontsize=7,
                transform=ax.get_xaxis_transform())  # fmt: skip
    ax.axhline(FAILED_S * 1e3, color="tab:red", lw=0.8, ls="--", label="failed cycle (50 ms)")
    ax.set_yscale("log")
    ax.set_xlabel("seconds")
    ax.set_ylabel("robot round trip (ms)")
    ax.set_title("A robot's round trips while another client abuses the server, one kind at a time")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="each kind of abuse (and the floor) runs this long")
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated kinds (default: all)")
    parser.add_argument("--abuser-sched", choices=["idle", "normal"], default="idle",
                        help="idle (SCHED_IDLE: as if on another machine) or normal")  # fmt: skip
    parser.add_argument("--repository", type=Path, default=ROOT / "models")
    parser.add_argument("--server-arg", action="append", default=[], help="extra flag for the server (repeatable)")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    parser.add_argument("--plot", type=Path, help="plot the robot's round trips over the run here (PNG)")
    parser.add_argument("--samples", type=Path, help="keep every robot round trip and the phases here (.npz)")
    add_pin_options(parser)
    parser.add_argument("--robot", nargs=2, metavar=("GRPC", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--abuse", nargs=5, metavar=("KIND", "HTTP", "GRPC", "METRICS", "SECONDS"),
                        help=argparse.SUPPRESS)  # fmt: skip
    args = parser.parse_args()
    if args.robot:
        np.save(Path(args.robot[1]), asyncio.run(robot(args.robot[0], POLICY)))
        return 0
    if args.abuse:
        kind, http, grpc_port, metrics, seconds = args.abuse
        limits = server_settings(args.server_arg)
        outcomes = abuse(kind, Ports(int(http), int(grpc_port), int(metrics)), float(seconds), limits, POLICY)
        print(json.dumps(outcomes), flush=True)
        return 0

    kinds = [k for k in args.kinds.split(",") if k]
    unknown = set(kinds) - set(KINDS)
    if unknown:
        parser.error(f"unknown kinds {sorted(unknown)}; known: {list(KINDS)}")
    server_cpus, client_cpus = cpu_split(args.pin)
    with tempfile.TemporaryDirectory() as tmp, affinity(client_cpus):
        log = Path(tmp) / "server.log"
        samples = Path(tmp) / "robot.npy"
        with server(args.repository, log, args.server_arg, server_cpus) as (proc, ports):
            where = (
                f"server on CPUs {sorted(server_cpus)}, clients on {sorted(client_cpus)}" if server_cpus else "unpinned"
            )
            print(f"server pid {proc.pid}: http :{ports.http}, grpc :{ports.grpc}, metrics :{ports.metrics}; open-file "
                  f"limits {FD_LIMIT}; robot: Act every {PERIOD_S * 1e3:.0f} ms + ActStream at {1 / PERIOD_S:.0f} Hz; "
                  f"abuser {args.abuser_sched}, {args.seconds:g} s per kind; {where}", flush=True)  # fmt: skip
            # Warm the bulk workers' sessions, so that the floor's RSS includes them.
            for _ in range(3):
                body = policy_json(2000)
                http_exchange(ports.http, post_head(f"/v2/models/{POLICY}/infer", len(body)), body)
            bot = subprocess.Popen([sys.executable, __file__, "--robot", f"127.0.0.1:{ports.grpc}", str(samples)],
                                   stdin=subprocess.PIPE, cwd=ROOT)  # fmt: skip
            watch = Watch(f"http://127.0.0.1:{ports.http}/v2/health/live", f"http://127.0.0.1:{ports.metrics}/metrics",
                          proc.pid)  # fmt: skip
            time.sleep(2.0)  # the robot connects and settles
            phases: list[tuple[str, float, float, dict[str, int], int, int]] = []
            log_mark = log.stat().st_size
            start = time.monotonic()
            time.sleep(args.seconds)
            phases.append(("floor", start, time.monotonic(), {}, log.stat().st_size - log_mark, watch.count_series()))
            for kind in kinds:
                log_mark = log.stat().st_size
                start = time.monotonic()
                out = subprocess.run(
                    [sys.executable, __file__, "--abuse", kind, str(ports.http), str(ports.grpc), str(ports.metrics),
                     str(args.seconds), *(f"--server-arg={a}" for a in args.server_arg)],
                    cwd=ROOT, capture_output=True, text=True, preexec_fn=abuser_sched(args.abuser_sched, server_cpus),
                )  # fmt: skip
                if out.returncode != 0:
                    print(out.stderr, file=sys.stderr)
                outcome = json.loads(out.stdout.splitlines()[-1]) if out.returncode == 0 else {"ABUSER FAILED": 1}
                time.sleep(1.0)  # what the abuse left behind settles (closed sockets, freed memory)
                phases.append((kind, start, time.monotonic(), outcome, log.stat().st_size - log_mark,
                               watch.count_series()))  # fmt: skip
                print(f"  {kind}: done", flush=True)
            watch.stop()
            assert bot.stdin is not None
            bot.stdin.close()
            bot.wait(30)
        robot_rows = np.load(samples)

    print(f"\n{'':<26}{'robot round trip ms':^22}{'fail':>6}{'health':>8}{'scrape':>8}{'RSS MiB':^14}{'fds':^12}"
          f"{'series':>7}{'log':>7}\n{'kind':<26}{'p50':>7}{'p99':>7}{'worst':>8}{'':>6}{'ms':>8}{'ms':>8}"
          f"{'peak':>7}{'final':>7}{'peak':>6}{'final':>6}{'':>7}{'KiB':>7}")  # fmt: skip
    rows = [summarize(name, robot_rows, watch, a, b, lb, ab, n) for name, a, b, ab, lb, n in phases]
    missed = check_targets(rows)
    for row in rows:
        print_row(row)
    print(f"\n{'all targets met' if not missed else f'MISSED: {missed}'}")
    if args.out:
        meta = {"seconds": args.seconds, "abuser_sched": args.abuser_sched, "fd_limit": FD_LIMIT,
                "pinned": bool(server_cpus), "server_args": args.server_arg,
                "cpus": len(os.sched_getaffinity(0))}  # fmt: skip
        args.out.write_text(json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=1) + "\n")
        command = "python benchmarks/isolation.py " + " ".join(sys.argv[1:])
        args.out.with_suffix(".md").write_text(markdown(rows, meta, missed, command))
    if args.plot:
        plot(rows, robot_rows, [(n, a, b) for n, a, b, *_ in phases], args.plot)
    if args.samples:
        np.savez(args.samples, robot=robot_rows, phases=np.asarray([(a, b) for _, a, b, *_ in phases]),
                 names=np.asarray([n for n, *_ in phases]))  # fmt: skip
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
