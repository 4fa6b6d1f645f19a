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

Each pass goes once through every loader of the pipeline; loaders and datasets are built before the clock
starts. The training loaders keep their workers across passes (``persistent_workers``, as the datamodule's
does across epochs); the evaluation loaders start theirs on every pass, as the callback's do at every
evaluation, on both sides alike. One untimed pass per setting
warms the page cache. The passes are interleaved (datamodule, raw, raw, datamodule, ...) and each ratio is
taken from one repeat's pair; the table gives medians and their spread.

    python benchmarks/bench_data.py                          # tiny and openclip:ViT-B-32 transforms, workers 0 1 2
    python benchmarks/bench_data.py --threads 1               # on a small machine shared with others
    python benchmarks/bench_data.py --backbones tiny --repeats 5
"""

from __future__ import annotations

import argparse
import os
import platform
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
class Pipeline:
    """The loaders of one pipeline on one side, and how many images a pass decodes."""

    def __init__(self, loaders: list[DataLoader], images_per_item: list[int]) -> None:
        self.loaders = loaders
        self.images = sum(
            (len(loader) * loader.batch_size if loader.drop_last else len(loader.dataset)) * per  # type: ignore[arg-type, operator]
            for loader, per in zip(loaders, images_per_item, strict=True)
        )

    def run(self) -> float:
        """One pass through every loader; returns the seconds it took."""
        start = time.perf_counter()
        for loader in self.loaders:
            for _ in loader:
                pass
        return time.perf_counter() - start


def evaluation_loader(dataset: Dataset, batch_size: int, workers: int, collate: Callable | None) -> DataLoader:
    """As ``RetrievalEvaluation._loader`` makes it on one process (``collate=None``: the default collate)."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate)


def datamodule_pipelines(data: SyntheticDataModule, workers: int) -> dict[str, Pipeline]:
    data.num_workers = workers
    train = data.train_dataloader()
    tasks = data.retrieval_tasks("val", "composed")
    evaluation = [evaluation_loader(ds, data.eval_batch_size, workers, collate_retrieval) for t in tasks for ds in (t.gallery, t.queries)]
    return {"train": Pipeline([train], [2]), "evaluation": Pipeline(evaluation, [1] * len(evaluation))}


def raw_pipelines(data: SyntheticDataModule, workers: int, seed: int) -> dict[str, Pipeline]:
    assert data.train_transform is not None and data.eval_transform is not None
    triplets = data.triplets("train")
    pairs = RawImages([(t.reference, t.target) for t in triplets], data.train_transform)
    train = DataLoader(
        pairs,
        batch_size=data.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),  # the datamodule's shuffle: the same order of files
        drop_last=len(pairs) > data.batch_size,
        num_workers=workers,
        persistent_workers=workers > 0,  # as the datamodule's training loader: workers live across epochs
    )
    loaders = []
    for task in data.retrieval_tasks("val", "composed"):
        assert task.evaluation is not None
        gallery = [(image.path,) for image in task.evaluation.gallery]
        queries = [(query.query.reference,) for query in task.evaluation.queries]
        loaders += [evaluation_loader(RawImages(paths, data.eval_transform), data.eval_batch_size, workers, None) for paths in (gallery, queries)]
    return {"train": Pipeline([train], [2]), "evaluation": Pipeline(loaders, [1] * len(loaders))}


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
    return f"{format(statistics.median(values), fmt)} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", nargs="+", default=["tiny", "openclip:ViT-B-32"])
    parser.add_argument("--workers", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--pipelines", nargs="+", default=list(PIPELINES), choices=PIPELINES)
    parser.add_argument("--root", default=os.path.join(tempfile.gettempdir(), "ctiir-bench-synthetic"),
                        help="the synthetic benchmark (generated here when absent)")
    parser.add_argument("--size", default="default", help="synthetic benchmark size")
    parser.add_argument("--batch-size", type=int, default=64, help="training and evaluation batch size (the configs' 64)")
    parser.add_argument("--repeats", type=int, default=3)
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
                rates: dict[str, list[float]] = {"datamodule": [], "raw": []}
                ratios = []
                for repeat in range(args.repeats):
                    order = ("datamodule", "raw") if repeat % 2 == 0 else ("raw", "datamodule")
                    this = {side: pipes[side].images / pipes[side].run() for side in order}
                    for side, rate in this.items():
                        rates[side].append(rate)
                    ratios.append(this["datamodule"] / this["raw"])
                print(f"{backbone} workers={workers} {name}: datamodule {rates['datamodule']}, raw {rates['raw']}", file=sys.stderr, flush=True)
                rows.append((backbone, workers, name, pipes["raw"].images, rates, ratios))

    print("| transforms | workers | pipeline | images per pass | datamodule images/s | raw decode images/s | datamodule / raw |")
    print("|---|---|---|---|---|---|---|")
    for backbone, workers, name, images, rates, ratios in rows:
        print(f"| {backbone} | {workers} | {name} | {images} | {spread(rates['datamodule'], '.0f')} | {spread(rates['raw'], '.0f')} "
              f"| {spread(ratios, '.2f')} |")
    print(f"\nMedian (min-max) over {args.repeats} interleaved passes; the ratio is taken per repeat. Goal: datamodule / raw "
          ">= 0.80 at every worker count.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
