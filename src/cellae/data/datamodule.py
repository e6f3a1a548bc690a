"""Batches for Lightning, cut from the cache: no image is decoded during training.

The dataloaders yield only row numbers of the cache; Lightning's ``transfer_batch_to_device``
hook turns a batch of row numbers into a :class:`CellBatch` of image and mask tensors on the
training device, so the LightningModule sees images and masks whatever datamodule feeds it.
With ``steps_per_call`` above 1 they yield :class:`Steps`, the batches of that many optimizer
steps at once, which the module steps through in one call of Lightning's loop: the loop's fixed
cost (its hooks, the fetcher, the progress counters; some 0.5 ms on a CPU, several on a GPU)
is then paid once for all of them, as Keras' ``steps_per_execution`` does. The batches and
their order are those of one step a call, so the weights come out the same. Where the device has
room, the whole uint8 cache is copied there once and batches are cut on the device, so each
step moves nothing but indices. The shuffle order is a function of (seed, epoch) alone, on one
device or many, so a resumed run sees the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal, NamedTuple

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from cellae.data.cache import CellCache

# share of the GPU's free memory the cache may take when data_on_device is "auto"
DEVICE_MEMORY_SHARE = 0.5


class CellBatch(NamedTuple):
    """What a training step receives: uint8 images (B, C, H, W), masks (B, H, W), labels (B,),
    and where the model is told each cell's patient, its slot (B,): 1 + the patient's place
    among the training patients, 0 for one not trained on (see cellae.models.condition)."""

    images: torch.Tensor
    masks: torch.Tensor
    labels: torch.Tensor
    patients: torch.Tensor | None = None


class Steps(list):
    """The batches of several optimizer steps, in order, handed to one ``training_step`` (or
    ``validation_step``) call; a type of its own so that no plain list batch reads as one."""


def steps_of(batch: Any) -> list[Any]:
    """The batches of one call of Lightning's loop: those of :class:`Steps`, else the one."""
    return list(batch) if isinstance(batch, Steps) else [batch]


class _Rows(Dataset):
    """Row numbers of the cache; an item is a whole batch of them, as its sampler hands it."""

    def __init__(self, rows: np.ndarray) -> None:
        self.rows = np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, batch: torch.Tensor) -> torch.Tensor:
        return batch


