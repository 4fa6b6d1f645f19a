"""GPU checks: bf16 autocast correctness and training/encoding throughput, printed as tables.

    python benchmarks/gpu_check.py --out results/          # on a CUDA machine
    python benchmarks/gpu_check.py --device cpu --quick    # a smoke run of the same code on a CPU

1. bf16-mixed Stage III training through Lightning on the synthetic benchmark: the loss falls, and the
   recall of the trained checkpoint evaluated under bf16-mixed equals fp32 evaluation within noise (the
   metric itself always ranks in float32).
2. Stage III training throughput (images/s, peak memory) for fp32 vs bf16 autocast, with and without
   gradient checkpointing, side by side in one run.
3. Gallery-encoding throughput, fp32 vs bf16.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

from ctiir.callbacks import RetrievalEvaluation
from ctiir.datamodules import SyntheticDataModule
from ctiir.datamodules.synthetic import generate
from ctiir.stages import ComposedRetrieval


def quiet_trainer(device: str, precision: str, **kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="gpu" if device == "cuda" else "cpu", devices=1, precision=precision, logger=False,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
        **kwargs,
    )


def bf16_training_check(device: str, root: Path, quick: bool) -> dict:
    L.seed_everything(0)
    dm = SyntheticDataModule(root=str(root), size="tiny", batch_size=16, num_workers=2)
    model = ComposedRetrieval(backbone="tiny", fusion="adaptive", lr_backbone=1e-3, lr_heads=1e-3)
    losses: list[float] = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # type: ignore[no-untyped-def]
            losses.append(float(outputs["loss"]))

    precision = "bf16-mixed"
    trainer = quiet_trainer(device, precision, max_epochs=2 if quick else 12, callbacks=[Record()], limit_val_batches=0)
    trainer.fit(model, datamodule=dm)
    ckpt = Path(tempfile.mkdtemp()) / "bf16.ckpt"
    trainer.save_checkpoint(ckpt)
    evals = {}
    for prec in ("32-true", "bf16-mixed"):
        ev = RetrievalEvaluation()
        quiet_trainer(device, prec, callbacks=[ev]).validate(ComposedRetrieval.load_from_checkpoint(ckpt), datamodule=dm, verbose=False)
        evals[prec] = {k: v for k, v in ev.results["val"].items() if k.startswith("synthetic/avg/R@")}
    diff = max(abs(evals["32-true"][k] - evals["bf16-mixed"][k]) for k in evals["32-true"])
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    return {"loss_first5": first, "loss_last5": last, "finite": all(map(lambda x: x == x, losses)), "recall_fp32": evals["32-true"], "recall_bf16": evals["bf16-mixed"], "max_abs_recall_diff": diff}


def train_throughput(device: str, backbone: str, batch: int, steps: int, bf16: bool, checkpointing: bool) -> dict:
    torch.manual_seed(0)
    model = ComposedRetrieval(backbone=backbone, fusion="adaptive", grad_checkpointing=checkpointing).to(device)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    size = model.backbone.image_size
    ref = torch.randn(batch, 3, size, size, device=device)
    tgt = torch.randn(batch, 3, size, size, device=device)
    texts = [f"is red with long sleeves and {i % 7} stripes" for i in range(batch)]
    ids = [str(i) for i in range(batch)]
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step() -> float:
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
            loss = model.stage_loss({"reference": ref, "target": tgt, "text": texts, "target_id": ids})["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    for _ in range(3):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        loss = step()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    return {"backbone": backbone, "bf16": bf16, "checkpointing": checkpointing, "batch": batch, "step_s": seconds, "images_per_s": 2 * batch / seconds, "peak_gib": peak, "loss": loss}


def encode_throughput(device: str, backbone: str, batch: int, steps: int, bf16: bool) -> dict:
    model = ComposedRetrieval(backbone=backbone).to(device).eval()
    images = torch.randn(batch, 3, model.backbone.image_size, model.backbone.image_size, device=device)
    with torch.no_grad(), torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
        for _ in range(3):
            model.encode_images(images)
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            model.encode_images(images)
        if device == "cuda":
            torch.cuda.synchronize()
    return {"backbone": backbone, "bf16": bf16, "images_per_s": batch * steps / (time.perf_counter() - start)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--backbone", default="openclip:ViT-B-32")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    quick = args.quick
    root = generate(Path(tempfile.mkdtemp()) / "synth", seed=0, size="tiny")
    report: dict = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu", "torch": torch.__version__}
    report["bf16_training"] = bf16_training_check(args.device, root, quick)
    print("bf16 training:", json.dumps(report["bf16_training"], indent=1), flush=True)
    backbone = "tiny" if quick else args.backbone
    batch, steps = (8, 2) if quick else (128, 15)
    rows = [train_throughput(args.device, backbone, batch, steps, bf16, ckpt) for bf16 in (False, True) for ckpt in (False, True)]
    report["train_throughput"] = rows
    print(f"\nStage III training throughput, {backbone}, batch {batch} (reference + target images per step)")
    print("| precision | grad ckpt | step s | images/s | peak GiB |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {'bf16 autocast' if r['bf16'] else 'fp32'} | {r['checkpointing']} | {r['step_s']:.4f} | {r['images_per_s']:.0f} | {r['peak_gib']:.2f} |")
    enc = [encode_throughput(args.device, backbone, 4 * batch, steps, bf16) for bf16 in (False, True)]
    report["encode_throughput"] = enc
    print(f"\nGallery encoding, {backbone}, batch {4 * batch}\n| precision | images/s |\n|---|---|")
    for r in enc:
        print(f"| {'bf16 autocast' if r['bf16'] else 'fp32'} | {r['images_per_s']:.0f} |")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "gpu_check.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
