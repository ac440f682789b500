"""Named torchvision weights from the torch hub cache, and fresh networks whose activations stay in range.

No network: each test puts a real state dict of the right architecture (a random-init torchvision network saved
with ``torch.save``) under the file name torchvision's URL gives, in a temporary ``TORCH_HOME`` (fixtures
``torch_home`` and ``cached_r18`` in tests/conftest.py). Such a file cannot carry the SHA-256 prefix its name
promises, so loading it needs ``check_hash=False`` (``--no-check-hash``); the hash check itself is tested by the
refusal of that same file without the flag.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

import resnet
import resnet.new
from resnet.errors import CheckpointError, UsageError
from resnet.samples import sample_photo_paths
from resnet.weights import WeightsNotCachedError, cache_path, file_sha256, load_named, resolve_weights, weights_card
from tests.weights_support import R18_FILE


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "resnet.new", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **(env or {})},
    )


def test_cache_path_follows_torch_home_and_the_url(torch_home: Path) -> None:
    weights = resolve_weights("resnet18", "IMAGENET1K_V1")
    assert cache_path(weights) == torch_home / "hub" / "checkpoints" / R18_FILE
    assert weights.url.endswith("/" + R18_FILE)


def test_names_resolve_through_torchvision() -> None:
    assert resolve_weights("resnet50", "DEFAULT") is torchvision.models.ResNet50_Weights.IMAGENET1K_V2
    assert resolve_weights("resnet18", "default") is torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    assert resolve_weights("resnet101", "ResNet101_Weights.IMAGENET1K_V1").name == "IMAGENET1K_V1"
    with pytest.raises(UsageError, match="IMAGENET1K_V1, DEFAULT"):
        resolve_weights("resnet18", "IMAGENET1K_V2")  # resnet18 has V1 only
    with pytest.raises(UsageError, match="not resnet50's"):
        resolve_weights("resnet50", "ResNet18_Weights.IMAGENET1K_V1")
    for arch in ("plain18", "cifar_resnet20"):
        with pytest.raises(UsageError, match="only for the ImageNet residual nets"):
            resolve_weights(arch, "DEFAULT")


def test_v2_card_takes_sizes_labels_and_accuracy_from_torchvision() -> None:
    weights = torchvision.models.ResNet50_Weights.IMAGENET1K_V2
    card = weights_card("resnet50", weights)
    assert (card.input_size, card.resize_size) == (224, 232)  # V2 resizes to 232, not 256
    assert card.labels == tuple(weights.meta["categories"]) and card.labels[0] == "tench"
    assert card.provenance["weights"] == "ResNet50_Weights.IMAGENET1K_V2"
    assert card.provenance["weights_url"] == weights.url
    assert card.provenance["published_metrics"]["ImageNet-1K"] == {"acc@1": 80.858, "acc@5": 95.434}
    v1 = weights_card("resnet50", torchvision.models.ResNet50_Weights.IMAGENET1K_V1)
    assert (v1.input_size, v1.resize_size) == (224, 256)


def test_load_named_loads_exactly_the_cached_weights(cached_r18: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, state_dict = cached_r18
    model, card = load_named("resnet18", "IMAGENET1K_V1", check_hash=False)
    assert not model.training
    own = model.state_dict()
    assert own.keys() == state_dict.keys()
    assert all(torch.equal(own[k], v) for k, v in state_dict.items())
    assert card.labels[0] == "tench" and card.num_classes == 1000 and (card.variant, card.shortcut) == ("v1.5", "B")
    assert card.provenance["weights_file"] == str(path) and card.provenance["sha256_checked"] is False
    assert card.provenance["published_metrics"]["ImageNet-1K"]["acc@1"] == 69.758


def test_hash_check_refuses_a_file_whose_digest_does_not_match_its_name(cached_r18: tuple) -> None:
    path, _ = cached_r18
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert file_sha256(path) == digest and not digest.startswith("f37072fd")
    with pytest.raises(CheckpointError, match="not the f37072fd its name promises"):
        load_named("resnet18", "IMAGENET1K_V1")


def test_missing_and_truncated_files_are_clear_errors(torch_home: Path) -> None:
    with pytest.raises(WeightsNotCachedError, match=f"put {R18_FILE} .* in {torch_home}/hub/checkpoints"):
        load_named("resnet18", "IMAGENET1K_V1")
    assert not torch_home.exists()  # nothing written, not even the cache folder
    path = torch_home / "hub" / "checkpoints" / R18_FILE
    path.parent.mkdir(parents=True)
    torch.save(torchvision.models.resnet18().state_dict(), path)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="is truncated"):
        load_named("resnet18", "IMAGENET1K_V1", check_hash=False)
    torch.save(torchvision.models.resnet34().state_dict(), path)  # the wrong network under the right name
    with pytest.raises(CheckpointError, match="does not match resnet18"):
        load_named("resnet18", "IMAGENET1K_V1", check_hash=False)


def test_cli_writes_a_checkpoint_with_the_named_weights(cached_r18: tuple, tmp_path: Path) -> None:
    path, state_dict = cached_r18
    out = _run("resnet18", "--weights", "IMAGENET1K_V1", "--no-check-hash", "-o", str(tmp_path / "r18.pt"))
    assert out.returncode == 0, out.stderr
    assert "weights ResNet18_Weights.IMAGENET1K_V1" in out.stdout
    model, card = resnet.load_checkpoint(tmp_path / "r18.pt")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state_dict.items())
    assert len(card.labels) == 1000 and card.labels[0] == "tench"
    assert card.provenance["weights_url"].endswith(R18_FILE)


@pytest.mark.parametrize(
    "extra, code, message",
    [
        ([], 4, f"put {R18_FILE} (from https://download.pytorch.org/models/{R18_FILE}) in "),
        (["--variant", "v1"], 2, "--weights fixes the network"),
        (["--num-classes", "10"], 2, "drop --num-classes"),
    ],
)
def test_cli_errors_are_one_line_and_write_nothing(tmp_path: Path, extra: list, code: int, message: str) -> None:
    home, output = tmp_path / "home", tmp_path / "r18.pt"
    start = time.monotonic()
    out = _run("resnet18", "--weights", "IMAGENET1K_V1", *extra, "-o", str(output), env={"TORCH_HOME": str(home)})
    assert time.monotonic() - start < 120  # no download attempt, so no network timeout to wait for
    assert out.returncode == code, out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # no checkpoint, no temp file, no cache folder
    if code == 4:
        assert f"{home}/hub/checkpoints" in out.stderr


def test_cli_refuses_the_hash_mismatch_and_writes_nothing(cached_r18: tuple, tmp_path: Path) -> None:
    out = _run("resnet18", "--weights", "IMAGENET1K_V1", "-o", str(tmp_path / "r18.pt"))
    assert out.returncode == 1 and "its name promises" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "r18.pt").exists()


def test_download_flags_need_weights(tmp_path: Path) -> None:
    assert resnet.new.main(["resnet18", "--download", "-o", str(tmp_path / "m.pt")]) == 2
    assert not (tmp_path / "m.pt").exists()


def _peak_activation(model: torch.nn.Module, x: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Largest |value| any layer of ``model`` outputs on ``x``, and the logits."""
    peak = [0.0]

    def hook(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        peak[0] = max(peak[0], float(output.detach().abs().max()))

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        for h in handles:
            h.remove()
    return peak[0], logits


def test_fresh_resnet101_stays_in_fp16_range_on_real_photos(tmp_path: Path) -> None:
    """He init with BN at gamma 1 doubles the variance at every residual addition: in eval mode (BN statistics 0/1)
    a random ResNet-101 reaches ~1e5 (logits ~5e4, layers ~3e5 > fp16's 65504). ``resnet.new`` zero-initialises
    the last BN of each block, so the fresh net stays in single digits."""
    card = resnet.make_card("resnet101")
    x = torch.from_numpy(np.concatenate([resnet.preprocess(p, card, crops="center") for p in sample_photo_paths()[:4]]))
    assert resnet.new.main(["resnet101", "-o", str(tmp_path / "fresh.pt")]) == 0
    model, card = resnet.load_checkpoint(tmp_path / "fresh.pt")
    assert "zero_init_residual" in card.provenance["note"]
    peak, logits = _peak_activation(model, x)
    assert torch.isfinite(logits).all() and peak < 100.0, peak  # 65504 is fp16's largest finite value
    assert logits.std() > 0  # not a dead net: the photos still give different scores
    torch.manual_seed(0)  # what --no-zero-init-residual builds (resnet.new's default seed): the overflow avoided
    peak_old, _ = _peak_activation(resnet.create_model("resnet101").eval(), x)
    assert peak_old > 65504.0


def test_fresh_plain_net_is_not_zeroed(tmp_path: Path) -> None:
    """Plain nets have no shortcut to carry the signal past a zeroed BN, so they keep gamma 1 (and stay in range)."""
    assert resnet.new.main(["plain18", "-o", str(tmp_path / "p.pt")]) == 0
    model, card = resnet.load_checkpoint(tmp_path / "p.pt")
    assert "zero_init_residual" not in card.provenance["note"]
    assert all(float(m.weight.detach().min()) == 1.0 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
