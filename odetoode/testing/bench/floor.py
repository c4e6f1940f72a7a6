"""The floor of the serving benchmarks: a bare server doing the server's ONNX Runtime work and nothing else.

``python -m odetoode.testing.bench MODEL_FILE --serve policy oip rest`` (started by ``floor_process``) loads one
session exactly as ``service.runtime.ModelRuntime`` does on CPU (``service.runtime.session_options``: one intra-op
thread) and serves, in one process and one event loop, what was asked for:

* ``policy``: ``/odetoode.v1.PolicyService/Act`` and ``.../ActStream`` -- parse the ``ActRequest`` bytes with the
  generated message class, run the session on the packed float32 observation, answer with the packed action (an
  ``ActResponse``; on the stream an ``ActStreamResponse(action=...)`` per request);
* ``oip``: ``/inference.GRPCInferenceService/ModelInfer`` and ``.../ModelStreamInfer`` -- parse the
  ``ModelInferRequest``, run the session on ``raw_input_contents[0]``, answer with ``raw_output_contents``;
* ``rest``: OIP REST ``infer`` with the binary-data extension -- a bare ASGI app under uvicorn that splits the body
  at ``Inference-Header-Content-Length``, parses the JSON header with orjson, runs the session on the binary tail and
  answers in the same binary form.

The gRPC services are bare ``grpc.aio`` generic handlers, registered as the generated ``add_*Servicer_to_server``
functions register them, on a server with the server's channel options (``service.grpc_server.grpc_options``). So a
floor is transport + protobuf (or JSON header) + ONNX Runtime; whatever the server under test measures above it is
what the server adds. Any client of the real server talks to the floor unchanged.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from odetoode.testing.bench.host import stop

if TYPE_CHECKING:
    import onnxruntime as ort

SERVICES = ("policy", "oip", "rest")
"""What a floor can serve: PolicyService (Act, ActStream), OIP gRPC (ModelInfer, ModelStreamInfer), OIP REST
binary ``infer``."""
READY = re.compile(r"floor serving:(?: http :(\d+),?)?(?: grpc :(\d+))?")


def cpu_session(model: Path | bytes) -> ort.InferenceSession:
    """The session exactly as ``service.runtime.ModelRuntime`` builds it on CPU (one intra-op thread)."""
    import onnxruntime as ort

    from service.runtime import session_options

    source = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(source, session_options(), providers=["CPUExecutionProvider"])


def _policy_service(sess: ort.InferenceSession) -> tuple[str, dict[str, Any]]:
    import grpc

    from odetoode.proto.odetoode.v1 import policy_pb2 as pb

    input_name = sess.get_inputs()[0].name
    output_names = [o.name for o in sess.get_outputs()]
    f32 = np.dtype("<f4")

    def answer(request: Any) -> Any:
        x = np.frombuffer(request.observation, dtype=f32).reshape(1, -1)
        action = sess.run(output_names, {input_name: x})[0]
        return pb.ActResponse(policy=request.policy, version="1", sequence=request.sequence, action=action.tobytes())

    async def act(request: Any, context: Any) -> Any:
        return answer(request)

    async def act_stream(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        async for request in requests:
            yield pb.ActStreamResponse(action=answer(request))

    return "odetoode.v1.PolicyService", {
        "Act": grpc.unary_unary_rpc_method_handler(act, pb.ActRequest.FromString, pb.ActResponse.SerializeToString),
        "ActStream": grpc.stream_stream_rpc_method_handler(
            act_stream, pb.ActRequest.FromString, pb.ActStreamResponse.SerializeToString
        ),
    }


def _oip_service(sess: ort.InferenceSession) -> tuple[str, dict[str, Any]]:
    import grpc

    from odetoode.proto.inference import grpc_service_pb2 as pb

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

    return "inference.GRPCInferenceService", {
        "ModelInfer": grpc.unary_unary_rpc_method_handler(
            model_infer, pb.ModelInferRequest.FromString, pb.ModelInferResponse.SerializeToString
        ),
        "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(
            model_stream_infer, pb.ModelInferRequest.FromString, pb.ModelStreamInferResponse.SerializeToString
        ),
    }


def _rest_app(sess: ort.InferenceSession, model_name: str) -> Any:
    """OIP REST ``infer`` with binary tensors in and out, for any path: an ASGI app."""
    import orjson

    input_name = sess.get_inputs()[0].name
    output_names = [o.name for o in sess.get_outputs()]

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
        header = orjson.dumps({"model_name": model_name, "model_version": "1", "outputs": outputs})
        payload = header + b"".join(a.tobytes() for a in results)
        headers = [
            (b"content-type", b"application/octet-stream"),
            (b"content-length", str(len(payload)).encode()),
            (b"inference-header-content-length", str(len(header)).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    return rest_app


async def serve_floor(model_file: Path, services: Sequence[str]) -> None:
    """Serves ``services`` (see ``SERVICES``) on ephemeral loopback ports until SIGTERM or SIGINT; prints one line
    first, ``floor serving: http :PORT, grpc :PORT`` (the parts served)."""
    import grpc

    from service.grpc_server import grpc_options
    from service.settings import ServerSettings

    sess = cpu_session(model_file)
    server, ports = None, []
    builders = {"policy": _policy_service, "oip": _oip_service}
    grpc_services = [build(sess) for name, build in builders.items() if name in services]
    if grpc_services:
        server = grpc.aio.server(options=grpc_options(ServerSettings(repository=model_file.parent)))
        for name, handlers in grpc_services:
            # registered exactly as the generated ``add_*Servicer_to_server`` functions do
            server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
            server.add_registered_method_handlers(name, handlers)
        ports.append(f"grpc :{server.add_insecure_port('127.0.0.1:0')}")
        await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    http, task = None, None
    if "rest" in services:
        import uvicorn

        app = _rest_app(sess, model_file.parent.parent.name)  # <repository>/<model>/<version>/model.onnx
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, access_log=False, lifespan="off")
        http = uvicorn.Server(config)
        http.capture_signals = contextlib.nullcontext  # type: ignore[method-assign, assignment]  # we own the signals
        task = loop.create_task(http.serve())
        while not http.started:
            await asyncio.sleep(0.01)
        ports.insert(0, f"http :{http.servers[0].sockets[0].getsockname()[1]}")
    print(f"floor serving: {', '.join(ports)}", flush=True)
    await stop.wait()
    if http is not None and task is not None:
        http.should_exit = True
        await task
    if server is not None:
        await server.stop(0)


@dataclass(frozen=True)
class FloorProcess:
    """A running floor: its process id (for its CPU time) and its ports (``None``: not served)."""

    pid: int
    grpc_port: int | None
    http_port: int | None

    @property
    def grpc(self) -> str:
        """Its gRPC address (``host:port``)."""
        if self.grpc_port is None:
            raise ValueError("this floor serves no gRPC")
        return f"127.0.0.1:{self.grpc_port}"


@contextlib.contextmanager
def floor_process(model_file: Path, *services: str) -> Iterator[FloorProcess]:
    """The floor serving ``services`` for ``model_file`` as a child process (it inherits this process's CPU
    affinity); waits until it listens; SIGTERM at the end."""
    unknown = set(services) - set(SERVICES)
    if unknown or not services:
        raise ValueError(f"services must be some of {SERVICES}, got {services}")
    cmd = [sys.executable, "-m", "odetoode.testing.bench", str(model_file), "--serve", *services]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = READY.match(line)
        if match is None or not any(match.groups()):
            raise RuntimeError(f"floor server did not start: {line!r}")
        http, grpc = (int(port) if port else None for port in match.groups())
        yield FloorProcess(proc.pid, grpc, http)
    finally:
        stop(proc, 10)
        if proc.stdout is not None:
            proc.stdout.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m odetoode.testing.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("model_file", type=Path, help="<repository>/<model>/<version>/model.onnx")
    parser.add_argument("--serve", nargs="+", choices=SERVICES, default=list(SERVICES), help="what to serve")
    args = parser.parse_args(argv)
    asyncio.run(serve_floor(args.model_file, args.serve))
