"""The stream of training batches, reproducible from (seed, iteration) alone.

Epoch ``e`` visits the training images in an order that is a function of (seed, e) only, split
across processes like a DistributedSampler; the augmentation of image ``i`` in epoch ``e`` is seeded
by (seed, e, i). So a run resumed at iteration ``k`` sees exactly the batches an uninterrupted run
sees from ``k`` on, whatever the number of loader workers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch.utils.data import Dataset, Sampler

from fcnseg.data import build_loader
from fcnseg.engine.rng import isolated_rng, mix_seed
from fcnseg.errors import FcnsegError


class EpochSampler(Sampler):
    """Yields ``(epoch, index)`` pairs: this process's share of epoch ``epoch``'s permutation,
    starting after the first ``skip`` of them (for resuming mid-epoch)."""

    def __init__(
        self,
        size: int,
        *,
        seed: int,
        epoch: int,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        skip: int = 0,
    ):
        self.size, self.seed, self.epoch, self.shuffle = size, seed, epoch, shuffle
        self.rank, self.world_size, self.skip = rank, world_size, skip

    def indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        per_rank = self.size // self.world_size  # equal shares; the remainder waits for the next epoch
        return order[self.rank * per_rank : (self.rank + 1) * per_rank]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter([(self.epoch, i) for i in self.indices()[self.skip :]])

    def __len__(self) -> int:
        return max(0, self.size // self.world_size - self.skip)


class SeededAugment(Dataset):
    """Wraps a dataset; item ``(epoch, i)`` is sample ``i`` augmented under seed (seed, epoch, i)."""

    def __init__(self, dataset: Dataset, transform: Callable | None, seed: int):
        self.dataset, self.transform, self.seed = dataset, transform, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def sample_name(self, key: tuple[int, int]) -> str:
        return self.dataset.sample_name(key[1])

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        sample = self.dataset[index]
        if self.transform is None:
            return sample
        only_torch = getattr(self.transform, "draws_only_from_torch", False)
        with isolated_rng(mix_seed(self.seed, epoch, index), only_torch=only_torch):
            return self.transform(*sample)


def batches_per_epoch(dataset_size: int, batch_size: int, world_size: int) -> int:
    """Full batches each process gets per epoch (a partial last batch is dropped)."""
    per_epoch = dataset_size // world_size // batch_size
    if per_epoch < 1:
        raise FcnsegError(
            f"the training split has {dataset_size} images, fewer than batch_size ({batch_size}) "
            f"x processes ({world_size}); lower --batch-size or add data"
        )
    return per_epoch


class BatchStream:
    """Endless (images, masks) batches, the first one being the batch of ``start_iteration``, or the
    one at ``position`` (epoch, batches already drawn in that epoch) when given: the exact place a
    checkpoint saved, which differs from ``start_iteration`` once whole batches were skipped as bad.

    ``skipped`` maps every sample skipped as bad (``skip_bad``) to its reason, each logged once. An
    epoch in which no good sample could be drawn stops the stream with FcnsegError (not an endless
    loop)."""

    def __init__(
        self,
        dataset: Dataset,
        *,
        transform: Callable | None,
        batch_size: int,
        seed: int,
        start_iteration: int,
        workers: int = 0,
        rank: int = 0,
        world_size: int = 1,
        pad_value=(124, 116, 104),
        skip_bad: bool = False,
        position: tuple[int, int] | None = None,
        skipped: dict | None = None,
    ):
        self.per_epoch = batches_per_epoch(len(dataset), batch_size, world_size)
        self.epoch, self.start = position if position is not None else divmod(start_iteration, self.per_epoch)
        self.skipped: dict[str, str] = {} if skipped is None else skipped
        self._loader = None
        self._options = dict(
            batch_size=batch_size,
            seed=seed,
            workers=workers,
            rank=rank,
            world_size=world_size,
            pad_value=pad_value,
            skip_bad=skip_bad,
        )
        self._augmented = SeededAugment(dataset, transform, seed)
        self._size = len(dataset)
        self._batches = self._generate()

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        return next(self._batches)

    @property
    def position(self) -> tuple[int, int]:
        """(epoch, batches drawn in it so far): where a resumed stream must start."""
        drawn = self.start + (self._loader.raw_batches if self._loader is not None else 0)
        return (self.epoch + 1, 0) if drawn >= self.per_epoch else (self.epoch, drawn)

    def _generate(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        o = self._options
        while True:
            sampler = EpochSampler(
                self._size,
                seed=o["seed"],
                epoch=self.epoch,
                rank=o["rank"],
                world_size=o["world_size"],
                skip=self.start * o["batch_size"],
            )
            self._loader = build_loader(
                self._augmented,
                batch_size=o["batch_size"],
                shuffle=False,
                sampler=sampler,
                workers=o["workers"],
                seed=mix_seed(o["seed"], self.epoch),
                pad_value=o["pad_value"],
                drop_last=True,
                skip_bad=o["skip_bad"],
                seen=self.skipped,
            )
            good = 0
            for batch in self._loader:
                good += 1
                yield batch
            if good == 0 and self.start == 0:
                raise FcnsegError(
                    f"no good training sample in a whole epoch: all {len(self.skipped)} samples "
                    "drawn were skipped as bad; fix the data (`fcnseg data check` lists every problem)"
                )
            self.epoch, self.start, self._loader = self.epoch + 1, 0, None


def training_batches(dataset: Dataset, **options) -> BatchStream:
    """Endless (images, masks) batches, the first one being the batch of ``start_iteration`` (see
    :class:`BatchStream` for the options)."""
    return BatchStream(dataset, **options)
