"""The REST routes' OpenAPI descriptions, as data: ``openapi.yaml`` beside this module, loaded once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from service.tensors import DATATYPES


def _load() -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load((Path(__file__).with_name("openapi.yaml")).read_text())
    spec["tensor"]["properties"]["datatype"]["enum"] = list(DATATYPES)  # shared by reference where it is used
    return spec


_SPEC = _load()
INFER_BODY: dict[str, Any] = _SPEC["infer_body"]
INFER_PARAMETERS: list[dict[str, Any]] = _SPEC["infer_parameters"]
PREDICT_BODY: dict[str, Any] = _SPEC["predict_body"]
ERROR: dict[str, Any] = _SPEC["error"]
NOT_READY: dict[str, Any] = _SPEC["not_ready"]
MODEL_STATS: dict[str, Any] = _SPEC["model_stats"]
ERRORS: dict[int | str, dict[str, Any]] = {400: ERROR, 404: ERROR, 413: ERROR, 503: ERROR}
