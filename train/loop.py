"""The training loop: data -> forward -> loss -> backward -> step -> log -> checkpoint, and the set-up around it.

Helpers carry the detail (``config``, ``runtime``, ``distributed``, ``augment``, ``state``, ``runlog``,
``validation``, ``report``); ``Trainer.fit`` is the loop, readable in one screen. From code::

    train_main(TrainConfig(dataset="digits", depth=8, max_iters=100, out="runs/r8"))
"""

from __future__ import annotations

import math
import os
import signal
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import resnet
from resnet import UsageError, UserError
from resnet.checkpoint import unwrap

from . import distributed as D
from .augment import BatchAugment, step_generator
from .config import TrainConfig, model_name, resolve_recipe
from .data import DataBundle, load_data, train_loader
from .report import final_test, write_summary
from .runlog import RunLog
from .runtime import choose_amp, configure_torch, device_lines, make_runtime
from .schedule import LRSchedule
from .signals import StopSignals
from .state import check_same_network, read_resume_state, recorded_args, restore, save_state
from .validation import validation_errors


class NonFiniteLoss(UserError):
    """The loss became NaN/inf: the run stops, keeping the last good checkpoint."""


@dataclass
class Tally:
    """Sums over the current log interval (all ranks)."""

    loss_sum: float = 0.0
    wrong: float = 0.0
    images: float = 0.0
    data_time: float = 0.0
    compute_time: float = 0.0


