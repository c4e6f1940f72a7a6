"""``python -m service act|bench|info``: quick checks of a running server from the command line."""

from __future__ import annotations

import argparse
import itertools
import json
import sys

import numpy as np
from google.protobuf.json_format import MessageToDict

from odetoode.client import PolicyClient, PolicyInfo

COMMANDS = ("act", "bench", "info")


def _observation(text: str | None, size: int) -> np.ndarray:
    if text is None:
        return np.zeros(size, dtype=np.float32)
    values = [float(v) for v in text.replace(",", " ").split()]
    return np.asarray(values, dtype=np.float32)


def _bench(client: PolicyClient, policy: str, version: str | None, info: PolicyInfo, requests: int) -> int:
    """``requests`` sequential Act calls, then as many round trips on one ActStream (send, receive its action), each
    timed on the client's side of ``PolicyClient`` by the benchmark harness (``odetoode.testing.bench``: garbage
    collector paused), no warm-up; observations drawn around the policy's normalization."""
    from odetoode.testing.bench import StreamRoundTrip, sample, summarize

    rng = np.random.default_rng(0)
    mean, std = np.asarray(info.normalization.mean), np.asarray(info.normalization.std)
    size = int(np.prod(info.observation_space.shape))
    observations = (mean + std * rng.normal(size=(requests, size))).astype(np.float32)
    unary = itertools.cycle(observations)
    act = summarize("Act", sample(lambda: client.act(policy, next(unary), version=version), requests, warmup=0))
    stream = client.stream(policy, version=version)
    try:
        streamed = summarize("ActStream", sample(StreamRoundTrip(stream, observations, timeout=5), requests, warmup=0))
    finally:
        stream.close()
    for t in (act, streamed):
        print(f"{t.name:<10} {requests} sequential calls: p50 {t.p50_us:.0f} us, p90 {t.p90_us:.0f} us, "
              f"p99 {t.p99_us:.0f} us")  # fmt: skip
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m service", description="Talk to a running odetoode server.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("act", "one Act call: print the action"), ("bench", "sequential Act and ActStream latency"),
                       ("info", "GetPolicy as JSON")):  # fmt: skip
        p = sub.add_parser(name, help=text)
        p.add_argument("--policy", required=True)
        p.add_argument("--target", default="localhost:8001", help="gRPC address (default localhost:8001)")
        p.add_argument("--version", default=None)
        if name == "act":
            p.add_argument("--observation", help="values separated by commas or spaces (default: zeros)")
        if name == "bench":
            p.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args(argv)
    with PolicyClient(args.target, timeout=5.0) as client:
        client.wait_ready(10)
        info = client.get_policy(args.policy, args.version)
        if args.command == "info":
            print(json.dumps(MessageToDict(info, preserving_proto_field_name=True), indent=2))
            return 0
        size = int(np.prod(info.observation_space.shape))
        if args.command == "act":
            action = client.act(args.policy, _observation(args.observation, size), version=args.version)
            print(json.dumps({"policy": args.policy, "version": action.version,
                              "action": [round(float(v), 6) for v in action.values],
                              "server_us": action.server_ns / 1e3, "compute_us": action.compute_ns / 1e3,
                              "round_trip_us": action.latency_ns / 1e3}))  # fmt: skip
            return 0
        return _bench(client, args.policy, args.version, info, args.requests)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
