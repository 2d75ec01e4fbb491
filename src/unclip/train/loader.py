"""Resumable, seeded, fault-tolerant batches for the training engine.

Map-style datasets: each epoch is a permutation drawn from ``seed + epoch``;
global batch ``b`` is ``perm[b*W*B:(b+1)*W*B]`` and rank ``r`` takes its
``r``-th slice of ``B`` samples, so 1 process with batch ``W*B`` and ``W``
processes with batch ``B`` see the same global batches. The position is
(epoch, batches consumed in the epoch); resuming re-slices the permutation,
it never replays data. Every sample is loaded under its own RNG seed from
(seed, epoch, index), so random augmentations repeat exactly whatever the
number of workers or processes, and resumed runs match uninterrupted ones.

Iterable datasets (webdataset streaming) are strided over ranks sample by
sample (``i % W == r``); ``set_epoch(epoch)`` is called if the dataset has
it; resuming fast-forwards by re-reading the consumed batches.

A sample whose loading raises is replaced by a ``BadSample`` marker in the
worker (the worker lives on); ``SafeCollate`` drops it and counts it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler

from unclip.errors import DataError

__all__ = ["BadSample", "LoaderBatch", "BatchStream", "global_batches"]


@dataclass
class BadSample:
    index: Any
    error: str


@dataclass
class LoaderBatch:
    batch: Any            # the collated good samples, None if all were bad
    size: int             # number of good samples
    bad: int              # samples dropped because loading raised
    error: str            # first error message among them ('' if none)


def _sample_seed(seed: int, epoch: int, index: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + index * 104_729 + 12_345) % (2**31 - 1)


class SeededSamples(Dataset):
    """Wraps a map-style dataset: item ``(epoch, index)`` is loaded under its own RNG seed."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        seed = _sample_seed(self.seed, epoch, index)
        np_state, py_state = np.random.get_state(), random.getstate()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            np.random.seed(seed)
            random.seed(seed)
            try:
                return self.dataset[index]
            except Exception as exc:  # a bad file must not kill the worker
                return BadSample(index, f"{type(exc).__name__}: {exc}".splitlines()[0])
            finally:
                np.random.set_state(np_state)
                random.setstate(py_state)


def global_batches(length: int, batch_size: int, world_size: int) -> int:
    """Number of full global batches per epoch for a map-style dataset of ``length`` samples."""
    return length // (batch_size * world_size)


class EpochSampler(Sampler):
    """Yields ``(epoch, index)`` keys for this rank's slice of each global batch, from ``start_batch``."""

    def __init__(self, length: int, *, epoch: int, start_batch: int, seed: int,
                 batch_size: int, rank: int, world_size: int, shuffle: bool = True):
        self.length, self.epoch, self.start_batch = length, epoch, start_batch
        self.seed, self.batch_size, self.rank, self.world_size = seed, batch_size, rank, world_size
        self.shuffle = shuffle
        self.batches = global_batches(length, batch_size, world_size)

    def __len__(self) -> int:
        return max(0, self.batches - self.start_batch) * self.batch_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            perm = torch.randperm(self.length, generator=generator).tolist()
        else:
            perm = list(range(self.length))
        global_batch = self.batch_size * self.world_size
        for b in range(self.start_batch, self.batches):
            first = b * global_batch + self.rank * self.batch_size
            for index in perm[first:first + self.batch_size]:
                yield (self.epoch, index)


class RankStride(IterableDataset):
    """An iterable dataset's samples ``i`` with ``i % world_size == rank``; loading errors become BadSample."""

    def __init__(self, dataset: IterableDataset, rank: int, world_size: int):
        self.dataset, self.rank, self.world_size = dataset, rank, world_size

    def __iter__(self):
        iterator = iter(self.dataset)
        position = 0
        while True:
            try:
                item = next(iterator)
            except StopIteration:
                return
            except Exception as exc:  # noqa: BLE001 - a generator that raised is finished; stop its epoch
                if position % self.world_size == self.rank:
                    yield BadSample(position, f"{type(exc).__name__}: {exc}".splitlines()[0])
                position += 1
                continue
            if position % self.world_size == self.rank:
                yield item
            position += 1


class SafeCollate:
    """Drop ``BadSample`` markers, collate the rest with the stage's collate, count what was dropped."""

    def __init__(self, collate: Callable[[list[Any]], Any]):
        self.collate = collate

    def __call__(self, samples: list[Any]) -> LoaderBatch:
        good = [s for s in samples if not isinstance(s, BadSample)]
        bad = [s for s in samples if isinstance(s, BadSample)]
        batch = self.collate(good) if good else None
        return LoaderBatch(batch, len(good), len(bad), bad[0].error if bad else "")


class BatchStream:
    """Endless micro-batches across epochs, with a resumable position (epoch, batches consumed in it)."""

    def __init__(self, dataset: Dataset, collate: Callable, *, batch_size: int, seed: int, rank: int,
                 world_size: int, num_workers: int = 0, pin_memory: bool = False,
                 epoch: int = 0, batch_index: int = 0):
        self.dataset, self.collate = dataset, SafeCollate(collate)
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.epoch, self.batch_index = epoch, batch_index
        self.iterable = isinstance(dataset, IterableDataset)
        if not self.iterable:
            length = len(dataset)
            if global_batches(length, batch_size, world_size) == 0:
                raise DataError(f"the dataset has {length} samples, fewer than one global batch "
                                f"(batch_size {batch_size} x {world_size} processes); lower train.batch_size")
        self._iterator: Iterator[LoaderBatch] | None = None

    def _loader(self) -> DataLoader:
        common = dict(batch_size=self.batch_size, collate_fn=self.collate, drop_last=True,
                      num_workers=self.num_workers, pin_memory=self.pin_memory,
                      generator=torch.Generator().manual_seed(self.seed + self.epoch))
        if self.iterable:
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(self.epoch)
            return DataLoader(RankStride(self.dataset, self.rank, self.world_size), **common)
        sampler = EpochSampler(len(self.dataset), epoch=self.epoch, start_batch=self.batch_index,
                               seed=self.seed, batch_size=self.batch_size, rank=self.rank,
                               world_size=self.world_size)
        return DataLoader(SeededSamples(self.dataset, self.seed), sampler=sampler, **common)

    def _start_epoch(self) -> Iterator[LoaderBatch]:
        iterator = iter(self._loader())
        if self.iterable:  # no random access: re-read what the interrupted run consumed
            for _ in range(self.batch_index):
                if next(iterator, None) is None:
                    break
        return iterator

    def __iter__(self) -> "BatchStream":
        return self

    def __next__(self) -> LoaderBatch:
        for attempt in range(2):
            if self._iterator is None:
                self._iterator = self._start_epoch()
            item = next(self._iterator, None)
            if item is not None:
                self.batch_index += 1
                return item
            if attempt == 1 or self.batch_index == 0:
                break
            self._iterator, self.epoch, self.batch_index = None, self.epoch + 1, 0
        raise DataError("the training dataset yielded no complete batch; "
                        "check the data path or lower train.batch_size")

    def position(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch_index": self.batch_index}
