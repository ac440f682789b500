"""TensorRT optimisation profiles for the paper's multi-scale test, everything around TensorRT on the CPU:
the profiles ``export.trt --multiscale`` builds, how the runner picks one, and the CLI on a machine without CUDA.
The sidecar's ``multiscale`` record is in tests/test_artifacts.py; building and running such an engine (GPU +
tensorrt) in tests/test_export_trt.py and bench/device_check.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from export.engine import ProfileSpec, engine_profiles, multiscale_record
from resnet.card import make_card
from resnet.multiscale import VIEW_MAX_ASPECT, VIEW_MAX_BATCH
from resnet.runtime.tensorrt import choose_profile, describe_profiles, spatial_range, tensorrt_available

REPO = Path(__file__).resolve().parent.parent
HAS_ENGINE, NO_ENGINE_REASON = tensorrt_available()
R50, R20 = make_card("resnet50"), make_card("cifar_resnet20")
R50_MS = {"batch": [1, 2, 8], "min_side": 224, "max_side": 1280, "sides": [224, 256, 384, 480, 640]}


def test_without_multiscale_the_engine_has_the_one_ten_crop_profile_as_before() -> None:
    assert engine_profiles(R50, 64) == [ProfileSpec((1, 3, 224, 224), (10, 3, 224, 224), (64, 3, 224, 224))]
    assert engine_profiles(R20, 4) == [ProfileSpec((1, 3, 32, 32), (4, 3, 32, 32), (4, 3, 32, 32))]
    assert multiscale_record(R50, engine_profiles(R50, 64)) is None


def test_resnet50_multiscale_profile_spans_the_paper_sides_up_to_two_to_one() -> None:
    ten, views = engine_profiles(R50, 64, multiscale=True)
    assert ten == engine_profiles(R50, 64)[0]  # the ten-crop path keeps its profile (and its kernels)
    assert VIEW_MAX_ASPECT == 2.0 and VIEW_MAX_BATCH == 8
    assert views.min == (1, 3, 224, 224)
    assert views.opt == (2, 3, 384, 512)  # a view pair, 4:3 landscape at the middle side
    assert views.max == (8, 3, 1280, 1280)  # 640 x 2.0
    assert multiscale_record(R50, [ten, views]) == R50_MS


def test_cifar_multiscale_profile_uses_the_cifar_sides() -> None:
    ten, views = engine_profiles(R20, 64, multiscale=True)
    assert ten.max == (64, 3, 32, 32)
    assert (views.min, views.opt, views.max) == ((1, 3, 28, 28), (2, 3, 32, 43), (8, 3, 72, 72))
    assert multiscale_record(R20, [ten, views]) == {
        "batch": [1, 2, 8],
        "min_side": 28,
        "max_side": 72,
        "sides": [28, 32, 36],
    }


def test_a_card_with_another_input_size_scales_the_sides() -> None:
    card = make_card("resnet18", input_size=112, resize_size=128)
    views = engine_profiles(card, 8, multiscale=True)[1]
    assert (views.min[2], views.opt[2:], views.max[2]) == (112, (192, 256), 640)


def test_choose_profile_picks_the_profile_that_holds_the_shape() -> None:
    profiles = [p.shapes() for p in engine_profiles(R50, 64, multiscale=True)]
    assert choose_profile(profiles, (10, 3, 224, 224)) == 0  # ten crops
    assert choose_profile(profiles, (2, 3, 256, 341)) == 1  # a 4:3 view pair at side 256
    assert choose_profile(profiles, (2, 3, 1280, 640)) == 1  # a 1:2 portrait at side 640
    assert choose_profile(profiles, (2, 3, 4000, 4000)) is None
    assert choose_profile(profiles, (VIEW_MAX_BATCH + 1, 3, 256, 341)) is None  # batch over the view profile's max
    assert choose_profile(profiles, (65, 3, 224, 224)) is None
    assert choose_profile(profiles, (2, 3, 200, 300)) is None  # shorter side under the smallest
    assert choose_profile(profiles, (2, 1, 256, 341)) is None and choose_profile(profiles, (2, 3, 256)) is None
    assert choose_profile(profiles[:1], (2, 3, 256, 341)) is None  # an engine without --multiscale


def test_spatial_range_is_none_for_a_fixed_size_engine() -> None:
    assert spatial_range([p.shapes() for p in engine_profiles(R50, 64)]) is None
    assert spatial_range([p.shapes() for p in engine_profiles(R50, 64, multiscale=True)]) == (224, 1280)
    odd = [((1, 3, 32, 32), (1, 3, 32, 32), (8, 3, 32, 32)), ((1, 3, 20, 24), (1, 3, 40, 40), (2, 3, 90, 80))]
    assert spatial_range(odd) == (24, 80)  # the square range inside a non-square profile


def test_profiles_are_described_for_error_messages() -> None:
    text = describe_profiles([p.shapes() for p in engine_profiles(R50, 64, multiscale=True)])
    assert text == "[1..64]x3x224x224, [1..8]x3x[224..1280]x[224..1280]"


def test_export_trt_multiscale_without_cuda_gates_the_graphs_and_skips_the_engine(tmp_path: Path) -> None:
    if HAS_ENGINE:
        pytest.skip("this machine can build engines: tests/test_export_trt.py covers it")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    py = [sys.executable, "-m"]
    new = subprocess.run([*py, "resnet.new", "cifar_resnet20", "-o", str(tmp_path / "r20.pt")], env=env, cwd=REPO)
    assert new.returncode == 0
    proc = subprocess.run(
        [*py, "export.trt", str(tmp_path / "r20.pt"), "--multiscale", "--limit", "4"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    names = sorted(p.name for p in tmp_path.iterdir())
    assert {"r20.onnx", "r20.fp16.onnx", "r20.onnx.parity.json", "r20.fp16.onnx.parity.json"} <= set(names)
    assert not [n for n in names if n.endswith((".plan", ".tmp", ".rejected"))], names
    skipped = [line for line in proc.stdout.splitlines() if "engine step skipped" in line]
    assert len(skipped) == 1 and NO_ENGINE_REASON in skipped[0] and "--multiscale" in skipped[0]
    report = json.loads((tmp_path / "r20.fp16.onnx.parity.json").read_text())
    assert report["passed"] and report["multiscale"]["checked"]


def test_multiscale_flag_goes_with_int8_and_is_off_by_default() -> None:
    from export import trt

    assert "--multiscale" in trt.build_parser().format_help()
    args = trt.build_parser().parse_args(["m.pt", "--multiscale", "--int8"])
    assert args.multiscale and args.int8
    assert trt.build_parser().parse_args(["m.pt"]).multiscale is False


class _Profile:
    """Stands in for TensorRT's IOptimizationProfile: records set_shape."""

    def __init__(self) -> None:
        self.shapes: dict[str, tuple] = {}

    def set_shape(self, name: str, lo: tuple, opt: tuple, hi: tuple) -> None:
        self.shapes[name] = (lo, opt, hi)


