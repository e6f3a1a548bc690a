"""Reconstruction metrics and VAE latent usage, checked against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cellae.evaluation.metrics import PSNR_CAP_DB, mse_psnr, ssim, ssim_per_image
from cellae.models.vae import active_units, kl_per_dimension


def constant(value: float, n: int = 2, channels: int = 3, size: int = 16) -> np.ndarray:
    return np.full((n, channels, size, size), value, dtype=np.float64)


def test_constant_offset_of_a_tenth_gives_mse_001_and_psnr_20db() -> None:
    result = mse_psnr(constant(0.3), constant(0.4))
    assert result["mse"] == pytest.approx(0.01)
    assert result["psnr"] == pytest.approx(20.0)
    assert result["psnr_of_mean_mse"] == pytest.approx(20.0)
    assert "psnr_interior" not in result


def test_uint8_images_are_scaled_to_unit_range() -> None:
    originals = np.zeros((1, 3, 8, 8), dtype=np.uint8)
    recons = np.full((1, 3, 8, 8), 51, dtype=np.uint8)  # 51 / 255 = 0.2
    result = mse_psnr(originals, recons)
    assert result["mse"] == pytest.approx(0.04)
    assert result["psnr"] == pytest.approx(10 * math.log10(25))


def test_headline_psnr_averages_per_image_psnr_not_the_mean_mse() -> None:
    originals = np.zeros((2, 1, 4, 4))
    recons = np.stack([np.full((1, 4, 4), 0.1), np.full((1, 4, 4), 0.01)])  # 20 dB and 40 dB
    result = mse_psnr(originals, recons)
    assert result["psnr"] == pytest.approx(30.0)
    assert result["mse"] == pytest.approx((0.01 + 0.0001) / 2)
    assert result["psnr_of_mean_mse"] == pytest.approx(10 * math.log10(2 / 0.0101))
    assert result["psnr_of_mean_mse"] < result["psnr"]


def test_perfect_reconstruction_is_capped_not_infinite() -> None:
    result = mse_psnr(constant(0.5), constant(0.5), masks=np.ones((2, 16, 16)))
    assert result["psnr"] == PSNR_CAP_DB
    assert result["psnr_interior"] == PSNR_CAP_DB


def test_interior_numbers_count_only_pixels_inside_the_mask() -> None:
    originals = np.zeros((1, 3, 4, 4))
    masks = np.zeros((1, 4, 4), dtype=np.uint8)
    masks[0, 1:3, 1:3] = 1
    errors_inside = originals.copy()
    errors_inside[:, :, 1:3, 1:3] = 0.5
    inside = mse_psnr(originals, errors_inside, masks)
    assert inside["mse_interior"] == pytest.approx(0.25)
    assert inside["mse"] == pytest.approx(0.25 * 4 / 16)
    assert inside["psnr_interior"] == pytest.approx(10 * math.log10(4))

    errors_outside = np.full_like(originals, 0.5)
    errors_outside[:, :, 1:3, 1:3] = 0.0
    outside = mse_psnr(originals, errors_outside, masks)
    assert outside["mse_interior"] == 0.0
    assert outside["psnr_interior"] == PSNR_CAP_DB
    assert outside["mse"] == pytest.approx(0.25 * 12 / 16)


def test_images_with_empty_masks_are_left_out_of_interior_numbers() -> None:
    originals = np.zeros((2, 1, 4, 4))
    recons = np.stack([np.full((1, 4, 4), 0.1), np.full((1, 4, 4), 0.9)])
    masks = np.stack([np.ones((4, 4)), np.zeros((4, 4))])
    assert mse_psnr(originals, recons, masks)["mse_interior"] == pytest.approx(0.01)
    nothing = mse_psnr(originals, recons, np.zeros((2, 4, 4)))
    assert nothing["mse_interior"] is None and nothing["psnr_interior"] is None
    assert nothing["mse"] == pytest.approx((0.01 + 0.81) / 2)


def test_mismatched_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="one shape"):
        mse_psnr(constant(0.1, n=2), constant(0.1, n=3))
    with pytest.raises(ValueError, match="masks"):
        mse_psnr(constant(0.1), constant(0.1), masks=np.ones((2, 8, 8)))


def random_images(n: int, channels: int, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, channels, size, size))


def test_ssim_of_identical_images_is_one_and_drops_with_noise() -> None:
    images = random_images(3, 3)
    assert ssim(images, images) == pytest.approx(1.0)
    noisy = np.clip(images + np.random.default_rng(1).normal(0, 0.2, images.shape), 0, 1)
    very_noisy = np.clip(images + np.random.default_rng(1).normal(0, 0.5, images.shape), 0, 1)
    assert ssim(images, very_noisy) < ssim(images, noisy) < 0.9


@pytest.mark.parametrize("channels", [1, 3])
def test_ssim_matches_scikit_image(channels: int) -> None:
    skimage_metrics = pytest.importorskip("skimage.metrics")
    originals = random_images(3, channels, seed=2)
    smooth = np.cumsum(originals, axis=-1) / np.arange(1, 33)  # structure, not pure noise
    recons = np.clip(smooth + np.random.default_rng(3).normal(0, 0.1, smooth.shape), 0, 1)
    expected = np.mean([
        skimage_metrics.structural_similarity(
            a, b, channel_axis=0, data_range=1.0, gaussian_weights=True, sigma=1.5,
            use_sample_covariance=False,
        )
        for a, b in zip(smooth, recons, strict=True)
    ])
    assert ssim(smooth, recons) == pytest.approx(expected, abs=1e-9)


def test_ssim_on_float32_tensors_agrees_with_the_float64_figure() -> None:
    """Evaluation computes SSIM on the model's device in float32, batch by batch."""
    originals = random_images(6, 3, seed=4)
    smooth = np.cumsum(originals, axis=-1) / np.arange(1, 33)
    recons = np.clip(smooth + np.random.default_rng(5).normal(0, 0.1, smooth.shape), 0, 1)
    per_image = ssim_per_image(torch.from_numpy(smooth).float(), torch.from_numpy(recons).float())
    assert per_image.shape == (6,) and per_image.dtype == torch.float32
    assert float(per_image.double().mean()) == pytest.approx(ssim(smooth, recons), abs=1e-4)


