"""eval.code_views: dihedral, each cell's code the mean of its 8 symmetries' codes."""

import numpy as np
import torch

from cellae import api, runs
from cellae.data.augment import N_SYMMETRIES, every_symmetry
from cellae.evaluate import encode_images
from cellae.models import build_model
from cellae.models.base import model_config
from cellae.run_inputs import run_cache
from cellae.training import train
from tiny import tiny_config


def test_every_symmetry_gives_the_eight_in_dihedrals_order():
    image = torch.arange(2 * 5 * 5, dtype=torch.float32).view(1, 2, 5, 5)
    expected = [torch.rot90(m, k, dims=(-2, -1)) for m in (image, image.flip(-1)) for k in range(4)]
    got = list(every_symmetry(image))
    assert len(got) == N_SYMMETRIES
    for mine, theirs in zip(got, expected, strict=True):
        assert torch.equal(mine, theirs)


def test_a_dihedral_code_is_the_same_for_every_turn_of_a_cell():
    torch.manual_seed(0)
    model = build_model(model_config(family="what_where", latent_dim=6, where_dim=2,
                                     widths=[8, 16]), image_size=16, channels=3).eval()
    images = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    turned = torch.rot90(images, 1, dims=(-2, -1)).flip(-1).contiguous()
    with torch.no_grad():
        plain = encode_images(model, images.numpy())
        mean = encode_images(model, images.numpy(), views="dihedral")
        again = encode_images(model, turned.numpy(), views="dihedral")
        by_hand = np.mean([encode_images(model, view.contiguous().numpy())
                           for view in every_symmetry(images)], axis=0)
    np.testing.assert_allclose(mean, again, atol=1e-5)
    np.testing.assert_allclose(mean, by_hand, atol=1e-5)
    # the one-view code of an untrained network does depend on the turn
    assert not np.allclose(plain, encode_images(model, turned.numpy()), atol=1e-3)


def test_an_evaluation_reads_the_codes_its_config_asks_for(tmp_path):
    config = tiny_config(tmp_path, train={"epochs": 1, "augment": "dihedral"},
                         eval={"code_views": "dihedral"})
    run_dir = train(config, tmp_path / "runs")
    latents = np.load(runs.eval_dir(run_dir) / "latents.npz")
    loaded = api.load_run(run_dir, cache_dir=str(tmp_path / "cache"))
    cache = run_cache(run_dir, loaded.config)
    rows = {name: i for i, name in enumerate(np.asarray(cache.files).astype(str))}
    order = np.array([rows[f] for f in latents["files"]])
    with torch.no_grad():
        expected = encode_images(loaded.model.eval(), cache.images, order, "dihedral")
    np.testing.assert_allclose(latents["codes"], expected, atol=1e-4)
