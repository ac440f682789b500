"""The fleet drill (deploy/fleet/fleet.py): three real server replicas behind Debian's nginx running deploy/nginx.conf
on 127.0.0.1, load at concurrency 16, and a SIGKILL, a SIGTERM drain and a rolling model update that the client
never notices; a replica that answers 500 fails the drill."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import sys
import textwrap
from pathlib import Path

import onnx
import pytest

from deploy.fleet import fleet
from resnet.onnx_card import read_onnx_card, set_onnx_card

REPO = Path(__file__).resolve().parent.parent
NEW_NAME = "digits-resnet8-v2"


def _nginx_or_skip() -> None:
    """Skip where nginx is missing, except in CI, where .ci/run installs Debian's package."""
    if shutil.which("nginx") or Path("/usr/sbin/nginx").exists():
        return
    if os.environ.get("CI"):
        raise AssertionError("nginx is not installed: .ci/run installs Debian's package")
    pytest.skip("nginx is not installed (apt-get install nginx)")


def _next_upstream() -> set[str]:
    text = (REPO / "deploy" / "nginx.conf").read_text()
    found = re.findall(r"^\s*proxy_next_upstream\s+([^;]+);", text, re.M)
    assert len(found) == 1
    return set(found[0].split())


def test_nginx_retries_dead_and_draining_replicas_including_post() -> None:
    assert _next_upstream() == {"error", "timeout", "http_502", "http_503", "non_idempotent"}


def test_the_fleet_site_is_deploy_nginx_conf_on_loopback_ports(tmp_path: Path) -> None:
    site = fleet.nginx_site([9001, 9002, 9003], 9100)
    lines = "\n".join(line for line in site.splitlines() if not line.lstrip().startswith("#"))
    assert re.findall(r"server (127\.0\.0\.1:\d+) max_fails=2 fail_timeout=5s;", lines) == [
        "127.0.0.1:9001",
        "127.0.0.1:9002",
        "127.0.0.1:9003",
    ]
    assert "resnet:8000" not in lines and re.findall(r"listen [^;]+;", lines) == ["listen 127.0.0.1:9100;"]
    original = (REPO / "deploy" / "nginx.conf").read_text()
    location = original[original.index("location /") :]
    assert location in site  # every proxy setting, the retries included, is the file's own
    _nginx_or_skip()
    fleet.Nginx(tmp_path / "nginx", [9001, 9002, 9003]).test_config()  # `nginx -t` accepts it


@pytest.fixture(scope="module")
def models(digits_onnx_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """v1: the digits ONNX model; v2: the same graph whose card names a new version (what a rollout ships)."""
    v2 = tmp_path_factory.mktemp("v2") / "digits-v2.onnx"
    proto = onnx.load(str(digits_onnx_model))
    set_onnx_card(proto, dataclasses.replace(read_onnx_card(digits_onnx_model), name=NEW_NAME))
    onnx.save(proto, str(v2))
    return digits_onnx_model, v2


@pytest.mark.slow
def test_the_fleet_survives_a_kill_a_drain_and_a_rollout_with_no_failed_request(
    models: tuple[Path, Path], tmp_path: Path
) -> None:
    _nginx_or_skip()
    v1, v2 = models
    replicas = [fleet.Replica(f"replica{i}", tmp_path) for i in range(3)]
    report = fleet.drill(replicas, v1, v2, tmp_path, fleet.digits_payloads(), steady_s=4.0, phase_min_s=3.0)
    print(fleet.format_table(report))
    assert report.ok, report.problems
    phases = {p.name: p for p in report.phases}
    assert list(phases) == ["steady", "kill", "term", "rollout"]
    for p in report.phases:
        assert p.requests > 0 and p.failures == {} and p.ok == p.requests, p
        assert p.p99_vs_steady is not None  # recorded for every phase
    assert any("SIGKILL: exit -9" in e for e in phases["kill"].events)
    assert any("SIGTERM: drained and exited 0" in e for e in phases["term"].events)
    # each new replica took traffic through nginx before the next was drained (else: no live upstream, 502s)
    assert sum("in rotation" in e for e in phases["rollout"].events) == len(replicas), phases["rollout"].events
    # The rollout moved every replica to v2 while answers kept coming, from both versions along the way.
    assert set(phases["rollout"].models) == {read_onnx_card(v1).name, NEW_NAME}
    assert f"'replica2': '{NEW_NAME}'" in phases["rollout"].events[-1]
    # Requests that hit the dead or draining replica were retried by nginx, not failed.
    assert phases["kill"].retried_by_nginx + phases["term"].retried_by_nginx + phases["rollout"].retried_by_nginx > 0


BROKEN_REPLICA = textwrap.dedent(
    """
    import json, sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def reply(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self.reply(200, {"status": "ready", "model": "broken"})

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.reply(500, {"error": {"code": "internal", "message": "a bug"}})

        def log_message(self, *args):
            pass

    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
    """
)


class BrokenReplica(fleet.Replica):
    """A replica that is ready but answers every POST /classify with 500 (a bug, which nginx must not hide)."""

    def argv(self, model: Path) -> list[str]:
        script = self.log.parent / "broken_replica.py"
        script.write_text(BROKEN_REPLICA)
        return [sys.executable, str(script), str(self.port)]


@pytest.mark.slow
def test_a_replica_answering_500_fails_the_fleet_check(models: tuple[Path, Path], tmp_path: Path) -> None:
    _nginx_or_skip()
    v1, _ = models
    replicas = [fleet.Replica("replica0", tmp_path), BrokenReplica("broken", tmp_path)]
    report = fleet.drill(replicas, v1, None, tmp_path, fleet.digits_payloads(), steady_s=2.0, phases=())
    assert not report.ok
    steady = report.phases[0]
    assert steady.failures.get("500", 0) > 0 and steady.ok > 0  # the healthy replica still answered
    assert any("failed request(s) seen by the client" in p for p in report.problems)


def test_the_drill_command_refuses_bad_input_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert fleet.main(["--model", str(tmp_path / "missing.onnx")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'missing.onnx'}: no such file"
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    assert fleet.main(["--model", str(model), "--replicas", "1"]) == 2
    assert fleet.main(["--model", str(model), "--images", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "--replicas must be >= 2" in err and "Traceback" not in err
