"""The cross-references deploy/k8s/check.py checks after rendering and schema validation: what the manifests must
agree with in the server (its settings, flags, probe routes, queue gauge) and the Dockerfile (user, ENV), one
function per kind of object."""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
KSERVE = "kserve"
CONTAINER = "server"
DOCKERFILE_STAGES = {"cpu": "cpu", "gpu": "gpu"}  # image tag -> the Dockerfile stage it is built from
WRITABLE_TMP = "/tmp"
QUEUE_ADAPTER_VALUES = "components/queue-autoscaling/prometheus-adapter-values.yaml"


@dataclass
class Rendered:
    """The objects one kustomization renders to."""

    name: str
    objects: list[dict[str, Any]]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o.get("kind") == kind]

    def one(self, kind: str) -> dict[str, Any]:
        found = self.of_kind(kind)
        if len(found) != 1:
            raise AssertionError(f"{self.name}: expected one {kind}, rendered {len(found)}")
        return found[0]


# ---- the server's side of the cross-references -------------------------------------------------------------------


@dataclass(frozen=True)
class ServerFacts:
    """What the manifests must agree with, read from the server's own code and the Dockerfile."""

    env_prefix: str
    settings: Mapping[str, Any]  # field name -> default
    flags: frozenset[str]
    probe_paths: Mapping[str, str]  # "readyz" / "healthz" -> the path the server answers it on
    queue_metric: str
    image_user: str  # "10001:10001"
    image_env: Mapping[str, Mapping[str, str]]  # Dockerfile stage -> its ENV


def server_facts() -> ServerFacts:
    sys.path.insert(0, str(REPO)) if str(REPO) not in sys.path else None
    from serve import settings
    from serve.api import routes
    from serve.metrics import Metrics

    paths = {r.endpoint.__name__: r.path for r in routes.ops_router.routes if hasattr(r, "endpoint")}
    gauges = [m.name for m in Metrics(lambda: 0.0).registry.collect() if m.type == "gauge"]
    queue = next(g for g in gauges if "queue" in g)
    flags = frozenset(a for action in settings.build_parser()._actions for a in action.option_strings)
    return ServerFacts(
        env_prefix=settings.ENV_PREFIX,
        settings={f.name: f.default for f in dataclasses.fields(settings.Settings)},
        flags=flags,
        probe_paths=paths,
        queue_metric=queue,
        image_user=_dockerfile_user(),
        image_env=dockerfile_env(),
    )


def dockerfile_env(path: Path = REPO / "Dockerfile") -> dict[str, dict[str, str]]:
    """Each final stage's ENV (its own and its base stage's), e.g. ``{"cpu": {"RESNET_SERVE_MODEL": ...}}``."""
    text = re.sub(r"\\\n", " ", path.read_text())
    stages: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if m := re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, re.I):
            current = dict(stages.get(m.group(1), {}))
            stages[m.group(2) or f"_{len(stages)}"] = current
        elif line.upper().startswith("ENV "):
            for key, value in re.findall(r'(\w+)=("[^"]*"|\S+)', line[4:]):
                current[key] = value.strip('"')
    return stages


def _dockerfile_user(path: Path = REPO / "Dockerfile") -> str:
    users = set(re.findall(r"^USER\s+(\S+)", path.read_text(), re.M))
    return users.pop() if len(users) == 1 else ""


# ---- cross-references --------------------------------------------------------------------------------------------


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def _env_value(container: dict[str, Any], name: str, default: Any) -> str:
    entry = _env(container).get(name)
    return str(entry["value"]) if entry and "value" in entry else str(default)


def _matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _port_number(container: dict[str, Any], port: Any) -> int | None:
    if isinstance(port, int):
        return port
    return next((p["containerPort"] for p in container.get("ports", []) if p.get("name") == port), None)


