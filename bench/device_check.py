"""The GPU check's steps, each with an assertion; ``bench/device_check.sh`` runs it on a machine lent a GPU.

    python bench/device_check.py --out OUT                    # CUDA: the real check (about 5 minutes on an H100/H200)
    python bench/device_check.py --out OUT --device cpu --tiny --skip compile   # the same code on the CPU, tiny

Steps: ``digits`` (train the digits ResNet-20 on the device, ten-crop accuracy >= 97%), ``parity_fp32`` (device fp32
vs CPU fp32 logits on the digits test crops: top-1 agreement 100%, cosine >= 0.9999, TF32 off), ``autocast`` (bf16
and fp16 autocast: top-1 agreement >= 99% with CPU fp32), ``compile`` (a ``--compile`` training run finishes with a
checkpoint), ``train_step`` (ResNet-50, 224 px, batch 128: images/s for fp32, channels_last, channels_last + bf16),
``trt_multiscale`` (``python -m export.trt --multiscale --require-engine`` on the digits model: the engine passes
its gate, the multi-scale protocol included, and its sidecar records the multi-scale profile), ``trt_int8``
(``python -m export.trt --int8 --require-engine``: the INT8 engine built from the TensorRT-ready QDQ graph passes
its gate and its sidecar says ``precision: "int8"``). The TensorRT steps are not exercised, with why, where CUDA or
the ``tensorrt`` package is missing (as in the torch image without TensorRT).
Each step ends ``passed``, ``failed`` or ``not exercised`` (with why: ``--skip``, "tensorrt not importable", a step
it needs that did not pass): a step that did not run never reads as passed. Writes ``OUT/device_check.json`` (every
step: status, figures, thresholds), prints a short table of the steps last, and the log goes to stdout; training runs
go to a temporary folder that is removed. The check's ``result`` is ``passed`` only when every step ran and passed,
``failed`` when one failed, else ``partial`` (with ``counts``); exit 1 when a step failed, else 0.
TF32 is turned off only while ``parity_fp32`` compares (``tf32_off``) and restored after, so the fp32 training-step
figures run with PyTorch's defaults; each of those steps records the TF32 settings it ran with.
``--device cpu`` compares the CPU with itself: it exercises the code and the assertions, never a GPU result (the
JSON says ``"device": "cpu"``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import resnet  # noqa: E402
from resnet.runtime.tensorrt import tensorrt_available  # noqa: E402
from resnet.samples import digits_images  # noqa: E402

STEPS = ("digits", "parity_fp32", "autocast", "compile", "train_step", "trt_multiscale", "trt_int8")
PASSED, FAILED, NOT_EXERCISED = "passed", "failed", "not exercised"
PARTIAL = "partial"  # the check's result when no step failed but not every step ran
STEPS_STATUSES = (PASSED, FAILED, NOT_EXERCISED)
# the sidecar's multi-scale record for a 32-px CIFAR-family net (export.engine.engine_profiles)
DIGITS_MULTISCALE = {"batch": [1, 2, 8], "min_side": 28, "max_side": 72, "sides": [28, 32, 36]}


class CheckFailed(AssertionError):
    """A step's assertion did not hold."""


class StepSkipped(Exception):
    """A step cannot run on this machine (recorded as not exercised, with why; not a failure)."""


def check(ok: bool, message: str) -> None:
    if not ok:
        raise CheckFailed(message)


def needs(state: dict[str, Any], key: str, what: str) -> None:
    """A step that builds on an earlier one is not exercised (not failed) when that one did not pass."""
    if key not in state:
        raise StepSkipped(f"needs {what}, which did not pass")


def tf32_settings() -> dict[str, bool]:
    """The process-wide TF32 switches for convolutions (cuDNN) and matrix products."""
    return {"cudnn": bool(torch.backends.cudnn.allow_tf32), "matmul": bool(torch.backends.cuda.matmul.allow_tf32)}


@contextlib.contextmanager
def tf32_off() -> Iterator[None]:
    """TF32 off for the block only (it moves fp32 logits past the parity threshold), then as it was: PyTorch's
    ``torch.backends.cudnn.allow_tf32`` / ``torch.backends.cuda.matmul.allow_tf32`` are process-wide."""
    before = tf32_settings()
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = before["cudnn"]
        torch.backends.cuda.matmul.allow_tf32 = before["matmul"]


