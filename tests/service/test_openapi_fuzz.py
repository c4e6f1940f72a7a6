"""Property-based fuzzing of the REST app against its own OpenAPI schema (``/openapi.json``) with schemathesis.

Schemathesis generates requests for every operation in the schema -- valid ones, and (negative mode) ones that break
it -- and sends them to a live server over a copy of the test repository. What must hold: no 5xx answer, ever
(``not_a_server_error``), and a good request still works afterwards.

Path parameters are biased toward the names the repository really holds (``policy``, ``digits``, versions 1 and 2)
so that the fuzzing reaches the model routes and not only their 404s. The repository API stays off: load/unload
answer 403 and the served set does not change under the fuzzer.

The default run is small and seeded (reproducible, a few seconds); ``RUN_SLOW=1`` adds a long randomly seeded run
with the stateful phase as well.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error

from odetoode.testing.servers import RunningServer, running_server
from service.rest import create_app
from service.settings import ServerSettings

SEED = 20260127
MODELS = ("policy", "digits")
VERSIONS = ("1", "2")


def openapi_document() -> dict[str, Any]:
    """The document the REST app serves at ``/openapi.json``, built without a server.

    ``schema.parametrize()`` needs the schema when pytest collects, before any fixture runs (and
    ``schemathesis.pytest.from_fixture`` does not work with pytest 9: it sets ``Node._nodeid``, which pytest 9
    removed). The app reads nothing but ``plane.settings`` while it is built, so a stand-in plane is enough;
    ``test_served_schema_is_the_fuzzed_one`` checks that the live server serves exactly this document.
    """
    return create_app(SimpleNamespace(settings=ServerSettings())).openapi()  # type: ignore[arg-type]


def load_schema(document: dict[str, Any], *, seed: int | None, stateful: bool = False) -> Any:
    """A schemathesis schema over ``document``, with generation biased toward real model names and versions."""
    config: dict[str, Any] = {
        "phases": {"examples": {"enabled": True}, "coverage": {"enabled": True}, "fuzzing": {"enabled": True},
                   "stateful": {"enabled": stateful}},
        "checks": {"enabled": False, "not_a_server_error": {"enabled": True}},
    }  # fmt: skip
    if seed is not None:
        config["seed"] = seed
    schema = schemathesis.openapi.from_dict(document, config=schemathesis.Config.from_dict(config))

    @schema.hook
    def before_generate_path_parameters(context: Any, strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        def real_names(params: dict[str, Any] | None, model: str, version: str) -> dict[str, Any] | None:
            if params is None:  # an operation without path parameters
                return None
            params = dict(params)
            if "model" in params:
                params["model"] = model
            if "version" in params:
                params["version"] = version
            return params

        biased = st.builds(real_names, strategy, st.sampled_from(MODELS), st.sampled_from(VERSIONS))
        return st.one_of(strategy, biased)

    return schema


REACHED: set[str] = set()  # model names the fast fuzzing put in paths (see test_server_still_answers_after_fuzzing)
DOCUMENT = openapi_document()
schema = load_schema(DOCUMENT, seed=SEED)
schema_random = load_schema(DOCUMENT, seed=None)

_FAST = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
_SLOW = settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def fuzz_server(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server of its own over a copy of the repository (repository API off)."""
    root = tmp_path_factory.mktemp("fuzz") / "models"
    shutil.copytree(model_repo, root)
    with running_server(root) as running:
        yield running


def test_served_schema_is_the_fuzzed_one(fuzz_server: RunningServer) -> None:
    assert httpx.get(fuzz_server.http + "/openapi.json", timeout=30).json() == DOCUMENT


@pytest.mark.timeout(120)
@schema.parametrize()
@_FAST
def test_no_server_errors(case: schemathesis.Case, fuzz_server: RunningServer) -> None:
    REACHED.add(str((case.path_parameters or {}).get("model")))
    case.call_and_validate(base_url=fuzz_server.http, checks=[not_a_server_error], timeout=30)


def test_server_still_answers_after_fuzzing(fuzz_server: RunningServer) -> None:
    """Runs after the fuzzing above (file order): a good request gets the right answer."""
    if REACHED:  # the fuzzing ran in this session: it reached the real models, not only 404s
        assert set(MODELS) <= REACHED
    x = np.random.default_rng(0).normal(size=(2, 17)).astype(np.float32)
    body = {"inputs": [{"name": "observation", "shape": [2, 17], "datatype": "FP32", "data": x.ravel().tolist()}]}
    r = httpx.post(fuzz_server.http + "/v2/models/policy/infer", json=body, timeout=30)
    assert r.status_code == 200, r.text
    path = fuzz_server.server.settings.repository / "policy" / "2" / "model.onnx"
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"observation": x})[0]
    assert np.allclose(np.asarray(r.json()["outputs"][0]["data"]).reshape(2, 6), expected, atol=1e-6)
    assert httpx.get(fuzz_server.http + "/v2/health/ready", timeout=30).status_code == 200
    assert {e.state for e in fuzz_server.server.repository.index()} == {"READY"}  # (the index API is off here)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@schema_random.parametrize()
@_SLOW
def test_no_server_errors_long(case: schemathesis.Case, fuzz_server: RunningServer) -> None:
    """Opt-in (RUN_SLOW=1): many more examples per operation, a fresh random seed each run."""
    case.call_and_validate(base_url=fuzz_server.http, checks=[not_a_server_error], timeout=30)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_stateful_no_server_errors(fuzz_server: RunningServer) -> None:
    """Opt-in (RUN_SLOW=1): sequences of calls along the links schemathesis infers between operations."""
    live = load_schema(DOCUMENT, seed=None, stateful=True)
    live.config.update(base_url=fuzz_server.http)
    steps = int(os.environ.get("FUZZ_STATEFUL_EXAMPLES", "50"))
    live.as_state_machine().run(settings=settings(max_examples=steps, deadline=None, stateful_step_count=10,
                                                  suppress_health_check=list(HealthCheck)))  # fmt: skip
    test_server_still_answers_after_fuzzing(fuzz_server)
