"""REST transport, spoken by hand: JSON and binary-tensor bodies, KServe V1, metrics, docs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort

from odetoode.testing.clients import observation_json
from odetoode.testing.servers import RunningServer, running_server


def session(server: RunningServer, model: str, version: str) -> ort.InferenceSession:
    path = server.server.settings.repository / model / version / "model.onnx"
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_json_infer_flat_and_nested_data_agree_with_onnxruntime(server: RunningServer) -> None:
    x = np.random.default_rng(0).normal(size=(2, 17)).astype(np.float32)
    expected = session(server, "policy", "2").run(None, {"observation": x})[0]
    for data in (x.ravel().tolist(), x.tolist()):
        body = {"id": "abc", "inputs": [{"name": "observation", "shape": [2, 17], "datatype": "FP32", "data": data}]}
        r = httpx.post(server.http + "/v2/models/policy/infer", json=body)
        assert r.status_code == 200, r.text
        out = r.json()
        assert (out["model_name"], out["model_version"], out["id"]) == ("policy", "2", "abc")
        assert out["outputs"][0]["shape"] == [2, 6]
        assert np.allclose(out["outputs"][0]["data"], expected.ravel(), atol=1e-6)
        assert "compute;dur=" in r.headers["server-timing"]


def test_binary_tensor_extension_both_ways(server: RunningServer) -> None:
    images = np.random.default_rng(1).uniform(size=(3, 1, 28, 28)).astype(np.float32)
    header = json.dumps({
        "inputs": [{"name": "image", "shape": [3, 1, 28, 28], "datatype": "FP32",
                    "parameters": {"binary_data_size": images.nbytes}}],
        "outputs": [{"name": "logits", "parameters": {"binary_data": True}}, {"name": "probabilities"}],
    }).encode()  # fmt: skip
    r = httpx.post(
        server.http + "/v2/models/digits/infer",
        content=header + images.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 200, r.text
    n = int(r.headers["inference-header-content-length"])
    meta = json.loads(r.content[:n])
    logits_meta, probs_meta = meta["outputs"]
    assert logits_meta["parameters"]["binary_data_size"] == 3 * 10 * 4 and "data" not in logits_meta
    logits = np.frombuffer(r.content[n:], dtype=np.float32).reshape(3, 10)
    expected_logits, expected_probs = session(server, "digits", "1").run(None, {"image": images})
    assert np.allclose(logits, expected_logits, atol=1e-6)
    assert np.allclose(probs_meta["data"], expected_probs.ravel(), atol=1e-6)


def test_unclaimed_binary_bytes_are_rejected(server: RunningServer) -> None:
    header = json.dumps({"inputs": [{"name": "observation", "shape": [1, 17], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 68}}]}).encode()  # fmt: skip
    r = httpx.post(server.http + "/v2/models/policy/infer", content=header + b"\0" * 72,
                   headers={"Inference-Header-Content-Length": str(len(header))})  # fmt: skip
    assert r.status_code == 400 and "4 bytes after the last input" in r.json()["error"]


def test_kserve_v1_predict_for_policy_and_classifier(server: RunningServer) -> None:
    x = np.random.default_rng(2).normal(size=(2, 17)).astype(np.float32)
    r = httpx.post(server.http + "/v1/models/policy:predict", json={"instances": x.tolist()})
    assert r.status_code == 200, r.text
    expected = session(server, "policy", "2").run(None, {"observation": x})[0]
    assert np.allclose(r.json()["predictions"], expected, atol=1e-6)
    images = np.zeros((1, 1, 28, 28)).tolist()
    r = httpx.post(server.http + "/v1/models/digits:predict", json={"instances": images})
    (prediction,) = r.json()["predictions"]
    assert set(prediction) == {"logits", "probabilities"} and abs(sum(prediction["probabilities"]) - 1) < 1e-5
    assert httpx.get(server.http + "/v1/models/policy").json() == {"name": "policy", "ready": True}
    assert httpx.post(server.http + "/v1/models/policy:predict", json={"instances": [[0.0] * 3]}).status_code == 400


def test_metadata_config_and_docs(server: RunningServer) -> None:
    assert httpx.get(server.http + "/v2").json()["name"] == "odetoode"
    meta = httpx.get(server.http + "/v2/models/digits/versions/1").json()
    assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
    config = httpx.get(server.http + "/v2/models/policy/config").json()
    assert config["execution_providers"][0] == "CPUExecutionProvider"
    assert config["odetoode"]["arch"] == "iso-odetoode"
    assert httpx.get(server.http + "/v2/models/policy/ready").json() == {"name": "policy", "ready": True}
    assert httpx.get(server.http + "/docs").status_code == 200
    schema = httpx.get(server.http + "/openapi.json").json()
    assert "/v2/models/{model}/infer" in schema["paths"]


def test_docs_pages_load_everything_from_the_server_itself(server: RunningServer, tmp_path: Path) -> None:
    """``/docs`` and ``/redoc`` work without a network: every script, stylesheet and icon they reference, and the
    schema they render, is a path on this server that answers 200 -- also with auth on and no token."""
    from odetoode.testing.models import add_policy

    pages = {}
    for page in ("/docs", "/redoc"):
        r = httpx.get(server.http + page)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), page
        urls = re.findall(r'(?:src|href|spec-url)="([^"]*)"', r.text) + re.findall(r"\burl: '([^']*)'", r.text)
        assert "/openapi.json" in urls and any(u.endswith(".js") for u in urls), r.text
        assert "://" not in r.text, r.text  # no absolute URL anywhere in the page: no CDN, no validator
        for url in urls:
            assert url.startswith("/") and not url.startswith("//"), url
            assert httpx.get(server.http + url).status_code == 200, url
        pages[page] = urls
    assert any(u.endswith("swagger-ui-bundle.js") for u in pages["/docs"])
    add_policy(tmp_path, "policy")
    with running_server(tmp_path, auth_tokens=["a-token"]) as guarded:
        for url in ("/docs", "/redoc", *pages["/docs"], *pages["/redoc"]):
            assert httpx.get(guarded.http + url).status_code == 200, url
        assert httpx.get(guarded.http + "/v1/models").status_code == 401


def test_metrics_count_requests_by_model_version_and_protocol(server: RunningServer) -> None:
    httpx.post(server.http + "/v2/models/policy/versions/1/infer", json=observation_json())
    text = httpx.get(server.http + "/metrics").text
    assert "odetoode_requests_total" in httpx.get(server.metrics_url).text  # the same registry on :8002
    for family in ("odetoode_requests_total", "odetoode_request_duration_seconds_bucket",
                   "odetoode_queue_duration_seconds_bucket", "odetoode_compute_duration_seconds_bucket",
                   "odetoode_batch_size_bucket", "odetoode_inflight_requests", "odetoode_model_state",
                   "odetoode_model_execution_provider"):  # fmt: skip
        assert family in text, family
    assert 'odetoode_requests_total{model="policy",protocol="rest",version="1"}' in text
    httpx.post(server.http + "/v2/models/unknown-model-xyz/infer", json=observation_json())
    text = httpx.get(server.http + "/metrics").text
    assert "unknown-model-xyz" not in text  # client-chosen names never become label values
    assert 'reason="ModelNotFound"' in text


def test_oversized_chunked_body_is_refused_without_content_length(tmp_path: Path) -> None:
    from odetoode.testing.models import add_policy

    add_policy(tmp_path, "policy")
    with running_server(tmp_path, max_request_bytes=4096) as small:

        def chunks():  # type: ignore[no-untyped-def]
            for _ in range(100):
                yield b" " * 1024

        r = httpx.post(small.http + "/v2/models/policy/infer", content=chunks())
        assert r.status_code == 413
        assert httpx.post(small.http + "/v2/models/policy/infer", json=observation_json()).status_code == 200
