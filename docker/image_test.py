"""``make image-test``: start the serve image the way Kubernetes runs it, call it over both protocols, stop it.

The container runs with a read-only root, a tmpfs /tmp, every capability dropped and no privilege escalation (the
securityContext of deploy/), its three ports published on free ports of 127.0.0.1. The checks:

* readiness (REST ``/v2/health/ready``, gRPC ``grpc.health.v1`` service ``""``) and the time from ``run`` to ready;
* the first ready policy (KServe V1's model list) answers a gRPC ``Act`` (client SDK) and a REST ``infer``;
* the metrics port counts both requests; REST ``/metrics`` answers too;
* the image's HEALTHCHECK passes; the server runs as a non-root user; torch is not importable;
* ``stop`` (SIGTERM) drains and exits 0.

Prints the image size and the start-to-ready time; exits non-zero (after printing the container's log) on failure.
Run from the repository root with the project's virtual environment (it imports ``odetoode.client``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
import numpy as np  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

from odetoode.client import PolicyClient, RestClient  # noqa: E402


class CheckFailedError(Exception):
    pass


def engine_command() -> list[str]:
    """podman (with docker/podman/containers.conf) unless $ENGINE says otherwise or a Docker daemon answers."""
    engine = os.environ.get("ENGINE")
    if not engine:
        docker_ok = shutil.which("docker") and subprocess.run(["docker", "info"], capture_output=True).returncode == 0
        engine = "docker" if docker_ok else "podman"
    if engine == "podman":
        os.environ.setdefault("CONTAINERS_CONF", str(ROOT / "docker" / "podman" / "containers.conf"))
    if not shutil.which(engine):
        raise CheckFailedError(f"{engine} not found: run `make image` first (it installs podman where needed)")
    return [engine]


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def http(url: str, body: bytes | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def check(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailedError(message)
    print(f"  ok  {message}")


class Container:
    def __init__(self, engine: list[str], image: str, name: str) -> None:
        self.engine, self.image, self.name = engine, image, name

    def run(self, *args: str, check_rc: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        out = subprocess.run([*self.engine, *args], capture_output=True, text=True, timeout=timeout)
        if check_rc and out.returncode != 0:
            raise CheckFailedError(
                f"{' '.join([*self.engine, *args[:3]])} ...: rc {out.returncode}: {out.stderr.strip()}"
            )
        return out

    def state(self) -> dict[str, Any]:
        return json.loads(self.run("inspect", "--format", "{{json .State}}", self.name).stdout)

    def logs(self) -> str:
        out = self.run("logs", self.name, check_rc=False)
        return out.stdout + out.stderr


def wait_ready(container: Container, base: str, started: float, timeout: float) -> float:
    while time.monotonic() - started < timeout:
        try:
            status, _ = http(f"{base}/v2/health/ready", timeout=1.0)
            if status == 200:
                return time.monotonic() - started
        except OSError:
            pass
        if not container.state().get("Running", False):
            raise CheckFailedError("the container exited before it was ready")
        time.sleep(0.05)
    raise CheckFailedError(f"not ready within {timeout:.0f} s")


def first_policy(base: str) -> tuple[str, dict[str, Any]]:
    # KServe V1's list of ready models: open by default, unlike the repository index (--repository-api)
    status, body = http(f"{base}/v1/models")
    check(status == 200, f"GET /v1/models -> {status}")
    names = json.loads(body)["models"]
    for name in names:
        status, body = http(f"{base}/v2/models/{name}/config")
        if status == 200 and json.loads(body).get("odetoode", {}).get("kind") == "policy":
            status, body = http(f"{base}/v2/models/{name}")
            return name, json.loads(body)
    raise CheckFailedError(f"no ready policy among the served models: {names}")


def image_size(container: Container) -> int:
    return int(container.run("image", "inspect", "--format", "{{.Size}}", container.image).stdout.strip())


def metric_value(text: str, family: str, **labels: str) -> float:
    """Sum of the samples of ``family`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(family + "{"):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default=os.environ.get("IMAGE", "localhost/odetoode/serve:dev"))
    parser.add_argument("--ready-timeout", type=float, default=90.0)
    parser.add_argument("--keep", action="store_true", help="leave the container running (and print how to stop it)")
    args = parser.parse_args()

    t_all = time.monotonic()
    engine = engine_command()
    http_port, grpc_port, metrics_port = free_ports(3)
    name = f"odetoode-image-test-{os.getpid()}"
    container = Container(engine, args.image, name)
    base, metrics = f"http://127.0.0.1:{http_port}", f"http://127.0.0.1:{metrics_port}"
    print(f"image-test: {args.image} with {engine[0]}; REST {base}, gRPC 127.0.0.1:{grpc_port}, metrics {metrics}")
    failed = False
    try:
        size = image_size(container)
        started = time.monotonic()
        container.run(
            "run", "--detach", "--name", name,
            "--read-only", "--tmpfs", "/tmp:rw,size=64m,mode=1777",
            "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
            "--publish", f"127.0.0.1:{http_port}:8000",
            "--publish", f"127.0.0.1:{grpc_port}:8001",
            "--publish", f"127.0.0.1:{metrics_port}:8002",
            "--env", "ODETOODE_LOG_FORMAT=json",
            args.image,
        )  # fmt: skip
        ready_s = wait_ready(container, base, started, args.ready_timeout)
        check(True, f"ready {ready_s:.2f} s after `run` (read-only root, tmpfs /tmp, capabilities dropped)")
        check(http(f"{base}/v2/health/live")[0] == 200, "GET /v2/health/live -> 200")

        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            check(reply.status == health_pb2.HealthCheckResponse.SERVING, "grpc.health.v1 Check('') -> SERVING")

        policy, metadata = first_policy(base)
        (model_input,) = metadata["inputs"]
        with PolicyClient(f"127.0.0.1:{grpc_port}", timeout=5.0) as client:
            info = client.get_policy(policy)
            observation = np.zeros(info.observation_space.shape, dtype=np.float32)
            action = client.act(policy, observation)
        values = np.asarray(action.values, dtype=np.float64).ravel()
        asked = f"gRPC Act({policy!r}, zeros{list(info.observation_space.shape)})"
        if info.action_space.HasField("discrete"):  # Discrete(n): an index, no values
            n = info.action_space.discrete.n
            check(action.index is not None and 0 <= action.index < n, f"{asked} -> action {action.index} of {n}")
        else:
            check(
                values.size == math.prod(info.action_space.shape) and bool(np.isfinite(values).all()),
                f"{asked} -> {values.size} finite actions",
            )
        shape = [1, *[int(d) for d in model_input["shape"][1:]]]
        with RestClient(base) as rest:
            outputs = rest.infer(policy, {model_input["name"]: np.zeros(shape, dtype=np.float32)})
        shapes = {name: list(output.shape) for name, output in outputs.items()}  # a discrete policy has several
        check(
            bool(outputs) and all(o.shape[0] == 1 and bool(np.isfinite(o).all()) for o in outputs.values()),
            f"REST infer {policy} {shape} -> {shapes}",
        )

        status, body = http(f"{metrics}/metrics")
        text = body.decode()
        grpc_count = metric_value(text, "odetoode_requests_total", model=policy, protocol="policy")
        rest_count = metric_value(text, "odetoode_requests_total", model=policy, protocol="rest")
        check(status == 200 and grpc_count >= 1 and rest_count >= 1,
              f":8002/metrics counts the calls (policy {grpc_count:.0f}, rest {rest_count:.0f})")  # fmt: skip
        check("odetoode_request_duration_seconds_bucket" in text, ":8002/metrics has the latency histograms")
        check(http(f"{base}/metrics")[0] == 200, "REST GET /metrics -> 200")

        user = container.run("inspect", "--format", "{{.Config.User}}", name).stdout.strip()
        uid = container.run("exec", name, "id", "-u").stdout.strip()
        check(uid != "0" and user not in ("", "0", "root"), f"runs as non-root (User {user!r}, id -u {uid})")
        no_torch = container.run("exec", name, "python", "-c", "import torch", check_rc=False)
        check(no_torch.returncode != 0, "torch is not importable in the image")
        (config,) = json.loads(container.run("image", "inspect", args.image).stdout)
        healthcheck = config.get("Healthcheck") or config.get("Config", {}).get("Healthcheck")  # podman, docker
        check("healthcheck.py" in json.dumps(healthcheck), "the image keeps its HEALTHCHECK (docker format)")
        if engine[0] == "podman":
            hc = container.run("healthcheck", "run", name, check_rc=False)
            check(hc.returncode == 0, f"HEALTHCHECK command passes (podman healthcheck run: rc {hc.returncode})")
        stats = container.run("stats", "--no-stream", "--format", "{{.MemUsage}}", name, check_rc=False)
        if stats.returncode == 0 and stats.stdout.strip():
            print(f"  --  memory: {stats.stdout.strip()}")

        if args.keep:
            print(f"left running: {' '.join(engine)} rm -f {name}")
            return 0
        stop_started = time.monotonic()
        container.run("stop", "--time", "30", name, timeout=60)
        stop_s = time.monotonic() - stop_started
        exit_code = container.state().get("ExitCode")
        check(exit_code == 0, f"SIGTERM: drained and exited {exit_code} in {stop_s:.2f} s")

        print(
            f"image-test passed: image {args.image} {size / 2**20:.0f} MiB (uncompressed), "
            f"start-to-ready {ready_s:.2f} s, test {time.monotonic() - t_all:.1f} s"
        )
        return 0
    except (CheckFailedError, grpc.RpcError, OSError, subprocess.TimeoutExpired) as e:
        failed = True
        print(f"image-test FAILED: {e}", file=sys.stderr)
        return 1
    finally:
        if failed:
            print("---- container log ----", file=sys.stderr)
            print(container.logs()[-8000:], file=sys.stderr)
        if not args.keep or failed:
            container.run("rm", "--force", name, check_rc=False)


if __name__ == "__main__":
    sys.exit(main())
