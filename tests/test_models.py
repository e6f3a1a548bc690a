"""Models: shapes, losses, the KL term, determinism, and that a tiny AE can actually learn."""

from __future__ import annotations

import math

import pytest
import torch

from cellae.config import ModelConfig, model_config
from cellae.errors import CellaeError
from cellae.models import FAMILIES, LOSSES, CellAutoencoder, ModelOutput, build_model
from cellae.models.vae import kl_divergence

TINY = {"latent_dim": 4, "widths": [8, 16], "norm": "batch", "activation": "leaky_relu"}


def tiny(family: str = "ae", image_size: int = 32, channels: int = 3, **changes) -> CellAutoencoder:
    torch.manual_seed(0)
    if family == "what_where":
        changes = {"where_dim": 1} | changes  # its default, 8, is more than TINY's whole code
    return build_model(model_config(**(TINY | {"family": family} | changes)), image_size, channels)


def loss(name: str, **parameters):
    return LOSSES.get(name)(**parameters)


def reconstruction_loss(name, logits, target, mask, background_weight):
    parameters = {"background_weight": background_weight} if name.startswith("masked") else {}
    return loss(name, **parameters)(logits, target, mask)


def images(n: int, image_size: int = 32, channels: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand(
        n, channels, image_size, image_size, generator=torch.Generator().manual_seed(seed)
    )


def disks(n: int, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Coloured disks at different places on black, with their masks: learnable structure."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    imgs, masks = [], []
    for i in range(n):
        cy, cx, r = 10 + 2 * i % 12, 8 + 3 * i % 16, 5 + i % 4
        mask = (((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r).float()
        colour = torch.tensor([0.9, 0.3 + 0.08 * i, 0.6 - 0.05 * i]).view(3, 1, 1)
        imgs.append(mask * colour)
        masks.append(mask.unsqueeze(0))
    return torch.stack(imgs), torch.stack(masks)


# ---------------------------------------------------------------- shapes and building


@pytest.mark.parametrize("family", ["ae", "vae", "what_where"])
@pytest.mark.parametrize("image_size", [32, 64, 128])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_output_shapes_and_range(family: str, image_size: int, channels: int) -> None:
    model = tiny(family, image_size, channels)
    x = images(2, image_size, channels)
    out = model(x)
    assert isinstance(out, ModelOutput)
    assert model.family == family and model.latent_dim == 4
    assert out.recon.shape == out.logits.shape == x.shape
    assert out.z.shape == (2, 4)
    assert model.encode(x).shape == (2, 4)
    assert model.decode(torch.randn(3, 4)).shape == (3, channels, image_size, image_size)
    assert out.recon.min() >= 0.0 and out.recon.max() <= 1.0
    assert torch.allclose(out.recon, torch.sigmoid(out.logits))
    if family == "vae":
        assert out.extras["mu"].shape == out.extras["log_var"].shape == (2, 4)
    else:
        assert out.extras == {}


@pytest.mark.parametrize("norm", ["batch", "group", "none"])
@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "gelu", "silu"])
def test_every_norm_and_activation_builds_and_runs(norm: str, activation: str) -> None:
    model = tiny("vae", norm=norm, activation=activation)
    assert model(images(2)).recon.shape == (2, 3, 32, 32)


def test_default_config_fits_64px_rgb() -> None:
    model = build_model(ModelConfig(), 64, 3)
    assert model.family == "ae" and model.latent_dim == 20
    assert model(images(2, 64)).recon.shape == (2, 3, 64, 64)


@pytest.mark.parametrize(
    ("changes", "image_size", "channels", "names"),
    [
        ({"widths": [8, 8, 8, 8, 8, 8]}, 32, 3, "model.widths"),
        ({"norm": "group", "widths": [8, 12]}, 32, 3, "model.widths"),
        ({"beta": 4.0}, 32, 3, "model.beta"),
        ({"loss": {"name": "mse", "background_weight": 0.2}}, 32, 3, "model.loss.background_weight"),
        ({}, 32, 0, "channels"),  # any count from 1 (fluorescence), none is impossible
        ({"family": "gan"}, 32, 3, "model.family"),
        ({"latent_dim": 0}, 32, 3, "model.latent_dim"),
        ({"loss": "l1"}, 32, 3, "model.loss"),
        ({"norm": "layer"}, 32, 3, "model.norm"),
        ({"activation": "tanh"}, 32, 3, "model.activation"),
        ({"family": "what_where", "where_dim": 4}, 32, 3, "model.where_dim"),
    ],
)
def test_impossible_combinations_raise(
    changes: dict, image_size: int, channels: int, names: str
) -> None:
    with pytest.raises(CellaeError, match=names):
        build_model(model_config(**(TINY | changes)), image_size, channels)


def test_init_is_deterministic_given_the_seed() -> None:
    first, second = tiny("vae").state_dict(), tiny("vae").state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    torch.manual_seed(1)
    other = build_model(model_config(**(TINY | {"family": "vae"})), 32, 3).state_dict()
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_model_keeps_its_own_copy_of_the_config() -> None:
    config = model_config(**TINY)
    model = build_model(config, 32, 3)
    config.widths.append(32)
    assert model.config.widths == [8, 16]


# ---------------------------------------------------------------- reconstruction losses


def test_mse_and_bce_match_hand_computed_values() -> None:
    logits = torch.tensor([0.0, math.log(3.0)]).view(1, 1, 1, 2)  # sigmoid: 0.5, 0.75
    target = torch.tensor([0.0, 1.0]).view(1, 1, 1, 2)
    assert loss("mse")(logits, target)[0].item() == pytest.approx(0.25 + 0.0625)
    assert loss("bce")(logits, target)[0].item() == pytest.approx(math.log(2.0) + math.log(4.0 / 3.0))
    mask = torch.tensor([1.0, 0.0]).view(1, 1, 1, 2)
    half = {"background_weight": 0.5}
    assert loss("masked_mse", **half)(logits, target, mask)[0].item() == pytest.approx(0.25 + 0.5 * 0.0625)
    assert loss("masked_bce", **half)(logits, target, mask)[0].item() == pytest.approx(
        math.log(2.0) + 0.5 * math.log(4.0 / 3.0)
    )


def test_losses_are_per_image_sums() -> None:
    logits, target = torch.randn(3, 3, 8, 8), torch.rand(3, 3, 8, 8)
    per_image, _ = loss("mse")(logits, target)
    assert per_image.shape == (3,)
    assert per_image[1].item() == pytest.approx(
        ((torch.sigmoid(logits[1]) - target[1]) ** 2).sum().item()
    )


@pytest.mark.parametrize("name", ["masked_mse", "masked_bce"])
def test_masked_loss_ignores_background_at_weight_zero(name: str) -> None:
    gen = torch.Generator().manual_seed(0)
    logits, target = torch.randn(2, 3, 8, 8, generator=gen), torch.rand(2, 3, 8, 8, generator=gen)
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, 2:6, 2:6] = 1.0
    changed_target = torch.where(mask.bool(), target, torch.rand(2, 3, 8, 8, generator=gen))
    changed_logits = torch.where(mask.bool(), logits, torch.randn(2, 3, 8, 8, generator=gen))
    base, _ = reconstruction_loss(name, logits, target, mask, 0.0)
    moved, _ = reconstruction_loss(name, changed_logits, changed_target, mask, 0.0)
    assert torch.allclose(base, moved)
    # With some weight on the background the same change does move the loss.
    assert not torch.allclose(
        reconstruction_loss(name, logits, target, mask, 0.1)[0],
        reconstruction_loss(name, changed_logits, changed_target, mask, 0.1)[0],
    )


@pytest.mark.parametrize(("masked", "plain"), [("masked_mse", "mse"), ("masked_bce", "bce")])
def test_masked_loss_equals_plain_loss_at_weight_one(masked: str, plain: str) -> None:
    gen = torch.Generator().manual_seed(1)
    logits, target = torch.randn(2, 3, 8, 8, generator=gen), torch.rand(2, 3, 8, 8, generator=gen)
    mask = (torch.rand(2, 1, 8, 8, generator=gen) > 0.5).float()
    masked_loss, masked_weight = reconstruction_loss(masked, logits, target, mask, 1.0)
    plain_loss, plain_weight = reconstruction_loss(plain, logits, target, None, 0.1)
    assert torch.allclose(masked_loss, plain_loss)
    assert torch.allclose(masked_weight, plain_weight)
    assert plain_weight.tolist() == [3 * 8 * 8] * 2


def test_masked_loss_without_a_mask_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="mask"):
        reconstruction_loss(
            "masked_mse", torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4), None, 0.1
        )


