"""Training throughput: our training step vs a plain torchvision-style loop, same model, batch and data, one run.

    python bench/train_throughput.py                      # digits, cifar_resnet20, batch 128, CPU or GPU
    python bench/train_throughput.py --synthetic --model resnet50 --batch-size 64 --image-size 224   # GPU

"plain" is what torchvision's reference script does per step: per-image PIL transforms in a DataLoader
(RandomCrop(32, padding=4) + flip + ToTensor + Normalize), fp32, contiguous tensors. "ours" is train.loop's step:
uint8 batches augmented on the device (train.augment.BatchAugment) and the device's speed settings (channels_last,
AMP). With --synthetic both loops read the same random tensors, so only the step itself differs. The variants run
round-robin, one timed step each per round (--iters rounds after --warmup), so a change in machine load hits
all of them alike; prints the median images/s and the ratio to plain.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import resnet
from train.augment import BatchAugment, step_generator


def plain_loader(images: np.ndarray, labels: np.ndarray, batch: int, synthetic: bool, mean, std, workers: int):
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset, TensorDataset
    from torchvision import transforms as T

    if synthetic:
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255)
        ds = TensorDataset(
            (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1), torch.from_numpy(labels)
        )
    else:
        tf = T.Compose(
            [T.RandomCrop(images.shape[1], padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)]
        )

        class PilDataset(Dataset):
            def __len__(self) -> int:
                return len(labels)

            def __getitem__(self, i: int):
                return tf(Image.fromarray(images[i])), int(labels[i])

        ds = PilDataset()
    return DataLoader(
        ds, batch_size=batch, shuffle=True, drop_last=True, num_workers=workers, persistent_workers=workers > 0
    )


def plain_stepper(model, loader, device):
    """One step of the plain loop per call; returns the images it trained on."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    model.train()
    it = iter(loader)

    def step() -> int:
        nonlocal it
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(loader)
            x, y = next(it)
        x, y = x.to(device), y.to(device)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()
        return len(y)

    return step


def ours_stepper(
    model,
    images_u8: torch.Tensor,
    labels: torch.Tensor,
    batch: int,
    device,
    amp: torch.dtype | None,
    channels_last: bool,
    augment: BatchAugment | None,
    norm: BatchAugment,
):
    """One step of train.loop's recipe per call (batch augmentation on the device, AMP, memory format)."""
    model = model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    model.train()
    ctx = (lambda: torch.autocast(device.type, dtype=amp)) if amp else contextlib.nullcontext
    gen = torch.Generator().manual_seed(0)
    count = 0

    def step() -> int:
        nonlocal count
        idx = torch.randint(0, len(labels), (batch,), generator=gen)
        x, y = images_u8[idx].to(device, non_blocking=True), labels[idx].to(device, non_blocking=True)
        x = augment(x, step_generator(0, 0, count)) if augment else norm.normalise(x)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with ctx():
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss.item()
        count += 1
        return batch

    return step


def measure(steppers: dict, iters: int, warmup: int, device, clock=time.perf_counter) -> dict[str, float]:
    """Round-robin: each round times one step of every variant, so load drift hits all alike; median img/s."""
    for step in steppers.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {k: [] for k in steppers}
    for _ in range(iters):
        for name, step in steppers.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = clock()
            n = step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(n / (clock() - t))
    return {k: float(np.median(v)) for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--model", default="cifar_resnet20", help="network name (resnet.list_models())")
    p.add_argument("--batch-size", type=int, default=128, help="images per step")
    p.add_argument("--iters", type=int, default=8, help="timed rounds (one step of every variant each)")
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations first")
    p.add_argument("--synthetic", action="store_true", help="random images instead of the digits (any --image-size)")
    p.add_argument("--image-size", type=int, default=32, help="synthetic image size")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: CUDA when present")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="cpu: this process's CPU time (with --threads 1 it is robust to other jobs on the machine)",
    )
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers of the plain loop")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    if args.device == "cuda" and device.type != "cuda":
        print("error: --device cuda but no CUDA GPU is visible", file=sys.stderr)
        return 4
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if args.synthetic:
        rng = np.random.default_rng(0)
        images = rng.integers(
            0, 256, (max(4 * args.batch_size, 512), args.image_size, args.image_size, 3), dtype=np.uint8
        )
        labels = rng.integers(0, 10, len(images)).astype(np.int64)
        what = f"synthetic {args.image_size}x{args.image_size}"
    else:
        from resnet.samples import digits_images

        images, labels = digits_images("train")
        what = "sklearn digits 32x32"
    mean, std = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
    images_u8 = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    labels_t = torch.from_numpy(labels)
    norm = BatchAugment(mean, std)
    augment = None if args.synthetic else BatchAugment(mean, std, pad=4, flip=True)

    def fresh():
        torch.manual_seed(0)
        return resnet.create_model(args.model, num_classes=10).to(device)

    dev = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.model}, batch {args.batch_size}, {what}, {dev}; {args.iters} timed rounds, {args.clock} clock")
    plain_name = "plain torchvision-style loop (fp32, per-image transforms)"
    steppers = {
        plain_name: plain_stepper(
            fresh(), plain_loader(images, labels, args.batch_size, args.synthetic, mean, std, args.workers), device
        )
    }
    variants = [
        ("ours: batch augment on device, fp32", None, False),
        ("ours: + channels_last", None, True),
        ("ours: + bf16 autocast", torch.bfloat16, False),
        ("ours: + bf16 autocast + channels_last", torch.bfloat16, True),
    ]
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        variants = [(n.replace("bf16", "fp16"), torch.float16 if a else None, c) for n, a, c in variants]
    for name, amp, cl in variants:
        steppers[name] = ours_stepper(fresh(), images_u8, labels_t, args.batch_size, device, amp, cl, augment, norm)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.clock == "cpu" and device.type == "cuda":
        clock = time.perf_counter  # GPU work is not this process's CPU time
    rates = measure(steppers, args.iters, args.warmup, device, clock)
    plain = rates[plain_name]
    for name, ips in rates.items():
        print(f"{name:58s} {ips:9.1f} img/s   x{ips / plain:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
