"""Which artifact to serve, and in which precision: chosen by timing on this machine, never by CPU flags.

``--model FILE`` serves that file (``--precision`` must then match what it computes in). ``--model DIR`` (a run or
export folder) considers every artifact there that passed its parity gate (``<artifact>.parity.json`` with
``"passed": true``): the fp32 ``.onnx``, ``.fp16.onnx`` and ``.int8.onnx``, and the checkpoint with bf16 autocast
when torch is installed (the checkpoint is its own reference: it needs no report). ``--precision auto`` loads each
and times it at start-up at the two operating points the server runs (``time_backends``; 20 s in all):

- latency: one batch of the shape one ten-crop request fills, alone (concurrency 1);
- loaded throughput: crops per second in back-to-back batches of the shape the batcher forms under concurrent
  requests (``LOADED_CROPS``), while the server's decode threads are kept busy decoding a photo-sized JPEG, so the
  candidates compete with decoding for the cores as they do when serving.

Rule: serve the candidate whose worse ratio to the best candidate, over the two points, is the smallest (min-max
shortfall: ``max(latency / best latency, best throughput / throughput)``). One JSON line per candidate gives both
measurements and the score. ``--precision fp32|fp16|int8|bf16`` picks that one. torch is imported only for the
checkpoint candidate (through ``serve.engine.backends``).
"""

from __future__ import annotations

import importlib.util
import io
import logging
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from resnet import UsageError, UserError
from resnet.artifacts import CHECKPOINT_SUFFIXES, DEFAULT_MAX_BATCH, artifact_kind, is_tensorrt_graph, report_path
from resnet.names import is_torchvision_spec
from resnet.runtime.crops import TEN_CROPS
from resnet.runtime.device_feed import feeds_gpu
from resnet.runtime.report import ParityReport, ReportError
from resnet.runtime.runner import Runner

from ..settings import Settings
from .backends import load_backend_for
from .shapes import GPU_BATCHES, batch_shapes

log = logging.getLogger("serve.engine.precision")

TIMING_BUDGET_S = 20.0  # all candidates and both operating points together, warm-up runs included
MAX_ROUNDS = 20  # timed runs per candidate and operating point at most
# Crops per batch under concurrent ten-crop requests: the server's mean batch at concurrency 8 on 2 CPUs was 22-23
# for a fast network and 34.3 for ResNet-50 (bench/RESULTS.md; a slower network lets more requests queue while a
# batch runs): four requests' crops, the shape a ResNet-50 server runs. Timed at two (20) this point tied fp32 ONNX
# and torch bf16 while eight clients got 1.2-1.3x more from fp32; at 40 the timing shows that gap too.
LOADED_CROPS = 4 * TEN_CROPS
RULE = "min-max shortfall: smallest max(latency / best latency, best loaded throughput / loaded throughput)"


@dataclass(frozen=True)
class Candidate:
    """One artifact of a folder: what it computes in, and why it is left out (empty when it may be served)."""

    path: Path
    precision: str
    excluded: str = ""


def precision_of(backend: Runner) -> str:
    """What ``backend`` computes in: its runner's declared precision (``resnet.runtime.kinds.ort_precision`` for a
    graph: a reduced-precision graph's own, else the runtime's math)."""
    return backend.precision


def gate_verdict(artifact: Path) -> str:
    """Empty when ``artifact``'s parity report says it passed, else why it may not be served."""
    try:
        return ParityReport.read(report_path(artifact)).verdict()
    except ReportError as e:
        return str(e)


def _onnx_candidate(path: Path, backend: str = "auto") -> Candidate:
    from resnet.onnx_card import read_onnx_card

    try:
        precision = read_onnx_card(path).precision
    except UserError as e:
        return Candidate(path, "?", f"unreadable card ({e})")
    if is_tensorrt_graph(path) and backend != "tensorrt":  # slower than FP32 in ONNX Runtime on the CPU
        return Candidate(path, precision, "the TensorRT-ready graph: serve it with --backend tensorrt or its .plan")
    return Candidate(path, precision, gate_verdict(path))


