"""Round-trip latency of one batch-1 policy request through the server, against a bare server doing the same work.

The floor is the harness's floor server (``odetoode.testing.bench.floor``, serving OIP gRPC and REST), a separate
process running a bare grpc.aio server: generic handlers on the same method paths
(``/inference.GRPCInferenceService/ModelInfer`` and ``.../ModelStreamInfer``), with the same channel options, parse
the same request bytes with the same generated message class, run the same ONNX Runtime session (same model file,
same session options, one intra-op thread) on the raw input and answer with ``raw_output_contents``. So the floor is
gRPC transport + protobuf + ONNX Runtime and nothing else; the server under test (``python -m service``, also its
own process) adds everything else. The same floor process serves the REST floor too: a bare ASGI app under uvicorn
(its default HTTP/1.1 protocol, no logging, no lifespan; the server adds its connection guards, ``service.http``)
that parses the binary-data header with orjson and runs the same session.

The client is tritonclient in this process, for every row: ``InferenceServerClient.infer`` for unary calls, and for
streams ``start_stream`` + ``async_stream_infer``, one request at a time (send, wait for its callback, send the
next). Floor and server runs alternate in chunks over several rounds (the order flips every round) so drift on a
shared machine hits both; every figure is printed with its ratio to its own floor. Target: ModelInfer p50 <= 1.25x.

    python benchmarks/oip_latency.py [--requests 4000] [--rounds 10] [--no-rest] [--providers cuda]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
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
    ModelStreamCall,
    Row,
    alternate,
    cpu_session,
    floor_process,
    format_ratios,
    ratio,
    ratio_table,
    value,
    verdict,
)
from odetoode.testing.gpu import add_provider_option, matches_floor

MODEL = "policy"
OBS = 17
COLUMNS = [
    value("p50_us", "p50 us"), value("p99_us", "p99 us"), value("mean_us", "mean us"), ratio("p50_us", "p50 x floor"),
    ratio("p99_us", "p99 x floor"),
]  # fmt: skip
"""p50/p99/mean and the p50 and p99 ratios to the row's floor."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=4000, help="timed round trips per row (after warm-up)")
    parser.add_argument("--rounds", type=int, default=10, help="alternating floor/server chunks per row")
    parser.add_argument("--warmup", type=int, default=300, help="untimed round trips per row before the rounds")
    parser.add_argument("--no-rest", action="store_true", help="skip the REST rows")
    add_provider_option(parser)
    args = parser.parse_args()

    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    from odetoode.testing.models import add_policy
    from odetoode.testing.servers import server_process

    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        repo = Path(tmp)
        model_file = add_policy(repo, MODEL)
        ours = stack.enter_context(
            server_process(repo, "--model-control-mode", "none", "--providers", ",".join(args.providers))
        )
        floor = stack.enter_context(floor_process(model_file, "oip", "rest"))
        assert floor.grpc_port is not None and floor.http_port is not None
        floor_grpc, floor_http = floor.grpc_port, floor.http_port

        obs = np.random.default_rng(0).normal(size=(1, OBS)).astype(np.float32)
        g_in = grpcclient.InferInput("observation", [1, OBS], "FP32")
        g_in.set_data_from_numpy(obs)
        h_in = httpclient.InferInput("observation", [1, OBS], "FP32")
        h_in.set_data_from_numpy(obs, binary_data=True)

        def grpc_client(port: int) -> Any:
            client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
            stack.callback(client.close)
            return client

        def http_client(port: int) -> Any:
            client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
            stack.callback(client.close)
            return client

        def stream(port: int) -> ModelStreamCall:
            client = grpc_client(port)
            call = ModelStreamCall(client, MODEL, [g_in])
            stack.callback(client.stop_stream)
            return call

        def pair(what: str, floor_call: Callable[[], Any], our_call: Callable[[], Any]) -> list[Row]:
            return [Row(f"floor  {what}", floor_call), Row(f"server {what}", our_call, f"floor  {what}")]

        pairs = [
            pair("gRPC ModelInfer", partial(grpc_client(floor_grpc).infer, MODEL, [g_in]),
                 partial(grpc_client(ours.grpc_port).infer, MODEL, [g_in])),
            pair("gRPC ModelStreamInfer", stream(floor_grpc), stream(ours.grpc_port)),
        ]  # fmt: skip
        if not args.no_rest:
            pairs.append(pair("REST infer (binary)", partial(http_client(floor_http).infer, MODEL, [h_in]),
                              partial(http_client(ours.http_port).infer, MODEL, [h_in])))  # fmt: skip
        rows = [row for p in pairs for row in p]

        # every row computes the same action (bit for bit on CPU)
        same = matches_floor(model_file, args.providers)
        reference = cpu_session(model_file).run(None, {"observation": obs})[0]
        for row in rows:
            assert same(row.call().as_numpy("action"), reference), row.name

        print(
            f"ISO-ODEtoODE policy {OBS} -> 6 (h=16, N=25), batch 1; {os.cpu_count()} CPUs; client tritonclient "
            f"{version('tritonclient')}, grpcio {version('grpcio')}, onnxruntime {ort.__version__}; "
            f"{args.requests} timed round trips per row in {args.rounds} alternating rounds"
        )
        measured = alternate(pairs, requests=args.requests, rounds=args.rounds, warmup=args.warmup)
        print(f"measured in {measured.seconds:.1f} s")
        ratio_table(measured.pairs(rows), COLUMNS, name_width=34)

        floor_infer, our_infer = pairs[0]
        infer_ratio = measured.timing(our_infer.name).p50_us / measured.timing(floor_infer.name).p50_us
        print(f"\nModelInfer p50 = {infer_ratio:.2f}x its floor: {verdict(infer_ratio <= 1.25)} the target (<= 1.25x)")
        print(f"ModelInfer p50 ratio per round: {format_ratios(measured.per_round(our_infer.name, floor_infer.name))}")


if __name__ == "__main__":
    main()
