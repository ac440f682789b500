"""Which artifact to serve, and in which precision: chosen by timing on this machine, never by CPU flags.

``--model FILE`` serves that file (``--precision`` must then match what it computes in). ``--model DIR`` (a run or
export folder) considers every artifact there that passed its parity gate (``<artifact>.parity.json`` with
``"passed": true``): the fp32 ``.onnx``, ``.fp16.onnx`` and ``.int8.onnx``, and the checkpoint with bf16 autocast
when torch is installed (the checkpoint is its own reference: it needs no report). ``--precision auto`` loads each,
times it at start-up at the batch shape one ten-crop request runs (after a warm-up run; 10 s in all, an equal
share per candidate), serves the fastest and logs one JSON line per candidate; ``--precision fp32|fp16|int8|bf16``
picks that one. torch is imported only for the checkpoint candidate (through ``serve.backends``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from resnet import UserError
from resnet.artifacts import CHECKPOINT_SUFFIXES, DEFAULT_MAX_BATCH, artifact_kind, report_path
from resnet.names import is_torchvision_spec
from resnet.runtime.kinds import PRECISIONS
from resnet.runtime.report import ParityReport, ReportError

from .backends import Backend, load_backend_for
from .batcher import batch_shapes
from .settings import Settings

log = logging.getLogger("serve.precision")

PRECISION_CHOICES = ("auto", *PRECISIONS)
TIMING_BUDGET_S = 10.0  # all candidates together, warm-up runs included
MAX_ROUNDS = 20  # timed runs per candidate at most
TEN_CROP = 10  # crops of one ten-crop image: the batch a single request fills


@dataclass(frozen=True)
class Candidate:
    """One artifact of a folder: what it computes in, and why it is left out (empty when it may be served)."""

    path: Path
    precision: str
    excluded: str = ""


def precision_of(backend: Backend) -> str:
    """What ``backend`` computes in: its runner's declared precision (``resnet.runtime.kinds.ort_precision`` for a
    graph: a reduced-precision graph's own, else the runtime's math)."""
    return backend.precision


def gate_verdict(artifact: Path) -> str:
    """Empty when ``artifact``'s parity report says it passed, else why it may not be served."""
    try:
        return ParityReport.read(report_path(artifact)).verdict()
    except ReportError as e:
        return str(e)


def _onnx_candidate(path: Path) -> Candidate:
    from resnet.onnx_card import read_onnx_card

    try:
        precision = read_onnx_card(path).precision
    except UserError as e:
        return Candidate(path, "?", f"unreadable card ({e})")
    return Candidate(path, precision, gate_verdict(path))


def find_candidates(folder: Path) -> list[Candidate]:
    """Every ONNX artifact in ``folder`` with its gate verdict, plus the checkpoint of the same stem (bf16)."""
    onnx_files = sorted(
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.name.endswith(".onnx")
    )
    stems = sorted({p.name.split(".")[0] for p in onnx_files}) or ["model"]
    if len(stems) > 1:
        raise UserError(f"{folder} holds artifacts of several models ({', '.join(stems)}): pass one file to --model")
    found = [_onnx_candidate(p) for p in onnx_files]
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


def serve_batch(settings: Settings, backend: Backend) -> int:
    """The batch shape the server runs for one ten-crop request (the smallest shape holding ten crops)."""
    limit = backend.max_batch
    max_batch = min(settings.max_batch or limit or DEFAULT_MAX_BATCH, limit or DEFAULT_MAX_BATCH)
    shapes = batch_shapes(max_batch, settings.parsed_batch_sizes(), backend.min_batch)
    return next((s for s in shapes if s >= TEN_CROP), shapes[-1])


