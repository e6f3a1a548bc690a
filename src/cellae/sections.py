"""The config sections that no model shapes: ``data``, ``train`` and ``eval``.

Each is a typed dataclass with a ``validate_*`` function for values that are well typed but
impossible. They import nothing of cellae's stages, so that every stage (the data package, the
trainer, the evaluation) can read its own section from here; the ``model`` section is each
family's own (:mod:`cellae.models.base`), and the whole run's config, which holds all four, is
:mod:`cellae.config`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Union

from cellae.errors import CellaeError
from cellae.typed_config import check

SYNTHETIC = "synthetic"
IMAGE_SIZES = (32, 64, 128)
# each data choice is spelled once, here; the data package reads its allowed values from these
ColorMode = Literal["rgb", "gray"]
ResizeMode = Literal["stretch", "pad"]
BackgroundMode = Literal["keep", "fill_mean"]
NormalizeMode = Literal["none", "per_cell", "local"]
AugmentMode = Literal["none", "dihedral"]
LrSchedule = Literal["constant", "cosine"]
SplitMode = Literal["patient", "image"]
# how a channel's samples become the cache's 8 bits (cellae.data.channels says how)
IntensityMode = Literal["auto", "percentile", "full_range"]
# the 2-D map of the latent codes drawn and put in the explorer
MapMethod = Literal["tsne", "umap"]
ProbeC = float | Literal["auto"]
CodeViews = Literal["one", "dihedral"]
# how an anomaly model scores a cell (cellae.evaluation.anomaly.SCORES says what each is)
AnomalyScore = Literal["interior_mean", "local_max", "dark_error", "latent_knn", "latent_gaussian"]

# ten times the NIH set: more synthetic cells only cost a cache of gigabytes
MAX_SYNTHETIC_IMAGES = 300_000
# a bound far beyond any k-fold study, short of a value that would make thousands of splits
MAX_FOLDS = 100


@dataclass
class SyntheticConfig:
    """The built-in synthetic cell generator."""

    n_images: int = 2000
    n_patients: int = 20
    infected_fraction: float = 0.4
    seed: int = 0


@dataclass
class FieldsConfig:
    """How a folder of fields of view and label masks becomes one crop per cell."""

    # objects smaller than this many pixels (of the field) are skipped and counted
    min_area: int = 20
    # the crop around an object is its bounding box's longer side times (1 + 2 margin)
    margin: float = 0.1
    # pixels of the field a crop's side spans: 0 sizes each crop to its cell, N > 0 cuts every
    # crop at N pixels, so that a cell's size survives the resize to image_size
    crop_size: int = 0
    # the columns of cells.csv / fields.csv that give each cell's class and patient (donor)
    class_column: str = "class"
    patient_column: str = "patient"


@dataclass
class DataConfig:
    """Where images come from and how they are turned into model input."""

    source: str = SYNTHETIC
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    image_size: int = 64
    color: ColorMode = "rgb"
    resize: ResizeMode = "stretch"
    background: BackgroundMode = "keep"
    # per_cell: each cell's interior standardised per channel, so the stain's shade is gone;
    # local: its fine detail only, each channel less its blurred self (cellae.data.preprocess)
    normalize: NormalizeMode = "none"
    # the Gaussian that local subtracts, its sigma as a fraction of the image side: 1/32 is
    # 2 px at 64, about a small parasite's radius; wider keeps larger blobs whole (and more of
    # the cell's shading)
    local_blur: float = 1 / 32
    split: SplitMode = "patient"
    test_fraction: float = 0.2
    # k-fold by patient: 0 keeps the single split of test_fraction; k > 1 puts fold `fold` of
    # k patient groups in test (the same groups whatever the seed, so seeds can be compared)
    folds: int = 0
    fold: int = 0
    # classes the model trains on (empty: all); an anomaly model trains on the healthy class
    train_classes: list[str] = field(default_factory=list)
    cache_dir: str = ".cellae-cache"
    strict: bool = False
    workers: int = 0
    # the source's channels by position, where its files do not name them (OME-TIFF does)
    channel_names: list[str] = field(default_factory=list)
    # the channels a run keeps, by name, in this order (empty: all of them)
    channels: list[str] = field(default_factory=list)
    intensity: IntensityMode = "auto"
    # the low and high percentiles a channel is scaled between (intensity percentile / auto)
    percentiles: list[float] = field(default_factory=lambda: [0.1, 99.9])
    fields: FieldsConfig = field(default_factory=FieldsConfig)


@dataclass
class TrainConfig:
    """The optimisation loop and the devices it runs on."""

    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    # constant: train.lr throughout; cosine: from train.lr down to 0 over the run's steps
    lr_schedule: LrSchedule = "constant"
    weight_decay: float = 0.0
    grad_clip: float = 0.0
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto"
    devices: Union[int, str] = "auto"  # noqa: UP007 - read by the validator at run time
    # machines taking part; each runs train.devices processes (see docs/scaling.md)
    num_nodes: int = 1
    strategy: Literal["auto", "ddp", "ddp_spawn", "ddp_find_unused_parameters_true"] = "auto"
    # auto: bf16-mixed on a CUDA GPU that has bfloat16, 32-true everywhere else
    precision: Literal["auto", "32-true", "32", "16-mixed", "bf16-mixed"] = "auto"
    num_workers: int = 0
    deterministic: bool = True
    tensorboard: bool = False
    data_on_device: Literal["auto", "always", "never"] = "auto"
    # dihedral: each training image turned or mirrored at random (cells have no orientation)
    augment: AugmentMode = "none"
    # memory layout of weights and images; "auto" is channels-last on the CPU and CUDA, where it
    # is faster (a speed setting: the values are the same up to the order of float sums)
    channels_last: Literal["auto", "always", "never"] = "auto"
    # optimizer steps run in one call of Lightning's loop, whose fixed cost (some 0.5 ms on a
    # CPU, more on a GPU) is then paid once for all of them (Keras' steps_per_execution); the
    # weights are the same for any value, only callbacks and the progress bar see calls, not
    # steps; 1 under DDP, whose wrapper sets up one gradient exchange per call, not per step
    steps_per_call: int = 8
    # torch.compile the model; a model or machine it fails on trains uncompiled, with a warning
    compile: bool = False
    # weight of a VICReg term between each cell's code and that of a second view of it
    # (cellae.training.invariance); 0 is off
    invariance: float = 0.0
    # each training cell's interior re-stained at random before the encoder sees it, the loss
    # still against the cell as it is (cellae.data.stain); 0 is off, 0.2 a moderate strength
    stain_jitter: float = 0.0


@dataclass
class EvalConfig:
    """What is computed and drawn after training."""

    enabled: bool = True
    tsne_max_points: int = 3000
    tsne_perplexity: float = 30.0
    knn_k: int = 15
    # the linear probes' inverse regularisation strength (the latent's, PCA's and the spot
    # features' alike): a number, or "auto", chosen for each probe from
    # cellae.evaluation.latent.PROBE_C_GRID by grouped inner folds of the train side's patients
    probe_c: ProbeC = 1.0
    n_reconstructions: int = 8
    n_samples: int = 32
    n_traversal_dims: int = 6
    # latent metrics, by registered name or module:NAME (see cellae.evaluation.latent_metrics)
    metrics: list[str] = field(default_factory=lambda: ["linear_probe", "knn", "silhouette"])
    # the code the latent measures, maps and latents.npz read for each cell: "one", the
    # encoder's code of the cell as it is; "dihedral", the mean of the codes of its 8 turned
    # and mirrored views (test-time augmentation: a code with no trace of the cell's
    # orientation, for models trained with train.augment: dihedral)
    code_views: CodeViews = "one"
    # an anomaly run's headline score (anomaly.auroc); every score is in anomaly.scores
    anomaly_score: AnomalyScore = "interior_mean"
    # the 2-D maps of the test codes: tsne (openTSNE), umap (umap-learn, the `umap` extra);
    # the first is the explorer's
    maps: list[MapMethod] = field(default_factory=lambda: ["tsne"])
    # columns the maps are also coloured by: any metadata column of the source
    color_by: list[str] = field(default_factory=list)
    # a self-contained explorer.html of the test cells' map (thumbnails, colours, metadata)
    explorer: bool = True
    # the side at which the spot-feature baseline sees the cells: 0 for the run's own image
    # size, or a larger one of IMAGE_SIZES (the source preprocessed the run's way at that
    # size, in a cache of its own): a baseline as strong as the source allows
    spot_size: int = 0


def validate_data(d: DataConfig, check_paths: bool = True, prefix: str = "data") -> DataConfig:
    """Reject impossible data settings; shared by the run config and ``cellae data prepare``."""
    check(d.image_size in IMAGE_SIZES, f"{prefix}.image_size", f"one of {IMAGE_SIZES}", d.image_size)
    check(0.0 < d.test_fraction < 1.0, f"{prefix}.test_fraction", "between 0 and 1", d.test_fraction)
    check(d.workers >= 0, f"{prefix}.workers", "0 (all cores) or more", d.workers)
    if d.normalize in ("per_cell", "local"):
        # the standardised interior needs the padding and the blended rim painted over first
        check(d.background == "fill_mean", f"{prefix}.background",
              f"'fill_mean' when data.normalize is '{d.normalize}'", d.background)
    check(0.0 < d.local_blur <= 0.5, f"{prefix}.local_blur",
          "a fraction of the image side above 0, at most 0.5", d.local_blur)
    check(d.folds == 0 or 2 <= d.folds <= MAX_FOLDS, f"{prefix}.folds",
          f"0 (one split by test_fraction) or 2 to {MAX_FOLDS}", d.folds)
    check(0 <= d.fold < max(d.folds, 1), f"{prefix}.fold",
          f"a fold number from 0 to {max(d.folds, 1) - 1}", d.fold)
    check(len({c.casefold() for c in d.train_classes}) == len(d.train_classes),
          f"{prefix}.train_classes", "a list without repeats (in any case)", d.train_classes)
    for key, names in (("channel_names", d.channel_names), ("channels", d.channels)):
        check(all(isinstance(n, str) and n.strip() for n in names)
              and len(set(names)) == len(names), f"{prefix}.{key}",
              "a list of distinct names", names)
    check(len(d.percentiles) == 2 and 0.0 <= d.percentiles[0] < d.percentiles[1] <= 100.0,
          f"{prefix}.percentiles", "two percentiles, low below high, from 0 to 100",
          d.percentiles)
    f = d.fields
    check(f.min_area >= 1, f"{prefix}.fields.min_area", "a positive number of pixels", f.min_area)
    check(0.0 <= f.margin <= 2.0, f"{prefix}.fields.margin", "from 0 to 2", f.margin)
    check(f.crop_size == 0 or 4 <= f.crop_size <= 4096, f"{prefix}.fields.crop_size",
          "0 (each cell's own size) or 4 to 4096 pixels", f.crop_size)
    s = d.synthetic
    check(10 <= s.n_images <= MAX_SYNTHETIC_IMAGES, f"{prefix}.synthetic.n_images",
          f"from 10 to {MAX_SYNTHETIC_IMAGES:,}", s.n_images)
    check(s.n_patients >= 2, f"{prefix}.synthetic.n_patients", "at least 2", s.n_patients)
    check(
        0.0 < s.infected_fraction < 1.0,
        f"{prefix}.synthetic.infected_fraction",
        "between 0 and 1",
        s.infected_fraction,
    )
    if check_paths and d.source != SYNTHETIC and not Path(d.source).expanduser().exists():
        # the malaria configs' default: the set is one command away
        fetch = ("; to fetch the NIH set: cellae data download --to data, then "
                 f"--set {prefix}.source=data/cell_images.zip"
                 if Path(d.source).name in ("cell_images", "cell_images.zip") else "")
        raise CellaeError(
            f"{prefix}.source: no such file or folder: {d.source} "
            f"(give a class folder, a zip, a CSV of files and labels, or '{SYNTHETIC}'){fetch}"
        )
    return d


def validate_train(t: TrainConfig) -> TrainConfig:
    """Reject impossible training settings."""
    check(t.epochs >= 1, "train.epochs", "a positive integer", t.epochs)
    check(t.batch_size >= 1, "train.batch_size", "a positive integer", t.batch_size)
    check(math.isfinite(t.lr) and t.lr > 0, "train.lr", "a finite positive number", t.lr)
    check(math.isfinite(t.weight_decay) and t.weight_decay >= 0, "train.weight_decay",
          "a finite number, 0 or more", t.weight_decay)
    check(math.isfinite(t.grad_clip) and t.grad_clip >= 0, "train.grad_clip",
          "0 (off) or a finite positive number", t.grad_clip)
    check(t.steps_per_call >= 1, "train.steps_per_call", "a positive integer", t.steps_per_call)
    check(t.num_workers >= 0, "train.num_workers", "0 or more", t.num_workers)
    check(
        t.devices == "auto" or (isinstance(t.devices, int) and t.devices >= 1),
        "train.devices",
        "'auto' or a positive integer",
        t.devices,
    )
    check(t.num_nodes >= 1, "train.num_nodes", "a positive integer", t.num_nodes)
    check(t.invariance >= 0, "train.invariance", "0 (off) or a positive weight", t.invariance)
    check(0 <= t.stain_jitter <= 1, "train.stain_jitter", "between 0 (off) and 1",
          t.stain_jitter)
    return t


def validate_eval(e: EvalConfig) -> EvalConfig:
    """Reject impossible evaluation settings; the metrics' names are checked by their registry."""
    check(e.tsne_max_points >= 10, "eval.tsne_max_points", "at least 10", e.tsne_max_points)
    check(e.tsne_perplexity > 0, "eval.tsne_perplexity", "a positive number", e.tsne_perplexity)
    check(e.knn_k >= 1, "eval.knn_k", "a positive integer", e.knn_k)
    check(e.probe_c == "auto" or (isinstance(e.probe_c, int | float) and e.probe_c > 0),
          "eval.probe_c", "a positive number or 'auto'", e.probe_c)
    check(e.n_reconstructions >= 1, "eval.n_reconstructions", "a positive integer", e.n_reconstructions)
    check(e.n_samples >= 1, "eval.n_samples", "a positive integer", e.n_samples)
    check(e.n_traversal_dims >= 1, "eval.n_traversal_dims", "a positive integer", e.n_traversal_dims)
    check(len(set(e.metrics)) == len(e.metrics), "eval.metrics", "a list without repeats", e.metrics)
    check(len(e.maps) >= 1 and len(set(e.maps)) == len(e.maps), "eval.maps",
          "one or more of tsne, umap, without repeats", e.maps)
    check(len(set(e.color_by)) == len(e.color_by), "eval.color_by", "a list without repeats",
          e.color_by)
    check(e.spot_size == 0 or e.spot_size in IMAGE_SIZES, "eval.spot_size",
          f"0 (the run's own size) or one of {IMAGE_SIZES}", e.spot_size)
    return e