class _RowBatches(Sampler[torch.Tensor]):
    """A :class:`DistributedSampler`'s order of the rows, cut into batches, each one LongTensor.

    The batches a ``DataLoader(batch_size=...)`` would make of the same order, the last one
    short, handed out whole: the loader then fetches one item a step where it would fetch one
    per image (16 at batch 16) and stack them.
    ``set_epoch`` is the sampler's, which Lightning calls, so a resume reproduces the shuffle.
    With ``steps_per_call`` above 1, the same batches come that many at a time, as :class:`Steps`.
    """

    def __init__(self, rows: np.ndarray, batch_size: int, replicas: int, rank: int,
                 shuffle: bool, seed: int, steps_per_call: int = 1) -> None:
        self.rows = torch.from_numpy(np.asarray(rows, dtype=np.int64))
        self.batch_size = batch_size
        self.steps_per_call = steps_per_call
        self.order = DistributedSampler(_Rows(rows), num_replicas=replicas, rank=rank,
                                        shuffle=shuffle, seed=seed, drop_last=False)

    def set_epoch(self, epoch: int) -> None:
        self.order.set_epoch(epoch)

    @property
    def steps(self) -> int:
        """The batches of an epoch, each one optimizer step."""
        return -(-len(self.order) // self.batch_size)

    def __len__(self) -> int:
        return -(-self.steps // self.steps_per_call)

    def __iter__(self) -> Iterator[torch.Tensor | Steps]:
        # a generator: the order is drawn at the first batch, not when the loader makes its
        # iterator, which Lightning does before it sets a resumed run's epoch
        picked = self.rows[torch.tensor(list(self.order), dtype=torch.int64)]
        batches = picked.split(self.batch_size)
        if self.steps_per_call == 1:
            yield from batches
            return
        for start in range(0, len(batches), self.steps_per_call):
            yield Steps(batches[start:start + self.steps_per_call])


class CellDataModule(L.LightningDataModule):
    """Train and test batches of one split of a :class:`CellCache`."""

    def __init__(
        self,
        cache: CellCache,
        train_idx: np.ndarray,
        test_idx: np.ndarray,
        batch_size: int,
        seed: int = 0,
        num_workers: int = 0,
        data_on_device: Literal["auto", "always", "never"] = "auto",
        steps_per_call: int = 1,
        with_patients: bool = False,
    ) -> None:
        super().__init__()
        self.cache = cache
        self.train_idx = np.asarray(train_idx, dtype=np.int64)
        self.test_idx = np.asarray(test_idx, dtype=np.int64)
        self.batch_size = batch_size
        self.seed = seed
        self.num_workers = num_workers
        self.data_on_device = data_on_device
        self.steps_per_call = steps_per_call
        self._train_batches: _RowBatches | None = None
        self._resident: dict[torch.device, tuple[torch.Tensor, ...]] = {}
        # each cache row's patient slot, where batches carry them
        self.slot_of_row = patient_slots(cache.patients, self.train_idx) if with_patients else None

    @property
    def training_patients(self) -> int:
        """The patients of the training rows, each a slot of its own in the batches."""
        return 0 if self.slot_of_row is None else int(self.slot_of_row.max(initial=0))

    def _loader(self, rows: np.ndarray, shuffle: bool) -> DataLoader:
        return DataLoader(_Rows(rows), batch_size=None, sampler=self._batches(rows, shuffle),
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def _batches(self, rows: np.ndarray, shuffle: bool) -> _RowBatches:
        trainer = self.trainer
        replicas = trainer.world_size if trainer is not None else 1
        rank = trainer.global_rank if trainer is not None else 0
        # A DistributedSampler's order even on one device: it depends only on (seed, epoch),
        # and Lightning calls set_epoch on it, so resuming reproduces the shuffle.
        # Several steps a call on one process only: DDP's wrapper, which Lightning's call goes
        # through, sets up one gradient exchange per call, not per step.
        group = self.steps_per_call if replicas == 1 else 1
        return _RowBatches(rows, self.batch_size, replicas, rank, shuffle, self.seed, group)

    def train_dataloader(self) -> DataLoader:
        loader = self._loader(self.train_idx, shuffle=True)
        self._train_batches = loader.sampler
        return loader

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.test_idx, shuffle=False)

    def _keep_on_device(self, device: torch.device) -> bool:
        if self.data_on_device == "never":
            return False
        if self.data_on_device == "always":
            return True
        if device.type != "cuda":
            return False  # on the CPU the memory map already is the fastest copy
        free, _ = torch.cuda.mem_get_info(device)
        needed = self.cache.images.nbytes + self.cache.masks.nbytes
        return needed < DEVICE_MEMORY_SHARE * free

    def transfer_batch_to_device(self, batch: Any, device: torch.device,
                                 dataloader_idx: int) -> CellBatch | Steps:
        if isinstance(batch, Steps):
            return Steps(self.gather(rows, device) for rows in batch)
        return self.gather(batch, device)

    def train_steps(self) -> int:
        """The optimizer steps of one training epoch in this process (a call may run several)."""
        if self._train_batches is None:
            raise RuntimeError("train_steps() is known once the training loader is made")
        return self._train_batches.steps

    def gather(self, rows: torch.Tensor, device: torch.device) -> CellBatch:
        """uint8 images (B, C, H, W), uint8 masks (B, H, W), int64 labels (B,) and, where asked
        for, int64 patient slots (B,) on ``device``.

        On a GPU nothing here waits for the device: a copy from pageable host memory would
        (CUDA runs it only after every kernel already queued), and a wait each step leaves the
        GPU idle while Python prepares the next one. So the row numbers, and whatever else
        crosses, go through pinned memory without blocking, and a resident cache gathers
        labels on the device too.
        """
        rows = rows.cpu()
        if device not in self._resident and self._keep_on_device(device):
            # np.array copies the read-only memory map into memory torch may own
            self._resident[device] = tuple(
                torch.from_numpy(np.array(part)).to(device) for part in
                (self.cache.images, self.cache.masks, self.cache.labels, *self._slots()))
        if device in self._resident:
            on_device = to_device(rows, device)
            return CellBatch(*(part[on_device] for part in self._resident[device]))
        picked = rows.numpy()
        # memory-mapped reads are fastest in file order; the batch's own order is restored after
        order = np.argsort(picked)
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        images = torch.from_numpy(np.asarray(self.cache.images[picked[order]])[back])
        masks = torch.from_numpy(np.asarray(self.cache.masks[picked[order]])[back])
        return CellBatch(
            to_device(images, device),
            to_device(masks, device),
            to_device(torch.from_numpy(np.asarray(self.cache.labels[picked])), device),
            *(to_device(torch.from_numpy(slots[picked]), device) for slots in self._slots()),
        )

    def _slots(self) -> list[np.ndarray]:
        return [] if self.slot_of_row is None else [self.slot_of_row]


def patient_slots(patients: np.ndarray, train_idx: np.ndarray) -> np.ndarray:
    """Each row's patient slot: 1 + the place of its patient among the patients of the
    ``train_idx`` rows, in sorted order (the same for the same split on any machine); 0 for a
    patient with no training row."""
    names = np.asarray(patients).astype(str)
    seen = np.unique(names[train_idx])
    if len(seen) == 0:
        return np.zeros(len(names), dtype=np.int64)
    place = np.searchsorted(seen, names)
    known = (place < len(seen)) & (seen[np.minimum(place, len(seen) - 1)] == names)
    return np.where(known, place + 1, 0).astype(np.int64)


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host ``tensor`` on ``device``; to a GPU through pinned memory and without waiting (a
    copy from pageable memory would wait for every kernel already queued)."""
    pin = device.type == "cuda"
    return (tensor.pin_memory() if pin else tensor).to(device, non_blocking=pin)
