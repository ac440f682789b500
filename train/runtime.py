"""Device settings of a run: threads, determinism, mixed precision and memory format.

``--amp auto`` on a CPU is decided by measuring, on this machine, a few training steps of the run's own network at
its own batch shape in fp32 and in bf16 autocast; whichever is faster is used. CPU flags are not a guide: bf16 was
1.4x faster on one 2-core AMD EPYC and 1.4x slower on a 2-core Intel Xeon (bench/RESULTS.md).
"""

from __future__ import annotations

import contextlib
import copy
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from resnet import UsageError

from . import distributed as D

AMP_DTYPES: dict[str, torch.dtype | None] = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Runtime:
    """Device-dependent speed settings, chosen from the device (or by timing) unless the user forced them."""

    amp: str  # "off" | "bf16" | "fp16"
    channels_last: bool
    scaler: torch.amp.GradScaler

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return AMP_DTYPES[self.amp]

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.amp_dtype)


def configure_torch(threads: int | None, deterministic: bool, cuda: bool) -> None:
    """Intra-op threads, deterministic algorithms, cudnn.benchmark and TF32."""
    if threads:
        torch.set_num_threads(threads)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    elif cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def default_channels_last(amp: str, cuda: bool, forced: bool | None) -> bool:
    """GPU: on. CPU: with bf16 only (oneDNN's blocked bf16 kernels; measured 1.2x there). ``forced`` wins."""
    return (cuda or amp == "bf16") if forced is None else forced


def train_step_fn(
    model: torch.nn.Module, batch_shape: tuple[int, ...], num_classes: int, amp: str, channels_last: bool
) -> Callable[[], None]:
    """One forward+backward step of a copy of ``model`` on fixed random data, as a function to time.

    The run's own model, weights and global RNG are untouched.
    """
    net = copy.deepcopy(model).train()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch_shape, generator=gen)
    y = torch.randint(num_classes, (batch_shape[0],), generator=gen)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    dtype = AMP_DTYPES[amp]

    def step() -> None:
        with torch.autocast("cpu", dtype=dtype) if dtype is not None else contextlib.nullcontext():
            loss = F.cross_entropy(net(x), y)
        loss.backward()
        net.zero_grad(set_to_none=True)

    return step


def measure_cpu_amp(
    model: torch.nn.Module,
    batch_shape: tuple[int, ...],
    num_classes: int,
    channels_last: bool | None,
    info: D.DistInfo,
    say: Callable[[str], None],
    budget_s: float = 3.0,
    max_steps: int = 5,
) -> str:
    """``"bf16"`` or ``"off"``: whichever trains ``model`` faster here, timed in turns within about ``budget_s``.

    Every rank times its own steps; the decision uses the sums over ranks, so all ranks agree.
    """
    modes = ("off", "bf16")
    steps = {
        m: train_step_fn(model, batch_shape, num_classes, m, default_channels_last(m, False, channels_last))
        for m in modes
    }
    for m in modes:
        steps[m]()  # warm-up: oneDNN creates its primitives on the first call
    times: dict[str, list[float]] = {m: [] for m in modes}
    start = time.perf_counter()
    while len(times["off"]) < max_steps and (len(times["off"]) < 2 or time.perf_counter() - start < budget_s):
        for m in modes:  # in turns, so that a neighbour's load or a clock change hits both
            t0 = time.perf_counter()
            steps[m]()
            times[m].append(time.perf_counter() - t0)
    fp32, bf16 = D.all_reduce_sum([statistics.median(times["off"]), statistics.median(times["bf16"])], info)
    choice = "bf16" if bf16 < fp32 else "off"
    say(
        f"amp auto: timed {len(times['off'])} training steps each at batch {'x'.join(map(str, batch_shape))} on this "
        f"CPU: fp32 {1e3 * fp32 / info.world_size:.1f} ms, bf16 {1e3 * bf16 / info.world_size:.1f} ms per step -> "
        f"{'bf16' if choice == 'bf16' else 'off (fp32)'}"
    )
    return choice


def resolve_amp(requested: str, cuda: bool) -> str | None:
    """The AMP mode, or None when ``auto`` on a CPU must be measured (``measure_cpu_amp``)."""
    if requested == "fp16" and not cuda:
        raise UsageError("--amp fp16 needs a CUDA GPU (on CPU use --amp bf16 or off)")
    if requested != "auto":
        return requested
    if cuda:
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return None


def make_runtime(amp: str, channels_last: bool | None, device: torch.device) -> Runtime:
    cuda = device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    return Runtime(amp, default_channels_last(amp, cuda, channels_last), scaler)