def test_recon_per_pixel_divides_by_pixels_or_by_total_weight() -> None:
    x, mask = disks(4)
    model = tiny("ae", loss="mse")
    out = model(x)
    terms = model.loss(x, mask, out)
    assert terms["recon_per_pixel"].item() == pytest.approx(terms["recon"].item() / (3 * 32 * 32))
    masked_model = tiny("ae", loss={"name": "masked_mse", "background_weight": 0.25})
    terms = masked_model.loss(x, mask, out)
    weights = (mask + 0.25 * (1 - mask)).sum() * 3
    per_image, _ = reconstruction_loss("masked_mse", out.logits, x, mask, 0.25)
    assert terms["recon"].item() == pytest.approx(per_image.mean().item())
    assert terms["recon_per_pixel"].item() == pytest.approx(per_image.sum().item() / weights.item())


# ---------------------------------------------------------------- the KL term and the VAE


def test_kl_is_zero_for_the_prior_itself() -> None:
    assert torch.equal(kl_divergence(torch.zeros(3, 5), torch.zeros(3, 5)), torch.zeros(3))


def test_kl_matches_a_monte_carlo_estimate_and_the_study_formula_does_not() -> None:
    mu = torch.tensor([[0.5, -1.0, 0.0], [1.5, 0.2, -0.3]], dtype=torch.float64)
    log_var = torch.tensor([[-1.0, 0.8, 1.5], [-2.0, 0.0, 0.5]], dtype=torch.float64)
    n = 200_000
    eps = torch.randn(n, 2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    z = mu + eps * (0.5 * log_var).exp()
    # log q(z) - log p(z); the 2*pi terms cancel.
    log_ratio = (-0.5 * eps**2 - 0.5 * log_var + 0.5 * z**2).sum(-1)
    estimate, stderr = log_ratio.mean(0), log_ratio.std(0) / math.sqrt(n)
    closed = kl_divergence(mu, log_var)
    assert torch.all((closed - estimate).abs() < 5 * stderr + 1e-3)
    study = 0.5 * ((log_var / 2).exp() + mu**2 - 1 - log_var).sum(1)
    assert torch.any((study - estimate).abs() > 5 * stderr + 1e-3)


def test_vae_is_deterministic_in_eval_mode_and_stochastic_in_training() -> None:
    model = tiny("vae")
    x = images(4)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model.encode(x), model.encode(x))
        first, second = model(x), model(x)
    assert torch.equal(first.z, first.extras["mu"]) and torch.equal(first.recon, second.recon)
    model.train()
    with torch.no_grad():
        a, b = model(x), model(x)
    assert not torch.equal(a.z, b.z)


