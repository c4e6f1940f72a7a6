"""A bulk worker process: decodes, checks, computes and encodes one large request at a time, off the server process.

Why a process and not a thread: decoding a large request -- ``orjson.loads`` of a 60 MiB body, numpy conversions of
millions of typed protobuf values, rendering a large response -- holds the GIL for hundreds of milliseconds at a time,
which in a thread stalls the event loop that answers robots just the same. Here it stalls nobody: the server process
only moves the request's bytes in (in small pieces) and the answer's bytes out.

The worker runs the very same codecs as the event loop (``service.rest_codec``, ``service.v1_codec``,
``service.oip_codec``) and its own ONNX Runtime session per model version, opened on first use from the file the server
loaded (the same size and modification time, and the file's golden self-check passed again), so an answer from a worker
is the answer the event loop would have given.

Wire format, over a socket pair with the server (``service.bulk``): a frame is ``<u32 header length><JSON header>
<u64 payload length><payload>``. The server sends a job frame, the worker answers with a reply frame whose header is
either ``{"version", "queue_ns", "compute_ns", "rows", ...}`` or ``{"error": <ServingError class>, "message"}``.

    python -m service.bulk_worker FD PRIORITY LOG_FORMAT LOG_LEVEL
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import sys
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import orjson

from service import images, oip_codec, rest_codec, v1_codec
from service.batching import Timing
from service.binding import bind_inputs, check_requested_outputs, rows_of
from service.classification import answer_outputs
from service.errors import DeadlineExceeded, InternalError, InvalidArgument, ModelNotReady, ServingError
from service.inference import InferResponse, RequestedOutput
from service.memory import map_large_buffers, release_memory
from service.model_config import ResolvedConfig
from service.runtime import ModelRuntime
from service.tensors import Signature, Tensor

log = logging.getLogger("service.bulk_worker")

FRAME_HEAD = struct.Struct("<I")
PAYLOAD_HEAD = struct.Struct("<Q")
READY = {"ready": True}
SESSIONS_KEPT = 8
"""ONNX Runtime sessions a worker keeps (least recently used go first); versions that left the server go too."""


def frame_head(header: dict[str, Any], payload_size: int) -> bytes:
    raw = orjson.dumps(header)
    return FRAME_HEAD.pack(len(raw)) + raw + PAYLOAD_HEAD.pack(payload_size)


# -- the worker's side of the socket ---------------------------------------------------------------------------------


def _recv_exactly(sock: socket.socket, size: int) -> bytearray | None:
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            return None
        got += n
    return buffer


def read_frame(sock: socket.socket) -> tuple[dict[str, Any], bytearray] | None:
    """The next frame, or ``None`` at the end of the stream (the server went away)."""
    head = _recv_exactly(sock, FRAME_HEAD.size)
    if head is None:
        return None
    raw = _recv_exactly(sock, FRAME_HEAD.unpack(head)[0])
    size = _recv_exactly(sock, PAYLOAD_HEAD.size)
    if raw is None or size is None:
        return None
    payload = _recv_exactly(sock, PAYLOAD_HEAD.unpack(size)[0])
    if payload is None:
        return None
    return orjson.loads(raw), payload


def write_frame(sock: socket.socket, header: dict[str, Any], parts: list[bytes]) -> None:
    sock.sendall(frame_head(header, sum(len(p) for p in parts)))
    for part in parts:
        sock.sendall(part)


# -- the models ------------------------------------------------------------------------------------------------------


class Runtimes:
    """The worker's ONNX Runtime sessions, one per (model file, size, modification time, serving settings): a
    ``config.yaml`` edited while the file stays (new labels, a new row bound) reaches the worker as it reaches the
    server, which reloads the version for it."""

    def __init__(self) -> None:
        self._open: OrderedDict[tuple[str, int, int, bytes], ModelRuntime] = OrderedDict()

    def get(self, job: dict[str, Any]) -> ModelRuntime:
        path = Path(job["model_file"])
        mtime_ns, size = job["file_stamp"]
        key = (str(path), mtime_ns, size, orjson.dumps(job["config"], option=orjson.OPT_SORT_KEYS))
        runtime = self._open.get(key)
        if runtime is not None:
            self._open.move_to_end(key)
            return runtime
        runtime = self._open_checked(path, mtime_ns, size, ResolvedConfig.from_wire(job["config"]))
        self._open[key] = runtime
        while len(self._open) > SESSIONS_KEPT:
            self._open.popitem(last=False)
        return runtime

    @staticmethod
    def _open_checked(path: Path, mtime_ns: int, size: int, config: ResolvedConfig) -> ModelRuntime:
        changed = ModelNotReady("the model file changed on disk since the server loaded it; retry")
        try:
            st = path.stat()
        except OSError:
            raise changed from None
        if (st.st_mtime_ns, st.st_size) != (mtime_ns, size):
            raise changed
        runtime = ModelRuntime(path, config, memory_arena=False)
        check = runtime.self_check()
        if check is not None and not check.passed:
            raise changed
        return runtime


# -- the jobs --------------------------------------------------------------------------------------------------------


def _compute(
    runtime: ModelRuntime,
    tensors: list[Tensor],
    outputs: list[RequestedOutput],
    job: dict[str, Any],
    signature: Signature,
) -> tuple[list[Tensor], Timing]:
    config = runtime.config
    feeds = bind_inputs(tensors, signature, allow_non_finite=config.allow_non_finite)
    names = check_requested_outputs(outputs, runtime.outputs, batched=runtime.batched, feeds=feeds)
    deadline = job.get("deadline_ns")
    if deadline is not None and time.monotonic_ns() >= deadline:
        raise DeadlineExceeded("the deadline passed before the request was computed")
    rows = rows_of(feeds, runtime.batched)
    start = time.monotonic_ns()
    results = runtime.run(feeds, names)
    compute = time.monotonic_ns() - start
    tensors_out = answer_outputs(outputs, names, results, batched=runtime.batched, labels=config.labels)
    return tensors_out, Timing(start - job["queued_ns"], compute, rows)


def execute(job: dict[str, Any], payload: bytearray, runtimes: Runtimes) -> tuple[dict[str, Any], list[bytes]]:
    """One job: ``v2`` (OIP REST body), ``v1`` (KServe V1 predict body), ``image`` (a PNG or JPEG for an image
    model), ``grpc`` / ``grpc-stream`` (a serialized ``ModelInferRequest``). Raises ``ServingError`` for anything the
    client got wrong."""
    runtime = runtimes.get(job)
    config = runtime.config
    signature = Signature(tuple(runtime.inputs), config.max_request_rows, job["max_elements"])
    body: bytes | bytearray | memoryview = payload
    if job.get("encoding"):
        body = rest_codec.inflate(payload, job["encoding"], job["max_elements"])
    model, version, kind = job["model"], job["version"], job["kind"]
    if kind == "v2":
        request, binary = rest_codec.parse_infer_request(body, job.get("header_length"), model, version, signature)
        outputs, timing = _compute(runtime, request.inputs, request.outputs, job, signature)
        response = InferResponse(model, version, outputs, timing, 0, request.id)
        rendered = rest_codec.render_infer_response(response, binary)
        return _reply(version, timing, header_length=rendered.header_length), rendered.parts
    if kind == "v1":
        tensors = v1_codec.parse_predict(body, signature)
        outputs, timing = _compute(runtime, tensors, [], job, signature)
        return _reply(version, timing), [v1_codec.render_predict(outputs, tensors[0].shape[0])]
    if kind == "image":
        tensor = images.image_tensor(body, signature, model, job["max_pixels"])
        outputs, timing = _compute(runtime, [tensor], [], job, signature)
        return _reply(version, timing), [v1_codec.render_predict(outputs, 1)]
    if kind in ("grpc", "grpc-stream"):
        try:
            message = oip_codec.decode_infer_request(body)
        except Exception as exc:  # DecodeError and friends, as the event loop's deserializer would see them
            raise InvalidArgument(f"request: not a valid protobuf message ({exc})") from None
        request = oip_codec.infer_request_from_proto(message, signature)
        outputs, timing = _compute(runtime, request.inputs, request.outputs, job, signature)
        answer = oip_codec.infer_response_to_proto(InferResponse(model, version, outputs, timing, 0, request.id))
        if kind == "grpc-stream":
            return _reply(version, timing), [oip_codec.stream_answer(answer).SerializeToString()]
        return _reply(version, timing), [answer.SerializeToString()]
    raise InternalError(f"unknown bulk job kind {kind!r}")


def _reply(version: str, timing: Timing, **extra: Any) -> dict[str, Any]:
    return {"version": version, "queue_ns": timing.queue_ns, "compute_ns": timing.compute_ns,
            "rows": timing.batch_size, **extra}  # fmt: skip


def lower_priority(priority: str) -> None:
    """``idle``: ``SCHED_IDLE``, CPU time nobody else wants, preempted at once by any normal process that wakes up
    (no privilege is needed to lower one's own policy); ``low``: nice 10; ``normal``: unchanged."""
    if priority == "idle" and hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            return
        except OSError as exc:  # a sandbox may refuse it: fall back to the next best
            log.warning("bulk worker: SCHED_IDLE refused (%s); running at nice 19 instead", exc)
            os.nice(19)
            return
    if priority in ("idle", "low"):
        os.nice(10 if priority == "low" else 19)


def serve(sock: socket.socket) -> None:
    runtimes = Runtimes()
    write_frame(sock, READY, [])
    while True:
        frame = read_frame(sock)
        if frame is None:
            return
        job, payload = frame
        del frame  # the payload (up to max_request_bytes) must go as soon as the job is done
        try:
            header, parts = execute(job, payload, runtimes)
        except ServingError as exc:
            header, parts = {"error": type(exc).__name__, "message": str(exc)}, []
        except Exception:
            log.exception("bulk job on %s failed", job.get("model"))
            header, parts = {"error": "InternalError", "message": "inference failed inside the server"}, []
        del payload
        write_frame(sock, header, parts)
        del parts
        release_memory()


def main() -> None:
    fd, priority, log_format, log_level = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    from service.logs import configure

    configure(log_format, log_level)
    map_large_buffers()
    lower_priority(priority)
    with socket.socket(fileno=fd) as sock, contextlib.suppress(BrokenPipeError, ConnectionResetError):
        serve(sock)  # returns (or the pipe breaks) when the server goes away


if __name__ == "__main__":
    main()
