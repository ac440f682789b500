"""deploy/k8s checked offline: every kustomization renders (kubectl kustomize), every object validates against the
pinned Kubernetes version's schemas, and the manifests agree with the server they run (probe paths and port, drain
vs grace period, the API key's Secret, names across objects). No cluster: nothing here is applied."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.k8s import check
from serve.settings import Settings

REPO = Path(__file__).resolve().parent.parent
K8S = REPO / "deploy" / "k8s"


def _tools_or_skip() -> None:
    """Skip where kubectl or kubernetes-validate is missing, except in CI, where .ci/run installs both."""
    try:
        check.find_renderer()
        check._validator()
    except check.ToolMissing as e:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def rendered() -> list[check.Rendered]:
    _tools_or_skip()
    return check.render_all()


@pytest.fixture(scope="module")
def facts() -> check.ServerFacts:
    return check.server_facts()


def _overlay(rendered: list[check.Rendered], name: str) -> check.Rendered:
    return next(r for r in rendered if r.name == name)


def test_every_kustomization_renders_and_validates_against_the_pinned_schemas(rendered: list[check.Rendered]) -> None:
    report = check.Report()
    for r in rendered:
        check.validate(r, check.KUBERNETES_VERSION, report)
    assert report.problems == []
    names = {r.name for r in rendered}
    assert {"overlays/cpu", "overlays/gpu", "kserve"} <= names
    assert "overlays/cpu+components/queue-autoscaling" in names
    for overlay in ("overlays/cpu", "overlays/gpu"):
        kinds = sorted(o["kind"] for o in _overlay(rendered, overlay).objects)
        assert kinds == [
            "Deployment",
            "HorizontalPodAutoscaler",
            "PersistentVolumeClaim",
            "PodDisruptionBudget",
            "Service",
        ]
    assert len(_overlay(rendered, "kserve").of_kind("InferenceService")) == 2
    # What the schemas could not cover is said, not hidden: KServe's CRD is not in kubernetes-validate.
    assert len(report.not_validated) == 2 and all("InferenceService" in line for line in report.not_validated)


def test_strict_schema_validation_catches_a_misspelt_field(rendered: list[check.Rendered]) -> None:
    dep = copy.deepcopy(_overlay(rendered, "overlays/cpu").one("Deployment"))
    dep["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = dep["spec"]["template"]["spec"]["containers"][
        0
    ].pop("readinessProbe")
    report = check.Report()
    check.validate(check.Rendered("mutated", [dep]), check.KUBERNETES_VERSION, report)
    assert len(report.problems) == 1 and "readinesProbe" in report.problems[0]


def test_the_manifests_agree_with_the_server(rendered: list[check.Rendered], facts: check.ServerFacts) -> None:
    problems: list[str] = []
    for r in rendered:
        if r.name != check.KSERVE:
            problems += check.check_deployment(r, facts)
    problems += check.check_kserve(_overlay(rendered, check.KSERVE), facts, {"resnet-models"}, {"resnet-serve-api-key"})
    problems += check.check_queue_adapter(K8S, facts)
    assert problems == []
    # The facts come from the server's code, not from a copy: the routes, the queue gauge, the API key variable.
    assert facts.probe_paths["readyz"] == "/readyz" and facts.probe_paths["healthz"] == "/healthz"
    assert facts.queue_metric == "resnet_serve_queue_crops"
    assert "api_key" in facts.settings and facts.env_prefix == "RESNET_SERVE_"


def test_the_gpu_overlay_asks_for_one_gpu_and_mounts_the_tensorrt_cache(rendered: list[check.Rendered]) -> None:
    c = _overlay(rendered, "overlays/gpu").one("Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert c["image"] == "resnet-serve:gpu"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    cache = next(e["value"] for e in c["env"] if e["name"] == "RESNET_SERVE_TRT_CACHE")
    writable = sorted(m["mountPath"] for m in c["volumeMounts"] if not m.get("readOnly"))
    assert writable == sorted(["/tmp", cache])
    cpu = _overlay(rendered, "overlays/cpu").one("Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert cpu["image"] == "resnet-serve:cpu" and "nvidia.com/gpu" not in cpu["resources"].get("limits", {})
    assert sorted(m["mountPath"] for m in cpu["volumeMounts"] if not m.get("readOnly")) == ["/tmp"]


def _mutate(rendered: list[check.Rendered], name: str, edit: Any) -> check.Rendered:
    r = copy.deepcopy(_overlay(rendered, name))
    edit({o["kind"]: o for o in r.objects})
    return r


def _container(objs: dict[str, Any]) -> dict[str, Any]:
    return objs["Deployment"]["spec"]["template"]["spec"]["containers"][0]


BREAKAGES = {
    "readinessProbe path '/ready'": lambda o: _container(o)["readinessProbe"]["httpGet"].update(path="/ready"),
    "livenessProbe path '/readyz'": lambda o: _container(o)["livenessProbe"]["httpGet"].update(path="/readyz"),
    "startupProbe port 8080": lambda o: _container(o)["startupProbe"]["httpGet"].update(port=8080),
    "terminationGracePeriodSeconds 30 <= preStop 5 s + drain timeout 30 s": lambda o: o["Deployment"]["spec"][
        "template"
    ]["spec"].update(terminationGracePeriodSeconds=30),
    "Secret key 'api-key'": lambda o: next(e for e in _container(o)["env"] if e["name"] == "RESNET_SERVE_API_KEY")[
        "valueFrom"
    ]["secretKeyRef"].update(key="api-key"),
    "RESNET_SERVE_DRAIN_TIMEOUT is no server setting": lambda o: _container(o)["env"].append(
        {"name": "RESNET_SERVE_DRAIN_TIMEOUT", "value": "30"}
    ),
    "Service/resnet-serve selects no pod": lambda o: o["Service"]["spec"].update(selector={"app": "resnet"}),
    "PodDisruptionBudget/resnet-serve selects no pod": lambda o: o["PodDisruptionBudget"]["spec"]["selector"].update(
        matchLabels={"app": "resnet"}
    ),
    "HPA targets Deployment/resnet": lambda o: o["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"].update(
        name="resnet"
    ),
    "/models is writable": lambda o: _container(o)["volumeMounts"][0].pop("readOnly"),
    "readOnlyRootFilesystem is not set": lambda o: _container(o)["securityContext"].pop("readOnlyRootFilesystem"),
    "the server listens on 8000": lambda o: _container(o)["ports"][0].update(containerPort=9000),
}


@pytest.mark.parametrize("expected", list(BREAKAGES))
def test_each_broken_cross_reference_is_reported(
    rendered: list[check.Rendered], facts: check.ServerFacts, expected: str
) -> None:
    broken = _mutate(rendered, "overlays/cpu", BREAKAGES[expected])
    problems = check.check_deployment(broken, facts)
    assert any(expected in p for p in problems), problems


def test_the_queue_hpa_names_the_servers_gauge(rendered: list[check.Rendered], facts: check.ServerFacts) -> None:
    r = _overlay(rendered, "overlays/cpu+components/queue-autoscaling")
    metrics = r.one("HorizontalPodAutoscaler")["spec"]["metrics"]
    assert {m["type"] for m in metrics} == {"Resource", "Pods"}
    wrong = _mutate(
        rendered,
        "overlays/cpu+components/queue-autoscaling",
        lambda o: o["HorizontalPodAutoscaler"]["spec"]["metrics"][1]["pods"]["metric"].update(name="queue_depth"),
    )
    assert any("queue_depth" in p for p in check.check_deployment(wrong, facts))


def test_the_model_repository_is_set_in_one_place_of_the_base() -> None:
    hits = [
        (p.relative_to(K8S), line)
        for p in K8S.rglob("*.yaml")
        if "kserve" not in p.parts
        for line in p.read_text().splitlines()
        if "--model-repository" in line
    ]
    assert len(hits) == 1 and hits[0][0] == Path("base/deployment.yaml"), hits
    assert '"/models"' in hits[0][1]


def test_the_container_settings_parse_with_the_servers_own_parser(
    rendered: list[check.Rendered], facts: check.ServerFacts
) -> None:
    if "model_repository" not in {f for f in Settings.__dataclass_fields__}:
        pytest.skip("serve has no --model-repository flag yet (Settings.model_repository): the args cannot parse")
    assert check.check_settings_parse(rendered, facts) == []
    # ...and would refuse the image's own RESNET_SERVE_MODEL next to --model-repository, had it not been blanked.
    unblanked = _mutate(
        rendered,
        "overlays/cpu",
        lambda o: _container(o)["env"].remove({"name": "RESNET_SERVE_MODEL", "value": ""}),
    )
    assert any("--model" in p for p in check.check_settings_parse([unblanked], facts))


def test_the_docs_create_the_secret_under_the_variables_name() -> None:
    text = (REPO / "docs" / "kubernetes.md").read_text()
    create = re.search(r"kubectl create secret generic (\S+) --from-literal=(\w+)=", text)
    assert create, "docs/kubernetes.md has no `kubectl create secret generic NAME --from-literal=KEY=...`"
    deployment = yaml.safe_load((K8S / "base" / "deployment.yaml").read_text())
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    ref = env["RESNET_SERVE_API_KEY"]["valueFrom"]["secretKeyRef"]
    assert (create.group(1), create.group(2)) == (ref["name"], ref["key"]) == (ref["name"], "RESNET_SERVE_API_KEY")
    assert "kubectl apply -k deploy/k8s/overlays/cpu" in text


def test_the_check_command_fails_on_a_broken_probe_path(tmp_path: Path) -> None:
    _tools_or_skip()
    root = tmp_path / "k8s"
    shutil.copytree(K8S, root, ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    deployment = root / "base" / "deployment.yaml"
    text = deployment.read_text()
    assert text.count("path: /readyz") == 2
    deployment.write_text(text.replace("path: /readyz", "path: /ready", 1))  # the startup probe
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, str(K8S / "check.py"), "--root", str(root)], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "startupProbe path '/ready' is not the server's /readyz route '/readyz'" in proc.stdout
    assert "Traceback" not in proc.stderr
    clean = subprocess.run([sys.executable, str(K8S / "check.py")], capture_output=True, text=True, env=env)
    assert "Probe path '" not in clean.stdout and "22 objects rendered and validated" in clean.stdout
