"""A/B of two commits in one run: this checkout's server against another commit's, against one floor.

    git worktree add ../baseline REV
    python benchmarks/ab_latency.py --baseline ../baseline [--this DIR] [--servers 3] [--requests 3000]
                                    [--rounds 14] [--out docs/results/ab_latency.json]

What ``policy_api_latency.py`` and ``oip_latency.py`` measure -- batch-1 round trips of PolicyService ``Act``
(``PolicyClient.act``), ``ActStream`` (``PolicyClient.stream``) and OIP ``ModelInfer`` (tritonclient.grpc), each
against the harness's floor server doing the same call with nothing but gRPC, protobuf and ONNX Runtime -- for two
commits at once, so that the difference between the commits is read without two runs' drift between them.

Two server processes of the same code differ by several percent in CPU per call (the process, not its code), so one
process per commit cannot resolve the few percent a change may cost: ``--servers`` processes of each commit are
started the same way (``odetoode.testing.bench.checkout_server``: this checkout too), and every process's row is
timed against the floor in the same rounds, the order rotating every round. Each commit's figure is the mean over
its processes of p50 / floor p50 (and of server CPU per call / floor CPU per call); the spread between its processes
is printed beside it, and the difference's standard error follows from it (Welch). Pinning as in
``policy_api_latency.py``: servers and floor on the first CPU, client on the rest.
Target: no ratio of this commit worse than the baseline's by more than 0.03.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import tempfile
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import Any

import odetoode.telemetry_off  # noqa: F401  (first: turns ONNX Runtime's telemetry off before onnxruntime is imported)

# isort: split
import numpy as np
import onnxruntime as ort

from odetoode.testing.bench import (
    Rounds,
    Row,
    StreamRoundTrip,
    add_pin_options,
    affinity,
    alternate,
    checkout_server,
    cpu_session,
    cpu_split,
    floor_process,
    ratio,
    ratio_table,
    value,
    verdict,
)

MODEL = "policy"
OBS = 17
THIS = Path(__file__).resolve().parents[1]
TOLERANCE = 0.03
COLUMNS = [
    value("p50_us", "p50 us"), value("p99_us", "p99 us"), ratio("p50_us", "p50 x floor"),
    value("server_cpu_us", "server CPU us", 15), ratio("server_cpu_us", "x floor", 9),
]  # fmt: skip


def compare(measured: Rounds, floor: str, rows: dict[str, list[str]]) -> dict[str, dict[str, Any]]:
    """Per commit (``rows``: commit -> its rows' names): each process's p50 and CPU ratios to ``floor`` and their
    mean and sample std."""
    f = measured.timing(floor)
    out = {}
    for commit, names in rows.items():
        timings = [measured.timing(n) for n in names]
        p50 = np.array([t.p50_us / f.p50_us for t in timings])
        cpu = np.array([t.server_cpu_us / f.server_cpu_us for t in timings])
        out[commit] = {
            "p50_x_floor": p50.round(4).tolist(), "p50_x_floor_mean": float(p50.mean()),
            "p50_x_floor_std": float(p50.std(ddof=1)) if len(p50) > 1 else 0.0,
            "cpu_x_floor": cpu.round(4).tolist(), "cpu_x_floor_mean": float(cpu.mean()),
            "cpu_x_floor_std": float(cpu.std(ddof=1)) if len(cpu) > 1 else 0.0,
        }  # fmt: skip
    return out


def revision(checkout: Path) -> str | None:
    """The commit ``checkout`` is at (None when it is not a git checkout)."""
    git = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True)
    return git.stdout.strip() if git.returncode == 0 else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, required=True, metavar="DIR", help="a checkout of the other commit")
    parser.add_argument("--this", type=Path, default=THIS, metavar="DIR", help="the checkout compared with it")
    parser.add_argument("--servers", type=int, default=3, help="server processes per commit")
    parser.add_argument("--requests", type=int, default=3000, help="timed round trips per row (after warm-up)")
    parser.add_argument("--rounds", type=int, default=14, help="rounds (a multiple of 1 + 2 x servers is fairest)")
    parser.add_argument("--warmup", type=int, default=300, help="untimed round trips per row before the rounds")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    add_pin_options(parser)
    args = parser.parse_args()

    import tritonclient.grpc as grpcclient

    from odetoode.client import PolicyClient
    from odetoode.testing.models import add_policy

    commits = {"this": args.this, "baseline": args.baseline}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        repo = Path(tmp)
        model_file = add_policy(repo, MODEL)
        server_cpus, client_cpus = cpu_split(args.pin)
        with affinity(server_cpus):  # servers and floor on the same CPU(s)
            floor = stack.enter_context(floor_process(model_file, "policy", "oip"))
            servers = {  # started alternately, so neither commit gets all the early (or late) processes
                f"{commit} #{i + 1}": stack.enter_context(
                    checkout_server(path, repo, "--model-control-mode", "none")
                )
                for i in range(args.servers)
                for commit, path in commits.items()
            }  # fmt: skip
        if client_cpus:
            os.sched_setaffinity(0, client_cpus)

        obs = np.random.default_rng(0).normal(size=(1, OBS)).astype(np.float32)
        g_in = grpcclient.InferInput("observation", [1, OBS], "FP32")
        g_in.set_data_from_numpy(obs)

        def policy_client(port: int) -> PolicyClient:
            client = PolicyClient(f"127.0.0.1:{port}", timeout=30.0)
            stack.callback(client.close)
            client.wait_ready(30)
            return client

        def oip_client(port: int) -> Any:
            client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
            stack.callback(client.close)
            return client

        def stream(port: int) -> StreamRoundTrip:
            s = policy_client(port).stream(MODEL)
            stack.callback(s.close)
            return StreamRoundTrip(s, [obs[0]])

        methods = {
            "Act": lambda port: partial(policy_client(port).act, MODEL, obs[0]),
            "ActStream": stream,
            "ModelInfer": lambda port: partial(oip_client(port).infer, MODEL, [g_in]),
        }
        groups = []
        for method, make in methods.items():
            assert floor.grpc_port is not None
            floor_row = Row(f"floor    {method}", make(floor.grpc_port), answered_by=floor.pid)
            groups.append([floor_row] + [
                Row(f"{name} {method}", make(server.grpc_port), floor_row.name, server.process.pid)
                for name, server in servers.items()
            ])  # fmt: skip

        reference = cpu_session(model_file).run(None, {"observation": obs})[0]
        for row in (row for group in groups for row in group):  # every row computes the same action
            answer = row.call()
            got = answer.as_numpy("action") if hasattr(answer, "as_numpy") else answer.values
            assert np.array_equal(np.asarray(got).reshape(reference.shape), reference), row.name

        # Commits, not folders: a results file names what was measured, not where it was checked out.
        this_rev, baseline_rev = revision(args.this), revision(args.baseline)
        print(
            f"{this_rev[:7] if this_rev else args.this} vs {baseline_rev[:7] if baseline_rev else args.baseline} "
            f"(checkouts): "
            f"{args.servers} server processes each; ISO-ODEtoODE policy {OBS} -> 6, "
            f"batch 1; {os.cpu_count()} CPUs; grpcio {version('grpcio')}, onnxruntime {ort.__version__}; "
            f"{args.requests} timed round trips per row in {args.rounds} rotating rounds"
        )
        measured = alternate(groups, requests=args.requests, rounds=args.rounds, warmup=args.warmup)
        print(f"measured in {measured.seconds:.1f} s")

        results: dict[str, Any] = {"this": this_rev, "baseline": baseline_rev,
                                   "servers_per_commit": args.servers, "requests": args.requests,
                                   "rounds": args.rounds, "methods": {}}  # fmt: skip
        for (method, _), group in zip(methods.items(), groups, strict=True):
            floor_row = group[0]
            ratio_table(measured.pairs(group), COLUMNS, name_width=24)
            per_commit = compare(measured, floor_row.name, {
                commit: [row.name for row in group[1:] if row.name.startswith(commit)] for commit in commits
            })  # fmt: skip
            this, base = per_commit["this"], per_commit["baseline"]
            floor_timing = measured.timing(floor_row.name)
            results["methods"][method] = {
                "floor_p50_us": floor_timing.p50_us, "floor_cpu_us": floor_timing.server_cpu_us, **per_commit,
            }  # fmt: skip
            for figure in ("p50_x_floor", "cpu_x_floor"):
                diff = this[f"{figure}_mean"] - base[f"{figure}_mean"]
                # the difference's standard error from the spread between processes (Welch)
                se = float(np.hypot(this[f"{figure}_std"], base[f"{figure}_std"]) / np.sqrt(args.servers))
                results["methods"][method][f"{figure}_difference"] = {"mean": diff, "standard_error": se}
                print(
                    f"{method} {figure.replace('_x_', ' x ')}: this {this[f'{figure}_mean']:.3f} "
                    f"(sd {this[f'{figure}_std']:.3f} over processes), baseline {base[f'{figure}_mean']:.3f} "
                    f"(sd {base[f'{figure}_std']:.3f}); difference {diff:+.3f} (standard error {se:.3f}): "
                    f"{verdict(diff <= TOLERANCE)} the target (<= +{TOLERANCE})"
                )
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=2) + "\n")
            print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
