"""model.condition: patient, each training cell's patient given to the decoder only."""

import numpy as np
import pytest
import torch

from cellae import runs
from cellae.data.datamodule import patient_slots
from cellae.errors import CellaeError
from cellae.models import build_model
from cellae.models.base import model_config
from cellae.models.condition import UNSEEN, drop_patients
from cellae.training import train
from cellae.training.module import CellaeModule
from tiny import tiny_config


def conditioned(patients: int = 3):
    config = model_config(family="what_where", latent_dim=6, where_dim=2, widths=[8, 16],
                          condition="patient")
    model = build_model(config, image_size=16, channels=3)
    model.condition.resize(patients)
    return config, model


def test_training_patients_get_a_slot_each_in_sorted_order_and_others_the_unseen_one():
    patients = np.array(["C9", "C10", "C9", "C33", "C2", "C10"])
    slots = patient_slots(patients, train_idx=np.array([0, 1, 2, 5]))
    # C10 < C9 as strings; C33 and C2 have no training row
    assert slots.tolist() == [2, 1, 2, UNSEEN, UNSEEN, 1]
    assert patient_slots(patients, np.array([], dtype=np.int64)).tolist() == [0] * 6


def test_the_decoder_draws_each_patient_its_own_way_and_the_code_does_not_depend_on_it():
    torch.manual_seed(0)
    _, model = conditioned()
    with torch.no_grad():
        model.condition.table.weight.normal_()
    model.eval()
    x = torch.rand(4, 3, 16, 16)
    a = model(x, torch.tensor([1, 1, 1, 1]))
    b = model(x, torch.tensor([2, 2, 2, 2]))
    assert torch.equal(a.z, b.z)
    assert not torch.allclose(a.recon, b.recon)
    # no patient given is the unseen patient's slot, which evaluation and the API use
    assert torch.equal(model(x).recon, model(x, torch.full((4,), UNSEEN)).recon)


def test_a_checkpointed_table_loads_into_a_model_built_from_the_config_alone():
    config, model = conditioned(patients=5)
    fresh = build_model(config, image_size=16, channels=3)
    assert fresh.condition.patients == 0
    fresh.load_state_dict(model.state_dict())
    assert fresh.condition.patients == 5
    x = torch.rand(2, 3, 16, 16)
    model.eval()
    fresh.eval()
    assert torch.equal(model(x, torch.tensor([4, 5])).recon, fresh(x, torch.tensor([4, 5])).recon)


def test_without_a_condition_the_model_has_no_new_weights():
    # checkpoints of earlier versions load as they did
    model = build_model(model_config(family="ae", latent_dim=4, widths=[8, 16]), 16, 3)
    assert model.condition is None
    assert not any("condition" in key for key in model.state_dict())


def test_dropped_patients_become_the_unseen_one_at_the_rate_asked():
    torch.manual_seed(0)
    slots = torch.full((20_000,), 3)
    dropped = drop_patients(slots, 0.1)
    assert set(dropped.unique().tolist()) == {UNSEEN, 3}
    assert (dropped == UNSEEN).float().mean().item() == pytest.approx(0.1, abs=0.01)
    assert drop_patients(slots, 0.0) is slots


def test_the_step_gives_training_cells_their_patients_and_test_cells_none(tmp_path):
    config = tiny_config(tmp_path, model={"condition": "patient", "condition_dropout": 0.0})
    module = CellaeModule(config, channels=3)
    module.model.condition.resize(4)
    given = []
    module.model.condition.register_forward_pre_hook(lambda _, args: given.append(args[0]))
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    masks = torch.ones(4, 32, 32, dtype=torch.uint8)
    slots = torch.tensor([1, 2, 3, 4])
    module._step((x, masks, torch.zeros(4), slots), "train", last=False)
    assert given[-1].tolist() == [1, 2, 3, 4]


def test_a_conditioned_run_trains_keeps_its_table_and_evaluates_from_it(tmp_path):
    config = tiny_config(tmp_path, model={"condition": "patient"}, train={"epochs": 1})
    run_dir = train(config, tmp_path / "runs")
    state = runs.model_state_from_checkpoint(runs.load_checkpoint(runs.last_checkpoint(run_dir)))
    table = state["condition.table.weight"]
    # the training patients of the tiny synthetic set (6, some on the test side) and the unseen
    assert 2 <= table.shape[0] <= 6
    assert table[1:].abs().sum() > 0  # the training patients' rows were learnt
    assert "probe" in runs.read_json_object(run_dir / "eval" / "metrics.json")


def test_the_settings_are_checked(tmp_path):
    with pytest.raises(CellaeError, match="model.condition"):
        tiny_config(tmp_path, model={"condition": "slide"})
    with pytest.raises(CellaeError, match="model.condition_dropout"):
        tiny_config(tmp_path, model={"condition": "patient", "condition_dropout": 1.0})