def find_candidates(folder: Path, backend: str = "auto") -> list[Candidate]:
    """Every ONNX artifact in ``folder`` with its gate verdict, plus the checkpoint of the same stem (bf16)."""
    onnx_files = sorted(
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.name.endswith(".onnx")
    )
    stems = sorted({p.name.split(".")[0] for p in onnx_files}) or ["model"]
    if len(stems) > 1:
        raise UserError(f"{folder} holds artifacts of several models ({', '.join(stems)}): pass one file to --model")
    found = [_onnx_candidate(p, backend) for p in onnx_files]
    for suffix in CHECKPOINT_SUFFIXES:
        checkpoint = folder / f"{stems[0]}{suffix}"
        if checkpoint.is_file():
            no_torch = importlib.util.find_spec("torch") is None
            found.append(Candidate(checkpoint, "bf16", "torch is not installed" if no_torch else ""))
            break
    return found


def describe(found: list[Candidate]) -> str:
    """``model.onnx (fp32), model.int8.onnx (int8: gate failed)`` for error lines."""
    return ", ".join(f"{c.path.name} ({c.precision}{': ' + c.excluded if c.excluded else ''})" for c in found)


def serve_batch(settings: Settings, backend: Runner, crops: int = TEN_CROPS) -> int:
    """The batch shape the server runs for ``crops`` crops (the smallest shape holding them, else its largest)."""
    limit = backend.max_batch
    max_batch = min(settings.max_batch or limit or DEFAULT_MAX_BATCH, limit or DEFAULT_MAX_BATCH)
    shapes = batch_shapes(max_batch, settings.parsed_batch_sizes(), backend.min_batch)
    return next((s for s in shapes if s >= crops), shapes[-1])


def _photo_jpeg() -> bytes:
    """A 640 x 480 JPEG of smooth colour and noise: what one photo costs the decode threads."""
    from PIL import Image

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:480, 0:640]
    base = np.stack([x * 255 / 640, y * 255 / 480, (x + y) * 255 / 1120], axis=-1)
    pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=90)
    return out.getvalue()


class DecodeLoad:
    """``threads`` threads decoding and ten-cropping a photo-sized JPEG in a loop (``resnet.preprocess``, what the
    server's decode pool runs) while the ``with`` block runs: the decode side of a loaded server."""

    def __init__(self, threads: int, card: Any) -> None:
        self.threads, self.card, self.images = threads, card, 0
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []
        self._photo = _photo_jpeg()

    def _loop(self) -> None:
        from resnet.preprocess import preprocess

        while not self._stop.is_set():
            preprocess(self._photo, self.card, crops="ten")
            self.images += 1

    def __enter__(self) -> DecodeLoad:
        self._workers = [threading.Thread(target=self._loop, daemon=True) for _ in range(self.threads)]
        for w in self._workers:
            w.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for w in self._workers:
            w.join()


def _load(candidate: Candidate, settings: Settings) -> Runner:
    """``load_backend_for`` the candidate with the server's settings (threads, batch profile, TensorRT cache)."""
    if artifact_kind(candidate.path) == "checkpoint":
        return load_backend_for(settings, str(candidate.path), "torch", candidate.precision)
    choice = "auto" if settings.backend == "torch" else settings.backend
    return load_backend_for(settings, str(candidate.path), choice)


@dataclass
class Timing:
    """One candidate at the two operating points (seconds per batch, medians of ``runs`` timed batches)."""

    batch: int  # the ten-crop request's shape
    latency_s: float
    loaded_batch: int  # the shape under concurrent requests
    loaded_s: float
    runs: int

    @property
    def loaded_crops_per_s(self) -> float:
        return self.loaded_batch / self.loaded_s


