"""Stage III training: ``Trainer.fit`` against a bare PyTorch loop over the same model, batches and optimizer.

Both sides train a copy of one ``ComposedRetrieval`` (same seed, same initial weights) on the same batches,
taken from the real ``SyntheticDataModule`` (its triplet dataset, the backbone's training transforms, its
collate) and held in memory, so that neither side reads an image while it is timed. Both use the stage's own
``configure_optimizers`` (AdamW with its four parameter groups and the cosine schedule, stepped per batch), the
same precision and the same number of steps, and re-seed torch before the run, so they draw the same dropout
masks: the final weights of the two are compared, as a check that they did the same work.

What differs is only the framework: Lightning's loop, hooks, ``self.log`` of six values per step, the
progress bar and the logger. Lightning is timed as ``ctiir progressive`` trains (``ctiir.pipeline``): a CSV
logger writing every 10 steps, the Rich progress bar, no model summary, no checkpoint during the timed steps
(``lightning``); ``--sides ... lightning-quiet`` adds a run with no logger and no progress bar, to tell the
loop's own cost from theirs.

Throughput is samples (triplets) per second over the steps after ``--warmup`` steps, from the end of the last
warm-up step to the end of the last step, by three clocks: the wall clock; the wall time of the median step
(robust to bursts of load from other work, blind to what is paid only every n-th step); and the process's CPU
time (all its threads), which a machine shared with other work disturbs far less. The runs are interleaved
(bare, lightning, lightning, bare, ...) so that a change in the machine's load hits both sides alike, and the
overhead is the median over repeats of ``1 - lightning samples/s / bare samples/s``, each ratio from one
repeat's pair of runs.

    python benchmarks/bench_train.py                                  # tiny and openclip:ViT-B-32 on the CPU
    python benchmarks/bench_train.py --threads 1                      # on a small machine shared with others
    python benchmarks/bench_train.py --backbones tiny --repeats 3     # quicker
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import lightning as L  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.callbacks import RichProgressBar  # noqa: E402
from lightning.pytorch.loggers import CSVLogger  # noqa: E402

from ctiir.datamodules import SyntheticDataModule  # noqa: E402
from ctiir.stages import ComposedRetrieval  # noqa: E402

SIDES = ("bare", "lightning", "lightning-quiet")
DEFAULT_BATCH = {"tiny": 32, "openclip:ViT-B-32": 8}
DEFAULT_STEPS = {"tiny": 20, "openclip:ViT-B-32": 4}
DEFAULT_REPEATS = {"tiny": 5, "openclip:ViT-B-32": 3}


class Clock:
    """Wall and process CPU time at the end of every step."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def tick(self) -> None:
        self.wall.append(time.perf_counter())
        self.cpu.append(time.process_time())


# ---------------------------------------------------------------------------------------------- data
class InMemoryBatches:
    """``steps`` batches, cycling through a few collated batches already in memory (no decoding while timed).

    A sized iterable: Lightning takes it as a train dataloader, and the bare loop iterates it the same way.
    """

    def __init__(self, batches: list[dict[str, Any]], steps: int) -> None:
        self.batches = batches
        self.steps = steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (self.batches[i % len(self.batches)] for i in range(self.steps))


def real_batches(root: str, size: str, backbone: str, batch_size: int, count: int, seed: int) -> tuple[ComposedRetrieval, list]:
    """The template model and ``count`` training batches from the real datamodule, served as a stage asks."""
    torch.manual_seed(seed)
    model = ComposedRetrieval(backbone=backbone, fusion="adaptive", lr_backbone=3e-4, lr_heads=1e-3)
    data = SyntheticDataModule(root=root, size=size, batch_size=batch_size, num_workers=0, seed=seed)
    data.prepare_data()
    data.setup("fit")
    model.record_preprocessing(data.serve(model.data_request()))
    batches = []
    for batch in data.train_dataloader():
        batches.append(batch)
        if len(batches) == count:
            break
    if len(batches) < count:
        raise SystemExit(f"{root}: only {len(batches)} training batches of {batch_size}; use a larger --size")
    return model, batches


# ---------------------------------------------------------------------------------------------- the two loops
class StepClock(L.Callback):
    """Ticks at the end of every training batch (after the optimizer and scheduler steps)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.clock.tick()


def precision_context(precision: str) -> contextlib.AbstractContextManager:
    """What Lightning's precision plugin wraps a CPU training step in, for the bare loop."""
    if precision == "bf16-mixed":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    if precision == "32-true":
        return contextlib.nullcontext()
    raise SystemExit(f"--precision {precision!r}: only 32-true and bf16-mixed are compared here")


