"""KServe V1 over REST, spoken as a plain JSON user would: the model list, and every form ``:predict`` takes.

Rows (``instances``) come as a list of rows, one row alone, rows without their size-1 dimensions, or objects keyed by
input name (the only form for a model with several inputs); columns (``inputs``) as the batched tensor of a model's
one input or an object of batched tensors. Every answer is compared with ONNX Runtime run directly on the same file;
every refusal must say which form was expected.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from odetoode.testing.models import OBS, add_classifier, add_policy
from odetoode.testing.servers import RunningServer, running_server


def two_inputs_graph() -> onnx.GraphProto:
    """``y = sum over the last axis of a, plus b``: ``a`` FP32 [N, 2, 3] and ``b`` FP32 [N, 2] -> ``y`` [N, 2]."""
    return helper.make_graph(
        [helper.make_node("ReduceSum", ["a", "axis"], ["summed"], keepdims=0),
         helper.make_node("Add", ["summed", "b"], ["y"])],
        "two-inputs",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 2, 3]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        [onnx.numpy_helper.from_array(np.array([2]), "axis")],
    )  # fmt: skip


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("v1")
    add_policy(root, "policy", 1)
    add_classifier(root, "digits", 1)
    model = helper.make_model(two_inputs_graph(), opset_imports=[helper.make_opsetid("", 17)])
    (root / "pair" / "1").mkdir(parents=True)
    onnx.save(model, str(root / "pair" / "1" / "model.onnx"))
    return root


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[RunningServer]:
    with running_server(repository) as running:
        yield running


def direct(server: RunningServer, model: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    path = server.server.settings.repository / model / "1" / "model.onnx"
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)


def predict(server: RunningServer, model: str, body: Any) -> httpx.Response:
    return httpx.post(f"{server.http}/v1/models/{model}:predict", json=body, timeout=30)


def predictions(server: RunningServer, model: str, body: Any) -> Any:
    r = predict(server, model, body)
    assert r.status_code == 200, r.text
    return r.json()["predictions"]


def refusal(server: RunningServer, model: str, body: Any) -> str:
    r = predict(server, model, body)
    assert r.status_code == 400, r.text
    return str(r.json()["error"])


def test_list_models_names_the_ready_ones(server: RunningServer, repository: Path) -> None:
    assert httpx.get(server.http + "/v1/models").json() == {"models": ["digits", "pair", "policy"]}
    assert httpx.get(server.http + "/v1/models/pair").json() == {"name": "pair", "ready": True}
    with running_server(repository, list_models=False) as private:
        r = httpx.get(private.http + "/v1/models")
        assert r.status_code == 403 and "list_models" in r.json()["error"]
        assert "pair" not in httpx.get(private.http + "/v1/models/unknown-xyz").json()["error"]


def test_rows_one_row_alone_and_objects_agree_with_onnxruntime(server: RunningServer) -> None:
    x = np.random.default_rng(0).normal(size=(3, OBS)).astype(np.float32)
    (expected,) = direct(server, "policy", {"observation": x})
    rows = predictions(server, "policy", {"instances": x.tolist()})
    np.testing.assert_allclose(rows, expected, atol=1e-6)
    # The user report: one observation sent without the outer list was read as 17 rows of 17 values.
    assert np.allclose(predictions(server, "policy", {"instances": x[0].tolist()}), expected[:1], atol=1e-6)
    objects = [{"observation": row} for row in x.tolist()]
    np.testing.assert_allclose(predictions(server, "policy", {"instances": objects}), expected, atol=1e-6)
    np.testing.assert_allclose(predictions(server, "policy", {"inputs": x.tolist()}), expected, atol=1e-6)
    np.testing.assert_allclose(predictions(server, "policy", {"inputs": {"observation": x.tolist()}}), expected,
                               atol=1e-6)  # fmt: skip


def test_images_with_or_without_their_channel_dimension(server: RunningServer) -> None:
    images = np.random.default_rng(1).uniform(size=(2, 1, 28, 28)).astype(np.float32)
    logits, _ = direct(server, "digits", {"image": images})
    forms = {
        "rows": images.tolist(),
        "rows without the channel": images[:, 0].tolist(),
        "one row alone": images[0].tolist(),
        "one row alone, without the channel": images[0, 0].tolist(),
    }
    for form, instances in forms.items():
        got = predictions(server, "digits", {"instances": instances})
        assert len(got) == (2 if form.startswith("rows") else 1), form
        np.testing.assert_allclose([p["logits"] for p in got], logits[: len(got)], atol=1e-5, err_msg=form)


def test_a_model_with_two_inputs_takes_objects_or_columns(server: RunningServer) -> None:
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(4, 2, 3)).astype(np.float32), rng.normal(size=(4, 2)).astype(np.float32)
    (expected,) = direct(server, "pair", {"a": a, "b": b})
    objects = [{"a": ra, "b": rb} for ra, rb in zip(a.tolist(), b.tolist(), strict=True)]
    np.testing.assert_allclose(predictions(server, "pair", {"instances": objects}), expected, atol=1e-5)
    columns = {"inputs": {"b": b.tolist(), "a": a.tolist()}}
    np.testing.assert_allclose(predictions(server, "pair", columns), expected, atol=1e-5)


@pytest.mark.parametrize(("model", "body", "message"), [
    ("policy", {"instances": [[0.0] * 3]}, "instances: expected rows of shape [17] (a list of them, or one alone), "
                                           "got shape [1, 3]"),
    ("policy", {"instances": [[[0.0] * OBS]] * 2}, "expected rows of shape [17]"),
    ("digits", {"instances": [[0.0] * 28] * 27}, "expected rows of shape [1, 28, 28] (or [28, 28])"),
    ("pair", {"instances": [[0.0] * 6]}, "instances: the model takes several inputs; expected objects with keys "
                                         "['a', 'b'], one per row"),
    ("pair", {"instances": [{"a": [[0.0] * 3] * 2, "b": [0.0] * 2}, {"a": [[0.0] * 3] * 2}]},
     "instances[1]: expected an object with keys ['a', 'b'], got keys ['a']"),
    ("pair", {"instances": [{"a": [0.0] * 6, "b": [0.0] * 2}]}, "instances[].a: expected a row of shape [2, 3]"),
    ("pair", {"inputs": [[0.0] * 6]}, "inputs: expected an object with keys ['a', 'b'] (a tensor of rows each)"),
    ("pair", {"inputs": {"a": [[[0.0] * 3] * 2] * 2, "b": [[0.0] * 2] * 3}},
     "inputs: every input must have the same number of rows, got {'a': 2, 'b': 3}"),
    ("pair", {"inputs": {"a": [[0.0] * 3] * 2}}, "inputs: expected an object with keys ['a', 'b']"),
    ("policy", {"instances": [[0.0] * OBS], "inputs": [[0.0] * OBS]}, "expected one of instances (a list of rows) or "
                                                                      "inputs (columns)"),
])  # fmt: skip
def test_refusals_say_which_form_was_expected(server: RunningServer, model: str, body: Any, message: str) -> None:
    assert message in refusal(server, model, body)


def test_large_bodies_take_the_same_forms_in_a_bulk_worker(server: RunningServer) -> None:
    """Over ``bulk_request_bytes`` (64 KiB), a body is parsed by the same codec in a bulk worker process."""
    images = np.random.default_rng(3).uniform(size=(12, 1, 28, 28)).astype(np.float32)
    logits, _ = direct(server, "digits", {"image": images})
    body = {"instances": [{"image": image} for image in images[:, 0].tolist()]}
    assert len(httpx.Request("POST", "/", json=body).content) > server.server.settings.bulk_request_bytes
    jobs = server.server.bulk.jobs
    got = predictions(server, "digits", body)
    assert server.server.bulk.jobs == jobs + 1
    np.testing.assert_allclose([p["logits"] for p in got], logits, atol=1e-5)
    wrong = {"instances": [[0.0] * 28] * 28 * 40}  # whole images' worth of values, in no form the model takes
    assert len(httpx.Request("POST", "/", json=wrong).content) > server.server.settings.bulk_request_bytes
    assert "expected rows of shape [1, 28, 28]" in refusal(server, "digits", wrong)
    assert server.server.bulk.jobs == jobs + 2
