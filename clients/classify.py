"""`python -m clients.classify IMAGE_OR_DIR...`: classify images with a running server, print a top-k table per
image (or JSON lines with --json). Exit 0 when every image succeeded, 1 when any failed, 2 on bad usage."""

from __future__ import annotations

import argparse
import json
import sys

from resnet import UsageError, run_cli

from .client import CROPS, DEFAULT_URL, Classification, Client, ClientError, ServerUnreachable, find_images

BAR_WIDTH = 20


def bar(probability: float, width: int = BAR_WIDTH) -> str:
    """A text bar of ``width`` cells for a probability in [0, 1], in eighths of a cell."""
    eighths = round(max(0.0, min(1.0, probability)) * width * 8)
    full, rest = divmod(eighths, 8)
    return ("█" * full + (" ▏▎▍▌▋▊▉"[rest] if rest else "")).ljust(width)


def format_table(name: str, result: Classification) -> str:
    """The readable block printed for one image."""
    label_width = max([5] + [len(p.label) for p in result.top])
    total = result.timings.get("total_ms")
    took = f" · {total:.0f} ms" if isinstance(total, (int, float)) else ""
    how = "multi-scale " + "/".join(map(str, result.sides or [])) if result.crops == "multiscale" else None
    how = how or f"{result.crops or '?'}-crop"
    lines = [f"{name}  [{result.model or '?'} · {result.backend or '?'} · {how}{took}]"]
    for rank, p in enumerate(result.top, 1):
        lines.append(f"  {rank}. {p.label:<{label_width}}  {p.probability:7.2%}  {bar(p.probability)}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m clients.classify", description=__doc__)
    ap.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files, or folders searched recursively")
    ap.add_argument("--url", default=DEFAULT_URL, help="server base URL (default: %(default)s)")
    ap.add_argument("--topk", type=int, default=5, help="how many classes to show per image (default: %(default)s)")
    ap.add_argument(
        "--crops",
        choices=CROPS,
        default="ten",
        help="ten-crop (paper), centre crop, or multiscale: the paper's multi-scale test, the whole image at several "
        "scales with its mirror (the server answers 422 when its model takes only one size) (default: %(default)s)",
    )
    ap.add_argument(
        "--model-name",
        default=None,
        help="the model to ask, by name, on a server with a model repository (default: the server's default model)",
    )
    ap.add_argument(
        "--model-version", default=None, help="with --model-name: that version (default: its highest one loaded)"
    )
    ap.add_argument("--api-key", default=None, help="API key, when the server was started with one")
    ap.add_argument("--json", action="store_true", help="print one JSON object per image instead of a table")
    ap.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for each answer (default: %(default)s)"
    )
    ap.add_argument(
        "--retries",
        type=int,
        default=3,
        help="retries of a 503 (server busy), honouring Retry-After (default: %(default)s)",
    )
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.topk < 1:
        raise UsageError(f"--topk must be at least 1, not {args.topk}")
    if args.timeout <= 0:
        raise UsageError(f"--timeout must be positive, not {args.timeout}")
    images = find_images(args.inputs)
    if not images:
        raise UsageError("no images found in " + ", ".join(args.inputs))
    succeeded = 0
    with Client(args.url, api_key=args.api_key, timeout=args.timeout, retries=args.retries) as client:
        for path in images:
            try:
                result = client.classify(
                    path,
                    topk=args.topk,
                    crops=args.crops,
                    model_name=args.model_name,
                    model_version=args.model_version,
                )
            except ClientError as e:
                if args.json:
                    print(
                        json.dumps(
                            {"file": str(path), "error": {"status": e.status, "code": e.code, "message": str(e)}}
                        )
                    )
                print(f"{path}: error: {e}", file=sys.stderr)
                if isinstance(e, ServerUnreachable):
                    break  # the server is not there: every other image would fail the same way
                continue
            succeeded += 1
            if args.json:
                print(json.dumps({"file": str(path), **result.to_dict()}), flush=True)
            else:
                print(format_table(str(path), result), flush=True)
    failed = len(images) - succeeded
    if failed:
        print(f"{failed} of {len(images)} image(s) failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main, prog="clients.classify"))
