"""The demo's training compute before and after issue 11, side by side in one process.

Three settings, each a ``tiny`` architecture with the demo's per-stage model arguments and data settings:

- ``old``: the ``tiny`` architecture and ``ctiir/configs/synthetic.yaml`` of commit 9cc252e (8 px patches,
  65 image tokens, 6 layers, MLP ratio 4; batch 64);
- ``new``: the shipped ``ctiir-tiny.json`` and ``ctiir/configs/synthetic.yaml``;
- ``new model, old batch``: the shipped architecture with the old batch size, so that the architecture's
  share of the saving is seen on its own (per sample).

Each stage (I, II, III) trains for ``--warmup + --steps`` steps through a Lightning ``Trainer`` on the
``default`` synthetic benchmark; only the last ``--steps`` are timed. Data loading runs in the main process
(``num_workers=0``) so that its CPU time is counted, and torch uses ``--threads`` threads (default 1): CPU
seconds of a single-threaded process hardly depend on what else runs on the machine, wall seconds do. The
settings alternate, ``--repeats`` times, and the median is reported. One evaluation (embedding the composed
test galleries and queries of the three categories through ``Trainer.predict``) is timed the same way.

``--threads-check`` adds wall seconds per Stage III step of the new setting at 1 and at 2 torch threads,
alternating: on a machine that other processes keep busy, two OpenMP threads can be many times slower
than one.

    python benchmarks/bench_demo.py --data data/synthetic          # generates the benchmark if missing
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
STAGE_NAMES = ("I", "II", "III")

# ``ctiir-tiny.json`` before issue 11 (tests/test_tiny_checkpoints.py loads a checkpoint of it).
OLD_TINY_CFG: dict[str, Any] = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 64, "layers": 6, "width": 128, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 4},
}
# ``ctiir/configs/synthetic.yaml`` before issue 11, reduced to what this benchmark varies.
OLD_PIPELINE: dict[str, Any] = {
    "data": {"batch_size": 64},
    "stages": {
        "I": {"max_epochs": 3, "model": {"lr_backbone": 1.0e-3, "lr_heads": 1.0e-3, "warmup_steps": 0.05}},
        "II": {"max_epochs": 2, "model": {"lr_backbone": 5.0e-4, "lr_heads": 1.0e-3, "tasks": ["t2i", "i2i"]}},
        "III": {"max_epochs": 6, "model": {"lr_backbone": 3.0e-4, "lr_heads": 1.0e-3, "fusion": "adaptive"}},
    },
}
Setting = tuple[dict[str, Any], dict[str, Any]]  # (model_cfg, pipeline)


def shipped_pipeline() -> dict[str, Any]:
    """The shipped demo config, reduced like ``OLD_PIPELINE``."""
    import yaml

    cfg = yaml.safe_load((REPO / "ctiir/configs/synthetic.yaml").read_text(encoding="utf-8"))
    return {
        "data": {"batch_size": cfg["data"]["init_args"]["batch_size"]},
        "stages": {k: {"max_epochs": v["max_epochs"], "model": v.get("model", {})} for k, v in cfg["stages"].items()},
    }


def shipped_tiny_cfg() -> dict[str, Any]:
    from ctiir.backbones import build_backbone

    return build_backbone("tiny").spec["model_cfg"]


def step_timer(warmup: int) -> Any:
    """A callback holding (wall, CPU) clock readings at the start of step ``warmup`` and at the end of fit."""
    import lightning as L

    class StepTimer(L.Callback):
        def __init__(self) -> None:
            self.start: tuple[float, float] | None = None
            self.stop: tuple[float, float] | None = None

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            if trainer.global_step == warmup and self.start is None:
                self.start = (time.perf_counter(), time.process_time())

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            self.stop = (time.perf_counter(), time.process_time())

    return StepTimer()


def datamodule(root: Path, pipeline: dict[str, Any]) -> Any:
    from ctiir.datamodules import SyntheticDataModule

    return SyntheticDataModule(root=str(root), generate_if_missing=False, num_workers=0, **pipeline["data"])


def time_stage(stage: str, setting: Setting, root: Path, warmup: int, steps: int) -> tuple[float, float, int]:
    """(wall s/step, CPU s/step) over the timed steps of one stage, and its training steps per epoch."""
    import lightning as L
    import torch

    from ctiir.stages import STAGES

    model_cfg, pipeline = setting
    torch.manual_seed(0)
    backbone = {"name": "tiny", "model_cfg": model_cfg}
    model = STAGES[stage](backbone=backbone, eval_kinds=[], **pipeline["stages"][stage]["model"])
    timer = step_timer(warmup)
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=warmup + steps, limit_val_batches=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, callbacks=[timer],
    )  # fmt: skip
    trainer.fit(model, datamodule=datamodule(root, pipeline))
    wall, cpu = ((b - a) / steps for a, b in zip(timer.start, timer.stop, strict=True))
    return wall, cpu, int(trainer.num_training_batches)


def time_evaluation(setting: Setting, root: Path) -> tuple[float, float]:
    """(wall, CPU) seconds to embed the composed test galleries and queries of the three categories."""
    import lightning as L

    from ctiir.stages import ComposedRetrieval

    model_cfg, pipeline = setting
    model = ComposedRetrieval(backbone={"name": "tiny", "model_cfg": model_cfg})
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False)
    dm = datamodule(root, pipeline)
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.predict(model, datamodule=dm, return_predictions=False)
    return time.perf_counter() - wall, time.process_time() - cpu


def median(pairs: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("data/synthetic"), help="the default synthetic benchmark")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per measurement")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="alternations of the settings (the median is reported)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the comparison (default 1)")
    parser.add_argument("--threads-check", action="store_true", help="also time new Stage III steps at 1 and 2 threads")
    args = parser.parse_args(argv)

    import torch

    from ctiir.datamodules.synthetic import generate

    generate(args.data, seed=0, size="default")
    new_cfg, new_pipeline = shipped_tiny_cfg(), shipped_pipeline()
    old_batch = copy.deepcopy(new_pipeline)
    old_batch["data"] = dict(OLD_PIPELINE["data"])
    settings: dict[str, Setting] = {
        "old": (OLD_TINY_CFG, OLD_PIPELINE),
        "new": (new_cfg, new_pipeline),
        "new model, old batch": (new_cfg, old_batch),
    }
    torch.set_num_threads(args.threads)
    step: dict[tuple[str, str], list[tuple[float, float]]] = {}
    per_epoch: dict[tuple[str, str], int] = {}
    evaluation: dict[str, list[tuple[float, float]]] = {name: [] for name in ("old", "new")}
    threads: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(args.repeats):
        for stage in STAGE_NAMES:
            for name, setting in settings.items():
                wall, cpu, per_epoch[(name, stage)] = time_stage(stage, setting, args.data, args.warmup, args.steps)
                step.setdefault((name, stage), []).append((wall, cpu))
        for name in evaluation:
            evaluation[name].append(time_evaluation(settings[name], args.data))
        if args.threads_check:
            for n in threads:
                torch.set_num_threads(n)
                threads[n].append(time_stage("III", settings["new"], args.data, args.warmup, args.steps)[0])
            torch.set_num_threads(args.threads)

    med = {key: median(v) for key, v in step.items()}
    ev = {name: median(v) for name, v in evaluation.items()}
    counts = {(name, s): per_epoch[(name, s)] * settings[name][1]["stages"][s]["max_epochs"] for name in settings for s in STAGE_NAMES}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} CPUs, load average {load:.1f} at the end; "
        f"median of {args.repeats}; {args.steps} timed steps after {args.warmup}; data loading in the main process\n"
    )
    batch = {name: settings[name][1]["data"]["batch_size"] for name in settings}
    print(
        f"| stage | old CPU s/step (batch {batch['old']}) | new CPU s/step (batch {batch['new']}) | new / old "
        f"| new model, batch {batch['old']}: CPU s/step | its / old | old wall s/step | new wall s/step "
        "| old demo steps | new demo steps |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for s in STAGE_NAMES:
        (ow, oc), (nw, nc), (_, mc) = med[("old", s)], med[("new", s)], med[("new model, old batch", s)]
        print(
            f"| {s} | {oc:.3f} | {nc:.3f} | {nc / oc:.3f} | {mc:.3f} | {mc / oc:.3f} | {ow:.3f} | {nw:.3f} "
            f"| {counts[('old', s)]} | {counts[('new', s)]} |"
        )
    (ow, oc), (nw, nc) = ev["old"], ev["new"]
    print(f"| one evaluation (composed test galleries + queries) | {oc:.2f} s | {nc:.2f} s | {nc / oc:.3f} | | | {ow:.2f} s | {nw:.2f} s | | |")

    def total(name: str, steps_of: str) -> float:
        return sum(med[(name, s)][1] * counts[(steps_of, s)] for s in STAGE_NAMES)

    old = total("old", "old")
    print()
    print("Demo training compute, CPU seconds (per-step medians x steps):")
    print(f"- at the old demo's step counts: old {old:.0f}, new {total('new', 'old'):.0f} (new / old = {total('new', 'old') / old:.3f})")
    per_sample = total("new model, old batch", "old")
    print(f"- per sample (new model at the old batch and steps): {per_sample:.0f} (new / old = {per_sample / old:.3f})")
    own = total("new", "new")
    print(f"- each setting with its own steps (the whole demo's training): new {own:.0f} (new / old = {own / old:.3f})")
    if args.threads_check:
        one, two = statistics.median(threads[1]), statistics.median(threads[2])
        print()
        print(f"New Stage III, wall s/step: 1 thread {one:.3f}, 2 threads {two:.3f} (2 / 1 = {two / one:.2f}; load {load:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
