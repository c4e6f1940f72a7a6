"""SIGTERM: readiness flips, accepted requests are answered, new ones refused, the process exits in its grace."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import httpx

from tests.service.clients import infer_proto, observation_json, stub
from tests.service.models import add_policy
from tests.service.servers import server_process


def test_sigterm_during_traffic_loses_no_accepted_request(tmp_path: Path) -> None:
    # Requests wait 0.6 s in the batcher, so they are certainly in flight when the signal lands.
    add_policy(tmp_path, "slow", serving_config={"max_queue_delay_us": 600_000, "max_batch_size": 64})
    with server_process(tmp_path, "--drain-grace-s", "10") as proc:
        rest_results: list[int] = []
        grpc_results: list[grpc.StatusCode] = []

        def rest_call() -> None:
            r = httpx.post(proc.http + "/v2/models/slow/infer", json=observation_json(), timeout=30)
            rest_results.append(r.status_code)

        def grpc_call() -> None:
            channel, s = stub(proc.grpc)
            with channel:
                try:
                    s.ModelInfer(infer_proto("slow"), timeout=30)
                    grpc_results.append(grpc.StatusCode.OK)
                except grpc.RpcError as exc:
                    grpc_results.append(exc.code())

        threads = [threading.Thread(target=f) for f in [rest_call] * 6 + [grpc_call] * 6]
        for t in threads:
            t.start()
        time.sleep(0.3)
        signalled = time.monotonic()
        proc.process.send_signal(15)
        time.sleep(0.05)
        late = httpx.post(proc.http + "/v2/models/slow/infer", json=observation_json(), timeout=30)
        ready = httpx.get(proc.http + "/v2/health/ready", timeout=5)
        for t in threads:
            t.join(30)
        code = proc.process.wait(30)
        elapsed = time.monotonic() - signalled

    assert rest_results == [200] * 6
    assert grpc_results == [grpc.StatusCode.OK] * 6
    assert late.status_code == 503 and "shutting down" in late.json()["error"]
    assert ready.status_code == 503
    assert code == 0
    assert elapsed < 10
    assert any("draining" in line for line in proc.log_lines)
