"""The strict schemas of the custom resources used in deploy/, which kubernetes-validate does not know.

kubernetes-validate only warns about, and passes, an object whose kind it has no schema for: ServiceMonitor and
PrometheusRule (prometheus-operator, monitoring.coreos.com/v1), ServingRuntime (KServe, serving.kserve.io/v1alpha1) and
InferenceService (KServe, serving.kserve.io/v1beta1) are therefore checked against ``CRD_SCHEMAS`` instead. These are
minimal schemas written from the upstream CRDs, not the full upstream schemas: only the fields these manifests use,
or may plausibly use, are allowed, so a misspelt field fails.

The schemas are data, in crd_schemas.json (JSON Schema draft 2020-12): one ``spec`` schema per resource, and under
``$defs`` the parts they share (metadata, label selector, duration, protocol version), referred to as
``#/$defs/<name>``. This module wraps each spec in the envelope every custom resource has here (``apiVersion`` and
``kind`` fixed, ``metadata``, ``spec``, nothing else) and carries the ``$defs`` into each schema, so that every
schema resolves its references on its own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SCHEMA_FILE = Path(__file__).with_name("crd_schemas.json")


def resource_schema(api_version: str, kind: str, spec: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """The schema of a whole custom resource of ``api_version``/``kind`` whose ``spec`` follows ``spec``."""
    return {
        "$defs": defs,
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": {"$ref": "#/$defs/metadata"},
            "spec": spec,
        },
        "additionalProperties": False,
    }


def load_crd_schemas(path: Path = SCHEMA_FILE) -> dict[tuple[str, str], dict[str, Any]]:
    """{(apiVersion, kind): schema} for every resource of the schema file at ``path``."""
    data = json.loads(path.read_text())
    return {
        (r["apiVersion"], r["kind"]): resource_schema(r["apiVersion"], r["kind"], r["spec"], data["$defs"])
        for r in data["resources"]
    }


CRD_SCHEMAS = load_crd_schemas()
