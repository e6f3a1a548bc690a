"""train.invariance: a VICReg term between each cell's code and a second view of it."""

import torch

from cellae import runs
from cellae.training import train
from cellae.training.invariance import second_view, vicreg
from tiny import tiny_config


def test_second_view_is_the_same_cells_looked_at_again():
    torch.manual_seed(0)
    x = torch.rand(6, 3, 16, 16)
    masks = torch.zeros(6, 16, 16, dtype=torch.uint8)
    masks[:, 4:12, 3:9] = 1
    view, view_masks = second_view(x, masks)
    assert view.shape == x.shape and view.min() >= 0 and view.max() <= 1
    # the masks are turned and moved with the cells: as many cell pixels, somewhere else
    assert view_masks.shape == masks.shape and view_masks.sum() == masks.sum()
    assert not torch.equal(view, x)
    # the same pixels up to the turn, the shift and a small gain and offset
    assert abs(view.mean() - x.mean()) < 0.1


def test_vicreg_rewards_agreeing_spread_codes_and_punishes_collapse():
    torch.manual_seed(0)
    spread = torch.randn(256, 8) * 2
    agreeing = vicreg(spread, spread + 0.01 * torch.randn_like(spread))
    disagreeing = vicreg(spread, torch.randn(256, 8) * 2)
    collapsed = vicreg(torch.zeros(256, 8), torch.zeros(256, 8))
    assert agreeing < 0.1 < disagreeing
    assert collapsed > 1.9  # both variance terms near their largest: every std is 0


def test_a_run_with_invariance_records_the_term_every_epoch(tmp_path):
    config = tiny_config(tmp_path, train={"epochs": 2, "invariance": 10.0},
                         eval={"enabled": False})
    run_dir = train(config, tmp_path / "runs", evaluate=False)
    rows = runs.read_metrics(run_dir)
    assert len(rows) == 2
    assert all(row["train_invariance"] > 0 and row["test_invariance"] > 0 for row in rows)
