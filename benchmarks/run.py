"""cellae against the hardware and the usual alternatives, measured side by side in one run.

    python benchmarks/run.py [SOURCE] [--quick] [--out BENCHMARKS.md]

Every figure is a ratio of two things timed in this process, one after the other, because
the machines are shared and noisy: training through cellae against a bare PyTorch loop of the
same model, the cache against a Pillow ``Dataset``, the cache build against a bare decode loop,
openTSNE against scikit-learn. SOURCE is a folder of class subfolders of images; it defaults
to the malaria sample beside the project and, where that is absent, to synthetic cells written
out as PNG files. The table is printed and written into BENCHMARKS.md, between the markers of
this machine's kind (CPU or GPU), so the other kind's latest table stays.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT.parent / "shared" / "data" / "malaria-sample" / "cell_images"
MODEL_CONFIG = ROOT / "configs" / "malaria" / "{family}.yaml"
SIZE = 64
BATCH = 128
GPU_BATCH = 1024


@dataclasses.dataclass
class Row:
    """One line of the table: what was measured, cellae's figure, the other's, their ratio."""

    section: str
    what: str
    cellae: str
    other: str
    ratio: float | None
    target: str = ""
    met: bool | None = None


@dataclasses.dataclass
class Scale:
    """How much work each section does: the full run, or ``--quick``."""

    train_images: int
    steps_timed: int
    tsne_points: tuple[int, ...]
    memory_images: int
    data_images: int
    sweep_runs: int  # of the quickstart sweep, each trained and evaluated
    sweep_epochs: int


FULL = Scale(train_images=1536, steps_timed=10, tsne_points=(5000, 20000), memory_images=4504,
             data_images=4504, sweep_runs=4, sweep_epochs=4)
QUICK = Scale(train_images=512, steps_timed=3, tsne_points=(2000,), memory_images=500,
              data_images=1024, sweep_runs=2, sweep_epochs=2)


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def cores() -> int:
    from cellae.machine import available_cores

    return available_cores()


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# ---------------------------------------------------------------- data


def write_synthetic_pngs(folder: Path, n: int) -> Path:
    """Synthetic cells as PNG files in class folders: a stand-in where no real images are."""
    from PIL import Image

    from cellae.config import DataConfig, SyntheticConfig
    from cellae.data.sources import open_source

    source = open_source(DataConfig(synthetic=SyntheticConfig(n_images=n)))
    for i, name in enumerate(source.files):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(source.load(i)).save(path)
    return folder


def image_files(source: Path) -> list[Path]:
    return sorted(p for p in source.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))


class PillowCells(torch.utils.data.Dataset):
    """The usual pipeline: each access opens a file, decodes it and resizes it with Pillow."""

    def __init__(self, files: list[Path], size: int) -> None:
        self.files = files
        self.size = size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        from PIL import Image

        with Image.open(self.files[i]) as image:
            pixels = np.asarray(image.convert("RGB").resize((self.size, self.size), Image.BILINEAR))
        return torch.from_numpy(pixels.copy()).permute(2, 0, 1)


def bare_decode(files: list[Path], size: int) -> np.ndarray:
    """A bare single-process decode-and-resize loop: what a cache build is measured against."""
    cells = PillowCells(files, size)
    return np.stack([cells[i].numpy() for i in range(len(cells))])


# ---------------------------------------------------------------- training


class StepClock:
    """Times steady-state training steps in segments: each from the end of a segment's first
    step to the end of its last, the device synchronised at those two points only, so that the
    clock adds no wait to the steps between (as a per-step synchronisation would on a GPU)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.images = 0
        self._started: float | None = None
        self._pending = 0

    def tick(self, images: int) -> None:
        """A step has ended; the first of a segment starts the clock and is not counted."""
        if self._started is None:
            synchronize()
            self._started = time.perf_counter()
        else:
            self._pending += images

    def stop(self) -> None:
        """The segment's last step has ended."""
        if self._started is None:
            return
        synchronize()
        self.seconds += time.perf_counter() - self._started
        self.images += self._pending
        self._started, self._pending = None, 0

    def rate(self) -> float:
        if not self.images:
            raise RuntimeError("no training step was timed: an epoch's training side fits in one "
                               "batch; give the benchmark a source with more images")
        return self.images / self.seconds


