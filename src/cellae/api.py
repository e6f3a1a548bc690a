"""The Python API: a finished run as a model to use, for notebooks and scripts.

``load_run(path)`` gives a :class:`LoadedRun`: the run's config and its trained model, with
``encode``, ``decode`` and ``reconstruct`` that take image files, PIL images or arrays. It
reads the run folder through :mod:`cellae.runs` only, so it stays the same while the training
code changes (the split scvi-tools makes between its torch modules and its user-facing model).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cellae import runs
from cellae.config import Config
from cellae.data.channels import ChannelPlan
from cellae.data.decode import BadImage, decode_pixels
from cellae.data.preprocess import PreprocessSettings, preprocess
from cellae.errors import CellaeError
from cellae.images import unit_float
from cellae.models.base import CellAutoencoder, build_model, mask_argument, prefers_channels_last
from cellae.run_inputs import read_config, run_cache, split_rows
from cellae.sections import DataConfig

# what LoadedRun takes as images: files or PIL images (preprocessed), or arrays in cache layout
ImageInput = (np.ndarray | torch.Tensor | str | Path | Image.Image
              | Sequence[str | Path | Image.Image])


@dataclass
class LoadedRun:
    """A trained model and its config, for use outside the CLI.

    Images go in as image files or PIL images (one, or a list; preprocessed the run's way:
    size, resize, colour, background), as uint8 arrays or tensors in the cache's layout
    (N x C x H x W, 0-255), or as float tensors already in [0, 1].
    """

    path: Path
    config: Config
    model: CellAutoencoder

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> LoadedRun:
        device = torch.device(device)
        self.model.to(device).use_channels_last(prefers_channels_last(device))
        return self

    def _channel_plan(self) -> ChannelPlan | None:
        """How the run's cache picked and scaled channels (run.json), or None for 8-bit crops
        kept as they are."""
        block = runs.read_run_info(self.path).get("data", {}).get("channels")
        if not isinstance(block, dict):
            return None
        plan = ChannelPlan.from_summary(block)
        return plan if plan.changes_pixels else None

    def prepare(self, images: str | Path | Image.Image | Sequence[str | Path | Image.Image]) -> np.ndarray:
        """Image files or PIL images preprocessed as the run's training images were (channels
        picked and scaled as its cache did): uint8 N x C x H x W, the cache's layout."""
        return self.prepare_with_masks(images)[0]

    def prepare_with_masks(self, images: str | Path | Image.Image | Sequence[str | Path | Image.Image]
                           ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`prepare`'s images and each one's cell mask (uint8 N x H x W, 1 in the cell),
        as the cache holds them."""
        settings = PreprocessSettings.from_config(self.config.data)
        plan = self._channel_plan()
        items = [images] if isinstance(images, str | Path | Image.Image) else list(images)
        prepared = []
        for item in items:
            try:
                if isinstance(item, Image.Image):
                    pixels = np.asarray(item if plan is not None else item.convert("RGB"))
                else:
                    pixels = decode_pixels(Path(item).expanduser().read_bytes())
                if plan is not None:
                    pixels = plan.apply(pixels)[0]
                elif pixels.dtype != np.uint8 or pixels.shape[-1] != 3:
                    raise BadImage(f"holds {pixels.shape[-1]} channel(s) of {pixels.dtype}; this "
                                   "run was trained on 8-bit RGB crops")
            except OSError as exc:
                raise CellaeError(f"cannot read {item}: {exc.strerror or exc}") from exc
            except BadImage as exc:
                raise CellaeError(f"{item}: {exc}") from exc
            prepared.append(preprocess(pixels, settings))
        if not prepared:
            raise CellaeError("no images given")
        return np.stack([p[0] for p in prepared]), np.stack([p[1] for p in prepared])

    def _as_input(self, images: ImageInput, masks: np.ndarray | torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Images in [0, 1] on the model's device, and the cells' masks there (those of image
        files found as the cache finds them, else ``masks`` as given, or None)."""
        if isinstance(images, str | Path | Image.Image) or (
            isinstance(images, list | tuple) and images
            and all(isinstance(i, str | Path | Image.Image) for i in images)
        ):
            images, masks = self.prepare_with_masks(images)  # type: ignore[arg-type]
        # np.array copies: a read-only memory map must not back a tensor torch may write
        x = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.array(images))
        _check_pixel_values(x)
        if x.ndim == 3:
            x = x.unsqueeze(0)
        expected = (self.model.channels, self.model.image_size, self.model.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise CellaeError(
                f"images must be shaped (N, {', '.join(map(str, expected))}) as this run's "
                f"inputs, got {tuple(x.shape)}; give image files or PIL images to have them "
                "preprocessed the run's way"
            )
        if masks is None:
            return unit_float(x).to(self.device), None
        m = masks if isinstance(masks, torch.Tensor) else torch.from_numpy(np.array(masks))
        if tuple(m.shape) != (len(x), *expected[1:]):
            raise CellaeError(f"masks must be shaped {(len(x), *expected[1:])}, one per image, "
                              f"got {tuple(m.shape)}")
        return unit_float(x).to(self.device), m.to(self.device)

    def test_images(self) -> tuple[np.ndarray, np.ndarray]:
        """The run's own test images (uint8 N x C x H x W, as the model saw them) and labels."""
        cache = run_cache(self.path, self.config)
        _, test_rows = split_rows(self.path, cache)
        return np.asarray(cache.images[test_rows]), np.asarray(cache.labels)[test_rows]

    def _batches(self, images: ImageInput, masks: np.ndarray | torch.Tensor | None,
                 batch_size: int) -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        """The images in batches, each with the keyword arguments that give its cells' masks
        to a model that reads them (model.pool_over: cell)."""
        x, m = self._as_input(images, masks)
        if not self.model.reads_mask:
            return [(b, {}) for b in x.split(batch_size)]
        if m is None:
            raise CellaeError("this run's model reads each cell's mask (model.pool_over: cell): "
                              "give image files, or masks= (N x H x W, non-zero in the cell) "
                              "beside arrays")
        return [(b, mask_argument(self.model, mb))
                for b, mb in zip(x.split(batch_size), m.split(batch_size), strict=True)]

    @torch.no_grad()
    def encode(self, images: ImageInput, batch_size: int = 512,
               masks: np.ndarray | torch.Tensor | None = None) -> np.ndarray:
        """Latent codes (the posterior mean for a VAE), one row per image; ``masks`` (N x H x
        W, the cells') with arrays, for a model that reads them (image files bring their own)."""
        batches = self._batches(images, masks, batch_size)
        return torch.cat([self.model.encode(b, **cells) for b, cells in batches]).cpu().numpy()

    @torch.no_grad()
    def decode(self, z: np.ndarray | torch.Tensor, batch_size: int = 512) -> np.ndarray:
        """Images in [0, 1] (float32, N x C x H x W) decoded from latent codes."""
        codes = torch.as_tensor(np.asarray(z, dtype=np.float32)).to(self.device)
        if codes.ndim != 2 or codes.shape[1] != self.model.latent_dim:
            raise CellaeError(f"latent codes must be shaped (N, {self.model.latent_dim}), "
                              f"got {tuple(codes.shape)}")
        return torch.cat([self.model.decode(b) for b in codes.split(batch_size)]).cpu().numpy()

    @torch.no_grad()
    def reconstruct(self, images: ImageInput, batch_size: int = 512,
                    masks: np.ndarray | torch.Tensor | None = None) -> np.ndarray:
        """Reconstructions in [0, 1] (float32, N x C x H x W); ``masks`` as in :meth:`encode`."""
        batches = self._batches(images, masks, batch_size)
        return torch.cat([self.model(b, **cells).recon for b, cells in batches]).cpu().numpy()


def _check_pixel_values(x: torch.Tensor) -> None:
    """Refuse arrays whose values the model would misread: integers other than uint8 (0-255 in
    int64 would enter as 255 times too bright) and floats beyond [0, 1]."""
    if x.dtype == torch.uint8:
        return
    if not (x.dtype.is_floating_point):
        raise CellaeError(f"images as {x.dtype} arrays are ambiguous: give uint8 (0-255) or floats "
                          "in [0, 1] (for 0-255 values: .astype(numpy.uint8))")
    if x.numel() and (not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1 + 1e-6):
        top = float(x.max()) if x.numel() else 0.0
        raise CellaeError(f"float images must be in [0, 1], these reach {top:g}"
                          + ("; divide 0-255 values by 255" if top > 1.5 else ""))


CHECKPOINTS = ("best", "last")


def load_run(path: str | Path, checkpoint: str = "best", cache_dir: str | None = None) -> LoadedRun:
    """Open a run folder: its config and its model (best checkpoint unless ``checkpoint='last'``).

    An anomaly model (``data.train_classes``) is always the last checkpoint: the "best" one has
    the lowest loss on the test cells, anomalies included, so it would be the model that fails
    least on what it should fail on, picked by the test patients.

    A cache it needs is built in ``cache_dir``, by default your own (``.cellae-cache`` here),
    never where the run's config says: a run folder may come from anyone, and its
    ``data.cache_dir`` would have cellae write, and clear temporary folders, wherever it names.
    """
    if checkpoint not in CHECKPOINTS:
        raise CellaeError(f"checkpoint must be one of {', '.join(CHECKPOINTS)}, got {checkpoint!r}")
    run_dir = runs.require_run_dir(Path(path))
    config = read_config(run_dir)
    own = cache_dir if cache_dir is not None else DataConfig().cache_dir
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, cache_dir=own))
    info = runs.read_run_info(run_dir)
    if checkpoint == "last" or (config.data.train_classes
                                and runs.last_checkpoint(run_dir).is_file()):
        ckpt_path = runs.last_checkpoint(run_dir)
    else:
        ckpt_path = runs.best_checkpoint(run_dir)
    channels = 1 if config.data.color == "gray" else 3
    model = build_model(config.model, config.data.image_size, int(info.get("channels", channels)))
    try:
        model.load_state_dict(runs.model_state_from_checkpoint(runs.load_checkpoint(ckpt_path)))
    except RuntimeError as exc:
        # config.yaml edited after training, or a checkpoint of another run copied in
        raise CellaeError(f"{ckpt_path} does not fit the model {runs.CONFIG_FILE} describes (was "
                          f"either edited or copied from another run?): "
                          f"{str(exc).splitlines()[-1].strip()[:160]}") from exc
    model.eval()
    return LoadedRun(path=run_dir, config=config, model=model).to("cpu")
