"""``python -m service act|bench|info``: quick checks of a running server from the command line."""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
from google.protobuf.json_format import MessageToDict

from odetoode.client import Action, PolicyClient

COMMANDS = ("act", "bench", "info")


def _observation(text: str | None, size: int) -> np.ndarray:
    if text is None:
        return np.zeros(size, dtype=np.float32)
    values = [float(v) for v in text.replace(",", " ").split()]
    return np.asarray(values, dtype=np.float32)


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
        rng = np.random.default_rng(0)
        mean, std = np.asarray(info.normalization.mean), np.asarray(info.normalization.std)
        observations = (mean + std * rng.normal(size=(args.requests, size))).astype(np.float32)
        unary = [client.act(args.policy, o, version=args.version).latency_ns / 1e3 for o in observations]
        stream = client.stream(args.policy, version=args.version)
        streamed = []
        for i, o in enumerate(observations):
            start = time.perf_counter_ns()
            stream.send(o, i)
            answer = stream.receive(timeout=5)
            assert isinstance(answer, Action) and answer.sequence == i
            streamed.append((time.perf_counter_ns() - start) / 1e3)
        stream.close()
        for label, samples in (("Act", unary), ("ActStream", streamed)):
            p50, p90, p99 = np.percentile(samples, [50, 90, 99])
            print(f"{label:<10} {len(samples)} sequential calls: p50 {p50:.0f} us, p90 {p90:.0f} us, p99 {p99:.0f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
