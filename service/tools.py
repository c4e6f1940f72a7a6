"""``python -m service act|bench|info``: quick checks of a running server from the command line.

Errors a user meets are one line on stderr and exit status 1: nothing listening at ``--target`` (found within
``--connect-timeout`` seconds, not after the calls' deadlines), and the server's refusals (an unknown policy, a bad
observation) as its gRPC status details. Bad arguments are usage errors (status 2). Anything else keeps its traceback.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys

import grpc
import numpy as np

from odetoode.client import PolicyClient, PolicyInfo, policy_document

COMMANDS = ("act", "bench", "info")
PROG = "python -m service"
CONNECT_TIMEOUT_S = 2.0
"""How long a command waits for a server to accept the connection: a server that is up answers in milliseconds."""


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default where it has one (not "default: None" beside a required option)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        return action.help if action.default is None else super()._get_help_string(action)


class NoServerError(Exception):
    """Nothing accepted a connection at the target within the connect timeout."""


def _values(text: str) -> list[float]:
    """``--observation``: numbers separated by commas or spaces."""
    try:
        return [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas or spaces, got {text!r}") from None


def _observation(values: list[float] | None, size: int) -> np.ndarray:
    if values is None:
        return np.zeros(size, dtype=np.float32)
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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Talk to a running odetoode server.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("act", "one Act call: print the action as JSON"),
                       ("bench", "sequential Act and ActStream latency"),
                       ("info", "GetPolicy as a JSON document (numbers as numbers, the training record an object)"),
                       ):  # fmt: skip
        p = sub.add_parser(name, help=text, description=text, formatter_class=_Help)
        p.add_argument("--policy", required=True, help="policy (model) name")
        p.add_argument("--target", default="localhost:8001", help="gRPC address HOST:PORT")
        p.add_argument("--version", default=None, help="model version (default: the highest ready one)")
        p.add_argument("--connect-timeout", type=float, default=CONNECT_TIMEOUT_S,
                       help="seconds to wait for a server to accept the connection")  # fmt: skip
        if name == "act":
            p.add_argument("--observation", type=_values, help="values separated by commas or spaces (default: zeros)")
        if name == "bench":
            p.add_argument("--requests", type=int, default=2000, help="calls of each kind")
    return parser


def _run(args: argparse.Namespace) -> int:
    with PolicyClient(args.target, timeout=5.0) as client:
        try:
            client.wait_ready(args.connect_timeout)
        except grpc.FutureTimeoutError:
            raise NoServerError(f"no server at {args.target} (nothing accepted a connection within "
                                f"{args.connect_timeout:g} s)") from None  # fmt: skip
        info = client.get_policy(args.policy, args.version)
        if args.command == "info":
            print(json.dumps(policy_document(info), indent=2, allow_nan=False))
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


def main(argv: list[str]) -> int:
    """Runs ``argv`` (``act|bench|info ...``) and returns the exit status; an expected failure prints one line,
    ``python -m service <command>: <message>``, and returns 1."""
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except NoServerError as exc:
        message = str(exc)
    except grpc.RpcError as exc:  # the server refused: its status details say why
        code, details = exc.code(), exc.details()
        message = f"{' '.join((details or '').split()) or 'no details'} ({code.name if code else 'UNKNOWN'})"
    print(f"{PROG} {args.command}: {message}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