def step_clock_callback(clock: StepClock, first_epoch: int) -> Any:
    """Each epoch from ``first_epoch`` on is a segment: its training steps, not the validation
    after them, nor the loader's start at its first step."""
    import lightning as L

    from cellae.data.datamodule import steps_of

    class Clock(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
            if trainer.current_epoch >= first_epoch:
                clock.tick(sum(len(one[0]) for one in steps_of(batch)))
                if batch_idx == trainer.num_training_batches - 1:
                    clock.stop()

    return Clock()


def run_config(family: str, cache_dir: str, source: Path, batch: int, precision: str,
               compiled: bool = False, epochs: int = 2) -> Any:
    from cellae.config import load_config

    return load_config(str(MODEL_CONFIG).format(family=family), [
        f"data.source={source}", f"data.cache_dir={cache_dir}", f"data.image_size={SIZE}",
        f"train.epochs={epochs}", f"train.batch_size={batch}", f"train.precision={precision}",
        "eval.enabled=false", f"name=bench-{family}", *(["train.compile=true"] if compiled else []),
    ], check_paths=False)


def cellae_rate(config: Any, out: Path) -> float:
    """Images/s of training through cellae: ``cellae train``'s own path, from the cache."""
    from cellae.training import train

    clock = StepClock()
    train(config, out, evaluate=False, callbacks=[step_clock_callback(clock, first_epoch=1)])
    return clock.rate()


def subset_folder(files: list[Path], source: Path, n: int, folder: Path) -> Path:
    """Every k-th image of ``source`` (so all classes and patients), as links in ``folder``."""
    step = max(1, len(files) // n)
    for path in files[::step][:n]:
        link = folder / path.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(path.resolve())
    return folder


def in_memory(cache: Any, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The images and masks of ``rows`` as tensors in memory, in file order: the bare loops'
    data, read from the cache once before any step is timed."""
    picked = np.sort(rows)
    return (torch.from_numpy(np.asarray(cache.images[picked])),
            torch.from_numpy(np.asarray(cache.masks[picked])))


def bare_loss(model: Any, forward: Any, images: torch.Tensor, masks: torch.Tensor,
              pick: torch.Tensor, layout: torch.memory_format) -> torch.Tensor:
    """The loss of one bare step: the picked images as floats in ``layout``, through
    ``forward`` (the model, compiled or wrapped), with the model's loss at the schedule's end."""
    from cellae.images import unit_float

    x = unit_float(images[pick]).contiguous(memory_format=layout)
    return model.loss(x, masks[pick].float(), forward(x), model.schedule(1.0))["loss"]


def bare_rate(config: Any, cache: Any, rows: np.ndarray, device: torch.device, steps: int,
              channels_last: bool, bf16: bool = False, compiled: bool = False) -> float:
    """Images/s of a bare PyTorch loop of the same model and loss: data already on the device,
    one random permutation, Adam; nothing else."""
    from cellae.models import build_model

    torch.manual_seed(config.seed)
    model = build_model(config.model, config.data.image_size, int(cache.images.shape[1])).to(device)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=layout)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.train.lr)
    forward = torch.compile(model) if compiled else model
    images, masks = (t.to(device) for t in in_memory(cache, rows))
    batch = config.train.batch_size
    clock = StepClock()
    order = torch.randperm(len(rows), device=device)
    # compiled: the first steps compile (once per batch shape); time the steps after them
    warmup = 2 if compiled else 0
    for step in range(steps + 1 + warmup):
        if step == warmup and warmup:
            clock = StepClock()
        start = (step * batch) % max(1, len(rows) - batch + 1)
        pick = order[start:start + batch]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = bare_loss(model, forward, images, masks, pick, layout)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        clock.tick(len(pick))
    clock.stop()
    return clock.rate()


def flops_per_image(config: Any, channels: int, device: torch.device) -> float:
    """Floating-point operations of one training step (forward, loss, backward), per image."""
    from torch.utils.flop_counter import FlopCounterMode

    from cellae.models import build_model

    model = build_model(config.model, SIZE, channels).to(device)
    x = torch.rand(16, channels, SIZE, SIZE, device=device)
    mask = torch.ones(16, SIZE, SIZE, device=device)
    with FlopCounterMode(display=False) as counter:
        losses = model.loss(x, mask, model(x), model.schedule(1.0))
        losses["loss"].backward()
    return counter.get_total_flops() / 16


def matmul_flops(device: torch.device, dtype: torch.dtype = torch.float32) -> float:
    """Dense matrix-multiply FLOP/s of this machine, measured here: the roof to compare with."""
    n = 4096 if device.type == "cuda" else 1024
    a = torch.rand(n, n, device=device, dtype=dtype)
    b = torch.rand(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    synchronize()
    repeats = 50 if device.type == "cuda" else 10
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize()
    return 2 * n**3 * repeats / (time.perf_counter() - started)


def training_rows(source: Path, files: list[Path], scale: Scale, device: torch.device,
                  quick: bool, work: Path, keeps_freed_memory: bool) -> list[Row]:
    """The training rows; ``keeps_freed_memory``: whether glibc was told to keep freed memory
    in this process (cellae.machine), whose gain then gets a row."""
    from cellae.config import DataConfig
    from cellae.data.cache import prepare_cache

    rows_out: list[Row] = []
    gpu = device.type == "cuda"
    # a fifth of the subset is the test side, as data.test_fraction has it; a GPU gets every
    # image, so that an epoch at its batch of 1,024 has several steps to time
    n_subset = len(files) if gpu else int(scale.train_images / 0.8)
    subset = subset_folder(files, source, n_subset, work / "train-subset")
    cache_dir = work / "cache"
    cache = prepare_cache(DataConfig(source=str(subset), image_size=SIZE, cache_dir=str(cache_dir)),
                          progress=False)
    train = np.arange(len(cache))
    out = work / "train-runs"
    roof = matmul_flops(device)
    try:
        from cellae.models.base import prefers_channels_last
    except ImportError:  # a cellae before 0.2, measured for the "before" column: NCHW only
        def prefers_channels_last(device: torch.device) -> bool:
            return False

    # cellae's default layout on this device; the bare loop runs it too, so that the ratio is
    # of the loops alone (the layout's own gain is the row after the first)
    layout = prefers_channels_last(device)
    # (family, precision, batch, torch.compile)
    settings = [("ae", "32-true", BATCH, False), ("vae", "32-true", BATCH, False)]
    if not quick:
        settings.append(("ae", "32-true", BATCH, True))
    if gpu:
        settings.append(("ae", "bf16-mixed", GPU_BATCH, False))
    # a GPU step of this small model takes milliseconds: time enough of them to average out
    steps = max(scale.steps_timed, 50 if gpu else 2)
    for family, precision, batch, compiled in settings:
        # cellae's first epoch and each epoch's first step are not timed: enough epochs that
        # about as many steps are timed as in the bare loop (0.8: the training side, roughly,
        # as the split keeps patients whole)
        timed_per_epoch = max(1, math.ceil(0.8 * len(cache) / batch) - 1)
        epochs = 1 + math.ceil(steps / timed_per_epoch)
        config = run_config(family, str(cache_dir), subset, batch, precision, compiled, epochs)
        bf16 = precision.startswith("bf16")
        # the bare loop before and after cellae, so a drift of the machine's speed evens out
        before = bare_rate(config, cache, train, device, steps, layout, bf16, compiled)
        ours = cellae_rate(config, out)
        after = bare_rate(config, cache, train, device, steps, layout, bf16, compiled)
        bare = (before + after) / 2
        label = (f"{family.upper()} {SIZE} px, batch {batch}, {precision}"
                 f"{', channels-last' if layout else ''}{', torch.compile' if compiled else ''}")
        rows_out.append(Row("training loop", f"images/s, {label}", f"{ours:,.0f}",
                            f"{bare:,.0f} (bare loop)", ours / bare, ">= 0.9", ours / bare >= 0.9))
        if bf16:
            rows_out.append(Row("training loop", f"images/s, {label}, against the issue's "
                                f"figure for an H100-class GPU ({torch.cuda.get_device_name()})",
                                f"{ours:,.0f}", "60,000", ours / 60_000, ">= 60,000",
                                ours >= 60_000))
        say(f"  {label}: cellae {ours:,.0f} images/s, bare loop {bare:,.0f} "
            f"({before:,.0f} before, {after:,.0f} after)")
        if family == "ae" and precision == "32-true" and not compiled:
            plain = bare_rate(config, cache, train, device, steps, channels_last=False)
            rows_out.append(Row("training loop", "the layout's gain: the bare loop channels-last "
                                "against PyTorch's default NCHW", f"{after:,.0f}", f"{plain:,.0f}",
                                after / plain))
            say(f"  bare loop in NCHW {plain:,.0f} images/s")
            if keeps_freed_memory:
                from cellae.machine import glibc_defaults, keep_freed_memory

                glibc_defaults()
                default_malloc = bare_rate(config, cache, train, device, steps, layout)
                keep_freed_memory()
                rows_out.append(Row("training loop", "the allocator's gain: the bare loop with "
                                    "glibc keeping freed memory (as `cellae` sets it) against "
                                    "glibc's defaults", f"{after:,.0f}", f"{default_malloc:,.0f}",
                                    after / default_malloc))
                say(f"  bare loop with glibc's default allocator settings {default_malloc:,.0f} "
                    "images/s")
        if precision == "32-true" and not compiled:
            flops = flops_per_image(config, int(cache.images.shape[1]), device)
            achieved = flops * ours
            rows_out.append(Row("training loop", f"FLOP/s achieved, {family.upper()} "
                                f"({flops / 1e9:.2f} GFLOP per image per step)",
                                f"{achieved / 1e9:,.1f} G", f"{roof / 1e9:,.1f} G (dense matmul)",
                                achieved / roof))
    return rows_out


# ---------------------------------------------------------------- per-step overhead


# a model so small that a step is mostly framework: what cellae adds per step shows, on any CPU
OVERHEAD_SETTINGS = ["data.source=synthetic", "data.synthetic.n_images=1200", "data.image_size=32",
                     "model.widths=[4, 4]", "model.latent_dim=2", "train.batch_size=16",
                     "train.epochs=4", "eval.enabled=false", "train.accelerator=cpu"]


def lightning_floor_rate(config: Any, cache: Any, rows: np.ndarray) -> float:
    """Images/s of the same model and loss in a bare LightningModule, on a plain Trainer and a
    plain DataLoader of tensors: what Lightning's own loop costs, below anything of cellae's."""
    import lightning as L

    from cellae.images import unit_float
    from cellae.models import build_model

    class Bare(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = build_model(config.model, config.data.image_size,
                                     int(cache.images.shape[1])).use_channels_last(True)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x = unit_float(batch[0])
            return self.model.loss(x, batch[1].float(), self.model(x))["loss"]

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.model.parameters(), lr=config.train.lr)

    data = torch.utils.data.TensorDataset(torch.from_numpy(np.asarray(cache.images[rows])),
                                          torch.from_numpy(np.asarray(cache.masks[rows])))
    clock = StepClock()
    trainer = L.Trainer(max_epochs=config.train.epochs, accelerator="cpu", logger=False,
                        enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[step_clock_callback(clock, first_epoch=1)])
    torch.manual_seed(config.seed)
    trainer.fit(Bare(), torch.utils.data.DataLoader(data, batch_size=config.train.batch_size,
                                                    shuffle=True))
    return clock.rate()


def fabric_floor_rate(config: Any, cache: Any, rows: np.ndarray, steps: int) -> float:
    """Images/s of the bare loop's steps (the same in-memory batches) with the model and
    optimizer wrapped by Lightning Fabric and the backward pass through it: what a hot loop on
    Fabric (issue 25's way below Lightning's Trainer) would cost at least."""
    import lightning as L

    from cellae.models import build_model

    fabric = L.Fabric(accelerator="cpu", devices=1)
    torch.manual_seed(config.seed)
    model = build_model(config.model, config.data.image_size,
                        int(cache.images.shape[1])).use_channels_last(True)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.train.lr)
    wrapped, optimizer = fabric.setup(model, optimizer)
    images, masks = in_memory(cache, rows)
    batch = config.train.batch_size
    order = torch.randperm(len(rows))
    clock = StepClock()
    for step in range(steps + 1):
        start = (step * batch) % max(1, len(rows) - batch + 1)
        pick = order[start:start + batch]
        fabric.backward(bare_loss(model, wrapped, images, masks, pick, torch.channels_last))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        clock.tick(len(pick))
    clock.stop()
    return clock.rate()


class BareStepsBetween:
    """A Lightning callback that runs one bare step (the bare loop's model, loss and Adam, on
    in-memory batches) after each of cellae's training steps, and times both: cellae's step
    from the end of one bare step to the end of cellae's next step, the bare step alone.

    Step by step, the two are a few milliseconds apart, so the drift of a shared machine (the
    bare loop timed in runs of its own moved by 0.3 to 2.8 ms a step from one run to the next)
    falls on both alike; the median of the differences is the fixed cost a step."""

    def __init__(self, config: Any, cache: Any, rows: np.ndarray) -> None:
        from cellae.models import build_model

        torch.manual_seed(config.seed)
        channels = int(cache.images.shape[1])
        self.model = build_model(config.model, config.data.image_size, channels)
        self.model.use_channels_last(True)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.train.lr)
        self.images, self.masks = in_memory(cache, rows)
        self.batch = config.train.batch_size
        self.ours: list[float] = []
        self.bare: list[float] = []
        self._last: float | None = None

    def step(self) -> None:
        pick = torch.randint(0, len(self.images), (self.batch,))
        bare_loss(self.model, self.model, self.images, self.masks, pick,
                  torch.channels_last).backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def callback(self) -> Any:
        import lightning as L

        from cellae.data.datamodule import steps_of

        timer = self

        class Between(L.Callback):
            def on_train_epoch_start(self, trainer, pl_module) -> None:  # noqa: ANN001
                timer._last = None  # the loader's start is no step's cost

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
                # a call of several steps is timed whole, then as many bare steps, each per step
                ended = time.perf_counter()
                steps = steps_of(batch)
                timed = (trainer.current_epoch >= 1 and timer._last is not None
                         and all(len(one[0]) == timer.batch for one in steps))
                if timed:
                    timer.ours.append((ended - timer._last) / len(steps))
                started = time.perf_counter()
                for _ in steps:
                    timer.step()
                if timed:
                    timer.bare.append((time.perf_counter() - started) / len(steps))
                timer._last = time.perf_counter()

        return Between()


def interleaved_ms(config: Any, cache: Any, rows: np.ndarray, out: Path) -> tuple[float, float, float]:
    """(median of cellae's step minus the bare step beside it, cellae's median, the bare
    median), in ms, cellae's steps and bare ones taking turns in one run."""
    import statistics

    from cellae.training import train

    timer = BareStepsBetween(config, cache, rows)
    train(config, out, evaluate=False, callbacks=[timer.callback()])
    if not timer.ours:
        raise RuntimeError("no training step was timed: the overhead config needs 2 epochs")
    gaps = [1000 * (a - b) for a, b in zip(timer.ours, timer.bare, strict=True)]
    return (statistics.median(gaps), 1000 * statistics.median(timer.ours),
            1000 * statistics.median(timer.bare))


def overhead_rows(work: Path) -> list[Row]:
    """cellae's time per step above a bare loop of the same tiny model, with Lightning's own
    floor beside it; each median of three, the loops interleaved so that drift evens out."""
    import statistics

    from cellae.config import load_config
    from cellae.data.cache import prepare_cache

    rows_out: list[Row] = []
    for family in ("ae", "vae"):
        config = load_config(None, [*OVERHEAD_SETTINGS, f"model.family={family}",
                                    f"data.cache_dir={work / 'overhead-cache'}",
                                    f"name=overhead-{family}"])
        cache = prepare_cache(config.data, progress=False)
        train = np.arange(int(0.8 * len(cache)))
        steps = 3 * math.ceil(len(train) / config.train.batch_size)
        ms = {"bare": [], "cellae": [], "lightning": [], "fabric": []}
        per_step = 1000 * config.train.batch_size
        # one step a call beside the default, taking turns: what train.steps_per_call saves
        one_a_call = dataclasses.replace(
            config, train=dataclasses.replace(config.train, steps_per_call=1))
        turns, turns_one = [], []
        for _ in range(3):
            turns.append(interleaved_ms(config, cache, train, work / "overhead-runs"))
            turns_one.append(interleaved_ms(one_a_call, cache, train, work / "overhead-runs"))
        gap, ours_turns, bare_turns = (statistics.median(t[i] for t in turns) for i in range(3))
        gap_one, ours_one, bare_one = (statistics.median(t[i] for t in turns_one)
                                       for i in range(3))
        calls = config.train.steps_per_call
        for _ in range(3):
            ms["bare"].append(per_step / bare_rate(config, cache, train, torch.device("cpu"),
                                                   steps, channels_last=True))
            ms["cellae"].append(per_step / cellae_rate(config, work / "overhead-runs"))
            ms["lightning"].append(per_step / lightning_floor_rate(config, cache, train))
            ms["fabric"].append(per_step / fabric_floor_rate(config, cache, train, steps))
        bare, ours, floor, fabric = (statistics.median(ms[k])
                                     for k in ("bare", "cellae", "lightning", "fabric"))
        line = (f"per-step overhead: {gap:.2f} ms (cellae {ours_turns:.2f} ms, bare "
                f"{bare_turns:.2f} ms), cellae's steps and bare ones taking turns, {calls} steps "
                f"a call; one step a call: {gap_one:.2f} ms (cellae {ours_one:.2f}, bare "
                f"{bare_one:.2f})"
                f"; in runs of their own: {ours - bare:.2f} ms (cellae {ours:.2f}, bare {bare:.2f})"
                f"; Lightning's own loop {floor - bare:.2f} ms ({floor:.2f} ms)"
                f"; a bare Fabric loop {fabric - bare:.2f} ms ({fabric:.2f} ms)")
        say(f"  {family.upper()}: {line}")
        label = f"{family.upper()} 32 px, widths 4-4, latent 2, batch 16, on the CPU"
        rows_out.append(Row("per-step overhead", f"ms per step, {label}, cellae's steps "
                            f"({calls} a call, train.steps_per_call) and the bare loop's taking "
                            "turns in one run",
                            f"{ours_turns:.2f} ({gap:+.2f})", f"{bare_turns:.2f} (bare loop)",
                            ours_turns / bare_turns, "< +0.5 ms", gap < 0.5))
        rows_out.append(Row("per-step overhead", f"ms per step, {label}, the same with one step "
                            "a call (train.steps_per_call=1)",
                            f"{ours_one:.2f} ({gap_one:+.2f})", f"{bare_one:.2f} (bare loop)",
                            ours_one / bare_one))
        rows_out.append(Row("per-step overhead", f"ms per step, {label}, each loop a run of "
                            "its own", f"{ours:.2f} ({ours - bare:+.2f})", f"{bare:.2f} (bare loop)",
                            ours / bare))
        rows_out.append(Row("per-step overhead", f"ms per step, {label}: Lightning's own loop "
                            "(a bare LightningModule, plain Trainer and DataLoader)",
                            f"{ours:.2f}", f"{floor:.2f} ({floor - bare:+.2f} on the bare loop)",
                            ours / floor))
        rows_out.append(Row("per-step overhead", f"ms per step, {label}: a bare Lightning "
                            "Fabric loop (the bare loop's batches, model and optimizer set up by Fabric)",
                            f"{ours:.2f}", f"{fabric:.2f} ({fabric - bare:+.2f} on the bare loop)",
                            ours / fabric))
    return rows_out


# ---------------------------------------------------------------- data path and cache


def rate_of(batches: Iterator[Any], count: Callable[[Any], int]) -> float:
    started = time.perf_counter()
    images = sum(count(b) for b in batches)
    return images / (time.perf_counter() - started)


def data_rows(cache: Any, files: list[Path], scale: Scale, training_rate: float) -> list[Row]:
    from cellae.data.datamodule import CellDataModule

    n = min(scale.data_images, len(cache), len(files))
    rows = np.arange(n)
    module = CellDataModule(cache, rows, rows[:0], BATCH, seed=0)
    device = torch.device("cpu")
    ours = rate_of((module.gather(b, device) for b in module.train_dataloader()),
                   lambda b: len(b.images))
    out = [Row("data path", f"images/s the loop receives ({n} images, batch {BATCH})",
               f"{ours:,.0f}", f"{training_rate:,.0f} (training consumes)", ours / training_rate,
               ">= 20", ours / training_rate >= 20)]
    subset = files[:n]
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(PillowCells(subset, SIZE), batch_size=BATCH,
                                             shuffle=True, num_workers=workers)
        theirs = rate_of(iter(loader), len)
        out.append(Row("data path", f"against a Pillow Dataset, DataLoader with {workers} workers",
                       f"{ours:,.0f}", f"{theirs:,.0f}", ours / theirs))
        say(f"  cache {ours:,.0f} images/s, Pillow with {workers} workers {theirs:,.0f}")
    return out


def cellae_command() -> list[str]:
    """The ``cellae`` console script beside this Python, as a user runs it."""
    script = Path(sys.executable).with_name("cellae")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from cellae.cli import main; sys.exit(main())"]


def cache_rows(source: Path, files: list[Path], work: Path) -> tuple[list[Row], Any]:
    """A cold build through ``cellae data prepare``, against the bare decode loop.

    Both read files the page cache already holds (read once first): the first reader of a
    folder fresh from disk would otherwise pay for the disk. The build runs as its own
    process, as a user runs it: its decoding workers import only cellae's data modules, where
    workers spawned from this benchmark would each import torch first.
    """
    from cellae.config import DataConfig
    from cellae.data.cache import prepare_cache

    for path in files:
        path.read_bytes()
    started = time.perf_counter()
    bare_decode(files, SIZE)
    bare = time.perf_counter() - started
    cache_dir = work / "cache"
    started = time.perf_counter()
    subprocess.run([*cellae_command(), "data", "prepare", str(source), "--size", str(SIZE),
                    "--cache-dir", str(cache_dir)], check=True, capture_output=True)
    cold = time.perf_counter() - started
    data = DataConfig(source=str(source), image_size=SIZE, cache_dir=str(cache_dir))
    started = time.perf_counter()
    cache = prepare_cache(data, progress=False)
    reuse = time.perf_counter() - started
    workers = cache.meta["workers"]
    from cellae.data import decode

    decoder = "libspng" if getattr(decode, "pyspng", None) is not None else "Pillow"
    say(f"  cache build {cold:.1f} s ({workers} processes; {cache.meta['build_seconds']:.1f} s "
        f"inside), bare decode loop {bare:.1f} s, reuse {reuse * 1000:.0f} ms")
    return [
        Row("cache build", f"cold build of {len(cache)} images, masks included "
            f"(`cellae data prepare`, {workers} processes, PNGs decoded by {decoder}, "
            "start-up included), seconds",
            f"{cold:.1f}", f"{bare:.1f} (bare 1-process decode and resize)", bare / cold, ">= 1",
            bare / cold >= 1),
        Row("cache build", "reuse, seconds", f"{reuse:.3f}", "", None, "< 1", reuse < 1),
    ], cache


def memory_rows(scale: Scale) -> list[Row]:
    """Peak resident memory of a cache build of synthetic cells at 1x and 10x, each in a fresh
    process so that neither inherits the other's pages."""
    script = (
        "import json, resource, sys, tempfile\n"
        "from cellae.config import DataConfig, SyntheticConfig\n"
        "from cellae.data.cache import prepare_cache\n"
        "with tempfile.TemporaryDirectory() as d:\n"
        "    prepare_cache(DataConfig(synthetic=SyntheticConfig(n_images=int(sys.argv[1])),\n"
        f"                  image_size={SIZE}, cache_dir=d), progress=False)\n"
        # VmHWM, not ru_maxrss: the latter keeps the forking parent's size across exec
        "own = [int(line.split()[1]) / 1024 for line in open('/proc/self/status')\n"
        "       if line.startswith('VmHWM')][0]\n"
        "print(json.dumps([own, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024]))\n"
    )
    peaks = {}
    for factor in (1, 10):
        n = scale.memory_images * factor
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", script, str(n)], capture_output=True,
                              text=True, check=True)
        own, worker = json.loads(done.stdout.strip().splitlines()[-1])
        peaks[factor] = (own, worker)
        say(f"  cache build of {n} synthetic cells: peak {own:.0f} MB (builder), {worker:.0f} MB "
            f"(largest worker), {time.perf_counter() - started:.0f} s")
    growth = max(peaks[10]) / max(peaks[1])
    return [Row("memory", f"peak resident MB of a cache build, {scale.memory_images * 10:,} "
                f"against {scale.memory_images:,} synthetic cells (builder / largest worker)",
                f"{peaks[10][0]:.0f} / {peaks[10][1]:.0f}", f"{peaks[1][0]:.0f} / {peaks[1][1]:.0f}",
                growth, "<= 1.2", growth <= 1.2)]


def sweep_rows(scale: Scale, work: Path, device: torch.device) -> list[Row]:
    """Small runs of the quickstart sweep through ``cellae sweep``, one after another against
    ``--jobs J`` side by side, start-up included, their caches built beforehand. Each side runs
    twice, in the order 1, J, J, 1, so that a drift of the machine's speed favours neither."""
    try:
        from cellae.sweep.side_by_side import machine_slots
    except ImportError:  # a cellae before --jobs, measured for a "before" column
        say("  skipped: this cellae has no cellae sweep --jobs")
        return []
    from cellae.config import config_from_dict
    from cellae.data.cache import prepare_cache
    from cellae.sweep import load_sweep

    quickstart = yaml.safe_load((ROOT / "configs" / "sweeps" / "quickstart.yaml").read_text())
    # the runs of the smallest latent: AE then VAE, keep and fill_mean (the first two: AE only)
    smallest = min(r["model.latent_dim"] for r in quickstart["runs"])
    picked = [r for r in quickstart["runs"] if r["model.latent_dim"] == smallest]
    picked = picked[:scale.sweep_runs]
    base = quickstart["config"]
    base["data"]["cache_dir"] = str(work / "sweep-cache")
    base["train"] |= {"epochs": scale.sweep_epochs, "devices": 1}
    sweep_file = work / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump({**quickstart, "runs": picked}, sort_keys=False))
    sweep = load_sweep(sweep_file)
    for combination in sweep.combinations:
        prepare_cache(config_from_dict(sweep.config_values(combination)).data, progress=False)
    jobs = 4 if device.type == "cuda" else max(2, min(4, cores() // 4))
    seconds: dict[int, list[float]] = {1: [], jobs: []}
    for turn, n in enumerate((1, jobs, jobs, 1)):
        started = time.perf_counter()
        done = subprocess.run([*cellae_command(), "sweep", str(sweep_file), "--out",
                               str(work / f"sweep-{turn}"), "--jobs", str(n)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            say(f"  cellae sweep --jobs {n} failed:\n{done.stderr[-2000:]}")
            return [Row("sweep", f"`cellae sweep --jobs {n}` failed (exit {done.returncode})",
                        "", "", None)]
        seconds[n].append(time.perf_counter() - started)
    side, one = sum(seconds[jobs]) / 2, sum(seconds[1]) / 2
    shares = machine_slots(jobs, torch.cuda.device_count() if device.type == "cuda" else 0)
    say(f"  {len(picked)} runs: one after another {seconds[1][0]:.1f} and {seconds[1][1]:.1f} s, "
        f"--jobs {jobs} {seconds[jobs][0]:.1f} and {seconds[jobs][1]:.1f} s "
        f"({shares[0].threads} of {cores()} cores each)")
    return [Row("sweep", f"seconds for {len(picked)} small runs of the quickstart sweep "
                f"({scale.sweep_epochs} epochs, each trained and evaluated, `cellae sweep`, mean "
                f"of two in the order 1, {jobs}, {jobs}, 1): `--jobs {jobs}` side by side against "
                "one after another", f"{side:.1f}", f"{one:.1f}", one / side)]


# ---------------------------------------------------------------- evaluation and t-SNE


def evaluation_rows(cache: Any, source: Path, work: Path) -> list[Row]:
    from cellae import runs
    from cellae.config import load_config
    from cellae.training import train

    config = load_config(str(MODEL_CONFIG).format(family="ae"), [
        f"data.source={source}", f"data.cache_dir={cache.path.parent}", f"data.image_size={SIZE}",
        "train.epochs=1", "name=bench-eval"], check_paths=False)
    run_dir = train(config, work / "eval-runs", evaluate=False)
    # in a process of its own, as `cellae evaluate` runs: this one has run torch.compile,
    # after which eager convolutions ran 20% slower in the same process (measured)
    subprocess.run([*cellae_command(), "evaluate", str(run_dir)], check=True, capture_output=True)
    result = json.loads((runs.eval_dir(run_dir, None) / "metrics.json").read_text())
    parts = result.get("seconds_by_part", {})
    n = result["reconstruction"]["n_images"]
    detail = ", ".join(f"{k} {v:.1f}" for k, v in sorted(parts.items(), key=lambda kv: -kv[1]))
    say(f"  evaluation {result['seconds']:.1f} s: {detail}")
    return [Row("evaluation", f"seconds per run (`cellae evaluate`, {len(cache)} images, {n} "
                f"test): {detail}",
                f"{result['seconds']:.1f}", "", None, "< 10 s", result["seconds"] < 10)]


def mixture(n: int, seed: int = 0, dims: int = 20, clusters: int = 10) -> np.ndarray:
    """Latent-like points: a mixture of Gaussian clusters in 20 dimensions."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, (clusters, dims))
    return (centres[rng.integers(0, clusters, n)] + rng.normal(0, 1, (n, dims))).astype(np.float32)


def tsne_rows(scale: Scale) -> list[Row]:
    from sklearn.manifold import TSNE, trustworthiness

    from cellae.evaluation.latent import tsne_embedding

    out = []
    for n in scale.tsne_points:
        points = mixture(n)
        started = time.perf_counter()
        ours, _ = tsne_embedding(points, n, 30.0, 0)
        ours_s = time.perf_counter() - started
        started = time.perf_counter()
        theirs = TSNE(n_components=2, perplexity=30.0, init="pca", random_state=0,
                      n_jobs=-1).fit_transform(points)
        theirs_s = time.perf_counter() - started
        # trustworthiness holds an n x n distance matrix: score a seeded 5,000-point subset
        pick = np.sort(np.random.default_rng(0).choice(n, size=min(n, 5000), replace=False))
        t_ours = trustworthiness(points[pick], ours[pick], n_neighbors=10)
        t_theirs = trustworthiness(points[pick], theirs[pick], n_neighbors=10)
        speed = theirs_s / ours_s
        say(f"  t-SNE of {n}: openTSNE {ours_s:.1f} s (trust {t_ours:.3f}), scikit-learn "
            f"{theirs_s:.1f} s (trust {t_theirs:.3f})")
        out.append(Row("t-SNE", f"seconds at {n:,} points (trustworthiness, 10 neighbours)",
                       f"{ours_s:.1f} ({t_ours:.3f})", f"{theirs_s:.1f} ({t_theirs:.3f}) scikit-learn",
                       speed, ">= 3x at 20,000, trust >=",
                       (speed >= 3 and t_ours >= t_theirs - 1e-3) if n >= 20000 else None))
    return out


# ---------------------------------------------------------------- the table


def machine() -> str:
    device = (torch.cuda.get_device_name(0) if torch.cuda.is_available() else
              f"CPU ({platform.processor() or platform.machine()})")
    return (f"{time.strftime('%Y-%m-%d')}, {device}, {cores()} cores available, "
            f"{torch.get_num_threads()} torch threads, torch {torch.__version__}, "
            f"Python {platform.python_version()}")


def table(rows: list[Row]) -> str:
    lines = ["| section | what | cellae | the other | ratio | target | met |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = "" if r.ratio is None else f"{r.ratio:.2f}"
        met = "" if r.met is None else ("yes" if r.met else "**no**")
        lines.append(f"| {r.section} | {r.what} | {r.cellae} | {r.other} | {ratio} | {r.target} | {met} |")
    return "\n".join(lines)


def write_markdown(path: Path, kind: str, text: str) -> None:
    """Replace this kind's block of ``path`` and keep the rest (the other kind's latest table)."""
    start, end = f"<!-- {kind} table: written by benchmarks/run.py -->", f"<!-- end of {kind} table -->"
    block = f"{start}\n{text}\n{end}"
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    new = pattern.sub(lambda _: block, old) if pattern.search(old) else f"{old.rstrip()}\n\n{block}\n"
    path.write_text(new)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", default=str(SAMPLE))
    parser.add_argument("--quick", action="store_true", help="a smaller run, for a first look")
    parser.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"),
                        help="the markdown file to update ('' for none)")
    parser.add_argument("--only", choices=["overhead"],
                        help="only these rows, printed (a minute on the CPU; BENCHMARKS.md is "
                             "left as it is)")
    args = parser.parse_args()
    scale = QUICK if args.quick else FULL
    try:  # as the `cellae` command does before it trains or evaluates
        from cellae.machine import keep_freed_memory
    except ImportError:  # a cellae before it, measured for a "before" column
        keeps_freed_memory = False
    else:
        keeps_freed_memory = keep_freed_memory()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="cellae-bench-"))
    if args.only == "overhead":
        say(f"{machine()}\nper-step overhead")
        print(table(overhead_rows(work)))
        return 0
    source = Path(args.source)
    if not source.is_dir():
        say(f"no images at {source}: writing {scale.data_images} synthetic cells as PNG files")
        source = write_synthetic_pngs(work / "synthetic", scale.data_images)
    files = image_files(source)
    say(f"{machine()}\nsource: {source} ({len(files)} images)")
    rows: list[Row] = []
    say("cache build")
    built, cache = cache_rows(source, files, work)
    rows += built
    say("training loop")
    rows += training_rows(source, files, scale, device, args.quick, work, keeps_freed_memory)
    say("data path")
    rows += data_rows(cache, files, scale, float(rows[len(built)].cellae.replace(",", "")))
    say("evaluation")
    rows += evaluation_rows(cache, source, work)
    say("t-SNE")
    rows += tsne_rows(scale)
    say("memory")
    rows += memory_rows(scale)
    say("sweep")
    rows += sweep_rows(scale, work, device)
    say("per-step overhead")
    rows += overhead_rows(work)
    minutes = (time.perf_counter() - started) / 60
    kind = "GPU" if device.type == "cuda" else "CPU"
    text = (f"### {kind}: {machine()}\n\n`python benchmarks/run.py{' --quick' if args.quick else ''}` "
            f"on {source.name} ({len(files)} images), {minutes:.1f} min in all.\n\n{table(rows)}")
    print(text)
    if args.out:
        write_markdown(Path(args.out), kind, text)
        say(f"written into {args.out}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    sys.exit(main())
