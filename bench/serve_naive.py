"""The baseline users write: a FastAPI endpoint that runs a torch model per request, no batching, no ONNX.

``python -m bench.serve_naive --model model.pt --port 8100`` (used by ``bench/serve_bench.py``). Same answer as the
real server (torchvision Resize + TenCrop + Normalize, mean of the per-crop softmax), none of the engineering.
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Sequence

import torch
import uvicorn
from fastapi import FastAPI, File, UploadFile
from PIL import Image, ImageOps
from torchvision import transforms as T

import resnet


def create_naive_app(model_path: str, device: str = "cpu") -> FastAPI:
    model, card = resnet.load_checkpoint(model_path)
    model = model.to(device)
    norm = T.Compose([T.ToTensor(), T.Normalize(card.mean, card.std)])
    resize, ten = T.Resize(card.resize_size), T.TenCrop(card.input_size)
    app = FastAPI()

    @app.post("/classify")
    def classify(file: UploadFile = File(...)) -> dict:
        img = Image.open(io.BytesIO(file.file.read()))
        img = (ImageOps.exif_transpose(img) or img).convert("RGB")
        x = torch.stack([norm(c) for c in ten(resize(img))]).to(device)
        with torch.no_grad():
            probs = torch.softmax(model(x), dim=1).mean(0)
        top = torch.topk(probs, 5)
        return {
            "topk": [
                {"index": int(i), "label": card.labels[int(i)], "probability": float(p)}
                for p, i in zip(top.values, top.indices)
            ]
        }

    @app.get("/readyz")
    def readyz() -> dict:
        return {"status": "ready"}

    return app


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Naive per-request torch FastAPI server (benchmark baseline).")
    p.add_argument("--model", required=True, help="checkpoint (.pt) to serve")
    p.add_argument("--port", type=int, default=8100, help="TCP port on 127.0.0.1")
    p.add_argument("--device", default="cpu", help="torch device the model runs on (cpu, cuda)")
    args = p.parse_args(argv)
    uvicorn.run(create_naive_app(args.model, args.device), host="127.0.0.1", port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