def test_vae_loss_weighs_kl_by_beta_and_warmup() -> None:
    x, mask = disks(4)
    model = tiny("vae", beta=4.0)
    out = model(x)
    terms = model.loss(x, mask, out, {"kl_weight": 0.25})
    assert set(terms) == {"loss", "recon", "recon_per_pixel", "kl"}
    assert terms["kl"].item() > 0
    expected = terms["recon"] + 4.0 * 0.25 * terms["kl"]
    assert terms["loss"].item() == pytest.approx(expected.item())
    assert model.loss(x, mask, out, {"kl_weight": 0.0})["loss"].item() == pytest.approx(
        terms["recon"].item()
    )


def test_vae_log_var_is_clamped() -> None:
    model = tiny("vae")
    with torch.no_grad():
        model.to_log_var.bias.fill_(1e4)
    out = model.eval()(images(2))
    assert torch.isfinite(kl_divergence(out.extras["mu"], out.extras["log_var"])).all()
    assert out.extras["log_var"].max().item() <= 10.0


def test_vae_samples_are_images_and_reproducible() -> None:
    model = tiny("vae").eval()
    first = model.sample(5, torch.Generator().manual_seed(3))
    second = model.sample(5, torch.Generator().manual_seed(3))
    assert first.shape == (5, 3, 32, 32)
    assert torch.equal(first, second)
    assert first.min() >= 0.0 and first.max() <= 1.0


def test_ae_cannot_sample() -> None:
    with pytest.raises(CellaeError, match="vae"):
        tiny("ae").sample(4)


# ---------------------------------------------------------------- the AE and learning


