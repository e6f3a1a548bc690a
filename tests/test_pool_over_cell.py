"""model.pool_over: cell: the what_where family's pools cover the cell's mask only."""

import numpy as np
import pytest
import torch
from PIL import Image

from cellae import api, runs
from cellae.config import config_from_dict
from cellae.data.augment import every_symmetry
from cellae.embed import embed_source
from cellae.errors import CellaeError
from cellae.evaluate import encode_images
from cellae.models import build_model
from cellae.models.base import mask_argument, model_config
from cellae.models.what_where import pool_over_cell
from cellae.run_inputs import run_cache
from cellae.training import train
from tiny import tiny_config


def _model(pool_over="cell"):
    torch.manual_seed(0)
    return build_model(model_config(family="what_where", latent_dim=6, where_dim=2,
                                    widths=[8, 16], pool_over=pool_over),
                       image_size=16, channels=3).eval()


def _cells(n=3, side=16):
    """uint8 images with a textured disc on a flat mid-grey padding, and the discs' masks."""
    generator = torch.Generator().manual_seed(1)
    images = torch.full((n, 3, side, side), 128, dtype=torch.uint8)
    yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    masks = torch.zeros(n, side, side, dtype=torch.uint8)
    for i in range(n):
        radius = 4 + i
        disc = (yy - side / 2 + 0.5) ** 2 + (xx - side / 2 + 0.5) ** 2 <= radius**2
        masks[i] = disc
        texture = torch.randint(60, 220, (3, side, side), dtype=torch.uint8, generator=generator)
        images[i] = torch.where(disc, texture, images[i])
    return images, masks


def test_over_a_whole_image_of_cell_the_pools_are_the_image_pools():
    maps = [torch.randn(2, 4, 8, 8), torch.randn(2, 5, 4, 4)]
    inside = torch.ones(2, 1, 16, 16)
    expected = torch.cat([torch.cat([m.amax(dim=(2, 3)), m.mean(dim=(2, 3))], dim=1)
                          for m in maps], dim=1)
    torch.testing.assert_close(pool_over_cell(maps, inside), expected)


def test_what_lies_outside_the_cell_does_not_reach_the_pools():
    inside = torch.zeros(1, 1, 16, 16)
    inside[..., 4:12, 4:12] = 1
    maps = [torch.randn(1, 3, 8, 8)]
    loud = maps[0].clone()
    loud[..., :2, :] = 100.0  # rows 0-1 of the 8 x 8 map: pixels 0-3, outside the cell
    torch.testing.assert_close(pool_over_cell([loud], inside), pool_over_cell(maps, inside))
    # the mean is over the cell's 4 x 4 positions of the map, not over all 64
    pooled = pool_over_cell(maps, inside)
    torch.testing.assert_close(pooled[0, 3:], maps[0][0, :, 2:6, 2:6].mean(dim=(1, 2)))


def test_a_cell_too_small_for_any_position_pools_to_zero_not_to_nan():
    inside = torch.zeros(1, 1, 16, 16)
    inside[..., 5, 5] = 1  # a quarter of one 2 x 2 position: none mostly inside
    pooled = pool_over_cell([torch.randn(1, 3, 8, 8)], inside)
    assert torch.isfinite(pooled).all()
    assert torch.equal(pooled[0, :3], torch.zeros(3))


def test_the_mask_is_needed_and_only_where_the_model_reads_it():
    images, masks = _cells()
    x = images.float() / 255
    cell, image = _model("cell"), _model("image")
    assert cell.reads_mask and not image.reads_mask
    with pytest.raises(CellaeError, match="reads each cell's mask"):
        mask_argument(cell, None)
    assert mask_argument(image, masks) == {}  # a family that does not read it is not given it
    with torch.no_grad():
        with pytest.raises(ValueError, match="needs the cells' masks"):
            cell.encode(x)
        # forward's code is encode's, with the mask
        torch.testing.assert_close(cell(x, mask=masks).z, cell.encode(x, masks))
        # another padding level changes the whole-image pools more than the cell pools
        repainted = torch.where(masks.bool()[:, None], x, torch.full_like(x, 0.9))
        moved_cell = (cell.encode(repainted, masks) - cell.encode(x, masks)).abs()[:, :4].mean()
        moved_image = (image.encode(repainted) - image.encode(x)).abs()[:, :4].mean()
    assert moved_cell < moved_image


def test_the_masks_turn_with_their_cells_in_a_dihedral_code():
    images, masks = _cells()
    model = _model()
    turned = torch.rot90(images, 1, dims=(-2, -1)).flip(-1).contiguous()
    turned_masks = torch.rot90(masks, 1, dims=(-2, -1)).flip(-1).contiguous()
    mean = encode_images(model, images.numpy(), views="dihedral", masks=masks.numpy())
    again = encode_images(model, turned.numpy(), views="dihedral", masks=turned_masks.numpy())
    by_hand = np.mean([encode_images(model, view.contiguous().numpy(), masks=m.contiguous().numpy())
                       for view, m in zip(every_symmetry(images), every_symmetry(masks),
                                          strict=True)], axis=0)
    np.testing.assert_allclose(mean, again, atol=1e-5)
    np.testing.assert_allclose(mean, by_hand, atol=1e-5)
    with pytest.raises(CellaeError, match="reads each cell's mask"):
        encode_images(model, images.numpy())


def test_config_takes_image_or_cell_only():
    with pytest.raises(CellaeError, match="pool_over"):
        config_from_dict({"model": {"family": "what_where", "pool_over": "nucleus"}})
    with pytest.raises(CellaeError, match="pool_over"):
        config_from_dict({"model": {"family": "ae", "pool_over": "cell"}})


def test_a_run_pooling_over_the_cell_trains_evaluates_embeds_and_encodes(tmp_path):
    config = tiny_config(
        tmp_path,
        model={"family": "what_where", "latent_dim": 6, "where_dim": 2, "widths": [8, 16],
               "pool_over": "cell", "loss": {"name": "spot_mse", "background_weight": 0}},
        data={"background": "fill_mean", "normalize": "local"},
        train={"epochs": 2, "augment": "dihedral", "invariance": 10.0},
        eval={"code_views": "dihedral"})
    run_dir = train(config, tmp_path / "runs")
    rows = runs.read_metrics(run_dir)
    assert all(np.isfinite(row["train_invariance"]) for row in rows)
    metrics = runs.read_evaluation(run_dir)
    assert 0 <= metrics["probe"]["accuracy"] <= 1

    loaded = api.load_run(run_dir, cache_dir=str(tmp_path / "cache"))
    cache = run_cache(run_dir, loaded.config)
    images, masks = np.asarray(cache.images[:5]), np.asarray(cache.masks[:5])
    with pytest.raises(CellaeError, match="give image files, or masks="):
        loaded.encode(images)
    codes = loaded.encode(images, masks=masks)
    assert codes.shape == (5, 6) and np.isfinite(codes).all()
    assert loaded.reconstruct(images, masks=masks).shape == images.shape
    # image files bring their own masks, found as the cache finds them
    files = []
    for i, image in enumerate(images):
        rgb = np.where(masks[i][..., None] != 0, image.transpose(1, 2, 0), 0).astype(np.uint8)
        files.append(tmp_path / f"cell{i}.png")
        Image.fromarray(rgb).save(files[-1])
    assert loaded.encode(files).shape == (5, 6)

    out = tmp_path / "codes.npz"
    embed_source(run_dir, config.data.source, out)
    assert np.isfinite(np.load(out)["codes"]).all()