def check_server_container(name: str, container: dict[str, Any], facts: ServerFacts, problems: list[str]) -> None:
    """The env names are settings, the API key comes from a Secret key named like its variable, the port agrees."""
    prefix = facts.env_prefix
    for env_name in _env(container):
        if env_name.startswith(prefix) and env_name[len(prefix) :].lower() not in facts.settings:
            problems.append(f"{name}: env {env_name} is no server setting (serve/settings.py has no such field)")
    key_var = prefix + "API_KEY"
    ref = _env(container).get(key_var, {}).get("valueFrom", {}).get("secretKeyRef")
    if "api_key" not in facts.settings:
        problems.append(f"{name}: the server has no api_key setting any more")
    elif not ref:
        problems.append(f"{name}: {key_var} does not come from a Secret (env valueFrom.secretKeyRef)")
    elif ref.get("key") != key_var:
        problems.append(f"{name}: Secret key {ref.get('key')!r} is not the variable the server reads, {key_var!r}")
    port = int(_env_value(container, prefix + "PORT", facts.settings["port"]))
    declared = [p["containerPort"] for p in container.get("ports", [])]
    if port not in declared:
        problems.append(f"{name}: the server listens on {port} ({prefix}PORT) but the container declares {declared}")
    for probe_kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container.get(probe_kind)
        if probe and "httpGet" in probe and _port_number(container, probe["httpGet"]["port"]) != port:
            problems.append(f"{name}: {probe_kind} port {probe['httpGet']['port']} is not the server's port {port}")


def check_deployment(r: Rendered, facts: ServerFacts) -> list[str]:
    """The cross-references of one rendered overlay (Deployment, Service, PDB, HPA, PVC)."""
    problems: list[str] = []
    dep, svc, pdb, hpa = (r.one(k) for k in ("Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"))
    pod = dep["spec"]["template"]
    spec = pod["spec"]
    labels = pod["metadata"].get("labels", {})
    where = f"{r.name}: Deployment/{dep['metadata']['name']}"
    containers = {c["name"]: c for c in spec["containers"]}
    if CONTAINER not in containers:
        return [f"{where}: no container named {CONTAINER!r}"]
    c = containers[CONTAINER]
    check_server_container(where, c, facts, problems)

    expected = {"startupProbe": "readyz", "readinessProbe": "readyz", "livenessProbe": "healthz"}
    for probe_kind, route in expected.items():
        probe = c.get(probe_kind)
        path = (probe or {}).get("httpGet", {}).get("path")
        if path != facts.probe_paths.get(route):
            problems.append(
                f"{where}: {probe_kind} path {path!r} is not the server's /{route} route {facts.probe_paths.get(route)!r}"
            )

    problems += _pod_rules(where, spec, c, r, facts)
    problems += _wiring_rules(r, where, dep, svc, pdb, hpa, labels, c, facts)
    image = c["image"]
    tag = image.rsplit(":", 1)[-1] if ":" in image else ""
    if tag not in DOCKERFILE_STAGES:
        problems.append(f"{where}: image {image} is neither the cpu nor the gpu image")
    gpus = c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
    if (tag == "gpu") != (str(gpus) == "1"):
        problems.append(f"{where}: image {image} with nvidia.com/gpu limit {gpus}")
    return problems