def test_latent_l1_is_reported_and_added_when_enabled() -> None:
    x, mask = disks(4)
    plain = tiny("ae")
    assert "l1" not in plain.loss(x, mask, plain(x))
    model = tiny("ae", latent_l1=0.5)
    out = model(x)
    terms = model.loss(x, mask, out)
    assert terms["l1"].item() > 0
    assert terms["l1"].item() == pytest.approx(out.z.abs().sum(1).mean().item())
    assert terms["loss"].item() == pytest.approx((terms["recon"] + 0.5 * terms["l1"]).item())


@pytest.mark.parametrize(
    "changes",
    [
        {"family": "ae", "latent_l1": 0.1},
        {"family": "what_where", "where_dim": 1, "latent_l1": 0.1},
        {"family": "vae", "loss": "masked_bce"},
        {"family": "vae", "norm": "group", "activation": "gelu"},
    ],
)
def test_gradients_reach_every_parameter(changes: dict) -> None:
    x, mask = disks(4)
    model = tiny(**changes)
    model.train()
    model.loss(x, mask, model(x))["loss"].backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert param.grad.abs().sum() > 0, name


def test_tiny_ae_overfits_eight_images() -> None:
    x, mask = disks(8)
    model = tiny("ae", latent_dim=8)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        terms = model.loss(x, mask, model(x))
        optimiser.zero_grad()
        terms["loss"].backward()
        optimiser.step()
        losses.append(terms["loss"].item())
    assert losses[-1] < losses[0] / 5
    # Outputting black alone gives most of that drop; beating the best image-independent
    # output (the mean image) shows the latent tells the images apart.
    mean_image_loss = ((x - x.mean(0)) ** 2).sum(dim=(1, 2, 3)).mean().item()
    with torch.no_grad():
        assert model.eval().loss(x, mask, model(x))["recon"].item() < mean_image_loss / 4


def test_vae_warmup_schedule_and_free_bits() -> None:
    model = tiny("vae", kl_warmup_epochs=4)
    assert model.schedule(0.0) == {"kl_weight": 0.0}
    assert model.schedule(2.0) == {"kl_weight": 0.5}
    assert model.schedule(9.0) == {"kl_weight": 1.0}
    assert tiny("vae").schedule(0.0) == {"kl_weight": 1.0}
    x, mask = disks(4)
    free = tiny("vae", free_bits=5.0)
    out = free(x)
    terms = free.loss(x, mask, out)
    # every dimension's KL is far below 5 nats at initialisation: the penalty is the floor
    assert terms["loss"].item() == pytest.approx(terms["recon"].item() + 5.0 * 4, rel=1e-5)
    assert terms["kl"].item() < 5.0 * 4


def test_families_name_their_loss_terms() -> None:
    x, mask = disks(2)
    for model in (tiny("ae"), tiny("ae", latent_l1=0.1), tiny("vae")):
        terms = model.loss(x, mask, model(x))
        assert set(terms) == {"loss", *model.loss_terms()}


def test_registries_list_the_builtins() -> None:
    assert {"ae", "vae"} <= set(FAMILIES.names())
    assert {"mse", "bce", "masked_mse", "masked_bce"} <= set(LOSSES.names())


def test_a_family_refuses_another_familys_config() -> None:
    with pytest.raises(TypeError, match="VAEConfig"):
        FAMILIES.get("vae")(model_config(**TINY), 32, 3)


def test_spot_mse_makes_a_dark_spot_cost_more_than_the_same_error_in_plain_cytoplasm() -> None:
    target = torch.full((1, 3, 8, 8), 0.8)
    target[:, :, 3, 3] = 0.2  # one dark spot in a uniform cell
    mask = torch.zeros(1, 1, 8, 8)
    mask[:, :, 1:7, 1:7] = 1.0
    spot = loss("spot_mse", gain=2.0)
    weights = spot.weights(mask, target)
    assert weights[0, 0, 3, 3] > 3 * weights[0, 0, 4, 4]  # the spot outweighs the cytoplasm
    assert weights[0, 0, 0, 0] == 1.0  # background keeps background_weight
    logits = torch.logit(target.clamp(0.01, 0.99))
    missed_spot, missed_plain = logits.clone(), logits.clone()
    missed_spot[:, :, 3, 3] = torch.logit(torch.tensor(0.8))  # the spot reconstructed as cytoplasm
    missed_plain[:, :, 4, 4] = torch.logit(torch.tensor(0.2))  # the same error elsewhere
    assert spot(missed_spot, target, mask)[0] > 2 * spot(missed_plain, target, mask)[0]
    assert loss("spot_mse", gain=0.0)(missed_spot, target, mask)[0] == pytest.approx(
        loss("mse")(missed_spot, target, mask)[0].item())  # gain 0 is the plain loss


