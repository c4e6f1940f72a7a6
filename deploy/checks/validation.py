"""Validation of rendered objects: core kinds with kubernetes-validate, custom resources with ``CRD_SCHEMAS``.

An object of a kind that is neither a Kubernetes kind of the version checked nor in ``CRD_SCHEMAS`` is an error,
never a silent pass (kubernetes-validate alone would only warn and pass it).
"""

from __future__ import annotations

from typing import Any

from .schemas import CRD_SCHEMAS
from .tools import kubernetes_validate


def _kn(obj: dict[str, Any]) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def validate(objects: tuple[dict[str, Any], ...], version: str) -> list[str]:
    """Every object against Kubernetes ``version`` (strict); custom resources against CRD_SCHEMAS.

    Returns one line per problem, ``[]`` when all are valid; raises ToolMissingError without kubernetes-validate.
    """
    utils = kubernetes_validate()
    # jsonschema comes with kubernetes-validate: imported only once that is known to be installed.
    import jsonschema

    problems = []
    for obj in objects:
        key = (obj.get("apiVersion", ""), obj.get("kind", ""))
        if key in CRD_SCHEMAS:
            validator = jsonschema.Draft202012Validator(CRD_SCHEMAS[key])
            problems += [f"{_kn(obj)}: {'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(obj)]
            # The containers a ServingRuntime embeds are core containers: validate them inside a Pod.
            containers = obj.get("spec", {}).get("containers")
            if containers:
                pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": {"containers": containers}}
                problems += [f"{_kn(obj)} containers: {p}" for p in validate((pod,), version)]
            continue
        try:
            utils.validate(obj, version, strict=True)
        except utils.ValidationError as e:
            problems.append(f"{_kn(obj)} (Kubernetes {e.version}): {'.'.join(map(str, e.path))}: {e.message}")
        except utils.SchemaNotFoundError:
            problems.append(
                f"{_kn(obj)}: {key[0]} {key[1]} is neither a Kubernetes {version} kind nor in CRD_SCHEMAS "
                f"(kubernetes-validate would only warn and pass it)"
            )
    return problems
