"""`build_loader`: a DataLoader that pads batches and never lets a bad sample pass silently.

A sample that cannot be read (its dataset raises FcnsegError naming the file) either stops the run
with that one-line error, or, with ``skip_bad=True``, is left out of its batch and logged as one
plain line naming the file, once per file (``seen``, a dict shared between loaders, remembers what
was logged already); ``loader.skipped`` lists (name, reason) for every sample skipped so far, also
when the samples were read in worker processes. ``loader.raw_batches`` counts the batches drawn
from the sampler, including batches left empty because every sample in them was bad.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from fcnseg.data.transforms import DEFAULT_PAD, PadCollate
from fcnseg.errors import FcnsegError

log = logging.getLogger(__name__)

Transform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class _BadSample:
    """What a worker returns instead of raising, so the main process can report it cleanly."""

    def __init__(self, name: str, reason: str):
        self.name, self.reason = name, reason


class _Batch(tuple):
    """(images, masks) plus the bad samples met while building it."""

    bad: list[_BadSample]


class _GuardedDataset(Dataset):
    def __init__(self, dataset: Dataset, transform: Transform | None):
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        try:
            sample = self.dataset[index]  # (image, mask), or (image, mask, pixel weights)
        except FcnsegError as exc:
            name = self.dataset.sample_name(index) if hasattr(self.dataset, "sample_name") else str(index)
            return _BadSample(name, str(exc))
        if self.transform is not None:
            sample = self.transform(*sample)
        return sample


class _GuardedCollate:
    """Pads the good samples into a batch and lists the bad ones. With ``compact`` (worker
    processes), masks travel as uint8, which halves the cost of sending a batch between processes;
    SegmentationLoader turns them back into int64."""

    def __init__(self, collate: PadCollate, compact: bool):
        self.collate, self.compact = collate, compact

    def __call__(self, samples: Sequence) -> _Batch:
        good = [s for s in samples if not isinstance(s, _BadSample)]
        images, masks, *weights = self.collate(good)
        if self.compact and (masks.numel() == 0 or (masks.min() >= 0 and masks.max() <= 255)):
            masks = masks.to(torch.uint8)
        batch = _Batch((images, masks, *weights))
        batch.bad = [s for s in samples if isinstance(s, _BadSample)]
        return batch


def _worker_init(worker_id: int) -> None:
    torch.set_num_threads(1)  # workers decode and augment; leave the cores' threads to the model


class SegmentationLoader(DataLoader):
    """A DataLoader yielding (images uint8 N,3,H,W; masks int64 N,H,W). See the module docstring."""

    def __init__(self, dataset: Dataset, *, skip_bad: bool, seen: dict | None = None, **kwargs):
        super().__init__(dataset, **kwargs)
        self.skip_bad = skip_bad
        self.skipped: list[tuple[str, str]] = []
        self.seen = {} if seen is None else seen
        self.raw_batches = 0

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in super().__iter__():
            self.raw_batches += 1
            for bad in batch.bad:
                if not self.skip_bad:
                    raise FcnsegError(bad.reason)
                self.skipped.append((bad.name, bad.reason))
                if bad.name not in self.seen:
                    self.seen[bad.name] = bad.reason
                    log.warning("skipped bad sample %s: %s", bad.name, bad.reason.removeprefix(f"{bad.name}: "))
            images, masks, *weights = batch  # weights: per-pixel loss weights, when the samples have them
            if len(images):
                yield (images, masks.long(), *weights)


def build_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    transform: Transform | None = None,
    workers: int = 0,
    sampler: Sampler | None = None,
    seed: int = 0,
    skip_bad: bool = False,
    pad_value: Sequence[int] = DEFAULT_PAD,
    drop_last: bool = False,
    seen: dict | None = None,
) -> SegmentationLoader:
    """A loader over ``dataset`` that applies ``transform`` to each (image, mask) and pads batches.

    ``seed`` fixes the shuffling order and the augmentation randomness of the workers (each worker's
    torch RNG is seeded from it). ``sampler`` (e.g. a DistributedSampler) replaces ``shuffle``.
    """
    if batch_size < 1:
        raise FcnsegError(f"batch size must be at least 1 (got {batch_size})")
    if workers < 0:
        raise FcnsegError(f"workers must be 0 or more (got {workers})")
    ignore_index = getattr(dataset, "ignore_index", 255)
    return SegmentationLoader(
        _GuardedDataset(dataset, transform),
        skip_bad=skip_bad,
        seen=seen,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=workers,
        collate_fn=_GuardedCollate(PadCollate(pad_value, ignore_index), compact=workers > 0),
        generator=torch.Generator().manual_seed(seed),
        worker_init_fn=_worker_init if workers > 0 else None,
        persistent_workers=workers > 0,
        drop_last=drop_last,
    )
