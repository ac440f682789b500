"""The ``.[serve]`` install on its own: a second virtual environment with no torch serves an ONNX model made by the
full environment and answers a real /classify with the offline reference's probabilities.

.ci/run builds that environment (``pip install ".[serve]"`` from the checkout) and names its interpreter in
``RESNET_SERVE_ONLY_PYTHON``; elsewhere this test is skipped and says so. The server runs from a scratch folder
with no PYTHONPATH, so the installed package is exercised, not this checkout."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

import resnet
from tests.serve_support import free_port, probs_from_answer, reference_probs
from tests.test_torch_free_serve import make_tiny_model

SERVE_ONLY = os.environ.get("RESNET_SERVE_ONLY_PYTHON", "")
pytestmark = pytest.mark.skipif(
    not SERVE_ONLY,
    reason="RESNET_SERVE_ONLY_PYTHON is not set (.ci/run builds a .[serve]-only environment and sets it)",
)


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def test_serve_only_environment_has_no_torch_and_no_training_stack(tmp_path: Path) -> None:
    probe = (
        "import importlib.util as u, importlib.metadata as m; "
        "print([n for n in ('torch', 'torchvision', 'onnx', 'sklearn', 'skimage', 'matplotlib') if u.find_spec(n)]); "
        "print(m.version('onnxruntime'), m.version('resnet-stack'))"
    )
    proc = subprocess.run([SERVE_ONLY, "-c", probe], capture_output=True, text=True, cwd=tmp_path, env=_clean_env())
    assert proc.returncode == 0, proc.stderr
    absent, versions = proc.stdout.splitlines()
    assert absent == "[]", f"the [serve] install pulled in {absent}"
    assert versions.split()[1] == "0.1.0"


def test_serve_only_environment_answers_classify_correctly(photo_paths: list[Path], tmp_path: Path) -> None:
    ckpt, onnx_path = make_tiny_model(tmp_path)  # made by the full environment (torch export)
    model, card = resnet.load_checkpoint(ckpt)
    port = free_port()
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [SERVE_ONLY, "-m", "serve", "--model", str(onnx_path), "--port", str(port), "--max-batch", "10"],
            cwd=tmp_path,
            env=_clean_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        else:
            pytest.fail(f"not ready in 120 s: {log_path.read_text()[-3000:]}")
        path = photo_paths[0]
        r = httpx.post(url + "/classify", params={"topk": 10}, files=[("file", path.read_bytes())], timeout=60)
        assert r.status_code == 200, r.text
        (result,) = r.json()["results"]
        assert np.abs(probs_from_answer(result, card.num_classes) - reference_probs(path, model, card)).max() <= 1e-4
        metrics = httpx.get(url + "/metrics", timeout=10).text
        assert (
            'resnet_serve_backend_info{backend="onnxruntime",precision="fp32",provider="CPUExecutionProvider"} 1.0'
            in (metrics)
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    # the installed package served it, not this checkout
    assert "Traceback" not in log_path.read_text()
    pt = subprocess.run(
        [SERVE_ONLY, "-m", "serve", "--model", str(ckpt)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_clean_env(),
    )
    assert pt.returncode == 4 and 'pip install "resnet-stack[train]"' in pt.stderr, pt.stderr
