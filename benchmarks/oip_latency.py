"""Round-trip latency of one batch-1 policy request through the server, against a bare server doing the same work.

The floor is a separate process running a bare grpc.aio server: a generic handler on the same method paths
(``/inference.GRPCInferenceService/ModelInfer`` and ``.../ModelStreamInfer``), with the same channel options, parses
the same request bytes with the same generated message class, runs the same ONNX Runtime session (same model file,
same session options, one intra-op thread) on the raw input and answers with ``raw_output_contents``. So the floor is
gRPC transport + protobuf + ONNX Runtime and nothing else; the server under test (``python -m service``, also its
own process) adds everything else. The same floor process serves the REST floor too: a bare ASGI app under uvicorn
(same uvicorn settings as the server) that parses the binary-data header with orjson and runs the same session.

The client is tritonclient in this process, for every row: ``InferenceServerClient.infer`` for unary calls, and for
streams ``start_stream`` + ``async_stream_infer``, one request at a time (send, wait for its callback, send the
next). Floor and server runs alternate in chunks over several rounds (the order flips every round) so drift on a
shared machine hits both; every figure is printed with its ratio to its own floor. Target: ModelInfer p50 <= 1.25x.

    python benchmarks/oip_latency.py [--requests 4000] [--rounds 10] [--no-rest]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import queue
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import Any

import odetoode.telemetry_off  # noqa: F401  (first: turns ONNX Runtime's telemetry off before onnxruntime is imported)

# isort: split
import numpy as np
import onnxruntime as ort

from odetoode.testing.bench import Timing, cpu_session, floor_process, sample, summarize

MODEL = "policy"
OBS = 17
SERVICE = "inference.GRPCInferenceService"


# -- the floor server (runs in its own process: ``oip_latency.py --floor-server MODEL_FILE``) ------------------------


async def serve_floor(model_file: Path) -> None:
    import grpc
    import orjson
    import uvicorn

    from odetoode.proto.inference import grpc_service_pb2 as pb
    from service.grpc_server import grpc_options
    from service.settings import ServerSettings

    sess = cpu_session(model_file)
    input_name = sess.get_inputs()[0].name
    output_names = [o.name for o in sess.get_outputs()]

    def compute(request: Any) -> Any:
        tensor = request.inputs[0]
        x = np.frombuffer(request.raw_input_contents[0], dtype=np.float32).reshape(tuple(tensor.shape))
        results = sess.run(output_names, {input_name: x})
        response = pb.ModelInferResponse(model_name=request.model_name, model_version="1")
        for name, array in zip(output_names, results, strict=True):
            response.outputs.add(name=name, datatype="FP32", shape=array.shape)
            response.raw_output_contents.append(array.tobytes())
        return response

    async def model_infer(request: Any, context: Any) -> Any:
        return compute(request)

    async def model_stream_infer(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        async for request in requests:
            yield pb.ModelStreamInferResponse(infer_response=compute(request))

    handlers = {
        "ModelInfer": grpc.unary_unary_rpc_method_handler(
            model_infer, pb.ModelInferRequest.FromString, pb.ModelInferResponse.SerializeToString
        ),
        "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(
            model_stream_infer, pb.ModelInferRequest.FromString, pb.ModelStreamInferResponse.SerializeToString
        ),
    }
    server = grpc.aio.server(options=grpc_options(ServerSettings(repository=model_file.parent)))
    # registered exactly as the generated ``add_GRPCInferenceServiceServicer_to_server`` does
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)
    grpc_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()

    async def rest_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        n = int(dict(scope["headers"])[b"inference-header-content-length"])
        tensor = orjson.loads(body[:n])["inputs"][0]
        x = np.frombuffer(body[n:], dtype=np.float32).reshape(tensor["shape"])
        results = sess.run(output_names, {input_name: x})
        outputs = [
            {"name": name, "datatype": "FP32", "shape": list(a.shape), "parameters": {"binary_data_size": a.nbytes}}
            for name, a in zip(output_names, results, strict=True)
        ]
        header = orjson.dumps({"model_name": MODEL, "model_version": "1", "outputs": outputs})
        payload = header + b"".join(a.tobytes() for a in results)
        headers = [
            (b"content-type", b"application/octet-stream"),
            (b"content-length", str(len(payload)).encode()),
            (b"inference-header-content-length", str(len(header)).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    config = uvicorn.Config(rest_app, host="127.0.0.1", port=0, log_config=None, access_log=False, lifespan="off")
    http = uvicorn.Server(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    http.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]  # we own the signals
    task = loop.create_task(http.serve())
    while not http.started:
        await asyncio.sleep(0.01)
    http_port = http.servers[0].sockets[0].getsockname()[1]
    print(f"floor serving: http :{http_port}, grpc :{grpc_port}", flush=True)
    await stop.wait()
    http.should_exit = True
    await task
    await server.stop(0)


# -- client side ---------------------------------------------------------------------------------------------------


class StreamCall:
    """One sequential round trip on an open ModelStreamInfer stream: send a request, wait for its callback."""

    def __init__(self, client: Any, inputs: list[Any]) -> None:
        self.client, self.inputs = client, inputs
        self.results: queue.SimpleQueue[tuple[Any, Any]] = queue.SimpleQueue()
        client.start_stream(callback=lambda result, error: self.results.put((result, error)))

    def __call__(self) -> Any:
        self.client.async_stream_infer(MODEL, self.inputs)
        result, error = self.results.get(timeout=30)
        if error is not None:
            raise error
        return result


def print_pairs(pairs: list[tuple[Timing, Timing]]) -> None:
    print(f"\n{'':<34}{'p50 us':>9}{'p99 us':>9}{'mean us':>9}{'p50 x floor':>13}{'p99 x floor':>13}")
    for floor, ours in pairs:
        for row in (floor, ours):
            print(
                f"{row.name:<34}{row.p50_us:>9.1f}{row.p99_us:>9.1f}{row.mean_us:>9.1f}"
                f"{row.p50_us / floor.p50_us:>13.2f}{row.p99_us / floor.p99_us:>13.2f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=4000, help="timed round trips per row (after warm-up)")
    parser.add_argument("--rounds", type=int, default=10, help="alternating floor/server chunks per row")
    parser.add_argument("--warmup", type=int, default=300, help="untimed round trips per row before the rounds")
    parser.add_argument("--no-rest", action="store_true", help="skip the REST rows")
    parser.add_argument("--floor-server", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.floor_server is not None:
        asyncio.run(serve_floor(args.floor_server))
        return

    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    from odetoode.testing.models import add_policy
    from odetoode.testing.servers import server_process

    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        repo = Path(tmp)
        model_file = add_policy(repo, MODEL)
        ours = stack.enter_context(server_process(repo, "--model-control-mode", "none"))
        ports, _ = stack.enter_context(floor_process(__file__, model_file, r"http :(\d+), grpc :(\d+)"))
        floor_grpc, floor_http = int(ports[2]), int(ports[1])

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

        def stream(port: int) -> StreamCall:
            client = grpc_client(port)
            call = StreamCall(client, [g_in])
            stack.callback(client.stop_stream)
            return call

        # (row name, round trip); consecutive rows are (floor, ours) pairs
        rows: list[tuple[str, Callable[[], Any]]] = [
            ("floor  gRPC ModelInfer", partial(grpc_client(floor_grpc).infer, MODEL, [g_in])),
            ("server gRPC ModelInfer", partial(grpc_client(ours.grpc_port).infer, MODEL, [g_in])),
            ("floor  gRPC ModelStreamInfer", stream(floor_grpc)),
            ("server gRPC ModelStreamInfer", stream(ours.grpc_port)),
        ]
        if not args.no_rest:
            rows += [
                ("floor  REST infer (binary)", partial(http_client(floor_http).infer, MODEL, [h_in])),
                ("server REST infer (binary)", partial(http_client(ours.http_port).infer, MODEL, [h_in])),
            ]

        # every row computes the same action
        reference = cpu_session(model_file).run(None, {"observation": obs})[0]
        for name, fn in rows:
            result = fn()
            result = result.as_numpy("action")
            assert np.array_equal(result, reference), name

        print(
            f"ISO-ODEtoODE policy {OBS} -> 6 (h=16, N=25), batch 1; {os.cpu_count()} CPUs; client tritonclient "
            f"{version('tritonclient')}, grpcio {version('grpcio')}, onnxruntime {ort.__version__}; "
            f"{args.requests} timed round trips per row in {args.rounds} alternating rounds"
        )
        for _, fn in rows:
            sample(fn, 0, args.warmup)
        chunk = max(1, args.requests // args.rounds)
        collected: dict[str, list[np.ndarray]] = {name: [] for name, _ in rows}
        started = time.perf_counter()
        for r in range(args.rounds):
            for i in range(0, len(rows), 2):
                pair = rows[i : i + 2] if r % 2 == 0 else rows[i : i + 2][::-1]
                for name, fn in pair:
                    collected[name].append(sample(fn, chunk, warmup=20))
        timings = [summarize(name, np.concatenate(collected[name])) for name, _ in rows]
        print(f"measured in {time.perf_counter() - started:.1f} s")
        print_pairs([(timings[i], timings[i + 1]) for i in range(0, len(timings), 2)])

        infer_ratio = timings[1].p50_us / timings[0].p50_us
        verdict = "meets" if infer_ratio <= 1.25 else "MISSES"
        print(f"\nModelInfer p50 = {infer_ratio:.2f}x its floor: {verdict} the target (<= 1.25x)")
        per_round = np.array([np.percentile(c, 50) for c in collected[rows[1][0]]]) / np.array(
            [np.percentile(c, 50) for c in collected[rows[0][0]]]
        )
        print(
            "ModelInfer p50 ratio per round: "
            + " ".join(f"{x:.2f}" for x in per_round)
            + f" (median {np.median(per_round):.2f})"
        )


if __name__ == "__main__":
    main()