def run_bare(model: ComposedRetrieval, data: InMemoryBatches, precision: str, seed: int, clock: Clock) -> None:
    """The step Lightning runs, written out: zero_grad, forward, backward, optimizer step, scheduler step."""
    # The stage's own optimizer and schedule; configure_optimizers only reads the step count from the trainer.
    model._trainer = SimpleNamespace(estimated_stepping_batches=len(data))  # type: ignore[assignment]
    try:
        config = model.configure_optimizers()
    finally:
        model._trainer = None
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    model.train()
    torch.manual_seed(seed)
    for batch in data:
        optimizer.zero_grad(set_to_none=True)
        with precision_context(precision):
            loss = model.stage_loss(batch)["loss"]
        loss.backward()
        optimizer.step()
        scheduler.step()
        clock.tick()


def run_lightning(
    model: ComposedRetrieval, data: InMemoryBatches, precision: str, seed: int, clock: Clock, quiet: bool, log_dir: str
) -> None:
    callbacks: list[L.Callback] = [StepClock(clock)]
    if not quiet:
        callbacks.append(RichProgressBar(console_kwargs={"stderr": True}))  # stdout keeps the table
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        precision=precision,
        max_steps=len(data),
        max_epochs=1,
        logger=False if quiet else CSVLogger(log_dir, name="", version="logs"),
        log_every_n_steps=10,
        enable_progress_bar=not quiet,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=callbacks,
        default_root_dir=log_dir,
    )
    torch.manual_seed(seed)
    trainer.fit(model, train_dataloaders=data)


CLOCKS = ("wall", "wall, median step", "cpu")


@dataclass
class Timed:
    side: str
    rates: dict[str, float]  # samples per second by each of CLOCKS
    model: ComposedRetrieval | None


def timed_run(side: str, template: ComposedRetrieval, data: InMemoryBatches, warmup: int, batch_size: int, precision: str, seed: int) -> Timed:
    model = copy.deepcopy(template)
    clock = Clock()
    with tempfile.TemporaryDirectory(prefix="bench-train-") as log_dir:
        if side == "bare":
            run_bare(model, data, precision, seed, clock)
        else:
            run_lightning(model, data, precision, seed, clock, quiet=side == "lightning-quiet", log_dir=log_dir)
    if len(clock.wall) != len(data):
        raise RuntimeError(f"{side}: {len(clock.wall)} steps ran, {len(data)} expected")
    samples = (len(data) - warmup) * batch_size
    steps = [b - a for a, b in zip(clock.wall[warmup - 1 : -1], clock.wall[warmup:], strict=True)]
    rates = {
        "wall": samples / (clock.wall[-1] - clock.wall[warmup - 1]),
        "wall, median step": batch_size / statistics.median(steps),
        "cpu": samples / (clock.cpu[-1] - clock.cpu[warmup - 1]),
    }
    return Timed(side, rates, model)


def max_weight_difference(a: torch.nn.Module | None, b: torch.nn.Module | None) -> float:
    """The largest difference between two models' weights: 0 when both sides did exactly the same steps."""
    assert a is not None and b is not None
    theirs = b.state_dict()
    return max(float((v.float() - theirs[k].float()).abs().max()) for k, v in a.state_dict().items() if v.is_floating_point())


