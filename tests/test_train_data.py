"""Training data: the safe CIFAR-10 batch reader, data-folder errors, and the paper's augmentation."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import resnet
from resnet.card import CIFAR10_LABELS
from resnet.samples import sample_photo_paths, write_digits_imagefolder
from train.augment import BatchAugment, imagenet_eval_transform, imagenet_train_transform, step_generator
from train.cifar_pickle import UnsafePickleError, load_batch, write_batch
from train.data import DataError, load_cifar, load_imagefolder

REPO = Path(__file__).resolve().parent.parent


def run_module(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def make_cifar_folder(root: Path, per_batch: int = 12) -> Path:
    """A small cifar-10-batches-py folder in the published format (dict with bytes keys, uint8 [N, 3072])."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = [i % 10 for i in range(per_batch)]
        write_batch(folder / name, rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8), labels, name)
    meta = {b"label_names": [n.encode() for n in CIFAR10_LABELS], b"num_cases_per_batch": per_batch}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder


def test_cifar_batch_reads_rows_as_rgb_planes(tmp_path: Path) -> None:
    data = np.zeros((2, 3072), dtype=np.uint8)
    data[0, :1024] = 255  # image 0: red plane full
    data[1, 2048:] = 7  # image 1: blue plane
    batch = load_batch(write_batch(tmp_path / "data_batch_1", data, [3, 9], "training batch 1 of 5"))
    assert batch["data"].shape == (2, 3, 32, 32) and batch["data"].dtype == np.uint8
    assert batch["data"][0, 0].min() == 255 and batch["data"][0, 1:].max() == 0
    assert batch["data"][1, 2].min() == 7 and batch["data"][1, :2].max() == 0
    assert batch["labels"].tolist() == [3, 9]
    assert batch["batch_label"] == "training batch 1 of 5"
    assert batch["filenames"][0] == "img_00000.png"


def test_cifar_folder_loads_with_label_names_and_holdout(tmp_path: Path) -> None:
    make_cifar_folder(tmp_path)
    bundle = load_cifar(tmp_path, val_size=10)
    assert list(bundle.labels) == list(CIFAR10_LABELS)
    assert len(bundle.train) == 50 and len(bundle.val) == 10 and len(bundle.test) == 12
    assert bundle.test_source[0].shape == (12, 32, 32, 3)


def test_malicious_cifar_pickle_is_refused_without_running_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": Evil(), b"labels": [0]}, protocol=2))
    with pytest.raises(UnsafePickleError, match="refused to load posix.system|refused to load os.system"):
        load_batch(path)
    assert not marker.exists()


def test_malicious_cifar_folder_gives_one_line_exit_1(tmp_path: Path) -> None:
    folder = make_cifar_folder(tmp_path)
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": (eval, ("1",))}, protocol=2))
    proc = run_module(
        "train.cifar", "--data", str(tmp_path), "--depth", "8", "--max-iters", "1", "--out", str(tmp_path / "run")
    )
    assert proc.returncode == 1
    assert "refused to load __builtin__.eval" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "last.pt").exists()


def test_truncated_cifar_batch_is_a_clear_error(tmp_path: Path) -> None:
    folder = make_cifar_folder(tmp_path)
    raw = (folder / "test_batch").read_bytes()
    (folder / "test_batch").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(resnet.UserError, match="test_batch is truncated: not a complete CIFAR-10 python batch"):
        load_cifar(tmp_path, val_size=10)


def test_incomplete_cifar_folder_names_missing_batches(tmp_path: Path) -> None:
    folder = make_cifar_folder(tmp_path)
    (folder / "data_batch_4").unlink()
    with pytest.raises(DataError, match="missing data_batch_4"):
        load_cifar(tmp_path, val_size=10)


def test_empty_class_folder_gives_one_line_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_digits_imagefolder(tmp_path / "train", "train", limit=30)
    write_digits_imagefolder(tmp_path / "val", "test", limit=30)
    for p in (tmp_path / "train" / "3").iterdir():
        p.unlink()
    from train.imagenet import main

    assert main(["--data", str(tmp_path), "--depth", "18", "--max-iters", "1", "--out", str(tmp_path / "r")]) == 1
    assert (
        capsys.readouterr().err.strip()
        == f"train.imagenet: error: class folder {tmp_path / 'train' / '3'} has no images "
        f"({', '.join(resnet.IMAGE_SUFFIXES)})"
    )