def test_double_nearest_is_pytorchs_nearest_upsampling_forward_and_backward() -> None:
    from cellae.models.blocks import DoubleNearest

    x = torch.randn(3, 5, 4, 6, requires_grad=True)
    ours = DoubleNearest()(x)
    theirs = torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")
    assert torch.equal(ours, theirs)
    weights = torch.randn_like(ours)
    (grad_ours,) = torch.autograd.grad((ours * weights).sum(), x)
    (grad_theirs,) = torch.autograd.grad((theirs * weights).sum(), x)
    torch.testing.assert_close(grad_ours, grad_theirs)
    channels_last = x.detach().contiguous(memory_format=torch.channels_last)
    assert torch.equal(DoubleNearest()(channels_last), theirs.detach())


@pytest.mark.parametrize("family", sorted(FAMILIES.names()))
def test_evaluation_reads_the_test_codes_off_the_forward_pass_only_where_they_are_encodes(family):
    """Evaluation saves an encoder pass over the test side by taking the forward pass's z, where
    that is what encode gives (every built-in family in eval mode); a family whose z is
    something else (a sample, a code of another space) gets encode's codes all the same."""
    import dataclasses

    from cellae.evaluate import z_is_encode

    model = tiny(family).eval()
    x = torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        output = model(x)
        expected = model.encode(x)
        assert z_is_encode(model, x, output)
        torch.testing.assert_close(output.z, expected)
        other = dataclasses.replace(output, z=torch.randn_like(output.z))
        assert not z_is_encode(model, x, other)


@pytest.mark.parametrize("family,upsample,norm", [("ae", "resize", "batch"), ("vae", "transpose", "batch"),
                                                  ("ae", "resize", "group"),
                                                  ("what_where", "resize", "batch")])
def test_inference_copy_folds_batch_norm_without_changing_outputs(family, upsample, norm) -> None:
    model = tiny(family, upsample=upsample, norm=norm)
    with torch.no_grad():  # running statistics away from their initial 0 and 1
        for seed in range(3):
            model(images(8, seed=seed) * 2 + 0.5)
    model.eval()
    fused = model.inference_copy()
    x = images(4, seed=9)
    with torch.no_grad():
        assert torch.allclose(fused.encode(x), model.encode(x), atol=1e-5)
        assert torch.allclose(fused(x).recon, model(x).recon, atol=1e-5)
    norms = [m for m in fused.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert not norms and not fused.training
    # the model itself is untouched: it still loads its checkpoint's keys
    assert set(model.state_dict()) != set(fused.state_dict()) or norm == "group"
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == (norm == "batch")


def _spot_at(y: int, x: int, size: int = 128) -> torch.Tensor:
    """A grey disk with a dark spot at (y, x), on black: one cell, its parasite placed."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    disk = ((yy - y) ** 2 + (xx - x) ** 2 <= 12**2).float() * 0.8
    spot = ((yy - y - 3) ** 2 + (xx - x + 2) ** 2 <= 2**2)
    return torch.where(spot, torch.tensor(0.1), disk).expand(3, size, size).unsqueeze(0)


@pytest.mark.parametrize("where_dim", [0, 2])
def test_what_code_is_the_same_wherever_the_cell_lies_and_the_flat_code_is_not(where_dim) -> None:
    """The what numbers are read from maps pooled over the image: a cell moved by a multiple
    of the encoder's stride (maps move with it, exactly, on a background whose features are 0)
    keeps its what numbers. The AE's code, read off the flat map, changes."""
    codes = {}
    for family in ("what_where", "ae"):
        changes = {"where_dim": where_dim} if family == "what_where" else {}
        model = tiny(family, image_size=128, norm="none", **changes).eval()
        for name, param in model.encoder.named_parameters():
            if name.endswith("bias"):  # so that black gives features of 0, as the padding
                torch.nn.init.zeros_(param)
        with torch.no_grad():
            codes[family] = model.encode(torch.cat([_spot_at(40, 40), _spot_at(72, 88)]))
    what = codes["what_where"][:, : TINY["latent_dim"] - where_dim]
    torch.testing.assert_close(what[0], what[1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(codes["ae"][0], codes["ae"][1], atol=1e-3)
