"""The input pipeline: images per second through the datamodule against raw PIL decode of the same files.

Datamodule side: the real ``SyntheticDataModule``, served for Stage III with a backbone (``serve``, as a stage
does in ``setup``), so it uses that backbone's transforms:

- ``train``: ``train_dataloader()``, the composed training set (triplets: reference and target images, the
  training text, shuffled, ``drop_last``), one epoch;
- ``evaluation``: every composed val task's gallery and query datasets, each through a ``DataLoader`` made
  as ``RetrievalEvaluation`` makes it (no shuffle, ``collate_retrieval``, a fresh loader per evaluation).

Raw side: the same image files in the same order, each ``PIL.Image.open(path).convert("RGB")`` and then the
very same transform object (the backbone's resize / crop / to-tensor / normalise), in a plain ``Dataset``
through a ``DataLoader`` with the same batch size, worker count, shuffle seed and ``drop_last``, and the
default collate. What differs is only the datamodule's own work: its records, its error handling, texts and
ids, its collate.

Each pass builds the pipeline's loaders afresh (before the clock starts: datasets, annotations, file checks)
and goes once through all of them, worker start-up and shut-down included, on both sides alike (the training
loaders are persistent on both sides, as the datamodule's is). One untimed pass per setting warms the page
cache. Two clocks: the wall clock, and CPU seconds of this process and of its joined DataLoader workers
(``getrusage``), which a machine shared with other work disturbs far less. The passes are interleaved
(datamodule, raw, raw, datamodule, ...) and each ratio is taken from one repeat's pair; the table gives
medians and their spread.

    python benchmarks/bench_data.py                          # tiny and openclip:ViT-B-32 transforms, workers 0 1 2
    python benchmarks/bench_data.py --threads 1               # on a small machine shared with others
    python benchmarks/bench_data.py --backbones tiny --repeats 5
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from ctiir.backbones import build_backbone  # noqa: E402
from ctiir.datamodules import SyntheticDataModule  # noqa: E402
from ctiir.datamodules.request import DataRequest  # noqa: E402
from ctiir.datamodules.tasks import collate_retrieval  # noqa: E402

PIPELINES = ("train", "evaluation")
CLOCKS = ("wall", "cpu")


# ---------------------------------------------------------------------------------------------- raw side
class RawImages(Dataset):
    """Decode and transform: the floor any image pipeline pays. Each item is a tuple of images."""

    def __init__(self, paths: Sequence[tuple[Path, ...]], transform: Callable[[Any], torch.Tensor]) -> None:
        self.paths = paths
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        return tuple(self.transform(Image.open(path).convert("RGB")) for path in self.paths[index])


# ---------------------------------------------------------------------------------------------- both sides
def cpu_seconds() -> float:
    """CPU time of this process and of its finished (joined) children: the DataLoader workers."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class Pipeline:
    """The loaders of one pipeline on one side (built afresh for every pass), and the images a pass decodes."""

    def __init__(self, make: Callable[[], list[tuple[DataLoader, int]]]) -> None:
        self.make = make  # -> [(loader, images per item)]
        self.images = sum(
            (len(loader) * loader.batch_size if loader.drop_last else len(loader.dataset)) * per  # type: ignore[arg-type, operator]
            for loader, per in make()
        )

    def run(self) -> tuple[float, float]:
        """One pass through every loader: (wall seconds, CPU seconds of this process and its workers)."""
        loaders = [loader for loader, _ in self.make()]
        wall, cpu = time.perf_counter(), cpu_seconds()
        for loader in loaders:
            for _ in loader:
                pass
        del loaders, loader  # persistent workers stop with their loader: joined here, so their CPU time counts
        if mp.active_children():
            raise RuntimeError(f"DataLoader workers still running after a pass: {mp.active_children()}")
        return time.perf_counter() - wall, cpu_seconds() - cpu


