"""Write a Triton Inference Server model repository for one of our models, so it runs on Triton unchanged.

    python -m export.triton MODEL --repo DIR [--name NAME] [--max-batch 64] [--instances 1] [--kind auto]

MODEL is an ONNX graph of ours (``.onnx`` / ``.fp16.onnx``: platform ``onnxruntime_onnx``), a TensorRT engine
(``.plan`` with its ``.plan.json`` sidecar: platform ``tensorrt_plan``), or a checkpoint (``.pt``/``.pth``, exported
to ONNX first by ``export.onnx``). The result, written atomically (temp folder + rename)::

    DIR/<name>/config.pbtxt          platform, max_batch_size, input "input" / output "logits", dynamic batching,
                                     instance groups, label_filename
    DIR/<name>/<version>/model.onnx  (or model.plan)
    DIR/<name>/labels.txt            one class label per line, in output order
    DIR/<name>/model_card.json       the model card (docs/DESIGN.md §1), for people and tools; Triton ignores it
    DIR/<name>/model.onnx.parity.json  (checkpoint input only) the FP32 parity report that admitted the graph

The batch dimension Triton batches over is the crop dimension: one ten-crop image is 10 rows, so the preferred
batch sizes are multiples of 10. Triton does no ten-crop itself: a client sends ``resnet.preprocess`` crops and
averages the per-crop softmax (``resnet.crop_probabilities``), exactly as our server does.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from resnet import CardError, UsageError, UserError, artifacts, run_cli
from resnet.artifacts import DEFAULT_MAX_BATCH
from resnet.card import ModelCard
from resnet.onnx_card import read_onnx_card

LABELS_FILE = "labels.txt"
CARD_FILE = "model_card.json"
PARITY_FILE = "model.onnx.parity.json"
INPUT_NAME, OUTPUT_NAME = "input", "logits"
KINDS = {"auto": "KIND_AUTO", "cpu": "KIND_CPU", "gpu": "KIND_GPU"}


def preferred_batch_sizes(max_batch: int) -> list[int]:
    """Whole ten-crop images, doubling: 10, 20, 40, ... and the largest multiple of 10 that fits ``max_batch``."""
    if max_batch < 10:
        raise UsageError(f"--max-batch {max_batch} is below 10: one ten-crop image is 10 rows")
    sizes, size = [], 10
    while size <= max_batch:
        sizes.append(size)
        size *= 2
    if (top := max_batch // 10 * 10) not in sizes:
        sizes.append(top)
    return sizes


def _safe_name(name: str) -> str:
    clean = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.")
    if not clean:
        raise UsageError(f"model name {name!r} has no usable characters; pass --name")
    return clean


def _dims(values: list[int]) -> str:
    return "[ " + ", ".join(str(v) for v in values) + " ]"


def render_config(
    *,
    name: str,
    platform: str,
    card: ModelCard,
    max_batch: int,
    instances: int,
    kind: str,
    queue_delay_us: int = 2000,
) -> str:
    """The ``config.pbtxt`` text (Triton's ModelConfig protobuf in text format)."""
    size = card.input_size
    preferred = preferred_batch_sizes(max_batch)
    return f"""# Written by `python -m export.triton` for {card.name} ({card.family} {card.arch}-\
{card.depth}). Rows are crops: one ten-crop image = 10 rows.
name: "{name}"
platform: "{platform}"
max_batch_size: {max_batch}
version_policy: {{ latest: {{ num_versions: 1 }} }}
input [
  {{
    name: "{INPUT_NAME}"
    data_type: TYPE_FP32
    dims: {_dims([3, size, size])}
  }}
]
output [
  {{
    name: "{OUTPUT_NAME}"
    data_type: TYPE_FP32
    dims: {_dims([card.num_classes])}
    label_filename: "{LABELS_FILE}"
  }}
]
dynamic_batching {{
  preferred_batch_size: {_dims(preferred)}
  max_queue_delay_microseconds: {queue_delay_us}
}}
instance_group [
  {{
    count: {instances}
    kind: {kind}
  }}
]
"""


# ---- reading the source artifact -----------------------------------------------------------------------------------


def _onnx_io(path: Path) -> tuple[Any, Any]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    return model, (inputs, list(model.graph.output))


def _check_onnx(path: Path, card: ModelCard) -> list[Path]:
    """Check the graph's I/O against docs/DESIGN.md §2 and the card; return external data files to copy with it."""
    from onnx import TensorProto

    model, (inputs, outputs) = _onnx_io(path)
    if [i.name for i in inputs] != [INPUT_NAME] or [o.name for o in outputs] != [OUTPUT_NAME]:
        raise CardError(
            f"{path}: inputs {[i.name for i in inputs]} / outputs {[o.name for o in outputs]}, expected "
            f"['{INPUT_NAME}'] / ['{OUTPUT_NAME}'] (docs/DESIGN.md §2)"
        )
    size, classes = card.input_size, card.num_classes
    for value, want in ((inputs[0], [None, 3, size, size]), (outputs[0], [None, classes])):
        t = value.type.tensor_type
        if t.elem_type != TensorProto.FLOAT:
            raise CardError(f"{path}: '{value.name}' is {TensorProto.DataType.Name(t.elem_type)}, expected FLOAT")
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        # a graph that takes any height and width (docs/DESIGN.md §2.3) fits the card's S x S that Triton is given
        spatial_any = value is inputs[0] and len(dims) == 4 and dims[2:] == [None, None]
        if len(dims) != len(want) or (dims[1:] != want[1:] and not (spatial_any and dims[1] == 3)):
            raise CardError(f"{path}: '{value.name}' has shape {dims}, the card says {want}")
        if dims[0] is not None:
            raise CardError(
                f"{path}: the batch dimension of '{value.name}' is frozen at {dims[0]}; Triton batches over it "
                "(re-export with a dynamic batch: python -m export.onnx)"
            )
    extra = {entry.value for init in model.graph.initializer for entry in init.external_data if entry.key == "location"}
    return [path.parent / loc for loc in sorted(extra)]


def _onnx_from_checkpoint(
    path: Path, arch: str | None, staging: Path, gate_images: Path | None, gate_limit: int | None
) -> tuple[Path, Path | None]:
    """Export a checkpoint through the export stage's own exporter (contract checks and the FP32 parity gate; a
    failed gate raises its exit-3 error). Returns the graph and its parity report."""
    from .onnx import export_onnx

    out, _ = export_onnx(path, staging / "model.onnx", arch=arch, images=gate_images, limit=gate_limit)
    report = artifacts.report_path(out)
    return out, (report if report.is_file() else None)


# ---- writing the repository ---------------------------------------------------------------------------------------


def _staging_dir(repo: Path) -> tempfile.TemporaryDirectory[str]:
    """A temp folder on the repository's file system (so the final rename is atomic) but outside it where possible,
    so a Triton polling the repository never sees a half-written model."""
    parent = repo.resolve().parent
    try:
        if parent.stat().st_dev == repo.stat().st_dev and os.access(parent, os.W_OK):
            return tempfile.TemporaryDirectory(prefix=f".{repo.name}.triton-", dir=parent)
    except OSError:
        pass
    return tempfile.TemporaryDirectory(prefix=".triton-", dir=repo)  # a mount point: stage inside, then rename


def _check_options(instances: int, version: int, kind: str) -> None:
    if instances < 1:
        raise UsageError(f"--instances must be at least 1, not {instances}")
    if version < 1:
        raise UsageError(f"--version must be at least 1, not {version}")
    if kind not in KINDS:
        raise UsageError(f"--kind must be one of {sorted(KINDS)}, not {kind!r}")


def _place_engine(src: Path, vdir: Path, max_batch: int | None, kind: str) -> tuple[ModelCard, int, str, str]:
    """Copy a ``.plan`` in; returns its card, the max batch, the platform and the instance kind."""
    sidecar = artifacts.read_sidecar(src)
    card, profile_max = sidecar.card, sidecar.profile["max"]
    if max_batch is None:
        max_batch = profile_max or DEFAULT_MAX_BATCH
    if profile_max is not None and max_batch > profile_max:
        raise UsageError(f"--max-batch {max_batch} exceeds the engine's optimisation profile max {profile_max}")
    if kind == "cpu":
        raise UsageError("a TensorRT engine runs only on a GPU: --kind cpu is not possible for a .plan")
    shutil.copyfile(src, vdir / "model.plan")
    return card, max_batch, "tensorrt_plan", "KIND_GPU"


def _place_onnx(src: Path, vdir: Path) -> ModelCard:
    """Copy an ONNX graph of ours (and its external data files) in; returns its card."""
    card = read_onnx_card(src)
    extra = _check_onnx(src, card)
    shutil.copyfile(src, vdir / "model.onnx")
    for f in extra:
        if not f.is_file():
            raise UserError(f"{src} refers to external data {f.name}, which is missing")
        shutil.copyfile(f, vdir / f.name)
    return card


def _place_checkpoint(
    src: Path, tmp: Path, vdir: Path, arch: str | None, gate_images: Path | None, gate_limit: int | None
) -> ModelCard:
    """Export a checkpoint behind the FP32 gate and move the graph (and its parity report) in; returns its card."""
    staging = tmp.parent / "export"
    staging.mkdir()
    onnx_path, report = _onnx_from_checkpoint(src, arch, staging, gate_images, gate_limit)
    card = read_onnx_card(onnx_path)
    _check_onnx(onnx_path, card)
    onnx_path.rename(vdir / "model.onnx")
    if report is not None:
        report.rename(tmp / PARITY_FILE)
    return card


def _write_metadata(tmp: Path, model_name: str, platform: str, card: ModelCard, max_batch: int, **config: Any) -> None:
    labels = [str(label) for label in card.labels]
    if any("\n" in label for label in labels):
        raise CardError("a label contains a line break; Triton's label file is one label per line")
    (tmp / "config.pbtxt").write_text(
        render_config(name=model_name, platform=platform, card=card, max_batch=max_batch, **config)
    )
    (tmp / LABELS_FILE).write_text("\n".join(labels) + "\n")
    (tmp / CARD_FILE).write_text(json.dumps(card.to_dict(), indent=2) + "\n")


def _swap_in(tmp: Path, final: Path, force: bool) -> None:
    """Rename the finished folder into the repository; an existing one only with ``force`` (restored on failure)."""
    if final.exists() and not force:
        raise UserError(f"{final} already exists; pass --force to replace it")
    old = tmp.parent / "old"
    if final.exists():
        final.rename(old)  # moved into the temp folder, deleted with it
    try:
        tmp.rename(final)
    except OSError:
        if old.exists():
            old.rename(final)
        raise


def write_repository(
    model: str | Path,
    repo: str | Path,
    *,
    name: str | None = None,
    max_batch: int | None = None,
    instances: int = 1,
    kind: str = "auto",
    version: int = 1,
    arch: str | None = None,
    force: bool = False,
    gate_images: str | Path | None = None,
    gate_limit: int | None = None,
) -> Path:
    """Write ``repo/<name>/`` for ``model`` and return that folder. Raises ``UserError`` for anything a user can fix."""
    src, repo = Path(model), Path(repo)
    if not src.is_file():
        raise UserError(f"no such file: {src}")
    _check_options(instances, version, kind)
    try:
        repo.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the repository folder {repo}: {e.strerror}") from None

    with _staging_dir(repo) as tmp_name:
        tmp = Path(tmp_name) / "model"
        vdir = tmp / str(version)
        vdir.mkdir(parents=True)
        source_kind = artifacts.artifact_kind(src)
        if source_kind == "engine":
            card, max_batch, platform, kind_name = _place_engine(src, vdir, max_batch, kind)
        else:
            if source_kind == "onnx":
                card = _place_onnx(src, vdir)
            else:
                images = Path(gate_images) if gate_images else None
                card = _place_checkpoint(src, tmp, vdir, arch, images, gate_limit or None)
            platform, kind_name = "onnxruntime_onnx", KINDS[kind]
            max_batch = DEFAULT_MAX_BATCH if max_batch is None else max_batch
        model_name = _safe_name(name or card.name or src.stem)
        _write_metadata(tmp, model_name, platform, card, max_batch, instances=instances, kind=kind_name)
        final = repo / model_name
        _swap_in(tmp, final, force)
    return final


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m export.triton",
        description="Write a Triton Inference Server model repository (config.pbtxt, model, labels) for a model.",
    )
    parser.add_argument(
        "model",
        metavar="CHECKPOINT_OR_ONNX_OR_PLAN",
        help="our .onnx/.fp16.onnx graph, a .plan engine with its .plan.json sidecar, or a checkpoint",
    )
    parser.add_argument("--repo", required=True, metavar="DIR", help="model repository folder (created if missing)")
    parser.add_argument("--name", help="model name in Triton (default: the card's name)")
    parser.add_argument(
        "--max-batch",
        type=int,
        default=None,
        help=f"max_batch_size in crops (default {DEFAULT_MAX_BATCH}, or the engine's profile max)",
    )
    parser.add_argument("--instances", type=int, default=1, help="model instances per device (default 1)")
    parser.add_argument(
        "--kind",
        choices=sorted(KINDS),
        default="auto",
        help="instance placement: auto (GPU if present), cpu or gpu (default auto; .plan: gpu)",
    )
    parser.add_argument("--version", type=int, default=1, help="model version folder (default 1)")
    parser.add_argument("--arch", help="architecture of a plain torchvision state dict (checkpoint input only)")
    parser.add_argument("--force", action="store_true", help="replace an existing model folder of the same name")
    parser.add_argument(
        "--gate-images",
        metavar="DIR",
        help="checkpoint input: images (or ImageFolder) for export.onnx's parity gate (default: photos)",
    )
    parser.add_argument("--gate-limit", type=int, metavar="N", help="checkpoint input: gate on at most N images")
    args = parser.parse_args(argv)
    out = write_repository(
        args.model,
        args.repo,
        name=args.name,
        max_batch=args.max_batch,
        instances=args.instances,
        kind=args.kind,
        version=args.version,
        arch=args.arch,
        force=args.force,
        gate_images=args.gate_images,
        gate_limit=args.gate_limit,
    )
    files = sorted(p.relative_to(out.parent).as_posix() for p in out.rglob("*") if p.is_file())
    print(f"wrote Triton model repository {out.parent}: " + ", ".join(files))
    print(f"serve it: tritonserver --model-repository {out.parent.resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main, prog="export.triton"))
