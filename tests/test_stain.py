"""train.stain_jitter: the encoder sees re-stained cells, the loss compares with the cells as they are."""

import pytest
import torch

from cellae import runs
from cellae.data.stain import stain_jitter
from cellae.errors import CellaeError
from cellae.training import train
from cellae.training.module import CellaeModule
from tiny import tiny_config


def cells(batch: int = 8, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    x = torch.full((batch, 3, size, size), 0.5)
    masks = torch.zeros(batch, size, size, dtype=torch.uint8)
    masks[:, 3:-3, 3:-3] = 1
    inside = masks.bool()[:, None].expand_as(x)
    x[inside] = (0.5 + 0.1 * torch.randn(int(inside.sum()))).clamp(0, 1)
    return x, masks


def interior_moments(x: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    pixels = x.permute(1, 0, 2, 3)[:, masks.bool()]  # (C, interior pixels of every image)
    return pixels.mean(dim=1), pixels.std(dim=1)


def test_a_re_stained_cell_keeps_its_padding_and_each_channels_mean_and_spread():
    x, masks = cells()
    out = stain_jitter(x, masks, 0.3)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    outside = ~masks.bool()[:, None].expand_as(x)
    assert torch.equal(out[outside], x[outside])
    assert not torch.allclose(out, x, atol=1e-3)
    for image in range(len(x)):
        one = slice(image, image + 1)
        (mean_in, std_in), (mean_out, std_out) = (interior_moments(t[one], masks[one])
                                                  for t in (x, out))
        torch.testing.assert_close(mean_out, mean_in, atol=1e-4, rtol=0)
        torch.testing.assert_close(std_out, std_in, atol=2e-3, rtol=1e-2)


def test_strength_zero_is_the_image_itself_and_draws_nothing():
    x, masks = cells()
    state = torch.get_rng_state()
    assert stain_jitter(x, masks, 0.0) is x
    assert torch.equal(torch.get_rng_state(), state)  # runs without it draw as they did


def test_a_flat_or_empty_cell_is_left_as_it_is():
    x = torch.full((2, 3, 8, 8), 0.5)
    masks = torch.zeros(2, 8, 8)
    masks[0, 2:6, 2:6] = 1  # a flat interior; the second image has none
    assert torch.equal(stain_jitter(x, masks, 0.5), x)


def test_the_encoder_sees_the_jitter_and_the_loss_the_clean_cell(tmp_path):
    config = tiny_config(tmp_path, train={"stain_jitter": 0.3})
    module = CellaeModule(config, channels=3)
    x, masks = cells(size=32)
    seen = []
    module.model.register_forward_pre_hook(lambda _, args: seen.append(args[0].clone()))
    module._step((x, masks), "train", last=False)
    assert not torch.allclose(seen[-1], x, atol=1e-3)
    module._step((x, masks), "test", last=False)
    assert torch.equal(seen[-1], x)  # the test side is never jittered


def test_a_run_with_stain_jitter_trains_and_the_setting_is_checked(tmp_path):
    config = tiny_config(tmp_path, train={"epochs": 1, "stain_jitter": 0.2})
    run_dir = train(config, tmp_path / "runs", evaluate=False)
    assert len(runs.read_metrics(run_dir)) == 1
    with pytest.raises(CellaeError, match="train.stain_jitter"):
        tiny_config(tmp_path, train={"stain_jitter": 1.5})