def test_imagefolder_without_val_split_is_rejected(tmp_path: Path) -> None:
    write_digits_imagefolder(tmp_path / "train", "train", limit=20)
    with pytest.raises(DataError, match="needs train/ and val/"):
        load_imagefolder(tmp_path)


@pytest.mark.parametrize(
    "argv, code, text",
    [
        (["--dataset", "digits", "--depth", "21"], 2, "CIFAR depths are 6n+2"),
        (["--dataset", "digits", "--lr", "-1"], 2, "expected a positive number"),
        (["--data", "/no/such/folder"], 1, "does not exist"),
        (["--dataset", "digits", "--amp", "fp16", "--device", "cpu"], 2, "--amp fp16 needs a CUDA GPU"),
        (["--dataset", "digits", "--input-size", "64"], 2, "--input-size applies to ImageFolder data only"),
    ],
)
def test_bad_arguments_give_one_line_and_exit_code(
    argv: list[str], code: int, text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from train.cifar import main

    assert main(argv + ["--out", str(tmp_path / "run")]) == code
    err = capsys.readouterr().err
    assert text in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "last.pt").exists()


def test_unknown_option_in_real_process_is_one_line_exit_2(tmp_path: Path) -> None:
    proc = run_module("train.cifar", "--dataset", "digits", "--bogus")
    assert proc.returncode == 2
    assert proc.stderr == "train.cifar: error: unrecognized arguments: --bogus\n"


def test_batch_augment_is_seeded_by_step_and_crops_inside_padding() -> None:
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.int64).remainder(256).to(torch.uint8).view(2, 3, 32, 32)
    aug = BatchAugment([0.5, 0.5, 0.5], [0.25, 0.25, 0.25], pad=4, flip=True)
    a = aug(x, step_generator(0, 0, 7))
    b = aug(x, step_generator(0, 0, 7))
    c = aug(x, step_generator(0, 0, 8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (2, 3, 32, 32) and a.dtype == torch.float32
    # every augmented image is a shifted (and maybe flipped) window of the zero-padded original
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    norm = aug.normalise(padded)
    for i in range(2):
        windows = [norm[i, :, dy : dy + 32, dx : dx + 32] for dy in range(9) for dx in range(9)]
        assert any(torch.equal(a[i], w) or torch.equal(a[i], w.flip(2)) for w in windows)


def test_no_augment_equals_shared_preprocessing_of_digits() -> None:
    from PIL import Image

    from resnet.samples import digits_images

    x, _ = digits_images("test")
    card = resnet.make_card(
        "cifar_resnet8", labels=[str(i) for i in range(10)], mean=[0.1, 0.2, 0.3], std=[0.3, 0.3, 0.4]
    )
    ours = BatchAugment(card.mean, card.std).normalise(torch.from_numpy(x[:4].transpose(0, 3, 1, 2)))
    shared = np.concatenate([resnet.preprocess(Image.fromarray(img), card, crops="center") for img in x[:4]])
    assert np.abs(ours.numpy() - shared).max() < 1e-6


def test_imagenet_eval_transform_equals_shared_center_crop() -> None:
    from PIL import Image

    photo = sample_photo_paths()[0]
    card = resnet.make_card("resnet18")
    ours = imagenet_eval_transform(224, 256)(resnet.decode_image(photo, draft=False))
    shared = resnet.preprocess(photo, card, crops="center", draft=False)[0]
    assert np.abs(ours.numpy() - shared).max() < 1e-5
    train = imagenet_train_transform(224)(Image.open(photo).convert("RGB"))
    assert train.shape == (3, 224, 224) and torch.isfinite(train).all()


def test_cifar_pickle_may_not_reach_other_codecs(tmp_path: Path) -> None:
    """``_codecs.encode`` is admitted for protocol 2's bytes literals (str -> latin1) only."""
    path = tmp_path / "data_batch_1"
    for codec in (b"no-such-codec", b"zlib_codec"):
        path.write_bytes(
            b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX" + bytes([len(codec), 0, 0, 0]) + codec + b"\x86R."
        )
        with pytest.raises(UnsafePickleError, match="latin1"):
            load_batch(path)


def test_cifar_batch_with_labels_of_the_wrong_kind_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "data_batch_1"
    data = np.zeros((2, 3072), np.uint8)
    for labels, message in (([b"a", b"b"], "list of class numbers"), ([1, -3], "negative class")):
        path.write_bytes(pickle.dumps({b"data": data, b"labels": labels, b"batch_label": 7}, protocol=2))
        with pytest.raises(resnet.UserError, match=message):
            load_batch(path)
