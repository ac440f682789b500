"""The real server (``python -m serve`` under uvicorn on 127.0.0.1) on the trained digits model: correctness against
the offline torchvision pipeline, odd-but-valid images, concurrency with cross-request batching."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

import resnet
from resnet.samples import digits_images
from tests.serve_support import Server, classify, encode, probs_from_answer, reference_probs

NUM_CLASSES = 10
DRAFT_JPEG_TOL = 0.05  # JPEG draft mode (DCT-reduced decode of large JPEGs) vs the exact decode, on 32-px crops


@pytest.fixture(scope="module")
def model_and_card(digits_checkpoint: Path):
    return resnet.load_checkpoint(digits_checkpoint)


@pytest.fixture(scope="module")
def torch_server(digits_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):
    """The checkpoint itself on the torch backend, exact decoding (--no-draft)."""
    folder = tmp_path_factory.mktemp("serve_torch")
    server = Server(
        ["--model", str(digits_checkpoint), "--backend", "torch", "--no-draft"], log_path=folder / "server.log"
    ).start()
    yield server
    server.stop()


# ---- correctness against the offline pipeline ---------------------------------------------------------------------


def test_onnx_server_matches_offline_torchvision_pipeline_on_photos(onnx_server, model_and_card, photo_paths):
    model, card = model_and_card
    r = classify(onnx_server, [(p.name, p.read_bytes()) for p in photo_paths])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["backend"] == "onnxruntime:CPUExecutionProvider" and body["model"] == card.name
    assert len(body["results"]) == len(photo_paths)
    for path, result in zip(photo_paths, body["results"]):
        assert result["filename"] == path.name
        got = probs_from_answer(result, NUM_CLASSES)
        want = reference_probs(path, model, card)
        # Large JPEGs are DCT-reduced while decoding (draft mode, on by default); the exact check is --no-draft below.
        drafted = path.suffix == ".jpg" and min(Image.open(path).size) >= 4 * card.resize_size
        tol = DRAFT_JPEG_TOL if drafted else 1e-4
        assert np.abs(got - want).max() <= tol, (path.name, np.abs(got - want).max())
        assert abs(got.sum() - 1) < 1e-6


def test_draft_mode_answer_equals_shared_preprocessing_offline(onnx_server, model_and_card, photo_paths):
    """With draft mode on, the server still equals resnet.preprocess + the same model to 1e-4."""
    model, card = model_and_card
    jpegs = [p for p in photo_paths if p.suffix == ".jpg"]
    r = classify(onnx_server, [(p.name, p.read_bytes()) for p in jpegs])
    assert r.status_code == 200, r.text
    for path, result in zip(jpegs, r.json()["results"]):
        x = torch.from_numpy(resnet.preprocess(path.read_bytes(), card, "ten"))
        with torch.no_grad():
            want = resnet.crop_probabilities(model(x).numpy(), 10)[0]
        assert np.abs(probs_from_answer(result, NUM_CLASSES) - want).max() <= 1e-4, path.name


def test_checkpoint_server_exact_decode_matches_offline_pipeline_on_all_photos(
    torch_server, model_and_card, photo_paths
):
    model, card = model_and_card
    r = classify(torch_server, [(p.name, p.read_bytes()) for p in photo_paths])
    assert r.status_code == 200, r.text
    assert r.json()["backend"].startswith("torch:cpu")
    for path, result in zip(photo_paths, r.json()["results"]):
        got = probs_from_answer(result, NUM_CLASSES)
        assert np.abs(got - reference_probs(path, model, card)).max() <= 1e-4, path.name


def test_center_crop_and_topk_follow_the_query(onnx_server, model_and_card, photo_paths):
    model, card = model_and_card
    path = photo_paths[0]
    r = classify(onnx_server, [(path.name, path.read_bytes())], crops="center", topk=3)
    assert r.status_code == 200, r.text
    top = r.json()["results"][0]["topk"]
    want = reference_probs(path, model, card, crops="center")
    assert [t["index"] for t in top] == list(np.argsort(-want, kind="stable")[:3])
    assert [t["label"] for t in top] == [card.labels[t["index"]] for t in top]
    assert all(abs(t["probability"] - want[t["index"]]) <= 1e-4 for t in top)
    assert r.json()["crops"] == "center"


def test_held_out_digits_are_classified_over_http_as_offline(onnx_server, model_and_card, digits_test_images):
    images, labels = digits_test_images
    files = [(f"{i}.png", encode(Image.fromarray(im), "PNG")) for i, im in enumerate(images[:60])]
    r = classify(onnx_server, files, topk=1)
    assert r.status_code == 200, r.text
    predicted = np.array([int(res["topk"][0]["label"]) for res in r.json()["results"]])
    model, card = model_and_card
    offline = np.array([reference_probs(data, model, card).argmax() for _, data in files])
    assert (predicted == offline).all()  # the same answers as the model offline, image for image
    assert float(np.mean(predicted == labels[:60])) >= 0.9


def test_raw_image_body_is_accepted_and_timings_reported(onnx_server, photo_paths):
    path = next(p for p in photo_paths if p.suffix == ".png")
    r = httpx.post(onnx_server.url + "/classify", content=path.read_bytes(), headers={"Content-Type": "image/png"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["results"][0]["filename"] is None and len(body["results"][0]["topk"]) == 5
    t = body["timings"]
    assert t["total_ms"] >= t["decode_ms"] > 0 and t["inference_ms"] > 0 and t["queue_ms"] >= 0


# ---- odd but valid images: classified as the offline pipeline would --------------------------------------------


def _digit_photo(size: int = 100) -> Image.Image:
    """A real held-out digit, upscaled and on a tinted background so colour conversions matter."""
    img = Image.fromarray(digits_images("test")[0][3]).resize((size, int(size * 1.3)), Image.Resampling.BILINEAR)
    arr = np.asarray(img).astype(np.int16) + np.array([10, -20, 30])
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _odd_images() -> dict[str, tuple[bytes, Image.Image | None]]:
    """name -> (encoded bytes, the RGB image the offline reference should see; None = decode the bytes)."""
    base = _digit_photo()
    arr = np.asarray(base)
    rotated_src = base.transpose(Image.Transpose.ROTATE_90)  # stored sideways, EXIF says rotate back
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    grey16 = Image.fromarray(np.asarray(base.convert("L")).astype(np.uint16) * 257)
    rgba = base.convert("RGBA")
    rgba.putalpha(128)
    frames = [base, Image.fromarray(255 - arr)]
    gif = __import__("io").BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return {
        "cmyk_jpeg": (encode(base.convert("CMYK"), "JPEG", quality=95), None),
        "palette_png_with_transparency": (
            encode(base.convert("P", palette=Image.Palette.ADAPTIVE), "PNG", transparency=0),
            None,
        ),
        "grey16_png": (encode(grey16, "PNG"), base.convert("L")),
        "grey_png": (encode(base.convert("L"), "PNG"), None),
        "grey_alpha_png": (encode(base.convert("LA"), "PNG"), None),
        "rgba_png": (encode(rgba, "PNG"), None),
        "exif_rotated_jpeg": (encode(rotated_src, "JPEG", quality=95, exif=exif.tobytes()), None),
        "animated_gif_first_frame": (gif.getvalue(), None),
        "bmp": (encode(base, "BMP"), base),
        "webp_lossless": (encode(base, "WEBP", lossless=True), base),
        "tiff": (encode(base, "TIFF"), base),
        "tiny_1x1_png": (encode(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"), None),
    }


ODD = _odd_images()


@pytest.mark.parametrize("name", sorted(ODD))
def test_odd_but_valid_image_is_classified_like_offline_pipeline(onnx_server, model_and_card, name):
    model, card = model_and_card
    data, reference_image = ODD[name]
    r = classify(onnx_server, [(name, data)])
    assert r.status_code == 200, r.text
    if reference_image is not None:
        want = reference_probs(encode(reference_image, "PNG"), model, card)
    else:
        want = reference_probs(data, model, card)
    got = probs_from_answer(r.json()["results"][0], NUM_CLASSES)
    assert np.abs(got - want).max() <= 1e-4, name


def test_exif_rotation_changes_the_answer_like_the_offline_pipeline(onnx_server, model_and_card):
    """The EXIF-rotated JPEG is classified upright: same answer as its upright twin, not as the sideways pixels."""
    data, _ = ODD["exif_rotated_jpeg"]
    with Image.open(__import__("io").BytesIO(data)) as im:
        assert im.getexif()[0x0112] == 6 and im.width > im.height  # stored sideways
    r = classify(onnx_server, [("rot.jpg", data)])
    model, card = model_and_card
    upright = Image.open(__import__("io").BytesIO(data)).transpose(Image.Transpose.ROTATE_270)
    want = reference_probs(encode(upright, "PNG"), model, card)
    assert np.abs(probs_from_answer(r.json()["results"][0], NUM_CLASSES) - want).max() <= 5e-3


def test_declared_type_is_ignored_format_sniffed_from_bytes(onnx_server, photo_paths):
    jpeg = next(p for p in photo_paths if p.suffix == ".jpg").read_bytes()
    r = httpx.post(onnx_server.url + "/classify", content=jpeg, headers={"Content-Type": "image/png"})
    assert r.status_code == 200, r.text


# ---- concurrency and cross-request batching ----------------------------------------------------------------------


def test_64_concurrent_requests_all_answered_and_batched_together(onnx_server, photo_paths):
    before_batches = onnx_server.metric("resnet_serve_batch_size_count")
    before_big = before_batches - onnx_server.metric("resnet_serve_batch_size_bucket", 'le="10.0"')
    sequential = {}
    for p in photo_paths[:4]:
        sequential[p.name] = classify(onnx_server, [(p.name, p.read_bytes())]).json()["results"][0]["topk"]

    async def run() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        async with httpx.AsyncClient(base_url=onnx_server.url, limits=limits, timeout=60) as client:
            jobs = []
            for i in range(64):
                p = photo_paths[i % 4]
                jobs.append(
                    client.post("/classify", params={"topk": NUM_CLASSES}, files=[("file", (p.name, p.read_bytes()))])
                )
            return await asyncio.gather(*jobs)

    responses = asyncio.run(run())
    assert [r.status_code for r in responses] == [200] * 64
    for r in responses:
        res = r.json()["results"][0]
        want = {t["index"]: t["probability"] for t in sequential[res["filename"]]}
        assert all(abs(t["probability"] - want[t["index"]]) <= 1e-5 for t in res["topk"])
    after_batches = onnx_server.metric("resnet_serve_batch_size_count")
    after_big = after_batches - onnx_server.metric("resnet_serve_batch_size_bucket", 'le="10.0"')
    # 64 ten-crop requests took fewer than 64 batches: crops of different requests shared batches (> 10 crops).
    assert after_batches - before_batches < 64
    assert after_big - before_big >= 1
    assert any(max(r.json()["batch_sizes"]) > 10 for r in responses)


def test_metrics_report_stages_images_crops_and_queue(onnx_server, photo_paths):
    classify(onnx_server, [(photo_paths[0].name, photo_paths[0].read_bytes())])
    text = httpx.get(onnx_server.url + "/metrics").text
    for stage in ("decode", "queue", "inference", "total"):
        assert f'resnet_serve_stage_seconds_count{{stage="{stage}"}}' in text
    assert onnx_server.metric("resnet_serve_images_total") >= 1
    assert onnx_server.metric("resnet_serve_crops_total") >= 10
    assert onnx_server.metric("resnet_serve_requests_total", 'route="/classify",status="200"') >= 1
    assert "resnet_serve_queue_crops " in text


def test_health_ready_and_openapi_docs(onnx_server):
    assert httpx.get(onnx_server.url + "/healthz").json()["status"] == "ok"
    ready = httpx.get(onnx_server.url + "/readyz").json()
    assert ready["status"] == "ready" and ready["backend"].startswith("onnxruntime")
    spec = httpx.get(onnx_server.url + "/openapi.json").json()
    assert "/classify" in spec["paths"] and "ClassifyResponse" in spec["components"]["schemas"]
    assert httpx.get(onnx_server.url + "/docs").status_code == 200


def test_smoke_command_prints_accuracy_of_held_out_digits_over_http(onnx_server, tmp_path, capsys):
    from clients.smoke import main as smoke
    from resnet import run_cli
    from resnet.samples import write_digits_imagefolder

    folder = write_digits_imagefolder(tmp_path / "digits", limit=40)
    assert run_cli(smoke, [str(folder), "--url", onnx_server.url, "--min-accuracy", "0.9", "--wait", "5"]) == 0
    out = capsys.readouterr().out
    assert "40 held-out images" in out and "top-1 accuracy" in out
    assert run_cli(smoke, [str(folder), "--url", onnx_server.url, "--min-accuracy", "1.01", "--wait", "5"]) == 1
    assert run_cli(smoke, [str(tmp_path / "nowhere"), "--url", onnx_server.url]) == 2
