"""The patient a cell comes from, given to the decoder only (``model.condition: patient``).

A slide's stain, focus and cell sizes are the same for all of its cells and say nothing about
infection, yet a plain autoencoder must carry them in its code to draw the cell back. Handed to
the decoder as a learnt vector per training patient (as scvi-tools injects its batch covariate
into the decoder), they need not pass through the code; the encoder, and so the code a probe
reads, stays as it is. Row 0 of the table is "a patient never seen": test patients and the
API's new images get it, and training cells get it at random (``model.condition_dropout``), so
that it learns an average slide to draw unseen cells with, as classifier-free guidance learns
its unconditioned case.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

# the slot of every patient that was not in training
UNSEEN = 0


class PatientCondition(nn.Module):
    """Patient slots (B,) -> a shift of the decoder's first layer (B, features).

    Equal to the patient given as a one-hot vector beside the code to that layer. The table has
    one row until :meth:`resize` gives it the run's training patients; a checkpoint's table is
    loaded at its own size, so a trained model is rebuilt from its config alone.
    """

    def __init__(self, features: int) -> None:
        super().__init__()
        self.table = nn.Embedding(1, features)
        nn.init.zeros_(self.table.weight)

    @property
    def patients(self) -> int:
        """The training patients the table has rows for (row 0, the unseen patient, aside)."""
        return self.table.num_embeddings - 1

    def resize(self, patients: int) -> None:
        """Rows for ``patients`` training patients, all starting at no shift."""
        table = nn.Embedding(patients + 1, self.table.embedding_dim)
        nn.init.zeros_(table.weight)
        self.table = table.to(self.table.weight.device)

    def forward(self, slots: torch.Tensor) -> torch.Tensor:
        return self.table(slots)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str,
                              *args: Any, **kwargs: Any) -> None:
        weight = state_dict.get(prefix + "table.weight")
        if weight is not None and weight.shape[0] != self.table.num_embeddings:
            self.resize(weight.shape[0] - 1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def drop_patients(slots: torch.Tensor, rate: float) -> torch.Tensor:
    """``slots`` with a share ``rate`` of them, drawn at random, set to the unseen patient."""
    if rate <= 0:
        return slots
    keep = torch.rand(slots.shape, device=slots.device) >= rate
    return torch.where(keep, slots, torch.full_like(slots, UNSEEN))
