"""Cells drawn by :mod:`cellae.data.synthetic`, the built-in default that needs no download."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, replace

import numpy as np

from cellae.data import synthetic
from cellae.data.sources import register_source
from cellae.data.sources.base import Source
from cellae.data.sources.labels import MALARIA_CLASSES
from cellae.sections import SYNTHETIC, DataConfig


@register_source
class SyntheticSource(Source):
    """The generator's cells, labelled like the malaria set (uninfected 0, infected 1)."""

    kind = "synthetic"
    spec_help = f"'{SYNTHETIC}'"

    @classmethod
    def accepts(cls, spec: str) -> bool:
        return spec == SYNTHETIC

    def __init__(self, data: DataConfig) -> None:
        super().__init__(data)
        # a snapshot: the fingerprint must describe these cells, whatever the config becomes
        self.config = replace(data.synthetic)
        self.plan = synthetic.plan(self.config)
        self.files = list(self.plan.files)
        self.labels = [int(v) for v in self.plan.labels]
        self.patients = list(self.plan.patients)
        self.class_names = list(MALARIA_CLASSES)
        self.label_map = {name: label for label, name in enumerate(MALARIA_CLASSES)}
        self.layout = "synthetic generator"

    def load(self, index: int) -> np.ndarray:
        return synthetic.draw_cell(self.plan, index)

    def probe(self, index: int) -> tuple[int, int]:
        height, width = synthetic.frame_size(self.plan, index)
        return width, height

    def fingerprint(self) -> str:
        text = f"synthetic\0{synthetic.GENERATOR_VERSION}\0{sorted(asdict(self.config).items())}"
        return hashlib.sha256(text.encode()).hexdigest()

    def info(self) -> dict[str, object]:
        return super().info() | {"synthetic": asdict(self.config)}