def _pod_rules(where: str, spec: dict[str, Any], c: dict[str, Any], r: Rendered, facts: ServerFacts) -> list[str]:
    """Drain within the grace period, non-root, read-only root with only /tmp and the TensorRT cache writable, and
    every claimed volume defined."""
    problems: list[str] = []
    drain = float(_env_value(c, facts.env_prefix + "DRAIN_TIMEOUT_S", facts.settings["drain_timeout_s"]))
    pre_stop = c.get("lifecycle", {}).get("preStop", {})
    sleep_s = _pre_stop_seconds(pre_stop)
    if sleep_s is None:
        problems.append(f"{where}: no preStop sleep: the endpoint may still get requests after SIGTERM")
    grace = spec.get("terminationGracePeriodSeconds", 30)
    if sleep_s is not None and grace <= sleep_s + drain:
        problems.append(
            f"{where}: terminationGracePeriodSeconds {grace} <= preStop {sleep_s:g} s + drain timeout {drain:g} s"
        )

    sec, csec = spec.get("securityContext", {}), c.get("securityContext", {})
    if not (sec.get("runAsNonRoot") or csec.get("runAsNonRoot")):
        problems.append(f"{where}: runAsNonRoot is not set")
    uid = str(csec.get("runAsUser", sec.get("runAsUser")))
    if facts.image_user and uid != facts.image_user.split(":")[0]:
        problems.append(f"{where}: runAsUser {uid} is not the image's user {facts.image_user}")
    if not csec.get("readOnlyRootFilesystem"):
        problems.append(f"{where}: readOnlyRootFilesystem is not set")
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    trt = _env_value(c, facts.env_prefix + "TRT_CACHE", "")
    allowed = {WRITABLE_TMP, trt} - {""}
    for m in c.get("volumeMounts", []):
        if not m.get("readOnly") and m["mountPath"] not in allowed:
            problems.append(f"{where}: {m['mountPath']} is writable but is neither /tmp nor the TensorRT cache")
        if m["name"] not in volumes:
            problems.append(f"{where}: volumeMount {m['name']!r} names no volume")
    if trt and trt not in {m["mountPath"] for m in c.get("volumeMounts", [])}:
        problems.append(f"{where}: {facts.env_prefix}TRT_CACHE {trt} is not a mounted volume (root is read-only)")
    claims = {v["persistentVolumeClaim"]["claimName"] for v in volumes.values() if "persistentVolumeClaim" in v}
    pvcs = {p["metadata"]["name"] for p in r.of_kind("PersistentVolumeClaim")}
    if claims - pvcs:
        problems.append(f"{where}: claims {sorted(claims - pvcs)} that no PersistentVolumeClaim here defines")

    return problems


def _wiring_rules(
    r: Rendered,
    where: str,
    dep: dict[str, Any],
    svc: dict[str, Any],
    pdb: dict[str, Any],
    hpa: dict[str, Any],
    labels: dict[str, Any],
    c: dict[str, Any],
    facts: ServerFacts,
) -> list[str]:
    """Selectors that find the pods, a Service port that is a container port, an HPA on the Deployment that reads
    the server's queue gauge."""
    problems: list[str] = []
    if not _matches(dep["spec"]["selector"]["matchLabels"], labels):
        problems.append(f"{where}: its selector does not match its pod template's labels")
    if not _matches(svc["spec"].get("selector", {}), labels):
        problems.append(f"{r.name}: Service/{svc['metadata']['name']} selects no pod of the Deployment")
    for p in svc["spec"]["ports"]:
        if _port_number(c, p["targetPort"]) is None:
            problems.append(f"{r.name}: Service targetPort {p['targetPort']!r} is no container port")
    if not _matches(pdb["spec"]["selector"].get("matchLabels", {}), labels):
        problems.append(f"{r.name}: PodDisruptionBudget/{pdb['metadata']['name']} selects no pod of the Deployment")
    target = hpa["spec"]["scaleTargetRef"]
    if (target["kind"], target["name"]) != ("Deployment", dep["metadata"]["name"]):
        problems.append(f"{r.name}: HPA targets {target['kind']}/{target['name']}, not the Deployment")
    for metric in hpa["spec"].get("metrics", []):
        if metric["type"] == "Pods" and metric["pods"]["metric"]["name"] != facts.queue_metric:
            problems.append(
                f"{r.name}: HPA Pods metric {metric['pods']['metric']['name']!r} is not the server's queue gauge {facts.queue_metric!r}"
            )
        if (
            metric["type"] == "Resource"
            and metric["resource"]["name"] == "cpu"
            and "cpu" not in c.get("resources", {}).get("requests", {})
        ):
            problems.append(f"{where}: an HPA on CPU utilisation needs a CPU request")

    return problems


def _pre_stop_seconds(pre_stop: dict[str, Any]) -> float | None:
    if "sleep" in pre_stop:
        return float(pre_stop["sleep"]["seconds"])
    command = pre_stop.get("exec", {}).get("command", [])
    if len(command) == 2 and command[0] == "sleep":
        return float(command[1])
    return None