def _round_robin(backends: list[Runner], inputs: list[np.ndarray], share: float) -> list[tuple[float, int]]:
    """(median seconds, timed runs) per backend: one warm-up run each, then timed runs round-robin (load on a
    shared machine hits all alike) while each one's ``share`` of the budget lasts; a candidate whose warm-up alone
    spent its share is timed by that run."""
    spent, warm = [0.0] * len(backends), []
    times: list[list[float]] = [[] for _ in backends]
    for i, b in enumerate(backends):
        t0 = time.perf_counter()
        b.run(inputs[i])
        warm.append(time.perf_counter() - t0)
        spent[i] = warm[-1]
    for _ in range(MAX_ROUNDS):
        active = [i for i in range(len(backends)) if spent[i] < share]
        if not active:
            break
        for i in active:
            t0 = time.perf_counter()
            backends[i].run(inputs[i])
            times[i].append(time.perf_counter() - t0)
            spent[i] += times[i][-1]
    return [(statistics.median(t) if t else w, len(t)) for t, w in zip(times, warm)]


def time_backends(
    backends: list[Runner],
    batches: list[int],
    loaded_batches: list[int],
    decode_threads: int,
    budget_s: float = TIMING_BUDGET_S,
) -> list[Timing]:
    """Each backend at both operating points: ``batches`` alone, then ``loaded_batches`` back to back with
    ``decode_threads`` threads decoding (``DecodeLoad``); ``budget_s`` split equally over backends and points."""
    share = budget_s / max(1, 2 * len(backends))
    rng = np.random.default_rng(0)

    def inputs(sizes: list[int]) -> list[np.ndarray]:
        return [
            rng.standard_normal((n, 3, b.card.input_size, b.card.input_size), dtype=np.float32)
            for b, n in zip(backends, sizes)
        ]

    alone = _round_robin(backends, inputs(batches), share)
    with DecodeLoad(decode_threads, backends[0].card):
        loaded = _round_robin(backends, inputs(loaded_batches), share)
    return [Timing(n, a, m, lo, ra + rl) for n, m, (a, ra), (lo, rl) in zip(batches, loaded_batches, alone, loaded)]


def pick(timings: list[Timing]) -> tuple[int, list[float]]:
    """The index ``RULE`` chooses, and every candidate's score (1.0: best at both points)."""
    best_latency = min(t.latency_s for t in timings)
    best_rate = max(t.loaded_crops_per_s for t in timings)
    scores = [max(t.latency_s / best_latency, best_rate / t.loaded_crops_per_s) for t in timings]
    return min(range(len(timings)), key=lambda i: (scores[i], -timings[i].loaded_crops_per_s)), scores


def choose(settings: Settings, folder: Path) -> Runner:
    """Load the artifact of ``folder`` that ``settings.precision`` asks for (auto: the fastest here)."""
    found = find_candidates(folder, settings.backend)
    usable = [c for c in found if not c.excluded]
    for c in found:
        if c.excluded:
            log.info("precision: %s (%s) is not considered: %s", c.path.name, c.precision, c.excluded)
    if not usable:
        has = describe(found) or "no .onnx and no checkpoint"
        raise UserError(f"{folder}: nothing servable (no artifact passed its parity gate; it has: {has})")
    if settings.precision != "auto":
        picked = [c for c in usable if c.precision == settings.precision]
        if not picked:
            raise UserError(
                f"{folder} has no {settings.precision} artifact that passed its gate; it has: {describe(found)}"
            )
        return _load(picked[0], settings)
    loaded: list[tuple[Candidate, Runner]] = []
    for c in usable:
        try:
            loaded.append((c, _load(c, settings)))
        except UserError as e:
            log.info("precision: %s (%s) is not considered: it does not load here (%s)", c.path.name, c.precision, e)
    if not loaded:
        raise UserError(f"{folder}: no artifact loads here (it has: {describe(found)})")
    return _fastest(settings, loaded)


def loaded_point(settings: Settings, backend: Runner) -> int:
    """The batch a loaded server runs: ``LOADED_CROPS`` on the CPU; on a runner fed on a GPU without
    ``--max-batch``, the largest of ``GPU_BATCHES``, the batch the server measures at start-up and fills at c=64
    (issue 27: timed at 40 crops, auto chose fp32 where fp16 served faster)."""
    if feeds_gpu(backend) and not settings.max_batch:
        return GPU_BATCHES[-1]
    return serve_batch(settings, backend, LOADED_CROPS)