def _load(candidate: Candidate, settings: Settings) -> Backend:
    """``load_backend_for`` the candidate with the server's settings (threads, batch profile, TensorRT cache)."""
    if artifact_kind(candidate.path) == "checkpoint":
        choice, torch_precision = "torch", candidate.precision
    else:
        choice, torch_precision = ("auto" if settings.backend == "torch" else settings.backend), "fp32"
    return load_backend_for(
        dataclasses.replace(settings, model=str(candidate.path), backend=choice, torch_precision=torch_precision)
    )


def time_backends(
    backends: list[Backend], batches: list[int], budget_s: float = TIMING_BUDGET_S
) -> list[tuple[float, int]]:
    """(median seconds per batch, timed runs) of each backend, timed round-robin so that load on a shared machine
    hits all alike. Each gets one warm-up run, then timed runs while its share of ``budget_s`` lasts; a candidate
    whose warm-up alone spent its share is timed by that run (0 timed runs): it cannot be the fastest anyway.
    """
    share = budget_s / max(1, len(backends))
    rng = np.random.default_rng(0)
    inputs = [
        rng.standard_normal((n, 3, b.card.input_size, b.card.input_size), dtype=np.float32)
        for b, n in zip(backends, batches)
    ]
    spent = [0.0] * len(backends)
    times: list[list[float]] = [[] for _ in backends]
    warm: list[float] = []
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


def choose(settings: Settings, folder: Path) -> Backend:
    """Load the artifact of ``folder`` that ``settings.precision`` asks for (auto: the fastest here)."""
    found = find_candidates(folder)
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
    loaded: list[tuple[Candidate, Backend]] = []
    for c in usable:
        try:
            loaded.append((c, _load(c, settings)))
        except UserError as e:
            log.info("precision: %s (%s) is not considered: it does not load here (%s)", c.path.name, c.precision, e)
    if not loaded:
        raise UserError(f"{folder}: no artifact loads here (it has: {describe(found)})")
    return _fastest(settings, loaded)


def _fastest(settings: Settings, loaded: list[tuple[Candidate, Backend]]) -> Backend:
    """Time the loaded candidates, log the table (one JSON line each), return the fastest per crop."""
    backends = [b for _, b in loaded]
    batches = [serve_batch(settings, b) for b in backends]
    timed = time_backends(backends, batches)
    seconds = [t for t, _ in timed]
    best = min(range(len(loaded)), key=lambda i: seconds[i] / batches[i])
    for i, (c, b) in enumerate(loaded):
        row = {
            "artifact": c.path.name,
            "precision": precision_of(b),
            "backend": b.name,
            "batch": batches[i],
            "ms_per_batch": round(seconds[i] * 1e3, 2),
            "runs": timed[i][1],
            "chosen": i == best,
        }
        msg = "precision candidate %s (%s): %.2f ms per batch of %d%s"
        log.info(
            msg,
            c.path.name,
            row["precision"],
            row["ms_per_batch"],
            batches[i],
            " (chosen)" * (i == best),
            extra={"fields": row},
        )
    return backends[best]


def select_backend(settings: Settings) -> Backend:
    """The backend to serve: ``settings.model`` as a folder (choose by precision) or as one file."""
    path = Path(settings.model)
    if path.is_dir():
        return choose(settings, path)
    wanted = settings.precision
    named = is_torchvision_spec(settings.model)  # torchvision:ARCH[:WEIGHTS] runs on PyTorch, as a checkpoint does
    if named or (path.is_file() and artifact_kind(path) == "checkpoint"):
        torch_precision = settings.torch_precision if wanted == "auto" else wanted
        if torch_precision == "int8":
            what = f"{settings.model} runs on PyTorch" if named else f"{path.name} is a checkpoint"
            raise UserError(f"{what}: it serves in fp32 or bf16 (int8 needs export.quantize)")
        return load_backend_for(dataclasses.replace(settings, torch_precision=torch_precision))
    backend = load_backend_for(settings)
    if wanted != "auto" and precision_of(backend) != wanted:
        raise UserError(f"{path.name} computes in {precision_of(backend)}, not {wanted} (--precision {wanted})")
    return backend