def check_kserve(r: Rendered, facts: ServerFacts, pvc_names: set[str], secret_names: set[str]) -> list[str]:
    """Our InferenceService runs the server as configured in the base; Triton's reads the same model repository."""
    problems: list[str] = []
    for isvc in r.of_kind("InferenceService"):
        where = f"{r.name}: InferenceService/{isvc['metadata']['name']}"
        predictor = isvc["spec"]["predictor"]
        uris = [predictor.get("model", {}).get("storageUri")]
        for c in predictor.get("containers", []):
            check_server_container(where, c, facts, problems)
            uris.append(_env(c).get("STORAGE_URI", {}).get("value"))
            ref = _env(c).get(facts.env_prefix + "API_KEY", {}).get("valueFrom", {}).get("secretKeyRef", {})
            if ref and ref.get("name") not in secret_names:
                problems.append(
                    f"{where}: API key Secret {ref.get('name')!r} is not the Deployment's {sorted(secret_names)}"
                )
        for uri in filter(None, uris):
            claim = uri.removeprefix("pvc://").split("/")[0] if uri.startswith("pvc://") else None
            if claim not in pvc_names:
                problems.append(f"{where}: storage {uri} is not the model repository PVC {sorted(pvc_names)}")
    return problems


def check_queue_adapter(root: Path, facts: ServerFacts) -> list[str]:
    """prometheus-adapter's rule publishes the server's queue gauge under the name the HPA asks for."""
    rules = yaml.safe_load((root / QUEUE_ADAPTER_VALUES).read_text())["rules"]["custom"]
    names = {rule["name"]["as"] for rule in rules if facts.queue_metric in rule["seriesQuery"]}
    if names != {facts.queue_metric}:
        return [f"{QUEUE_ADAPTER_VALUES}: no rule publishes {facts.queue_metric} under its own name (found {names})"]
    return []


KSERVE_MOUNT = "/mnt/models"  # where KServe's storage initializer puts a storage URI's files


def _server_containers(r: Rendered) -> list[tuple[str, dict[str, Any], list[str]]]:
    """(where, container, folders it gets mounted) for every container of ours: Deployments' and InferenceServices'."""
    out = []
    for dep in r.of_kind("Deployment"):
        for c in dep["spec"]["template"]["spec"]["containers"]:
            if c["name"] == CONTAINER:
                out.append((f"{r.name}: Deployment", c, [m["mountPath"] for m in c.get("volumeMounts", [])]))
    for isvc in r.of_kind("InferenceService"):
        for c in isvc["spec"]["predictor"].get("containers", []):
            out.append((f"{r.name}: InferenceService/{isvc['metadata']['name']}", c, [KSERVE_MOUNT]))
    return out


def check_settings_parse(rendered: Iterable[Rendered], facts: ServerFacts) -> list[str]:
    """The server's own parser accepts each container's args and env over its image's ENV (folders made real)."""
    from resnet import UsageError
    from serve.settings import settings_from

    problems = []
    for r in rendered:
        for where, c, folders in _server_containers(r):
            unknown = [a for a in c.get("args", []) if a.startswith("--") and a.split("=")[0] not in facts.flags]
            if unknown:
                problems.append(f"{where}: container args {unknown} are no flags of the server (serve/settings.py)")
                continue
            stage = DOCKERFILE_STAGES.get(c["image"].rsplit(":", 1)[-1], "cpu")
            with tempfile.TemporaryDirectory() as tmp:
                mounts = {path: str(Path(tmp, f"mount{i}")) for i, path in enumerate(folders)}
                for folder in mounts.values():
                    os.makedirs(folder)
                environ = dict(facts.image_env.get(stage, {}))
                for e in c.get("env", []):
                    value = str(e.get("value", "secret-from-k8s"))
                    environ[e["name"]] = mounts.get(value, value)
                try:
                    settings_from([mounts.get(a, a) for a in c.get("args", [])], environ)
                except UsageError as e:
                    problems.append(f"{where}: the server refuses the container's settings: {e}")
    return problems
