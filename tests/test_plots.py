"""Every figure function writes a PNG that opens, at a size where its images stay readable."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cellae import plots

CLASSES = ["uninfected", "infected"]


def cells(
    n: int, size: int = 32, channels: int = 3, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Coloured disks on black, infected ones with a dark dot: uint8 (N, C, H, W) and labels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images = np.zeros((n, channels, size, size), dtype=np.uint8)
    labels = np.arange(n) % 2
    for i in range(n):
        centre, radius = rng.uniform(0.4, 0.6, 2) * size, rng.uniform(0.3, 0.45) * size
        disk = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2
        images[i][:, disk] = rng.integers(150, 230, (channels, 1))
        if labels[i]:
            images[i][:, (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= (radius / 4) ** 2] = 60
    return images, labels


def opened(path: Path) -> tuple[int, int]:
    assert path.is_file() and path.stat().st_size > 1000
    with Image.open(path) as image:
        assert image.format == "PNG"
        size = image.size
    assert not list(path.parent.glob(".*tmp*")), "temporary file left behind"
    return size


def test_inputs_grid_is_balanced_and_readable(tmp_path: Path) -> None:
    images, labels = cells(100)
    labels[:90] = 0  # 10 infected among 100: the grid still shows both classes equally
    width, height = opened(plots.plot_inputs(images, labels, CLASSES, tmp_path / "s.png", run="r", n=16))
    assert width >= 8 * 100 and height >= 2 * 100  # 8 columns, 2 rows, >= 100 px per image
    assert opened(plots.plot_inputs(images[:, :1], labels, CLASSES, tmp_path / "g.png", run="r", n=3))


def test_balanced_pick_alternates_classes() -> None:
    labels = np.array([0] * 90 + [1] * 10)
    picked = plots.balanced_pick(labels, 16, seed=0)
    assert len(set(picked.tolist())) == 16
    assert (labels[picked] == 1).sum() == 8
    few = plots.balanced_pick(labels, 30, seed=0)
    assert (labels[few] == 1).sum() == 10 and len(few) == 30


def test_learning_curves_with_gaps_and_a_vae_panel(tmp_path: Path) -> None:
    ae_rows = [{"epoch": e, "train_loss": 10 / e, "test_loss": (11 / e) if e % 3 else math.nan}
               for e in range(1, 9)]
    ae_width, _ = opened(plots.plot_learning_curves(ae_rows, tmp_path / "ae.png", best_epoch=7, run="r"))
    vae_rows = [{"epoch": e, "train_loss": 100 / e, "test_loss": 110 / e, "train_recon": 90 / e,
                 "test_recon": 100 / e, "train_kl": 10.0, "test_kl": None if e == 2 else 10.0}
                for e in range(1, 6)]
    vae_width, _ = opened(plots.plot_learning_curves(vae_rows, tmp_path / "vae.png", best_epoch=5, run="r"))
    assert vae_width > 2 * ae_width  # the reconstruction and KL panels are there
    l1_rows = [dict(r, train_l1=1.0, test_l1=2.0) for r in ae_rows]
    assert plots.loss_terms_of(l1_rows) == ["l1"]
    l1_width, _ = opened(plots.plot_learning_curves(l1_rows, tmp_path / "l1.png", best_epoch=7, run="r"))
    assert l1_width > 1.5 * ae_width  # a panel for the L1 term


def test_learning_curves_with_one_epoch_and_no_best(tmp_path: Path) -> None:
    rows = [{"epoch": 1.0, "train_loss": 3.0, "test_loss": 3.5}]
    assert opened(plots.plot_learning_curves(rows, tmp_path / "one.png", best_epoch=1, run="r"))
    assert opened(plots.plot_learning_curves(rows, tmp_path / "none.png", best_epoch=None, run="r"))
    with pytest.raises(ValueError):
        plots.plot_learning_curves([], tmp_path / "empty.png", best_epoch=None, run="r")


@pytest.mark.parametrize("n_patients", [1, 30])
def test_tsne_plot_with_one_and_with_many_patients(tmp_path: Path, n_patients: int) -> None:
    rng = np.random.default_rng(0)
    embedding = rng.normal(size=(300, 2))
    labels = rng.integers(0, 2, 300)
    patients = np.array([f"C{p}" for p in rng.integers(0, n_patients, 300)])
    width, height = opened(plots.plot_latent_tsne(
        embedding, labels, CLASSES, patients, tmp_path / "t.png", run="r"
    ))
    assert width > 1.5 * height  # two panels side by side


def test_tsne_plot_refuses_mismatched_lengths(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="embedding"):
        plots.plot_latent_tsne(np.zeros((5, 2)), np.zeros(4, dtype=int), CLASSES,
                               np.array(["C1"] * 5), tmp_path / "t.png", run="r")


def test_reconstructions_wrap_and_accept_float_images(tmp_path: Path) -> None:
    images, labels = cells(12)
    recons = images.astype(np.float64) / 255.0 * 0.9
    width, height = opened(plots.plot_reconstructions(images, recons, labels, CLASSES,
                                                      tmp_path / "r.png", run="r"))
    assert width >= 8 * 100 and height >= 4 * 100  # two original/reconstruction row pairs
    with pytest.raises(ValueError):
        plots.plot_reconstructions(images, recons[:3], labels, CLASSES, tmp_path / "bad.png", run="r")


def test_image_grid_honours_images_per_row(tmp_path: Path) -> None:
    images, _ = cells(10, channels=1)
    wide = opened(plots.plot_image_grid(images, tmp_path / "wide.png", title="draws", run="r", nrow=10))
    tall = opened(plots.plot_image_grid(images, tmp_path / "tall.png", title="draws", run="r", nrow=2))
    assert wide[0] > wide[1] and tall[1] > tall[0]


def test_traversals(tmp_path: Path) -> None:
    images, _ = cells(4 * 7)
    grid = images.reshape(4, 7, 3, 32, 32)
    values = np.linspace(-3, 3, 7).tolist()
    width, height = opened(plots.plot_traversals(grid, [5, 0, 2, 9], values, tmp_path / "tr.png", run="r",
                                                   kl=[4.0, 2.0, 1.0, 0.1], base="the mean test code"))
    assert width >= 7 * 100 and height >= 4 * 100
    with pytest.raises(ValueError, match="grid"):
        plots.plot_traversals(grid, [5, 0], values, tmp_path / "bad.png", run="r", kl=[1.0, 0.5],
                             base="zero")


def test_a_first_epoch_far_above_the_rest_does_not_flatten_the_curve() -> None:
    from matplotlib.figure import Figure

    epochs = np.arange(1, 11, dtype=np.float64)
    falling = np.array([5000.0] + [20.0 - e for e in range(9)])  # 5000 then 20 down to 12
    ax = Figure().subplots()
    plots._fit_y_axis(ax, epochs, {"train": (falling, "tab:blue")})
    bottom, top = ax.get_ylim()
    assert top < 100 and bottom < 12  # fitted to the later epochs
    assert "off the axis: train 5000" in ax.get_legend_handles_labels()[1][0]
    steady = np.array([30.0, 25.0, 24.0, 23.0, 22.0, 21.0, 20.0, 19.0, 18.0, 17.0])
    ax = Figure().subplots()
    ax.plot(epochs, steady)
    assert not plots._fit_y_axis(ax, epochs, {"train": (steady, "tab:blue")})
    assert ax.get_ylim()[1] >= 30  # nothing to fix: every epoch stays on the axis


def test_a_changing_loss_weight_is_drawn_and_a_constant_one_is_not() -> None:
    rows = [{"epoch": e, "lr": 1e-3, "seconds": 1.0, "images_per_second": 9.0,
             "train_loss": 10 / e, "test_loss": 11 / e, "train_kl": 1.0, "test_kl": 1.0,
             "train_recon": 9 / e, "test_recon": 10 / e, "kl_weight": min(1.0, e / 3),
             "other_weight": 0.5} for e in range(1, 6)]
    assert plots.schedule_columns_of(rows) == ["kl_weight", "other_weight"]
    from matplotlib.figure import Figure

    axes = Figure().subplots(1, 3)
    twins = plots._draw_schedules(dict(zip(["", "recon", "kl"], axes, strict=True)),
                                  np.arange(1, 6, dtype=np.float64), rows)
    assert list(twins) == [axes[2]]  # kl_weight over the KL panel; other_weight never changes
    assert "kl_weight" in twins[axes[2]].get_legend_handles_labels()[1][0]