def evaluation_loader(dataset: Dataset, batch_size: int, workers: int, collate: Callable | None) -> DataLoader:
    """As ``RetrievalEvaluation._loader`` makes it on one process (``collate=None``: the default collate)."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate)


def datamodule_pipelines(data: SyntheticDataModule, workers: int) -> dict[str, Pipeline]:
    def train() -> list[tuple[DataLoader, int]]:
        data.num_workers = workers
        loader = data.train_dataloader()
        data.teardown("fit")  # the datamodule lets go of it (as after a fit): the pass holds the only reference
        return [(loader, 2)]

    def evaluation() -> list[tuple[DataLoader, int]]:
        tasks = data.retrieval_tasks("val", "composed")
        return [(evaluation_loader(ds, data.eval_batch_size, workers, collate_retrieval), 1) for t in tasks for ds in (t.gallery, t.queries)]

    return {"train": Pipeline(train), "evaluation": Pipeline(evaluation)}


def raw_pipelines(data: SyntheticDataModule, workers: int, seed: int) -> dict[str, Pipeline]:
    assert data.train_transform is not None and data.eval_transform is not None
    pairs = RawImages([(t.reference, t.target) for t in data.triplets("train")], data.train_transform)
    sets = []
    for task in data.retrieval_tasks("val", "composed"):
        assert task.evaluation is not None
        sets.append([(image.path,) for image in task.evaluation.gallery])
        sets.append([(query.query.reference,) for query in task.evaluation.queries])
    images = [RawImages(paths, data.eval_transform) for paths in sets]

    def train() -> list[tuple[DataLoader, int]]:
        loader = DataLoader(
            pairs,
            batch_size=data.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed),  # the datamodule's shuffle: the same order of files
            drop_last=len(pairs) > data.batch_size,
            num_workers=workers,
            persistent_workers=workers > 0,  # as the datamodule's training loader
        )
        return [(loader, 2)]

    def evaluation() -> list[tuple[DataLoader, int]]:
        return [(evaluation_loader(ds, data.eval_batch_size, workers, None), 1) for ds in images]

    return {"train": Pipeline(train), "evaluation": Pipeline(evaluation)}


def served_datamodule(root: str, size: str, backbone: str, batch_size: int, seed: int) -> SyntheticDataModule:
    """The datamodule as a Stage III stage sets it up: generated, set up, served with the backbone."""
    data = SyntheticDataModule(root=root, size=size, batch_size=batch_size, seed=seed)
    data.prepare_data()
    data.setup("fit")
    data.serve(DataRequest({"main": "triplets"}, build_backbone(backbone)))
    return data


# ---------------------------------------------------------------------------------------------- report
def spread(values: Iterable[float], fmt: str) -> str:
    values = list(values)
    return f"{format(statistics.median(values), fmt)} ({format(min(values), fmt)} to {format(max(values), fmt)})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", nargs="+", default=["tiny", "openclip:ViT-B-32"])
    parser.add_argument("--workers", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--pipelines", nargs="+", default=list(PIPELINES), choices=PIPELINES)
    parser.add_argument("--root", default=os.path.join(tempfile.gettempdir(), "ctiir-bench-synthetic"),
                        help="the synthetic benchmark (generated here when absent)")
    parser.add_argument("--size", default="default", help="synthetic benchmark size")
    parser.add_argument("--batch-size", type=int, default=64, help="training and evaluation batch size (the configs' 64)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads of the main process (default: torch's own)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)  # DataLoader workers always use one

    print(f"# Input pipeline: datamodule vs raw PIL decode + the same transforms ({platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__} with {torch.get_num_threads()} threads, batch {args.batch_size}, synthetic size {args.size}: 64x64 PNG files)\n", flush=True)
    rows = []
    for backbone in args.backbones:
        data = served_datamodule(args.root, args.size, backbone, args.batch_size, args.seed)
        for workers in args.workers:
            sides = {"datamodule": datamodule_pipelines(data, workers), "raw": raw_pipelines(data, workers, args.seed)}
            for name in args.pipelines:
                pipes = {side: pipelines[name] for side, pipelines in sides.items()}
                if pipes["datamodule"].images != pipes["raw"].images:
                    raise RuntimeError(f"{name}: the datamodule decodes {pipes['datamodule'].images} images, raw {pipes['raw'].images}")
                for pipe in pipes.values():
                    pipe.run()  # warm-up: page cache, lazy imports
                rates: dict[tuple[str, str], list[float]] = {(side, c): [] for side in pipes for c in CLOCKS}
                ratios: dict[str, list[float]] = {c: [] for c in CLOCKS}
                for repeat in range(args.repeats):
                    order = ("datamodule", "raw") if repeat % 2 == 0 else ("raw", "datamodule")
                    this = {side: pipes[side].run() for side in order}
                    for side, seconds in this.items():
                        for clock, value in zip(CLOCKS, seconds, strict=True):
                            rates[side, clock].append(pipes[side].images / value)
                    for i, clock in enumerate(CLOCKS):
                        ratios[clock].append(this["raw"][i] / this["datamodule"][i])
                print(f"{backbone} workers={workers} {name}: " + ", ".join(f"{k[0]} {k[1]} {[round(v) for v in r]}" for k, r in rates.items()),
                      file=sys.stderr, flush=True)
                rows.append((backbone, workers, name, pipes["raw"].images, rates, ratios))

    print("| transforms | workers | pipeline | images per pass | clock | datamodule images/s | raw decode images/s | datamodule / raw |")
    print("|---|---|---|---|---|---|---|---|")
    for backbone, workers, name, images, rates, ratios in rows:
        for clock in CLOCKS:
            print(f"| {backbone} | {workers} | {name} | {images} | {clock} | {spread(rates['datamodule', clock], '.0f')} "
                  f"| {spread(rates['raw', clock], '.0f')} | {spread(ratios[clock], '.2f')} |")
    print(f"\nImages per second of the wall clock and per CPU second (this process and its DataLoader workers, which a "
          f"machine shared with other work disturbs far less): median (min to max) over {args.repeats} interleaved passes; "
          "the ratio is taken per repeat. Goal: datamodule / raw >= 0.80 at every worker count.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