def train_digits(py: str, out: Path, device: str, iters: int | None, depth: int, extra: Sequence[str] = ()) -> Path:
    """``python -m train.cifar --dataset digits`` on ``device``; the checkpoint path."""
    cmd = [py, "-m", "train.cifar", "--dataset", "digits", "--depth", str(depth), "--device", device]
    cmd += ["--out", str(out), "--progress", "lines", "--no-tensorboard", *extra]
    if iters:
        cmd += ["--max-iters", str(iters)]
    print("$", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, cwd=REPO, text=True, capture_output=True)
    print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n", flush=True)
    check(proc.returncode == 0, f"training exited {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}")
    ckpt = out / "model.pt"
    check(ckpt.is_file(), f"no checkpoint at {ckpt}")
    return ckpt


def test_crops(card: Any, limit: int | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """The held-out digits (the first ``limit``) as ten crops each: ``[N * 10, 3, S, S]`` float32, ``[N]`` labels."""
    images, labels = digits_images("test")
    images, labels = images[:limit], labels[:limit]
    from PIL import Image

    crops = [resnet.preprocess(Image.fromarray(img), card, crops="ten") for img in images]
    return torch.from_numpy(np.concatenate(crops)), labels


def logits_on(model: torch.nn.Module, x: torch.Tensor, device: str, dtype: torch.dtype | None = None) -> np.ndarray:
    """float64 logits of ``x`` on ``device`` (fp32, or autocast to ``dtype``), in batches of 500 crops."""
    model = model.to(device).eval()
    outs = []
    with torch.inference_mode(), torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
        for chunk in x.split(500):
            outs.append(model(chunk.to(device)).double().cpu())
    return torch.cat(outs).numpy()


def agreement(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Per-crop top-1 agreement (%) and the smallest cosine similarity of two logit sets."""
    top1 = float((a.argmax(1) == b.argmax(1)).mean() * 100)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return {"top1_agreement_pct": round(top1, 3), "min_cosine": float(cos.min())}


def ten_crop_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    z = logits.reshape(len(labels), 10, -1)
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return float((p.mean(1).argmax(1) == labels).mean() * 100)


def step_times(arch: str, size: int, batch: int, device: str, steps: int, warmup: int) -> dict[str, float]:
    """Training images/s of one SGD step on random data: fp32, channels_last, channels_last + bf16 autocast."""
    table = {}
    for variant in ("fp32", "channels_last", "channels_last_bf16"):
        torch.manual_seed(0)
        fmt = torch.channels_last if variant != "fp32" else torch.contiguous_format
        model = resnet.create_model(arch, num_classes=1000).to(device, memory_format=fmt).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=fmt)
        y = torch.randint(0, 1000, (batch,), device=device)
        bf16 = variant.endswith("bf16")
        times = []
        for i in range(warmup + steps):
            start = time.perf_counter()
            with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
                loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if device == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - start)
        check(math.isfinite(loss.item()), f"{variant}: loss is {loss.item()}")
        table[variant] = round(batch / float(np.median(times)), 1)
    return table


def trt_multiscale_step(py: str, ckpt: Path, out: Path) -> dict[str, Any]:
    """``export.trt --multiscale --require-engine`` on ``ckpt``: gated engine + sidecar with the multi-scale profile."""
    cmd = [py, "-m", "export.trt", str(ckpt), "-o", str(out), "--multiscale", "--require-engine", "--max-batch", "32"]
    print("$", " ".join(cmd), flush=True)
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, text=True, capture_output=True)
    print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n", flush=True)
    check(proc.returncode == 0, f"export.trt exited {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}")
    side = json.loads((out / f"{ckpt.stem}.plan.json").read_text())
    check(side.get("multiscale") == DIGITS_MULTISCALE, f"sidecar multiscale {side.get('multiscale')}")
    ms = side["parity"].get("multiscale") or {}
    check(side["parity"]["passed"] and ms.get("checked") is True, f"engine gate multi-scale entry {ms}")
    return {
        "seconds": round(time.perf_counter() - started, 1),
        "multiscale": side["multiscale"],
        "gate_multiscale": {k: ms.get(k) for k in ("top1_agreement", "cosine_min", "images", "views_skipped")},
        "tensorrt": side["tensorrt"],
    }


def trt_int8_step(py: str, ckpt: Path, out: Path) -> dict[str, Any]:
    """``export.trt --int8 --require-engine`` on ``ckpt``: the INT8 engine from the TensorRT-ready graph, gated."""
    cmd = [py, "-m", "export.trt", str(ckpt), "-o", str(out), "--int8", "--calib", "digits", "--require-engine"]
    cmd += ["--max-batch", "32"]
    print("$", " ".join(cmd), flush=True)
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, text=True, capture_output=True)
    print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n", flush=True)
    check(proc.returncode == 0, f"export.trt --int8 exited {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}")
    side = json.loads((out / f"{ckpt.stem}.int8.plan.json").read_text())
    check(side["precision"] == "int8" and side["parity"]["passed"], f"int8 sidecar {side.get('precision')}")
    check(side["build"]["source_onnx"] == f"{ckpt.stem}.int8.trt.onnx", f"built from {side['build']['source_onnx']}")
    metrics = side["parity"]["metrics"]
    return {
        "seconds": round(time.perf_counter() - started, 1),
        "top1_agreement": metrics.get("top1_agreement"),
        "cosine_min": metrics.get("cosine_min"),
        "build_mode": side["build"]["mode"],
        "tensorrt": side["tensorrt"],
    }


def not_exercised(why: str) -> dict[str, Any]:
    return {"status": NOT_EXERCISED, "passed": None, "why": why}


def run_step(name: str, func: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """One step's record: passed with its figures, not exercised with why, or failed with why (a crash included)."""
    started = time.perf_counter()
    print(f"== {name}", flush=True)
    try:
        result = {"status": PASSED, "passed": True, **func()}
    except StepSkipped as e:
        result = not_exercised(str(e))
    except CheckFailed as e:
        result = {"status": FAILED, "passed": False, "failure": str(e)}
    except Exception as e:  # a crash is a failed step with its cause, not a lost summary
        traceback.print_exc()
        result = {"status": FAILED, "passed": False, "failure": f"{type(e).__name__}: {e}"[:500]}
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def table(results: dict[str, dict[str, Any]]) -> str:
    """The steps as a short fixed-width table: name, status, and the why or the failure."""
    lines = ["== summary", f"{'step':<16} {'status':<14} detail"]
    for name in STEPS:
        r = results.get(name) or not_exercised("the run stopped before it")
        detail = r.get("failure") or r.get("why") or f"{r.get('seconds', 0)} s"
        lines.append(f"{name:<16} {r['status']:<14} {detail}"[:160])
    return "\n".join(lines)


class Steps:
    """The steps as methods (``STEPS`` names them; ``compile`` is ``compile_run``), sharing the digits model,
    its crops and the fp32 reference in ``state``."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args, self.work, self.dev, self.py = args, work, args.device, sys.executable
        self.state: dict[str, Any] = {}

    def digits(self) -> dict[str, Any]:
        tiny = self.args.tiny
        ckpt = train_digits(self.py, self.work / "digits", self.dev, 4 if tiny else None, 8 if tiny else 20)
        model, card = resnet.load_checkpoint(ckpt)
        x, labels = test_crops(card, 40 if tiny else None)  # fp16 autocast on a CPU is slow
        self.state.update(model=model, x=x, labels=labels, ckpt=ckpt)
        acc = ten_crop_accuracy(logits_on(model, x, self.dev), labels)
        least = self.args.min_accuracy
        check(acc >= least, f"ten-crop accuracy {acc:.2f}% < {least}%")
        return {"ten_crop_accuracy_pct": round(acc, 2), "min_accuracy_pct": least, "images": len(labels)}

    def parity_fp32(self) -> dict[str, Any]:
        state = self.state
        needs(state, "model", "the digits model")
        with tf32_off():  # TF32 would move fp32 logits past the parity; only here
            tf32 = tf32_settings()
            ref = logits_on(state["model"], state["x"], "cpu")
            got = agreement(logits_on(state["model"], state["x"], self.dev), ref)
        state["ref"] = ref
        check(got["top1_agreement_pct"] == 100.0, f"fp32 top-1 agreement {got['top1_agreement_pct']}% < 100%")
        check(got["min_cosine"] >= 0.9999, f"fp32 min cosine {got['min_cosine']:.6f} < 0.9999")
        thresholds = {"top1_agreement_pct": 100.0, "min_cosine": 0.9999}
        return {**got, "crops": len(ref), "thresholds": thresholds, "tf32": tf32}

    def autocast(self) -> dict[str, Any]:
        state = self.state
        needs(state, "ref", "the fp32 reference logits (parity_fp32)")
        out = {}
        for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
            out[name] = agreement(logits_on(state["model"], state["x"], self.dev, dtype), state["ref"])
            pct = out[name]["top1_agreement_pct"]
            check(pct >= 99.0, f"{name} autocast top-1 agreement {pct}% < 99%")
        return {**out, "thresholds": {"top1_agreement_pct": 99.0}}

    def compile_run(self) -> dict[str, Any]:
        started = time.perf_counter()
        tiny = self.args.tiny
        iters = 4 if tiny else 100
        train_digits(self.py, self.work / "compiled", self.dev, iters, 8 if tiny else 20, ["--compile"])
        return {"seconds": round(time.perf_counter() - started, 1), "iterations": iters}

    def train_step(self) -> dict[str, Any]:
        arch, size, batch = ("resnet18", 64, 8) if self.args.tiny else ("resnet50", 224, 128)
        steps, warmup = (2, 1) if self.args.tiny else (10, 3)
        tf32 = tf32_settings()  # the fp32 figures run with PyTorch's defaults, whatever ran before
        rates = step_times(arch, size, batch, self.dev, steps, warmup)
        check(all(v > 0 for v in rates.values()), f"non-positive throughput in {rates}")
        info = {"model": arch, "image_size": size, "batch": batch, "images_per_s": rates}
        return {**info, "timed_steps": steps, "tf32": tf32}

    def trt_ready(self) -> Path:
        ok, why = tensorrt_available()
        if not ok:
            raise StepSkipped(why)
        needs(self.state, "ckpt", "the digits model")
        return self.state["ckpt"]

    def trt_multiscale(self) -> dict[str, Any]:
        return trt_multiscale_step(self.py, self.trt_ready(), self.work / "trt")

    def trt_int8(self) -> dict[str, Any]:
        return trt_int8_step(self.py, self.trt_ready(), self.work / "trt_int8")


def run_steps(
    args: argparse.Namespace, work: Path, save: Callable[[dict[str, Any]], None]
) -> dict[str, dict[str, Any]]:
    """Every step not in --skip, in order; a step that fails records why and the next ones still run. ``save`` is
    called after each step, so a run stopped by its time limit still leaves a summary of what it did."""
    steps = Steps(args, work)
    results: dict[str, dict[str, Any]] = {}
    for name in STEPS:
        if name in args.skip:
            results[name] = not_exercised("--skip")
            continue
        results[name] = run_step(name, getattr(steps, "compile_run" if name == "compile" else name))
        print(f"   {name}: {json.dumps(results[name])}", flush=True)
        save(results)
    return results


def verdict(results: dict[str, dict[str, Any]]) -> tuple[str, dict[str, int]]:
    """``passed`` only when every step ran and passed; ``failed`` when one failed; else ``partial``; with counts."""
    counts = {status: sum(r["status"] == status for r in results.values()) for status in STEPS_STATUSES}
    counts[NOT_EXERCISED] += len(STEPS) - len(results)  # steps the run never reached
    if counts[FAILED]:
        return FAILED, counts
    return (PASSED if counts[PASSED] == len(STEPS) else PARTIAL), counts


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/device_check.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder for device_check.json")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny settings (few iterations, small network) for the CPU")
    p.add_argument("--skip", nargs="*", default=[], choices=STEPS, help="steps not to run (recorded as not exercised)")
    p.add_argument("--min-accuracy", type=float, default=97.0, help="digits ten-crop accuracy threshold, %%")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("device_check: no CUDA device here (torch.cuda.is_available() is False)", file=sys.stderr)
        return 4
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    def save(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
        result, counts = verdict(results)
        summary = {
            "device": args.device,
            "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "python": platform.python_version(),
            "tiny": args.tiny,
            "complete": len(results) == len(STEPS),
            "result": result,  # passed | partial | failed
            "passed": result == PASSED,
            "counts": counts,
            "seconds": round(time.perf_counter() - started, 1),
            "steps": results,
        }
        (args.out / "device_check.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary

    with tempfile.TemporaryDirectory(prefix="device_check.") as work:
        summary = save(run_steps(args, Path(work), save))
    print(json.dumps({k: summary[k] for k in ("device", "gpu", "result", "counts", "seconds")}), flush=True)
    print(table(summary["steps"]), flush=True)
    return 1 if summary["result"] == FAILED else 0


if __name__ == "__main__":
    raise SystemExit(main())
