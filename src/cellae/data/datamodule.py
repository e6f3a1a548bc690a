"""Batches for Lightning, cut from the cache: no image is decoded during training.

The dataloaders yield only row numbers of the cache; Lightning's ``transfer_batch_to_device``
hook turns a batch of row numbers into a :class:`CellBatch` of image and mask tensors on the
training device, so the LightningModule sees images and masks whatever datamodule feeds it. Where the device has
room, the whole uint8 cache is copied there once and batches are cut on the device, so each
step moves nothing but indices. The shuffle order is a function of (seed, epoch) alone, on one
device or many, so a resumed run sees the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from cellae.data.cache import CellCache

# share of the GPU's free memory the cache may take when data_on_device is "auto"
DEVICE_MEMORY_SHARE = 0.5


class CellBatch(NamedTuple):
    """What a training step receives: uint8 images (B, C, H, W), masks (B, H, W), labels (B,)."""

    images: torch.Tensor
    masks: torch.Tensor
    labels: torch.Tensor


class _Rows(Dataset):
    """Row numbers of the cache, one per item; batches of them are collated to a LongTensor."""

    def __init__(self, rows: np.ndarray) -> None:
        self.rows = np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item: int) -> int:
        return int(self.rows[item])


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
    ) -> None:
        super().__init__()
        self.cache = cache
        self.train_idx = np.asarray(train_idx, dtype=np.int64)
        self.test_idx = np.asarray(test_idx, dtype=np.int64)
        self.batch_size = batch_size
        self.seed = seed
        self.num_workers = num_workers
        self.data_on_device = data_on_device
        self._resident: dict[torch.device, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def _loader(self, rows: np.ndarray, shuffle: bool) -> DataLoader:
        trainer = self.trainer
        replicas = trainer.world_size if trainer is not None else 1
        rank = trainer.global_rank if trainer is not None else 0
        # A DistributedSampler even on one device: its order depends only on (seed, epoch),
        # and Lightning calls set_epoch on it, so resuming reproduces the shuffle.
        sampler = DistributedSampler(
            _Rows(rows), num_replicas=replicas, rank=rank, shuffle=shuffle, seed=self.seed,
            drop_last=False,
        )
        return DataLoader(
            _Rows(rows), batch_size=self.batch_size, sampler=sampler,
            num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_idx, shuffle=True)

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

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> CellBatch:
        return self.gather(batch, device)

    def gather(self, rows: torch.Tensor, device: torch.device) -> CellBatch:
        """uint8 images (B, C, H, W), uint8 masks (B, H, W) and int64 labels (B,) on ``device``.

        On a GPU nothing here waits for the device: a copy from pageable host memory would
        (CUDA runs it only after every kernel already queued), and a wait each step leaves the
        GPU idle while Python prepares the next one. So the row numbers, and whatever else
        crosses, go through pinned memory without blocking, and a resident cache gathers
        labels on the device too.
        """
        pin = device.type == "cuda"
        rows = rows.cpu()
        if device not in self._resident and self._keep_on_device(device):
            # np.array copies the read-only memory map into memory torch may own
            self._resident[device] = (
                torch.from_numpy(np.array(self.cache.images)).to(device),
                torch.from_numpy(np.array(self.cache.masks)).to(device),
                torch.from_numpy(np.array(self.cache.labels)).to(device),
            )
        if device in self._resident:
            images, masks, labels = self._resident[device]
            on_device = _to_device(rows, device, pin)
            return CellBatch(images[on_device], masks[on_device], labels[on_device])
        picked = rows.numpy()
        # memory-mapped reads are fastest in file order; the batch's own order is restored after
        order = np.argsort(picked)
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        images = torch.from_numpy(np.asarray(self.cache.images[picked[order]])[back])
        masks = torch.from_numpy(np.asarray(self.cache.masks[picked[order]])[back])
        return CellBatch(
            _to_device(images, device, pin),
            _to_device(masks, device, pin),
            _to_device(torch.from_numpy(np.asarray(self.cache.labels[picked])), device, pin),
        )


def _to_device(tensor: torch.Tensor, device: torch.device, pin: bool) -> torch.Tensor:
    """``tensor`` on ``device``; through pinned memory and without waiting where ``pin``."""
    return (tensor.pin_memory() if pin else tensor).to(device, non_blocking=pin)