def auto_checkpoint(settings: Settings) -> Runner:
    """``--precision auto`` for one checkpoint: fp32 on the CPU; on a GPU fp32, fp16 and bf16 are each loaded and
    timed at the server's operating points and the fastest is served, the log saying why."""
    first = load_backend_for(settings, precision="fp32")
    if first.provider != "torch:cuda":
        return first
    path = Path(settings.model)
    loaded = [(Candidate(path, "fp32"), first)]
    for precision in ("fp16", "bf16"):
        try:
            loaded.append((Candidate(path, precision), load_backend_for(settings, precision=precision)))
        except UserError as e:
            log.info("precision: %s in %s is not considered: it does not load here (%s)", path.name, precision, e)
    return _fastest(settings, loaded)


def _fastest(settings: Settings, loaded: list[tuple[Candidate, Runner]]) -> Runner:
    """Time the loaded candidates at both operating points, log the rule and one JSON line each, return the pick."""
    from resnet.runtime.ort import cpu_threads

    backends = [b for _, b in loaded]
    batches = [serve_batch(settings, b) for b in backends]
    loaded_batches = [loaded_point(settings, b) for b in backends]
    decode_threads = settings.decode_threads or cpu_threads()
    timings = time_backends(backends, batches, loaded_batches, decode_threads)
    best, scores = pick(timings)
    log.info(
        "precision auto: timing %d candidates at batch %d alone and at batch %d back to back with %d decode "
        "threads busy; rule: %s",
        len(loaded),
        batches[0],
        loaded_batches[0],
        decode_threads,
        RULE,
    )
    for i, (c, b) in enumerate(loaded):
        t = timings[i]
        row = {
            "artifact": c.path.name,
            "precision": precision_of(b),
            "backend": b.name,
            "batch": t.batch,
            "ms_per_batch": round(t.latency_s * 1e3, 2),
            "loaded_batch": t.loaded_batch,
            "loaded_crops_per_s": round(t.loaded_crops_per_s, 2),
            "score": round(scores[i], 3),
            "runs": t.runs,
            "chosen": i == best,
        }
        log.info(
            "precision candidate %s (%s): %.2f ms per batch of %d alone, %.1f crops/s at batch %d with decoding "
            "busy, score %.3f%s",
            c.path.name,
            row["precision"],
            row["ms_per_batch"],
            t.batch,
            row["loaded_crops_per_s"],
            t.loaded_batch,
            scores[i],
            " (chosen)" * (i == best),
            extra={"fields": row},
        )
    for i, b in enumerate(backends):  # the losers' sessions, weights and thread pools are not kept
        if i != best:
            b.close()
    return backends[best]


def select_backend(settings: Settings) -> Runner:
    """The backend to serve: ``settings.model`` as a folder (choose by precision) or as one file."""
    path = Path(settings.model)
    if path.is_dir():
        return choose(settings, path)
    wanted = settings.precision
    named = is_torchvision_spec(settings.model)  # torchvision:ARCH[:WEIGHTS] runs on PyTorch, as a checkpoint does
    if named or (path.is_file() and artifact_kind(path) == "checkpoint"):
        if wanted == "auto":
            return auto_checkpoint(settings)
        torch_precision = wanted
        if torch_precision == "int8":
            what = f"{settings.model} runs on PyTorch" if named else f"{path.name} is a checkpoint"
            raise UsageError(f"--precision int8: {what}; it serves in fp32, bf16 or fp16 (int8 needs export.quantize)")
        return load_backend_for(settings, precision=torch_precision)
    backend = load_backend_for(settings)
    if wanted != "auto" and precision_of(backend) != wanted:
        raise UserError(f"{path.name} computes in {precision_of(backend)}, not {wanted} (--precision {wanted})")
    return backend
