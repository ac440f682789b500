"""torchrun / DistributedDataParallel set-up: one process per device, env:// rendezvous, gloo on CPU, nccl on GPU."""

from __future__ import annotations

import hashlib
import logging
import os
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

from resnet import MissingComponentError, UsageError


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: rank, world size, local rank, and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(choice: str, local_rank: int = 0) -> torch.device:
    """``auto``: CUDA when present, else CPU. ``cuda`` without a GPU is a missing component (exit 4)."""
    if choice not in ("auto", "cpu", "cuda"):
        raise UsageError(f"--device must be auto, cpu or cuda, not {choice!r}")
    if choice == "cuda" and not torch.cuda.is_available():
        raise MissingComponentError("--device cuda: no CUDA GPU is visible to PyTorch")
    if choice == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    torch.cuda.set_device(local_rank % torch.cuda.device_count())
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def init_distributed(device_choice: str = "auto") -> DistInfo:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1); otherwise a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_choice, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend=backend, init_method="env://", **kwargs)
    return DistInfo(rank, world_size, local_rank, device)


def cleanup() -> None:
    """Leave the process group (safe to call when none was joined)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def exit_code(code: int) -> int:
    """Leave a torchrun worker with ``code`` and without Python's interpreter teardown; elsewhere return ``code``.

    PyTorch keeps a process group that DDP has wrapped alive past ``destroy_process_group`` (the gloo threads
    outlive it), and a gloo thread that releases the last collective's tensors while the interpreter is being torn
    down aborts the process (SIGABRT, "terminate called without an active exception") after a run that succeeded.
    A worker that has left the process group and written everything has nothing left for teardown to do, so it
    flushes its output and logs and ends here (``os._exit``). Outside torchrun (``WORLD_SIZE`` unset or 1) the
    caller exits as usual.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return code
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken pipe: nothing more can reach it
            pass
    os._exit(code)


def barrier(info: DistInfo) -> None:
    """Wait for every rank: ranks leave a finished run together, not while rank 0 is still writing."""
    if info.distributed:
        dist.barrier()


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed Python, NumPy and torch per rank (each rank draws different dropout-free noise, e.g. its init is synced)."""
    s = seed + 1000 * rank
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)


def worker_init_fn(worker_id: int) -> None:
    """Per-worker seeding: torch already gives each worker ``base_seed + id``; derive NumPy and Python from it."""
    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)


def all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    """Sum a few numbers over all ranks (float64 on the training device)."""
    if not info.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def broadcast_buffers(model: torch.nn.Module, info: DistInfo) -> None:
    """Copy BN running statistics from rank 0 so every rank evaluates (and rank 0 saves) the same model."""
    if info.distributed:
        for b in model.buffers():
            dist.broadcast(b, src=0)


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 of all parameters (names, shapes and bytes): equal on every rank when DDP kept them in sync."""
    h = hashlib.sha256()
    for name, p in sorted(getattr(model, "module", model).named_parameters()):
        h.update(name.encode())
        h.update(p.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def gather_strings(value: str, info: DistInfo) -> list[str]:
    """Every rank's ``value``, in rank order."""
    if not info.distributed:
        return [value]
    out: list[str] = [""] * info.world_size
    dist.all_gather_object(out, value)
    return out


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` that can skip the samples of an epoch already trained before a resume."""

    def __init__(self, dataset, info: DistInfo, shuffle: bool, seed: int) -> None:
        super().__init__(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=shuffle, seed=seed)
        self.start = 0

    def set_position(self, epoch: int, start: int) -> None:
        """Epoch to draw (``set_epoch``) and how many of this rank's samples to skip."""
        self.set_epoch(epoch)
        self.start = start

    def __iter__(self):
        return iter(list(super().__iter__())[self.start :])

    def __len__(self) -> int:
        return self.num_samples - self.start


def shard_indices(n: int, info: DistInfo) -> list[int]:
    """Evaluation shard of this rank: ``rank::world`` — no padding, so no sample is counted twice."""
    return list(range(info.rank, n, info.world_size))


def wrap_model(
    model: torch.nn.Module, info: DistInfo, sync_bn: bool, compile: bool, say: Callable[[str], None]
) -> torch.nn.Module:
    """SyncBatchNorm (several CUDA ranks only), DDP when distributed, then torch.compile when asked."""
    if sync_bn:
        if info.distributed and info.device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            say("--sync-bn skipped: SyncBatchNorm needs several CUDA ranks (PyTorch has no CPU kernel)")
    if info.distributed:
        ids = [info.device.index] if info.device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if compile:
        model = torch.compile(model)
    return model
