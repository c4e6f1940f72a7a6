"""The model repository on a live server: version policies, hot reload under traffic, failures that stay local."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from odetoode.testing.clients import observation_json
from odetoode.testing.models import add_garbage, add_policy
from odetoode.testing.servers import RunningServer, running_server


def infer(server: RunningServer, model: str, version: str | None = None) -> httpx.Response:
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    return httpx.post(server.http + path, json=observation_json(), timeout=30)


def index(server: RunningServer) -> list[dict[str, str]]:
    return httpx.post(server.http + "/v2/repository/index", timeout=10).json()  # type: ignore[no-any-return]


def wait_for(predicate: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def direct(path: Path, value: float = 0.1) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"observation": np.full((1, 17), value, dtype=np.float32)})[0]  # type: ignore[no-any-return]


def test_readiness_is_false_with_zero_models(tmp_path: Path) -> None:
    with running_server(tmp_path, model_control_mode="poll", poll_interval_s=0.1, repository_api=True) as server:
        assert httpx.get(server.http + "/v2/health/ready").status_code == 503
        assert httpx.get(server.http + "/v2/health/live").status_code == 200
        add_policy(tmp_path, "late")
        wait_for(lambda: httpx.get(server.http + "/v2/health/ready").status_code == 200)
        assert infer(server, "late").status_code == 200


def test_version_policy_latest_all_and_specific(tmp_path: Path) -> None:
    for v in (1, 2, 3):
        add_policy(tmp_path, "m", v, seed=v)
    for policy, served in (
        ({"latest": 2}, ["2", "3"]),
        ({"all": True}, ["1", "2", "3"]),
        ({"specific": [1, 3]}, ["1", "3"]),
    ):
        (tmp_path / "m" / "config.yaml").write_text(f"version_policy: {policy}\n".replace("'", ""))
        with running_server(tmp_path, repository_api=True) as server:
            meta = httpx.get(server.http + "/v2/models/m").json()
            assert meta["versions"] == served
            assert infer(server, "m").json()["model_version"] == served[-1]  # no version: the highest ready one
            for v in served:
                response = infer(server, "m", v)
                assert response.status_code == 200
                assert np.allclose(response.json()["outputs"][0]["data"],
                                   direct(tmp_path / "m" / v / "model.onnx").ravel(), atol=1e-6)  # fmt: skip
            not_served = {"1", "2", "3"} - set(served)
            for v in not_served:
                assert infer(server, "m", v).status_code == 503
                assert httpx.get(f"{server.http}/v2/models/m/versions/{v}/ready").status_code == 503
            assert infer(server, "m", "9").status_code == 404


def test_hot_reload_under_traffic_loses_no_request(tmp_path: Path) -> None:
    """A client streams requests while version 2 appears and version 1 disappears: zero failures."""
    add_policy(tmp_path, "live", 1, seed=1)
    with running_server(tmp_path, model_control_mode="poll", poll_interval_s=0.1, repository_api=True) as server:
        results: list[tuple[int, str]] = []
        stop = threading.Event()

        def client() -> None:
            with httpx.Client(base_url=server.http, timeout=30) as c:
                while not stop.is_set():
                    r = c.post("/v2/models/live/infer", json=observation_json())
                    results.append((r.status_code, r.json().get("model_version", r.text)))

        threads = [threading.Thread(target=client) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            wait_for(lambda: len(results) > 30)
            add_policy(tmp_path, "live", 2, seed=2)
            wait_for(lambda: any(v == "2" for _, v in results[-5:]))
            shutil.rmtree(tmp_path / "live" / "1")
            time.sleep(0.5)  # several polls with traffic going on
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        statuses = {s for s, _ in results}
        assert statuses == {200}, [r for r in results if r[0] != 200][:3]
        versions = [v for _, v in results]
        assert versions[0] == "1" and versions[-1] == "2"
        assert "1" not in versions[versions.index("2") + 10 :]  # once switched, it stays switched
        metrics = httpx.get(server.metrics_url).text
        assert 'odetoode_requests_total{model="live",protocol="rest",version="1"}' in metrics
        assert 'odetoode_requests_total{model="live",protocol="rest",version="2"}' in metrics
        assert [e["version"] for e in index(server) if e["name"] == "live"] == ["2"]


def test_corrupt_model_is_reported_and_does_not_stop_the_others(tmp_path: Path) -> None:
    add_policy(tmp_path, "good")
    add_garbage(tmp_path, "bad")
    with running_server(tmp_path, repository_api=True) as server:
        assert httpx.get(server.http + "/v2/health/ready").status_code == 200
        assert infer(server, "good").status_code == 200
        entry = next(e for e in index(server) if e["name"] == "bad")
        assert entry["state"] == "FAILED" and "ONNX Runtime cannot load it" in entry["reason"]
        failure = infer(server, "bad")
        assert failure.status_code == 503 and "FAILED" in failure.json()["error"]
        metrics = httpx.get(server.metrics_url).text
        assert 'odetoode_model_load_failures_total{model="bad",version="1"} 1.0' in metrics
        assert 'odetoode_model_state{model="bad",state="FAILED",version="1"} 1.0' in metrics


def test_a_replaced_file_that_is_garbage_keeps_the_old_one_serving(tmp_path: Path) -> None:
    path = add_policy(tmp_path, "m")
    expected = direct(path)
    with running_server(tmp_path, model_control_mode="poll", poll_interval_s=0.1, repository_api=True) as server:
        add_garbage(tmp_path, "m", 1, content=path.read_bytes()[:1000])  # truncated in place
        wait_for(lambda: "reload failed" in next(e for e in index(server) if e["name"] == "m").get("reason", ""))
        response = infer(server, "m")
        assert response.status_code == 200
        assert np.allclose(response.json()["outputs"][0]["data"], expected.ravel(), atol=1e-6)


def test_golden_self_check_rejects_a_file_that_computes_something_else(tmp_path: Path) -> None:
    import onnx
    from onnx import numpy_helper

    path = add_policy(tmp_path, "tampered")
    model = onnx.load(str(path))
    weight = next(t for t in model.graph.initializer if t.name.endswith("weight_t"))
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 1.5, weight.name))
    onnx.save_model(model, str(path))
    with running_server(tmp_path, repository_api=True) as server:
        entry = next(e for e in index(server) if e["name"] == "tampered")
        assert entry["state"] == "FAILED" and "golden self-check failed" in entry["reason"]


def test_bad_config_yaml_is_reported(tmp_path: Path) -> None:
    add_policy(tmp_path, "m", serving_config={"max_batch_size": -1})
    add_policy(tmp_path, "ok")
    with running_server(tmp_path, repository_api=True) as server:
        entry = next(e for e in index(server) if e["name"] == "m")
        assert entry["state"] == "FAILED" and "m/config.yaml: max_batch_size" in entry["reason"]
        assert infer(server, "ok").status_code == 200


def test_explicit_mode_loads_and_unloads_on_request(tmp_path: Path) -> None:
    add_policy(tmp_path, "a")
    add_policy(tmp_path, "b")
    with running_server(tmp_path, model_control_mode="explicit", startup_models=["a"], repository_api=True) as server:
        assert infer(server, "a").status_code == 200
        assert infer(server, "b").status_code == 503  # known, not loaded
        assert {(e["name"], e["state"]) for e in index(server)} == {("a", "READY"), ("b", "UNAVAILABLE")}
        assert httpx.post(server.http + "/v2/repository/models/b/load").status_code == 200
        assert infer(server, "b").status_code == 200
        assert httpx.post(server.http + "/v2/repository/models/a/unload").status_code == 200
        assert infer(server, "a").status_code == 503
        ready = httpx.post(server.http + "/v2/repository/index", json={"ready": True}).json()
        assert [e["name"] for e in ready] == ["b"]
        assert httpx.post(server.http + "/v2/repository/models/zzz/load").status_code == 404


@pytest.mark.parametrize("name", ["..", "a/../b", "%2e%2e", "x" * 65, ".hidden"])
def test_unsafe_model_names_never_reach_the_file_system(tmp_path: Path, name: str) -> None:
    add_policy(tmp_path, "a")
    with running_server(tmp_path, model_control_mode="explicit", repository_api=True) as server:
        response = httpx.post(f"{server.http}/v2/repository/models/{name}/load")
        assert response.status_code in (400, 404), response.text


def test_a_model_directory_removed_during_a_scan_is_forgotten_by_the_next(tmp_path: Path) -> None:
    """The race of ``rmtree``: one pass sees the directory without its versions (the files went first) and keeps the
    name; the directory is gone by the next pass, which must still look at that name and forget it (404, not 503)."""
    add_policy(tmp_path, "gone", seed=1)
    add_policy(tmp_path, "stays", seed=2)
    with running_server(tmp_path, repository_api=True) as server:
        shutil.rmtree(tmp_path / "gone" / "1")  # the directory is still there, empty
        server.call(server.server.repository.reconcile())
        assert infer(server, "gone").status_code == 503  # known, nothing ready
        (tmp_path / "gone").rmdir()
        server.call(server.server.repository.reconcile())
        assert infer(server, "gone").status_code == 404
        assert infer(server, "stays").status_code == 200