class _Builder:
    def create_optimization_profile(self) -> _Profile:
        return _Profile()


class _Config:
    """Stands in for IBuilderConfig: add_optimization_profile returns the new index, or -1 once ``refuse`` is hit."""

    def __init__(self, refuse: int | None = None) -> None:
        self.profiles: list[_Profile] = []
        self.refuse = refuse

    def add_optimization_profile(self, profile: _Profile) -> int:
        if self.refuse == len(self.profiles):
            return -1
        self.profiles.append(profile)
        return len(self.profiles) - 1


def test_add_profiles_adds_them_in_order_and_refuses_one_tensorrt_rejects() -> None:
    from export.engine import EngineBuildError, add_profiles

    specs = engine_profiles(R50, 64, multiscale=True)
    config = _Config()
    add_profiles(_Builder(), config, specs, "input")
    assert [p.shapes["input"] for p in config.profiles] == [s.shapes() for s in specs]
    with pytest.raises(EngineBuildError, match="refused optimisation profile 1"):
        add_profiles(_Builder(), _Config(refuse=1), specs, "input")


class _ViewEngine:
    """Stands in for a TensorRT engine built with ``--max-batch 1 --multiscale``: its ten-crop profile takes one
    crop at a time, its view profile a view pair; the network itself computes (TensorRT is not here)."""

    precision = "fp32"

    def __init__(self, model: object, card: object) -> None:
        self.model = model
        self.profiles = [p.shapes() for p in engine_profiles(card, 1, multiscale=True)]
        self.min_batch, self.max_batch = 1, 1
        self.spatial = spatial_range(self.profiles)

    def run(self, x: object) -> object:
        import torch

        with torch.inference_mode():
            return self.model(torch.from_numpy(x)).numpy()


def test_gate_runs_views_on_the_view_profile_even_when_the_ten_crop_batch_is_1() -> None:
    import resnet
    from export.candidates import Reference
    from export.images import load_image_set
    from export.views import multiscale_check

    model = resnet.create_model("cifar_resnet20", num_classes=10).eval()
    images = load_image_set(None, R20, limit=2, multiscale=2)
    reference = Reference.from_model(model, R20, images, "cifar_resnet20")
    entry, failures = multiscale_check(reference, _ViewEngine(model, R20), images, 99.0, 0.999)
    assert not failures and entry is not None
    assert entry["checked"] and entry["images"] == 2 and "views_skipped" not in entry


def test_export_gate_and_server_share_one_batch_profile() -> None:
    """The engine's ten-crop profile, the gate's TensorRT EP profile and the server's are one function's answer."""
    from export.candidates import batch_profile as gate_profile
    from resnet.runtime.openers import batch_profile
    from serve.engine.backends import trt_profile
    from serve.settings import Settings

    assert batch_profile(64) == (1, 10, 64) and batch_profile(4) == (1, 4, 4)
    assert gate_profile is batch_profile
    ten = engine_profiles(R50, 64)[0]
    assert (ten.min[0], ten.opt[0], ten.max[0]) == batch_profile(64)
    assert trt_profile(Settings(model="m.onnx")) == batch_profile(64)
    assert trt_profile(Settings(model="m.onnx", batch_sizes="10,20,40", max_batch=40)) == (10, 10, 40)
