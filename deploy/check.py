"""``make deploy-check``: every static check of docker/ and deploy/, one line each.

The checks are the package deploy/checks/ (its docstring lists them, one module per job); tests/deploy runs the same
functions. A line is ``ok``, ``FAIL`` followed by the problems, or ``SKIP`` with the reason when a tool is missing and
could not be installed; a skip does not fail the run. The exit status is 1 when a check failed, else 0.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import ModuleType

CHECKS_PACKAGE = "deploy_checks"
CHECKS_DIR = Path(__file__).resolve().parent / "checks"


def load_checks() -> ModuleType:
    """The package deploy/checks/, imported once per process as ``deploy_checks`` (its modules as
    ``deploy_checks.<module>``, and attributes of it).

    deploy/ is not an installed package, and neither this script nor the tests may edit ``sys.path``: the package is
    imported by file location and registered in ``sys.modules``, which is all its relative imports need. Every
    caller gets the same module objects, so ``ToolMissingError`` and the caches of the tool and rendering getters are
    shared by this script and the tests.
    """
    if CHECKS_PACKAGE in sys.modules:
        return sys.modules[CHECKS_PACKAGE]
    init = CHECKS_DIR / "__init__.py"
    spec = importlib.util.spec_from_file_location(CHECKS_PACKAGE, init, submodule_search_locations=[str(CHECKS_DIR)])
    assert spec is not None and spec.loader is not None
    package = importlib.util.module_from_spec(spec)
    sys.modules[CHECKS_PACKAGE] = package
    try:
        spec.loader.exec_module(package)
    except BaseException:
        # As the import system does: a failed import leaves nothing half-initialised behind for the next caller.
        del sys.modules[CHECKS_PACKAGE]
        raise
    return package


def main() -> int:
    """Runs every check in order and prints its line; returns the exit status."""
    checks = load_checks()
    layout, linters, tools, renderings = checks.layout, checks.linters, checks.tools, checks.renderings
    validation, manifests = checks.validation, checks.manifests
    containers, dashboard, rules = checks.containers, checks.dashboard, checks.rules
    failures = 0
    skipped = 0

    def report(name: str, run: Callable[[], list[str]]) -> None:
        nonlocal failures, skipped
        try:
            problems = run()
        except tools.ToolMissingError as e:
            skipped += 1
            print(f"SKIP  {name}: {e}")
            return
        if problems:
            failures += 1
            print(f"FAIL  {name}")
            for p in problems:
                print(f"        {p}")
        else:
            print(f"ok    {name}")

    report(f"hadolint {' '.join(p.name for p in layout.dockerfiles())}", linters.run_hadolint)
    report(f"yamllint ({len(layout.yaml_files())} files in deploy/, docker/; Helm templates excluded)",
           linters.run_yamllint)  # fmt: skip
    try:
        versions = tools.kube_versions()
    except tools.ToolMissingError as e:
        versions = []
        skipped += 1
        print(f"SKIP  kubernetes-validate: {e}")
    for rendering in renderings.RENDERINGS:
        try:
            objects = renderings.render(rendering.name)
        except tools.ToolMissingError as e:
            skipped += 1
            print(f"SKIP  {rendering.name}: {e}")
            continue
        kinds = ", ".join(sorted({o["kind"] for o in objects}))
        for version in versions:
            report(f"{rendering.name}: {len(objects)} objects valid for Kubernetes {version} ({kinds})",
                   partial(validation.validate, objects, version))  # fmt: skip
        if rendering.server:
            report(f"{rendering.name}: ports, probes, drain timing, security agree with the server",
                   partial(manifests.check_server, objects))  # fmt: skip
        else:
            report(f"{rendering.name}: ServingRuntime agrees with the server", partial(manifests.check_kserve, objects))
    report("helm lint --strict (defaults, gpu.enabled=true)", renderings.run_helm_lint)
    report("helm refuses a grace period that does not cover preStop + drain", renderings.helm_refuses_short_grace)
    report("Dockerfiles agree with the server (EXPOSE, USER, HEALTHCHECK, /models)", containers.check_dockerfiles)
    report("compose, Prometheus, Grafana provisioning, shared dashboard", containers.check_compose)
    report("Grafana dashboard queries only metrics the server exports", dashboard.check_dashboard)
    report("Prometheus rules: generated files up to date with deploy/monitoring/rules.py, exported metrics, runbooks",
           rules.check_rules)  # fmt: skip
    print(f"deploy-check: {'FAILED' if failures else 'passed'} ({failures} failed, {skipped} skipped)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