def test_ssim_refuses_images_smaller_than_its_window() -> None:
    with pytest.raises(ValueError, match="at least 11"):
        ssim(np.zeros((1, 1, 8, 8)), np.zeros((1, 1, 8, 8)))


def test_kl_per_dimension_by_hand() -> None:
    mu = np.array([[0.0, 1.0, 0.0], [0.0, 3.0, 0.0]])
    log_var = np.array([[0.0, 0.0, math.log(2.0)], [0.0, 0.0, math.log(2.0)]])
    kl = kl_per_dimension(mu, log_var)
    # dim 0 is the prior itself; dim 1: 0.5 * mean(mu^2) = 0.5 * 5; dim 2: 0.5 * (2 - 1 - ln 2)
    np.testing.assert_allclose(kl, [0.0, 2.5, 0.5 * (1 - math.log(2.0))])


def test_kl_per_dimension_sums_to_the_training_kl_term() -> None:
    torch = pytest.importorskip("torch")
    from cellae.models.vae import kl_divergence

    rng = np.random.default_rng(0)
    mu, log_var = rng.normal(size=(20, 6)), rng.normal(scale=0.5, size=(20, 6))
    per_image = kl_divergence(torch.from_numpy(mu), torch.from_numpy(log_var)).numpy()
    assert kl_per_dimension(mu, log_var).sum() == pytest.approx(per_image.mean())


def test_active_units_counts_dimensions_whose_means_vary() -> None:
    rng = np.random.default_rng(0)
    mu = np.full((500, 8), 0.7) + rng.normal(scale=0.01, size=(500, 8))  # variance 1e-4: inactive
    mu[:, [0, 3, 5]] = rng.normal(size=(500, 3))
    assert active_units(mu) == 3
    mu[:, 6] = rng.normal(scale=math.sqrt(0.03), size=500)  # variance ~0.03
    assert active_units(mu, threshold=0.01) == 4
    assert active_units(mu, threshold=0.1) == 3