class Trainer:
    """One training run: model, optimiser, schedule, data and run folder, all from a ``TrainConfig``."""

    def __init__(self, config: TrainConfig, info: D.DistInfo) -> None:
        self.config, self.info = config, info
        self.recipe = r = resolve_recipe(config)
        self.arch = model_name(config, r)
        self.out = Path(config.out or f"runs/{config.dataset}-{self.arch}")
        if info.world_size > 1 and r.batch_size % info.world_size:
            raise UsageError(f"--batch-size {r.batch_size} is not divisible by {info.world_size} ranks")
        self.per_rank_batch = r.batch_size // info.world_size
        self.data: DataBundle = load_data(
            config.dataset, config.data, r.val_size, config.input_size, config.train_limit
        )
        if len(self.data.train) < r.batch_size:
            raise UsageError(
                f"the training split has {len(self.data.train)} images, fewer than one batch ({r.batch_size})"
            )
        self.log = RunLog(self.out, info.is_main, r.max_iters, config.progress, not config.no_tensorboard)
        configure_torch(config.threads, config.deterministic, info.device.type == "cuda")
        self.resume_path = Path(config.resume) if config.resume else self.out / "last.pt"
        self.resume_state = read_resume_state(self.resume_path, config.resume is not None, config.no_resume)
        self.card = resnet.make_card(
            self.arch,
            name=f"{self.data.name}-{self.arch}",
            labels=self.data.labels,
            variant=config.variant,
            shortcut=config.shortcut,
            input_size=self.data.input_size,
            resize_size=self.data.resize_size,
            mean=self.data.mean,
            std=self.data.std,
            provenance={
                "args": config.to_dict(),
                "dataset": self.data.description,
                "recipe": r.notes,
                "world_size": info.world_size,
                "device": str(info.device.type),
            },
        )
        D.seed_everything(config.seed)  # the same initial weights on every rank
        self.model = resnet.create_model(
            self.arch,
            num_classes=len(self.data.labels),
            variant=config.variant,
            shortcut=config.shortcut,
            zero_init_residual=config.zero_init_residual,
        ).to(info.device)
        self.rt = make_runtime(self.choose_amp(), config.channels_last, info.device)
        if self.rt.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        for line in device_lines(self.rt, info, config.deterministic):
            self.log.info(line)
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=r.lr, momentum=r.momentum, weight_decay=r.weight_decay
        )
        self.schedule = LRSchedule(
            r.lr, r.milestones, r.plateau, r.plateau_patience, r.warmup_lr, r.warmup_until_err, r.warmup_max_iters
        )
        self.step, self.best_val_err = 0, math.inf
        self.augment = BatchAugment(self.data.mean, self.data.std, pad=4, flip=r.flip)
        self.train_sampler = D.ResumableSampler(self.data.train, info, shuffle=True, seed=config.seed)
        self.iters_per_epoch = len(self.train_sampler) // self.per_rank_batch
        self.eval_every = r.eval_every or self.iters_per_epoch

    def workers(self) -> int:
        """DataLoader workers: none for in-memory data, else ``--workers`` or min(8, CPUs)."""
        if self.config.workers is not None:
            return self.config.workers
        return 0 if self.data.kind == "array" else min(8, os.cpu_count() or 1)

    def choose_amp(self) -> str:
        """The user's AMP mode, the GPU's best, or on a CPU the faster of fp32 and bf16 timed here (kept on resume)."""
        size = self.data.input_size
        return choose_amp(
            self.config.amp,
            recorded_args(self.resume_state).get("amp_resolved"),
            self.model,
            (self.per_rank_batch, 3, size, size),
            len(self.data.labels),
            self.config.channels_last,
            self.info,
            self.log.info,
        )

    def run_args(self) -> dict[str, Any]:
        """The command line as recorded in args.json and the training state, with what ``auto`` resolved to."""
        return {**self.config.to_dict(), "amp_resolved": self.rt.amp}

    def resume_if_any(self) -> None:
        st, path = self.resume_state, self.resume_path
        if st is None:
            return
        check_same_network(path, st, self.card)
        restore(path, st, model=self.model, optimizer=self.optimizer, schedule=self.schedule, scaler=self.rt.scaler)
        self.step, self.best_val_err = int(st["step"]), float(st["best_val_err"])
        self.log.info(f"resumed from {path} at iteration {self.step} (epoch {st['epoch']})")

    def wrap(self) -> torch.nn.Module:
        """DDP (and SyncBN) when distributed, then torch.compile when asked."""
        return D.wrap_model(self.model, self.info, self.config.sync_bn, self.config.compile, self.log.info)

    def loader(self) -> DataLoader:
        return train_loader(
            self.data.train, self.train_sampler, self.per_rank_batch, self.workers(), self.info, self.config.seed
        )

    def to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A training batch on the device; in-memory data is augmented there, seeded by the iteration."""
        x = x.to(self.info.device, non_blocking=True)
        y = y.to(self.info.device, non_blocking=True)
        if self.data.kind == "array":  # uint8 -> augmented, normalised float, on the device
            x = self.augment(x, step_generator(self.config.seed, self.info.rank, self.step))
        if self.rt.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def save(self, model: torch.nn.Module, reason: str) -> None:
        """last.pt (rank 0), never with non-finite weights: the previous good file is then kept."""
        bad = [n for n, p in self.model.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise NonFiniteLoss(
                f"weights became non-finite ({bad[0]}) at iteration {self.step}; stopped. The last "
                f"good checkpoint is {self.out / 'last.pt'}: lower --lr, then resume"
            )
        if self.info.is_main:
            epoch, pos = divmod(self.step, self.iters_per_epoch)
            save_state(
                self.out / "last.pt",
                model=model,
                optimizer=self.optimizer,
                schedule=self.schedule,
                scaler=self.rt.scaler,
                step=self.step,
                epoch=epoch,
                sampler_start=pos * self.per_rank_batch,
                best_val_err=self.best_val_err,
                card=self.card,
                args=self.run_args(),
            )

    # ---------------------------------------------------------------- the loop
    def fit(self, stop: StopSignals) -> int:
        model = self.wrap()
        loader = self.loader()
        r, log = self.recipe, self.log
        log.write_args(
            {**self.run_args(), "recipe": r.to_dict(), "model": self.arch, "world_size": self.info.world_size}
        )
        log.info(
            f"{self.arch} on {self.data.description}; global batch {r.batch_size}, lr {r.lr:g}, "
            f"{r.max_iters} iterations ({self.iters_per_epoch}/epoch), milestones {list(r.milestones)}"
            f"{', plateau' if r.plateau else ''}{f', warm-up at {r.warmup_lr:g}' if r.warmup_lr else ''}; "
            f"run folder {self.out}"
        )
        log.start_at(self.step)
        window: deque[float] = deque(maxlen=20)  # training error of the last iterations: the warm-up's signal
        tally = Tally()
        while self.step < r.max_iters:
            epoch, pos = divmod(self.step, self.iters_per_epoch)
            self.train_sampler.set_position(epoch, pos * self.per_rank_batch)
            model.train()
            t0 = time.perf_counter()
            for x, y in loader:
                t1 = time.perf_counter()
                lr = self.schedule.lr_at(self.step)
                loss_sum, wrong, n, stopping = self.train_step(model, x, y, lr, stop)
                t2 = time.perf_counter()
                tally = Tally(
                    tally.loss_sum + loss_sum,
                    tally.wrong + wrong,
                    tally.images + n,
                    tally.data_time + t1 - t0,
                    tally.compute_time + t2 - t1,
                )
                window.append(100.0 * wrong / n)
                if self.schedule.observe_train_err(self.step, sum(window) / len(window)):
                    log.info(f"warm-up over at iteration {self.step}: lr back to {self.schedule.lr_at(self.step):g}")
                if self.step % self.config.log_every == 0 or self.step == r.max_iters:
                    self.log_train(tally, lr, epoch)
                    tally = Tally()
                code = self.after_step(model, stopping, stop)
                if code is not None:
                    return code
                if self.step >= r.max_iters:
                    break
                t0 = time.perf_counter()
        self.save(model, "final")
        return self.finish(model)

    def train_step(
        self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float, stop: StopSignals
    ) -> tuple[float, float, float, bool]:
        """One SGD step; returns (loss sum, wrong, images, stop requested), summed over all ranks."""
        x, y = self.to_device(x, y)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        with self.rt.autocast(self.info.device):
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=self.recipe.label_smoothing)
        wrong = (logits.argmax(1) != y).sum()
        loss_sum, n_wrong, n, stopping = D.all_reduce_sum(  # every rank agrees to stop at the same step
            [loss.detach().float().item() * len(y), float(wrong), float(len(y)), float(stop.signum > 0)], self.info
        )
        if not math.isfinite(loss_sum):
            raise NonFiniteLoss(
                f"loss is {loss_sum / n} at iteration {self.step + 1} (lr {lr:g}); stopped. The last good "
                f"checkpoint is {self.out / 'last.pt'}: lower --lr or check the data, then resume"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.rt.scaler.scale(loss).backward()
        self.rt.scaler.step(self.optimizer)
        self.rt.scaler.update()
        self.step += 1
        return loss_sum, n_wrong, n, stopping > 0

    def after_step(self, model: torch.nn.Module, stopping: bool, stop: StopSignals) -> int | None:
        """Validate and save when due; the exit code when the run stops here (signal or ``--stop-at-iter``)."""
        if self.step % self.eval_every == 0 or self.step == self.recipe.max_iters:
            self.validate(model)
        if (
            self.config.save_every and self.step % self.config.save_every == 0
        ) or self.step % self.iters_per_epoch == 0:
            self.save(model, "periodic")
        if not (stopping or self.step == self.config.stop_at_iter):
            return None
        self.save(model, "stop")
        signum = (stop.signum or signal.SIGTERM) if stopping else 0  # a rank that saw none: its peers' TERM
        why = f"signal {signal.Signals(int(signum)).name}" if signum else f"--stop-at-iter {self.step}"
        self.log.info(
            f"stopped by {why} at iteration {self.step}; {self.out / 'last.pt'} saved; run the same command again "
            "to resume"
        )
        return 128 + int(signum) if signum else 0

    def log_train(self, tally: Tally, lr: float, epoch: int) -> None:
        every = self.config.log_every
        iters = max(1, every if self.step % every == 0 else self.step % every)
        vals = {
            "epoch": epoch,
            "loss": tally.loss_sum / tally.images,
            "err": 100.0 * tally.wrong / tally.images,
            "lr": lr,
            "data_time": tally.data_time / iters,
            "compute_time": tally.compute_time / iters,
            "img_per_s": tally.images / max(tally.data_time + tally.compute_time, 1e-9),
        }
        self.log.record("train", self.step, **vals)
        if self.log.bar is not None:
            self.log.progress(
                self.step, f"loss {vals['loss']:.3f} err {vals['err']:.1f}% data {vals['data_time'] * 1e3:.0f}ms"
            )
            return
        self.log.info(
            f"iter {self.step}/{self.recipe.max_iters} epoch {epoch} loss {vals['loss']:.4f} "
            f"err {vals['err']:.2f}% lr {lr:g} data {vals['data_time'] * 1e3:.1f}ms "
            f"compute {vals['compute_time'] * 1e3:.1f}ms {vals['img_per_s']:.0f} img/s"
        )

    def validate(self, model: torch.nn.Module) -> None:
        """Centre-crop top-1/top-5 error on the validation split (shared preprocessing); best.pt when it improves."""
        if self.data.val_source is None or len(self.data.val) == 0:
            return
        net = unwrap(model)  # no DDP collectives per forward: shards may differ by one batch
        D.broadcast_buffers(net, self.info)  # every rank evaluates rank 0's BN statistics
        net.eval()
        res = validation_errors(
            net,
            self.data.val_source,
            self.card,
            self.info,
            batch_images=max(self.per_rank_batch, 100),
            workers=self.workers(),
            autocast=lambda: self.rt.autocast(self.info.device),
            channels_last=self.rt.channels_last,
        )
        top1, top5, n = res["top1_err"], res["top5_err"], res["images"]
        self.log.record("val", self.step, **res)
        self.log.info(
            f"val iter {self.step}: loss {res['loss']:.4f} top-1 err {top1:.2f}% top-5 err {top5:.2f}% ({n} images)"
        )
        if self.schedule.observe_val_err(top1):
            self.log.info(f"validation error plateaued: lr divided by 10 -> {self.schedule.lr_at(self.step):g}")
        if top1 < self.best_val_err:
            self.best_val_err = top1
            if self.info.is_main:
                card = self.card.with_metrics(
                    top1_err=round(top1, 3),
                    top5_err=round(top5, 3),
                    protocol=f"center crop, validation split ({n} images), iteration {self.step}",
                )
                resnet.save_checkpoint(self.out / "best.pt", model, card)
        model.train()

    def finish(self, model: torch.nn.Module) -> int:
        """Final test evaluation with the shared preprocessing, model.pt with its card, summary.json."""
        base = unwrap(model)
        D.broadcast_buffers(base, self.info)
        digests = D.gather_strings(D.weights_digest(base), self.info)
        res = final_test(base, self.data, self.card, self.info, self.config.eval_crops, self.rt.channels_last)
        metrics = {k: res[k] for k in ("top1_err", "top5_err", "protocol") if k in res}
        if res:
            self.log.info(
                f"test ({res['protocol']}): top-1 err {res['top1_err']:.2f}% "
                f"(accuracy {100 - res['top1_err']:.2f}%), top-5 err {res['top5_err']:.2f}%"
            )
            self.log.record("test", self.step, **{k: v for k, v in res.items() if k != "protocol"})
        if self.info.is_main:
            self.card = self.card.with_metrics(**metrics).with_provenance(iterations=self.step)
            path = resnet.save_checkpoint(self.out / "model.pt", base, self.card)
            write_summary(self.out, path, self.card, self.step, self.best_val_err, self.info, digests, self.log.t0)
            self.log.info(f"wrote {path} (card {self.card.name}, metrics {metrics.get('protocol', 'none')})")
        D.barrier(self.info)
        if len(set(digests)) != 1:
            raise UserError(f"ranks ended with different weights: {digests}")
        return 0


def train_main(config: TrainConfig) -> int:
    """Run a training command end to end (``train.imagenet`` / ``train.cifar``, or code with a ``TrainConfig``)."""
    info = D.init_distributed(config.device)
    trainer = None
    saved_globals = (torch.are_deterministic_algorithms_enabled(), torch.get_num_threads())
    try:
        with torch.enable_grad():  # whatever the caller set
            trainer = Trainer(config, info)
            trainer.resume_if_any()
            with StopSignals() as stop:
                if trainer.step >= trainer.recipe.max_iters:
                    trainer.log.info(f"run already at iteration {trainer.step}: finishing only")
                    return trainer.finish(trainer.wrap())
                return trainer.fit(stop)
    finally:
        if trainer is not None:
            trainer.log.close()
        D.cleanup()
        torch.use_deterministic_algorithms(saved_globals[0])  # callers (tests, notebooks) keep their settings
        torch.set_num_threads(saved_globals[1])
