from __future__ import annotations

import numpy as np
import pytest

from cellae.config import DataConfig
from cellae.data.preprocess import PreprocessSettings, cell_mask, preprocess, to_gray
from conftest import cell_array


@pytest.mark.parametrize(("size", "color", "channels"), [(32, "rgb", 3), (64, "gray", 1), (128, "rgb", 3)])
def test_output_shapes(size, color, channels):
    image, mask = preprocess(cell_array(0, 90, 130), PreprocessSettings(size, color))
    assert image.shape == (channels, size, size) and image.dtype == np.uint8
    assert mask.shape == (size, size) and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 1}


def test_settings_from_config_and_validation():
    settings = PreprocessSettings.from_config(
        DataConfig(image_size=32, color="gray", resize="pad", background="fill_mean")
    )
    assert settings.to_dict() == {
        "image_size": 32, "color": "gray", "resize": "pad", "background": "fill_mean",
        "normalize": "none",
    }
    assert settings.channels == () and settings.rim == 2  # channels: the kept ones (all)
    assert PreprocessSettings(image_size=64).rim == 3 and PreprocessSettings(image_size=128).rim == 6
    assert PreprocessSettings() == PreprocessSettings.from_config(DataConfig())


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"resize": "crop"}, ValueError, r"resize must be one of \('stretch', 'pad'\)"),
        ({"color": "RGB"}, ValueError, "color must be one of"),
        ({"background": None}, ValueError, "background must be one of"),
        ({"image_size": 0}, ValueError, "image_size must be positive"),
        ({"image_size": 64.0}, TypeError, "image_size must be an int"),
        ({"image_size": True}, TypeError, "image_size must be an int"),
    ],
)
def test_settings_refuse_what_no_config_could_hold(changes, error, message):
    # a user's config is checked where it is read; these are mistakes in code that builds settings
    with pytest.raises(error, match=message):
        PreprocessSettings(**changes)


def test_odd_sizes_work_outside_runs():
    image, mask = preprocess(cell_array(5, 30, 20), PreprocessSettings(image_size=5))
    assert image.shape == (3, 5, 5) and mask.shape == (5, 5)


def test_mask_fills_dark_parasites_and_drops_fragments():
    cell = cell_array(1, 60, 60)
    cell[28:33, 28:33] = 0  # a hole: dark parasite read as near-black
    cell[0:4, 0:4] = 150  # a fragment of a neighbouring cell in the corner
    mask = cell_mask(cell)
    assert mask[30, 30]  # the hole is filled
    assert not mask[1, 1]  # the fragment is not part of the cell
    assert not mask[0, 30]  # the padding is not part of the cell


def test_stretch_fills_the_frame():
    _, mask = preprocess(cell_array(2, 40, 120), PreprocessSettings(64, resize="stretch"))
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    assert rows[-1] - rows[0] + 1 >= 60 and cols[-1] - cols[0] + 1 >= 60


def test_pad_keeps_the_aspect_ratio():
    wide = np.full((40, 120, 3), 180, dtype=np.uint8)  # a 3:1 frame, all cell
    image, mask = preprocess(wide, PreprocessSettings(60, resize="pad"))
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    height, width = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    assert (height, width) == (20, 60)
    assert rows[0] == 20  # centred vertically on black
    assert image[:, :20].max() == 0 and image[:, 40:].max() == 0


def test_fill_mean_leaves_no_padding_and_paints_the_rim():
    cell = cell_array(3, 100, 80, colour=(200, 120, 140))
    keep_image, keep_mask = preprocess(cell, PreprocessSettings(64, background="keep"))
    image, mask = preprocess(cell, PreprocessSettings(64, background="fill_mean"))
    assert (keep_image.max(axis=0) == 0).any()  # keep has black padding
    assert not (image.max(axis=0) < 12).any()  # fill_mean has none anywhere in the frame
    # the returned mask is the interior eroded by the rim; outside it all pixels are one colour
    assert mask.sum() < keep_mask.sum()
    assert mask[keep_mask == 0].sum() == 0
    outside = image[:, mask == 0]
    assert (outside == outside[:, :1]).all()
    np.testing.assert_allclose(outside[:, 0], image[:, mask == 1].mean(axis=1), atol=1)
    np.testing.assert_allclose(outside[:, 0], [200, 120, 140], atol=4)
    # the interior itself is untouched
    np.testing.assert_array_equal(image[:, mask == 1], keep_image[:, mask == 1])


def test_fill_mean_with_pad_fills_the_padding_too():
    image, _ = preprocess(cell_array(4, 50, 120), PreprocessSettings(64, "rgb", "pad", "fill_mean"))
    assert image.max(axis=0).min() > 12


def test_gray_uses_luma():
    pixel = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]]], dtype=np.uint8)
    np.testing.assert_array_equal(to_gray(pixel), [[76, 150, 29]])


def test_all_black_image_does_not_crash():
    image, mask = preprocess(
        np.zeros((50, 50, 3), dtype=np.uint8), PreprocessSettings(32, background="fill_mean")
    )
    assert image.max() == 0 and mask.max() == 0


def test_rejects_wrong_input():
    with pytest.raises(ValueError, match="HxWxC uint8"):
        preprocess(np.zeros((10, 10), dtype=np.uint8), PreprocessSettings())
    with pytest.raises(ValueError, match="HxWxC uint8"):
        preprocess(np.zeros((10, 10, 4), dtype=np.uint16), PreprocessSettings())
    with pytest.raises(ValueError, match="luma of an RGB crop"):
        preprocess(np.zeros((10, 10, 4), dtype=np.uint8), PreprocessSettings(color="gray"))