# ---------------------------------------------------------------------------------------------- report
def spread(values: list[float], fmt: str) -> str:
    return f"{format(statistics.median(values), fmt)} ({format(min(values), fmt)} to {format(max(values), fmt)})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", nargs="+", default=["tiny", "openclip:ViT-B-32"])
    parser.add_argument("--batch-size", nargs="+", default=[], metavar="BACKBONE=N",
                        help=f"per-backbone batch size (default {DEFAULT_BATCH}, else 16)")
    parser.add_argument("--root", default=os.path.join(tempfile.gettempdir(), "ctiir-bench-synthetic"),
                        help="the synthetic benchmark (generated here when absent)")
    parser.add_argument("--size", default="default", help="synthetic benchmark size (tiny has too few triplets for 64 per batch)")
    parser.add_argument("--steps", type=int, default=None, help=f"timed steps per run (default {DEFAULT_STEPS}, else 4)")
    parser.add_argument("--warmup", type=int, default=2, help="steps run before timing starts")
    parser.add_argument("--repeats", type=int, default=None, help=f"runs per side (default {DEFAULT_REPEATS}, else 3)")
    parser.add_argument("--distinct-batches", type=int, default=4, help="real batches held in memory and cycled")
    parser.add_argument("--sides", nargs="+", default=["bare", "lightning"], choices=SIDES)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's own)")
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.warmup < 1:
        parser.error("--warmup must be at least 1 (the first step's end starts the clock)")
    if "bare" not in args.sides:
        parser.error("--sides must include bare: the overhead is measured against it")
    sizes = dict(DEFAULT_BATCH)
    for item in args.batch_size:
        name, _, value = item.rpartition("=")
        if not name or not value.isdigit():
            parser.error(f"--batch-size {item!r}: expected BACKBONE=N")
        sizes[name] = int(value)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    print(f"# Stage III training step: Lightning vs a bare PyTorch loop ({platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__} with {torch.get_num_threads()} threads, lightning {L.__version__}, "
          f"precision {args.precision})\n", flush=True)
    rows = []
    for backbone in args.backbones:
        batch_size = sizes.get(backbone, 16)
        steps = args.steps or DEFAULT_STEPS.get(backbone, 4)
        repeats = args.repeats or DEFAULT_REPEATS.get(backbone, 3)
        template, batches = real_batches(args.root, args.size, backbone, batch_size, args.distinct_batches, args.seed)
        data = InMemoryBatches(batches, args.warmup + steps)
        others = [side for side in args.sides if side != "bare"]
        rates: dict[tuple[str, str], list[float]] = {(side, clock): [] for side in args.sides for clock in CLOCKS}
        ratios: dict[tuple[str, str], list[float]] = {(side, clock): [] for side in others for clock in CLOCKS}
        diffs = dict.fromkeys(others, 0.0)
        for repeat in range(repeats):
            # The order alternates (bare first, then last), so that neither side always runs right after the other.
            order = args.sides if repeat % 2 == 0 else others + ["bare"]
            results: dict[str, Timed] = {}
            for side in order:
                results[side] = timed_run(side, template, data, args.warmup, batch_size, args.precision, args.seed)
                if "bare" not in results:
                    continue
                for done, result in results.items():
                    if done != "bare" and result.model is not None:
                        diffs[done] = max(diffs[done], max_weight_difference(result.model, results["bare"].model))
                        result.model = None  # free it: ViT-B-32 with AdamW's state is ~2.5 GB
            for side, result in results.items():
                for clock in CLOCKS:
                    rates[side, clock].append(result.rates[clock])
                    if side != "bare":
                        ratios[side, clock].append(result.rates[clock] / results["bare"].rates[clock])
            line = ", ".join(f"{side} " + " ".join(f"{c}={results[side].rates[c]:.2f}/s" for c in CLOCKS) for side in order)
            print(f"{backbone} repeat {repeat + 1}/{repeats}: {line}", file=sys.stderr, flush=True)
            del results
        row = {"backbone": backbone, "batch": batch_size, "steps": steps, "repeats": repeats, "rates": rates, "ratios": ratios, "diffs": diffs}
        rows.append(row)
        del template, batches, data

    others = [s for s in args.sides if s != "bare"]
    header = ["backbone", "batch", "steps x repeats", "clock"] + [f"{s} samples/s" for s in args.sides]
    header += [f"{s} overhead" for s in others] + ["max weight diff vs bare"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        for clock in CLOCKS:
            cells = [row["backbone"], str(row["batch"]), f"{row['steps']} (+{args.warmup}) x {row['repeats']}", clock]
            cells += [spread(row["rates"][s, clock], ".2f" if max(row["rates"][s, clock]) < 100 else ".1f") for s in args.sides]
            cells += [spread([100 * (1 - r) for r in row["ratios"][s, clock]], "+.1f") + " %" for s in others]
            cells.append(", ".join(f"{row['diffs'][s]:.1e}" for s in others))
            print("| " + " | ".join(cells) + " |")
    print("\nSamples/s: median (min to max) over repeats. Clocks: wall: all timed steps by the wall clock; wall, median "
          "step: the batch size over the median step's wall time (robust to bursts of load from other work, but blind "
          "to costs paid every n-th step, such as the logger's writes); cpu: all timed steps by the process's CPU time "
          "(all threads). Overhead: median (min to max) over repeats of 1 - lightning/bare samples/s, each ratio from "
          "one repeat's pair of runs (negative: Lightning was faster); goal: at most 5 %. Weight diff: the largest "
          "difference between the final weights of Lightning's and the bare loop's runs.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
