"""Training order and augmentation that a resumed run replays exactly.

A run resumed from a checkpoint must see the same batches, with the same random crops and caption orders,
as the run that was not interrupted. PyTorch's ``RandomSampler`` draws each epoch's order from a generator
that advances epoch after epoch, and augmentations draw from the process-wide RNG; neither is in a
Lightning checkpoint, so a resumed run used to replay epoch 0's order with other crops. Here everything
random is *derived* instead of carried along:

- :class:`EpochSampler` shuffles with a seed derived from ``(seed, epoch, pass)``. ``pass`` counts restarts
  within an epoch (``CombinedLoader``'s ``max_size_cycle`` restarts the shorter loader). It is a
  ``DistributedSampler``, so Lightning sets its epoch, and under DDP it shards (Lightning does not replace
  it).
- It yields :class:`Draw` keys: the item index and a seed derived from ``(seed, epoch, pass, index)``.
  :class:`DrawnDataset` builds the item with that seed for the CPU ``torch`` RNG (random crops) and for a
  ``random.Random`` (caption order), whatever worker process builds it.
- :class:`ResumableLoader` is a ``DataLoader`` whose position (epoch, pass, batches delivered) is in the
  checkpoint: Lightning saves ``state_dict()`` of such loaders and gives it back on resume, and the sampler
  then skips the batches already trained on. Resuming at an epoch boundary or mid-epoch gives the same
  weights as not stopping (tests/test_resume.py).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler


class Draw(NamedTuple):
    """A training item to build: its ``index`` and the ``seed`` of its randomness."""

    index: int
    seed: int


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers, well mixed (``numpy.random.SeedSequence``): nearby inputs, unrelated seeds."""
    state = np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


class EpochSampler(DistributedSampler):
    """Shuffled :class:`Draw` keys, from ``(seed, epoch, pass)`` alone; ``plan`` sets the pass and a start."""

    def __init__(self, dataset: Dataset, seed: int, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.pass_index = 0
        self.start = 0  # keys of this rank to skip in the next pass (resuming mid-pass)

    def plan(self, pass_index: int, start: int = 0) -> None:
        self.pass_index, self.start = pass_index, start

    def __iter__(self) -> Iterator[Draw]:  # type: ignore[override]
        n = len(self.dataset)  # type: ignore[arg-type]
        order = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, self.pass_index))
        indices = torch.randperm(n, generator=order).tolist()
        if self.total_size > n:  # pad as DistributedSampler does, so every rank gets the same count
            indices += (indices * (self.total_size // max(n, 1) + 1))[: self.total_size - n]
        mine = indices[self.rank : self.total_size : self.num_replicas]
        for i in mine[self.start :]:
            yield Draw(i, derive_seed(self.seed, self.epoch, self.pass_index, i))


class DrawnDataset(Dataset):
    """Items built on access by ``make(record, index, rng)``; a :class:`Draw` key seeds their randomness.

    With a ``Draw``, the CPU ``torch`` RNG is seeded for the call (and restored after it) and ``rng`` is a
    ``random.Random`` of the same seed. A plain index (evaluation, inspection) gets a ``random.Random``
    seeded by the index and leaves the ``torch`` RNG alone.
    """

    def __init__(self, records: Sequence[Any], make: Callable[[Any, int, random.Random], dict[str, Any]]) -> None:
        self.records = records
        self.make = make

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: Draw | int) -> dict[str, Any]:
        if isinstance(key, Draw):
            with torch.random.fork_rng(devices=[]):
                # The CPU generator only, which is what data transforms draw from: ``torch.manual_seed`` also
                # seeds every accelerator's generator, and where none is initialised that records a stack trace
                # per call (a third of the input pipeline's time, benchmarks/bench_data.py).
                torch.default_generator.manual_seed(key.seed)
                return self.make(self.records[key.index], key.index, random.Random(key.seed))
        return self.make(self.records[key], key, random.Random(key))


class ResumableLoader(DataLoader):
    """A ``DataLoader`` over an :class:`EpochSampler` whose position is saved with the checkpoint.

    Lightning calls ``state_dict`` when it saves and ``load_state_dict`` when it resumes (its ``_Stateful``
    protocol). Iteration is lazy: the sampler plans its pass at the first ``next``, after Lightning has
    set the epoch, so that the restored position applies to the epoch it belongs to.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._position = (-1, -1, 0)  # (epoch, pass, batches delivered in that pass)
        self._restored: tuple[int, int, int] | None = None

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        return self._batches()

    def _batches(self) -> Iterator[Any]:
        sampler = self.sampler
        if not isinstance(sampler, EpochSampler):  # e.g. replaced by Lightning for overfit_batches
            yield from super().__iter__()
            return
        epoch = sampler.epoch
        skip = 0
        if self._restored is not None and self._restored[0] == epoch:
            pass_index, skip = self._restored[1], self._restored[2]
        else:
            pass_index = self._position[1] + 1 if self._position[0] == epoch else 0
        self._restored = None
        self._position = (epoch, pass_index, skip)
        batch_size = self.batch_size or 1
        sampler.plan(pass_index, skip * batch_size)
        for batch in super().__iter__():
            self._position = (epoch, pass_index, self._position[2] + 1)
            yield batch

    def state_dict(self) -> dict[str, int]:
        epoch, pass_index, batches = self._position
        return {"epoch": epoch, "pass": pass_index, "batches": batches}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._restored = (int(state["epoch"]), int(state["pass"]), int(state["batches"]))
        self._position = self._restored
