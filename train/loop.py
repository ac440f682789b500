"""The training loop: data -> forward -> loss -> backward -> step -> log -> checkpoint, and the set-up around it.

Helpers carry the detail (``distributed``, ``augment``, ``state``, ``runlog``, ``evaluation``); ``Trainer.fit``
is the loop, readable in one screen.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import time
from collections import deque
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

import resnet
from resnet import UsageError, UserError
from resnet.atomic import atomic_write
from resnet.checkpoint import unwrap

from . import distributed as D
from .augment import BatchAugment, step_generator
from .data import DataBundle, collate_batch, load_data
from .evaluation import CropDataset, evaluate_crops, protocol_name
from .recipes import RECIPES, Recipe, cifar_recipe_for_depth
from .runlog import RunLog
from .runtime import configure_torch, make_runtime, measure_cpu_amp, resolve_amp
from .schedule import LRSchedule
from .state import load_state, recorded_args, restore, save_state


class NonFiniteLoss(UserError):
    """The loss became NaN/inf: the run stops, keeping the last good checkpoint."""


def resolve_recipe(args: argparse.Namespace) -> Recipe:
    """The dataset's recipe with the command line's overrides; the lr scales linearly with the global batch."""
    base = RECIPES[args.dataset]
    depth = args.depth or base.default_depth
    recipe = cifar_recipe_for_depth(base, depth) if args.family == "cifar" else base
    recipe = recipe.override(
        batch_size=args.batch_size,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        max_iters=args.max_iters,
        milestones=args.milestones,
        plateau=args.plateau,
        warmup_lr=args.warmup_lr,
        val_size=args.val_size,
        flip=args.flip,
        eval_every=args.eval_every,
        label_smoothing=args.label_smoothing,
    )
    lr = args.lr if args.lr is not None else recipe.lr * recipe.batch_size / recipe.lr_ref_batch
    return recipe.override(lr=lr)


def model_name(args: argparse.Namespace, recipe: Recipe) -> str:
    depth = args.depth or (
        recipe.default_depth if args.family == recipe.family else (18 if args.family == "imagenet" else 20)
    )
    name = f"{'cifar_' if args.family == 'cifar' else ''}{'plain' if args.plain else 'resnet'}{depth}"
    resnet.parse_model_name(name)  # UsageError (exit 2) for a depth the family does not have
    return name


class StopSignals:
    """SIGTERM/SIGINT set a flag; the loop saves last.pt after the current iteration and exits."""

    def __init__(self) -> None:
        self.signum = 0
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        for s in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread (e.g. called from a test thread): no handlers
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)


class Trainer:
    """One training run: model, optimiser, schedule, data and run folder."""

    def __init__(self, args: argparse.Namespace, info: D.DistInfo) -> None:
        self.args, self.info = args, info
        self.recipe = resolve_recipe(args)
        self.arch = model_name(args, self.recipe)
        self.out = Path(args.out or f"runs/{args.dataset}-{self.arch}")
        if info.world_size > 1 and self.recipe.batch_size % info.world_size:
            raise UsageError(f"--batch-size {self.recipe.batch_size} is not divisible by {info.world_size} ranks")
        self.per_rank_batch = self.recipe.batch_size // info.world_size
        self.data: DataBundle = load_data(
            args.dataset, args.data, self.recipe.val_size, args.input_size, args.train_limit
        )
        if len(self.data.train) < self.recipe.batch_size:
            raise UsageError(
                f"the training split has {len(self.data.train)} images, fewer than one batch ({self.recipe.batch_size})"
            )
        self.log = RunLog(self.out, info.is_main, self.recipe.max_iters, args.progress, not args.no_tensorboard)
        configure_torch(args.threads, args.deterministic, info.device.type == "cuda")
        self.resume_path = Path(args.resume) if args.resume else self.out / "last.pt"
        self.resume_state = self.read_resume_state()
        self.card = resnet.make_card(
            self.arch,
            name=f"{self.data.name}-{self.arch}",
            labels=self.data.labels,
            variant=args.variant,
            shortcut=args.shortcut,
            input_size=self.data.input_size,
            resize_size=self.data.resize_size,
            mean=self.data.mean,
            std=self.data.std,
            provenance={
                "args": vars(args),
                "dataset": self.data.description,
                "recipe": self.recipe.notes,
                "world_size": info.world_size,
                "device": str(info.device.type),
            },
        )
        D.seed_everything(args.seed)  # the same initial weights on every rank
        self.model = resnet.create_model(
            self.arch,
            num_classes=len(self.data.labels),
            variant=args.variant,
            shortcut=args.shortcut,
            zero_init_residual=args.zero_init_residual,
        ).to(info.device)
        self.rt = make_runtime(self.choose_amp(), args.channels_last, info.device)
        if self.rt.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.log_device()
        self.optimizer = torch.optim.SGD(
            self.model.parameters(),
            lr=self.recipe.lr,
            momentum=self.recipe.momentum,
            weight_decay=self.recipe.weight_decay,
        )
        r = self.recipe
        self.schedule = LRSchedule(
            r.lr, r.milestones, r.plateau, r.plateau_patience, r.warmup_lr, r.warmup_until_err, r.warmup_max_iters
        )
        self.step, self.best_val_err = 0, math.inf
        self.augment = BatchAugment(self.data.mean, self.data.std, pad=4, flip=r.flip)
        self.train_sampler = D.ResumableSampler(self.data.train, info, shuffle=True, seed=args.seed)
        self.iters_per_epoch = len(self.train_sampler) // self.per_rank_batch
        self.eval_every = r.eval_every or self.iters_per_epoch

    def read_resume_state(self) -> dict[str, Any] | None:
        """The training state to resume from (read before anything is trained or written), or None."""
        path = self.resume_path
        if self.args.no_resume or not path.exists():
            if self.args.resume:
                raise UserError(f"--resume {path}: no such file")
            return None
        return load_state(path)

    def choose_amp(self) -> str:
        """The AMP mode: the user's, the GPU's best, or on a CPU the faster of fp32 and bf16 as timed here (once
        per run: a resumed run keeps the choice recorded in its state, so its steps are computed as before)."""
        amp = resolve_amp(self.args.amp, self.info.device.type == "cuda")
        if amp is not None:
            return amp
        recorded = recorded_args(self.resume_state).get("amp_resolved")
        if recorded in ("off", "bf16"):
            self.log.info(f"amp auto: {recorded}, as timed when this run started")
            return recorded
        size = self.data.input_size
        return measure_cpu_amp(
            self.model,
            (self.per_rank_batch, 3, size, size),
            len(self.data.labels),
            self.args.channels_last,
            self.info,
            self.log.info,
        )

    def log_device(self) -> None:
        if self.info.device.type != "cuda":
            self.log.info(
                "device: cpu (no CUDA GPU visible; fp16 AMP + GradScaler, cudnn.benchmark and SyncBN skipped)"
            )
        else:
            self.log.info(f"device: {torch.cuda.get_device_name(self.info.device)} x {self.info.world_size} rank(s)")
        self.log.info(
            f"amp: {self.rt.amp}; channels_last: {self.rt.channels_last}; threads: {torch.get_num_threads()}; "
            f"deterministic: {self.args.deterministic}"
        )

    def run_args(self) -> dict[str, Any]:
        """The command line as recorded in args.json and the training state, with what ``auto`` resolved to."""
        return {**vars(self.args), "amp_resolved": self.rt.amp}

    # ---------------------------------------------------------------- set-up helpers
    def resume_if_any(self) -> None:
        st, path = self.resume_state, self.resume_path
        if st is None:
            return
        card = st["model_card"]
        if (card.arch, card.family, card.depth, card.num_classes) != (
            self.card.arch,
            self.card.family,
            self.card.depth,
            self.card.num_classes,
        ):
            raise UsageError(
                f"{path} is a run of {card.name}, not {self.card.name}; choose another --out or pass --no-resume"
            )
        restore(path, st, model=self.model, optimizer=self.optimizer, schedule=self.schedule, scaler=self.rt.scaler)
        self.step, self.best_val_err = int(st["step"]), float(st["best_val_err"])
        self.log.info(f"resumed from {path} at iteration {self.step} (epoch {st['epoch']})")

    def wrap(self) -> torch.nn.Module:
        """DDP (and SyncBN) when distributed, then torch.compile when asked."""
        model = self.model
        if self.args.sync_bn:
            if self.info.distributed and self.info.device.type == "cuda":
                model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            else:
                self.log.info("--sync-bn skipped: SyncBatchNorm needs several CUDA ranks (PyTorch has no CPU kernel)")
        if self.info.distributed:
            ids = [self.info.device.index] if self.info.device.type == "cuda" else None
            model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
        if self.args.compile:
            model = torch.compile(model)
        return model

    def loader(self) -> DataLoader:
        workers = self.args.workers
        if workers is None:
            workers = 0 if self.data.kind == "array" else min(8, os.cpu_count() or 1)
        cuda = self.info.device.type == "cuda"
        return DataLoader(
            self.data.train,
            batch_size=self.per_rank_batch,
            sampler=self.train_sampler,
            drop_last=True,
            num_workers=workers,
            pin_memory=cuda,
            persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None,
            collate_fn=collate_batch,
            worker_init_fn=D.worker_init_fn if workers > 0 else None,
            generator=torch.Generator().manual_seed(self.args.seed + self.info.rank),
        )

    def to_device(self, x: torch.Tensor, y: torch.Tensor, step: int, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.to(self.info.device, non_blocking=True)
        y = y.to(self.info.device, non_blocking=True)
        if self.data.kind == "array":  # uint8 -> augmented, normalised float, on the device
            x = (
                self.augment(x, step_generator(self.args.seed, self.info.rank, step))
                if train
                else self.augment.normalise(x)
            )
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
        r, info, log = self.recipe, self.info, self.log
        log.write_args({**self.run_args(), "recipe": r.to_dict(), "model": self.arch, "world_size": info.world_size})
        log.info(
            f"{self.arch} on {self.data.description}; global batch {r.batch_size}, lr {r.lr:g}, "
            f"{r.max_iters} iterations ({self.iters_per_epoch}/epoch), milestones {list(r.milestones)}"
            f"{', plateau' if r.plateau else ''}{f', warm-up at {r.warmup_lr:g}' if r.warmup_lr else ''}; "
            f"run folder {self.out}"
        )
        log.start_at(self.step)
        window: deque[float] = deque(maxlen=20)
        acc = [0.0] * 5  # loss sum, wrong, images, data time, compute time over the log interval
        while self.step < r.max_iters:
            epoch, pos = divmod(self.step, self.iters_per_epoch)
            self.train_sampler.set_position(epoch, pos * self.per_rank_batch)
            model.train()
            t0 = time.perf_counter()
            for x, y in loader:
                t1 = time.perf_counter()
                x, y = self.to_device(x, y, self.step, train=True)
                lr = self.schedule.lr_at(self.step)
                for g in self.optimizer.param_groups:
                    g["lr"] = lr
                with self.rt.autocast(info.device):
                    logits = model(x)
                    loss = F.cross_entropy(logits, y, label_smoothing=r.label_smoothing)
                wrong = (logits.argmax(1) != y).sum()
                loss_sum, n_wrong, n, stopping = D.all_reduce_sum(  # every rank agrees to stop at the same step
                    [loss.detach().float().item() * len(y), float(wrong), float(len(y)), float(stop.signum > 0)], info
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
                t2 = time.perf_counter()
                acc = [a + b for a, b in zip(acc, (loss_sum, n_wrong, n, t1 - t0, t2 - t1))]
                window.append(100.0 * n_wrong / n)
                if self.schedule.observe_train_err(self.step, sum(window) / len(window)):
                    log.info(f"warm-up over at iteration {self.step}: lr back to {self.schedule.lr_at(self.step):g}")
                if self.step % self.args.log_every == 0 or self.step == r.max_iters:
                    self.log_train(acc, lr, epoch)
                    acc = [0.0] * 5
                if self.step % self.eval_every == 0 or self.step == r.max_iters:
                    self.validate(model)
                if (
                    self.args.save_every and self.step % self.args.save_every == 0
                ) or self.step % self.iters_per_epoch == 0:
                    self.save(model, "periodic")
                if stopping or self.step == self.args.stop_at_iter:
                    self.save(model, "stop")
                    signum = (stop.signum or signal.SIGTERM) if stopping else 0  # a rank that saw none: its peers' TERM
                    why = f"signal {signal.Signals(int(signum)).name}" if signum else f"--stop-at-iter {self.step}"
                    log.info(
                        f"stopped by {why} at iteration {self.step}; {self.out / 'last.pt'} saved; "
                        "run the same command again to resume"
                    )
                    return 128 + int(signum) if signum else 0
                if self.step >= r.max_iters:
                    break
                t0 = time.perf_counter()
        self.save(model, "final")
        return self.finish(model)

    def log_train(self, acc: list[float], lr: float, epoch: int) -> None:
        loss_sum, wrong, n, t_data, t_comp = acc
        iters = max(1, self.args.log_every if self.step % self.args.log_every == 0 else self.step % self.args.log_every)
        vals = {
            "epoch": epoch,
            "loss": loss_sum / n,
            "err": 100.0 * wrong / n,
            "lr": lr,
            "data_time": t_data / iters,
            "compute_time": t_comp / iters,
            "img_per_s": n / max(t_data + t_comp, 1e-9),
        }
        self.log.record("train", self.step, **vals)
        line = (
            f"iter {self.step}/{self.recipe.max_iters} epoch {epoch} loss {vals['loss']:.4f} "
            f"err {vals['err']:.2f}% lr {lr:g} data {vals['data_time'] * 1e3:.1f}ms "
            f"compute {vals['compute_time'] * 1e3:.1f}ms {vals['img_per_s']:.0f} img/s"
        )
        if self.log.bar is not None:
            self.log.progress(
                self.step, f"loss {vals['loss']:.3f} err {vals['err']:.1f}% data {vals['data_time'] * 1e3:.0f}ms"
            )
        else:
            self.log.info(line)

    @torch.no_grad()
    def validate(self, model: torch.nn.Module) -> None:
        """Centre-crop top-1/top-5 error on the validation split, all-reduced; best.pt when it improves."""
        if len(self.data.val) == 0:
            return
        net = unwrap(model)  # no DDP collectives per forward: shards may differ by one batch
        D.broadcast_buffers(net, self.info)  # every rank evaluates rank 0's BN statistics
        net.eval()
        shard = Subset(self.data.val, D.shard_indices(len(self.data.val), self.info))
        workers = (
            0
            if self.data.kind == "array"
            else (self.args.workers if self.args.workers is not None else min(8, os.cpu_count() or 1))
        )
        loader = DataLoader(
            shard, batch_size=max(self.per_rank_batch, 100), num_workers=workers, collate_fn=collate_batch
        )
        sums = [0.0, 0.0, 0.0, 0.0]  # loss sum, top-1 wrong, top-5 wrong, images
        for x, y in loader:
            x, y = self.to_device(x, y, self.step, train=False)
            with self.rt.autocast(self.info.device):
                logits = net(x).float()
            top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
            sums[0] += F.cross_entropy(logits, y, reduction="sum").item()
            sums[1] += float((top5[:, 0] != y).sum())
            sums[2] += float((top5 != y[:, None]).all(dim=1).sum())
            sums[3] += len(y)
        loss, w1, w5, n = D.all_reduce_sum(sums, self.info)
        top1, top5 = 100.0 * w1 / n, 100.0 * w5 / n
        self.log.record("val", self.step, loss=loss / n, top1_err=top1, top5_err=top5, images=int(n))
        self.log.info(
            f"val iter {self.step}: loss {loss / n:.4f} top-1 err {top1:.2f}% top-5 err {top5:.2f}% ({int(n)} images)"
        )
        if self.schedule.observe_val_err(top1):
            self.log.info(f"validation error plateaued: lr divided by 10 -> {self.schedule.lr_at(self.step):g}")
        if top1 < self.best_val_err:
            self.best_val_err = top1
            if self.info.is_main:
                card = self.card.with_metrics(
                    top1_err=round(top1, 3),
                    top5_err=round(top5, 3),
                    protocol=f"center crop, validation split ({int(n)} images), iteration {self.step}",
                )
                resnet.save_checkpoint(self.out / "best.pt", model, card)
        model.train()

    def finish(self, model: torch.nn.Module) -> int:
        """Final test evaluation with the shared preprocessing, model.pt with its card, summary.json."""
        base = unwrap(model)
        D.broadcast_buffers(base, self.info)
        digests = D.gather_strings(D.weights_digest(base), self.info)
        metrics: dict[str, Any] = {}
        if self.data.test_source is not None:
            source = self.data.test_source
            if not isinstance(source, tuple):  # an ImageFolder: (path, class index) pairs
                source = source.samples
            crops = self.args.eval_crops
            res = evaluate_crops(
                base,
                CropDataset(source, self.card, crops),
                self.info,
                batch_images=max(1, 400 // (10 if crops == "ten" else 1)),
                channels_last=self.rt.channels_last,
            )  # fp32, as export/serve run it
            what = "validation folder" if self.data.kind == "folder" else f"{self.data.name} test split"
            metrics = {
                "top1_err": res["top1_err"],
                "top5_err": res["top5_err"],
                "protocol": protocol_name(crops, res["images"], what),
            }
            self.log.info(
                f"test ({metrics['protocol']}): top-1 err {res['top1_err']:.2f}% "
                f"(accuracy {100 - res['top1_err']:.2f}%), top-5 err {res['top5_err']:.2f}%"
            )
            self.log.record("test", self.step, **{k: v for k, v in res.items()})
        if self.info.is_main:
            self.card = self.card.with_metrics(**metrics).with_provenance(iterations=self.step)
            path = resnet.save_checkpoint(self.out / "model.pt", base, self.card)
            summary = {
                "model": str(path),
                "card_name": self.card.name,
                "iterations": self.step,
                "metrics": metrics,
                "best_val_top1_err": self.best_val_err,
                "world_size": self.info.world_size,
                "replica_weight_digests": digests,
                "replicas_identical": len(set(digests)) == 1,
                "train_seconds": round(time.time() - self.log.t0, 1),
            }
            atomic_write(self.out / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
            self.log.info(f"wrote {path} (card {self.card.name}, metrics {metrics.get('protocol', 'none')})")
        D.barrier(self.info)
        if len(set(digests)) != 1:
            raise UserError(f"ranks ended with different weights: {digests}")
        return 0


def train_main(args: argparse.Namespace) -> int:
    """Run a training command end to end (called by ``train.imagenet`` / ``train.cifar``)."""
    info = D.init_distributed(args.device)
    trainer = None
    saved_globals = (torch.are_deterministic_algorithms_enabled(), torch.get_num_threads())
    try:
        trainer = Trainer(args, info)
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
