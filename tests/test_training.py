import csv
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, TensorDataset

from cellae import runs
from cellae.errors import CellaeError
from cellae.training import CellaeModule, NonFiniteLossError, requeued_run, resume, train
from tiny import tiny_config


def metric_rows(run_dir: Path) -> list[dict]:
    with (run_dir / "metrics.csv").open() as handle:
        return list(csv.DictReader(handle))


def weights(run_dir: Path, name: str = "last.ckpt") -> dict:
    return runs.model_state_from_checkpoint(runs.load_checkpoint(run_dir / "checkpoints" / name))


class StopAfterEpoch(Callback):
    """Dies like a killed job once the given epoch's checkpoint is on disk."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch + 1 == self.epoch:
            trainer.save_checkpoint(Path(trainer.checkpoint_callback.dirpath) / "last.ckpt")
            raise RuntimeError("simulated crash")


class PoisonWeights(Callback):
    """Turns the weights to NaN at the start of an epoch, as a diverging run would."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch + 1 == self.epoch:
            with torch.no_grad():
                for parameter in pl_module.parameters():
                    parameter.fill_(float("nan"))


def test_run_folder_and_metrics(tmp_path):
    run_dir = train(tiny_config(tmp_path), tmp_path / "runs", evaluate=False)
    assert run_dir.parent == tmp_path / "runs" and run_dir.name.startswith("tiny-")
    for name in ("config.yaml", "run.json", "split.json", "metrics.csv",
                 "checkpoints/last.ckpt", "checkpoints/best.ckpt"):
        assert (run_dir / name).is_file(), name
    rows = metric_rows(run_dir)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert all(float(r["train_loss"]) > 0 and float(r["test_loss"]) > 0 for r in rows)
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    info = runs.read_run_info(run_dir)
    assert info["status"] == "finished" and info["seed"] == 3
    assert info["data"]["train"]["images"] + info["data"]["test"]["images"] == 96
    # never overwritten: a second run gets its own folder
    again = train(tiny_config(tmp_path, train={"epochs": 1}), tmp_path / "runs", evaluate=False)
    assert again != run_dir and (run_dir / "checkpoints" / "last.ckpt").is_file()


def test_vae_logs_reconstruction_and_kl(tmp_path):
    config = tiny_config(tmp_path, model={"family": "vae", "kl_warmup_epochs": 2}, train={"epochs": 2})
    rows = metric_rows(train(config, tmp_path / "runs", evaluate=False))
    assert all(float(r["train_kl"]) > 0 and float(r["test_recon"]) > 0 for r in rows)
    # the warm-up starts at 0 and rises linearly, so the mean weight of epoch 1 is below that of epoch 2
    assert 0 < float(rows[0]["kl_weight"]) < float(rows[1]["kl_weight"]) <= 1


def test_resume_ends_where_an_uninterrupted_run_ends(tmp_path):
    config = tiny_config(tmp_path, train={"epochs": 4})
    whole = train(config, tmp_path / "whole", evaluate=False)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(config, tmp_path / "broken", evaluate=False, callbacks=[StopAfterEpoch(2)])
    (broken,) = (tmp_path / "broken").iterdir()
    assert len(metric_rows(broken)) == 2
    assert runs.read_run_info(broken)["status"] == "failed"  # not left at "running"
    assert runs.read_run_info(broken)["error"] == "simulated crash"
    resumed = resume(broken, evaluate=False)
    assert [r["epoch"] for r in metric_rows(resumed)] == [r["epoch"] for r in metric_rows(whole)]
    a, b = weights(whole), weights(resumed)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
    for left, right in zip(metric_rows(whole), metric_rows(resumed), strict=True):
        assert float(left["test_loss"]) == pytest.approx(float(right["test_loss"]), rel=1e-4)


class TestLossRises(Callback):
    """Every epoch's test loss worse than the one before, as the checkpoints see it (they run
    after every other callback): the best checkpoint stays at epoch 1."""

    def on_train_epoch_end(self, trainer, pl_module):
        trainer.callback_metrics["test_loss"] = torch.tensor(float(trainer.current_epoch + 1))


class DieBeforeEpoch(Callback):
    """Dies like a killed job as the given epoch starts, leaving the checkpoints training wrote."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch + 1 == self.epoch:
            raise RuntimeError("simulated crash")


def test_last_checkpoint_follows_every_epoch_when_the_test_loss_stops_improving(tmp_path):
    config = tiny_config(tmp_path, train={"epochs": 4})
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(config, tmp_path / "runs", evaluate=False, callbacks=[TestLossRises(), DieBeforeEpoch(4)])
    (run_dir,) = (tmp_path / "runs").iterdir()
    checkpoints = run_dir / runs.CHECKPOINT_DIR
    assert runs.load_checkpoint(checkpoints / runs.LAST_CHECKPOINT)["epoch"] == 2  # 3 epochs done
    assert runs.load_checkpoint(checkpoints / runs.BEST_CHECKPOINT)["epoch"] == 0
    resumed = resume(run_dir, evaluate=False)
    assert [int(r["epoch"]) for r in metric_rows(resumed)] == [1, 2, 3, 4]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    with pytest.raises(NonFiniteLossError) as info:
        train(tiny_config(tmp_path, train={"epochs": 4}), tmp_path / "runs", evaluate=False,
              callbacks=[PoisonWeights(3)])
    message = str(info.value)
    assert "train loss became nan in epoch 3" in message and "last good checkpoint" in message
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert len(metric_rows(run_dir)) == 2
    assert all(torch.isfinite(w).all() for w in weights(run_dir).values())
    assert runs.read_run_info(run_dir)["status"] == "failed"


def test_a_nan_in_another_process_stops_this_one_too(tmp_path):
    """In DDP a process that stopped alone would leave the others waiting at their next
    gradient exchange: a clean process stops when another one's epoch went non-finite."""
    module = CellaeModule(tiny_config(tmp_path), channels=3)
    x = torch.rand(2, 3, 32, 32)
    output = module.model(x)
    clean = module.model.loss(x, torch.ones(2, 32, 32), output)
    module._record("train", clean, len(x), None)

    def gather_from_two(summary):  # this process's summary, and one whose test loss was NaN
        other = torch.zeros_like(summary)
        other[2:] = True
        return torch.stack([summary, other])

    module.all_gather = gather_from_two
    with pytest.raises(NonFiniteLossError, match="test loss became nan .*another process"):
        module.raise_if_nonfinite()
    module.all_gather = lambda summary: torch.stack([summary, torch.zeros_like(summary)])
    module._record("train", clean, len(x), None)
    module.raise_if_nonfinite()  # all clean everywhere: nothing raised


def test_resume_refuses_a_folder_without_checkpoint(tmp_path):
    run_dir = train(tiny_config(tmp_path, train={"epochs": 1}), tmp_path / "runs", evaluate=False)
    (run_dir / "checkpoints" / "last.ckpt").unlink()
    with pytest.raises(CellaeError, match="no checkpoints/last.ckpt to resume from"):
        resume(run_dir)


def test_ddp_with_two_cpu_processes(tmp_path):
    config = tiny_config(tmp_path, train={"epochs": 2})
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(config.to_yaml())
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "CELLAE_RUN_DIR")}
    result = subprocess.run(
        [sys.executable, "-m", "cellae.cli", "train", str(config_path), "--out", str(tmp_path / "runs"),
         "--no-eval", "--set", "train.devices=2", "train.strategy=ddp", "train.accelerator=cpu"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    info = runs.read_run_info(run_dir)
    assert info["devices"] == 2 and info["status"] == "finished"
    assert [int(r["epoch"]) for r in metric_rows(run_dir)] == [1, 2]


def test_batches_cut_from_a_resident_copy_train_exactly_as_from_the_memory_map(tmp_path):
    mapped = train(tiny_config(tmp_path, train={"epochs": 2, "data_on_device": "never"}),
                   tmp_path / "mapped", evaluate=False)
    resident = train(tiny_config(tmp_path, train={"epochs": 2, "data_on_device": "always"}),
                     tmp_path / "resident", evaluate=False)
    a, b = weights(mapped), weights(resident)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_every_loss_term_of_the_family_reaches_metrics_csv(tmp_path):
    config = tiny_config(tmp_path, model={"family": "ae", "latent_l1": 0.01}, train={"epochs": 1})
    (row,) = metric_rows(train(config, tmp_path / "runs", evaluate=False))
    assert float(row["train_l1"]) > 0 and float(row["test_l1"]) > 0
    assert "kl_weight" not in row and "train_kl" not in row  # an AE has neither


class FloatImages(L.LightningDataModule):
    """Not cellae's datamodule: plain float images in [0, 1] and masks, as tuples."""

    def _loader(self, seed: int) -> DataLoader:
        generator = torch.Generator().manual_seed(seed)
        images = torch.rand(16, 3, 32, 32, generator=generator)
        masks = (images.mean(1) > 0.5).float()
        return DataLoader(TensorDataset(images, masks), batch_size=8)

    def train_dataloader(self) -> DataLoader:
        return self._loader(0)

    def val_dataloader(self) -> DataLoader:
        return self._loader(1)


def test_any_datamodule_of_images_and_masks_feeds_the_module(tmp_path):
    module = CellaeModule(tiny_config(tmp_path), channels=3)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False)
    trainer.fit(module, datamodule=FloatImages())
    assert trainer.callback_metrics["train_loss"] > 0 and trainer.callback_metrics["test_recon"] > 0


def test_resuming_a_run_whose_metrics_csv_has_other_columns_keeps_every_value(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    old = "epoch,train_loss,test_loss,train_kl,test_kl,kl_weight,lr,seconds\n1,5.0,6.0,,,1.0,0.001,2.0\n"
    (run_dir / "metrics.csv").write_text(old)
    runs.append_metrics(run_dir, {"epoch": 2, "train_loss": 4.0, "test_loss": 5.0, "train_l1": 0.5,
                                  "lr": 0.001, "seconds": 1.5})
    rows = runs.read_metrics(run_dir)
    assert [r["epoch"] for r in rows] == [1.0, 2.0]
    assert rows[1]["lr"] == 0.001 and rows[1]["seconds"] == 1.5 and rows[1]["train_l1"] == 0.5
    assert rows[0]["kl_weight"] == 1.0 and rows[0]["train_l1"] != rows[0]["train_l1"]  # NaN: empty


def test_an_interrupted_cache_build_leaves_no_run_folder(tmp_path, monkeypatch):
    import cellae.training.run as training

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "prepare_cache", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(tmp_path), tmp_path / "runs", evaluate=False)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_run_folder_trains_in_one_process_at_a_time(tmp_path):
    config = tiny_config(tmp_path, train={"epochs": 2})
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(config, tmp_path / "runs", evaluate=False, callbacks=[StopAfterEpoch(1)])
    (run_dir,) = (tmp_path / "runs").iterdir()
    rows_before = metric_rows(run_dir)
    with runs.run_lock(run_dir), pytest.raises(CellaeError, match=f"in use by process {os.getpid()}"):
        resume(run_dir, evaluate=False)  # a second resume while one holds the folder
    assert metric_rows(run_dir) == rows_before  # refused before it touched anything
    # a lock file left by a process that died (its pid inside, no lock held) is taken over
    (run_dir / runs.LOCK_FILE).write_text("999999999\n")
    resumed = resume(run_dir, evaluate=False)
    assert [int(r["epoch"]) for r in metric_rows(resumed)] == [1, 2]


def test_eval_enabled_false_trains_without_evaluating(tmp_path):
    run_dir = train(tiny_config(tmp_path, train={"epochs": 1}, eval={"enabled": False}),
                    tmp_path / "runs")
    assert runs.read_run_info(run_dir)["status"] == "finished"
    assert not (run_dir / "eval").exists() and not (run_dir / "figures").exists()


def test_a_test_side_too_small_to_evaluate_fails_before_training(tmp_path):
    config = tiny_config(tmp_path, data={"synthetic": {"n_images": 20, "n_patients": 10},
                                         "test_fraction": 0.2})
    with pytest.raises(CellaeError, match=r"the test side holds \d images; .* needs at least 5"):
        train(config, tmp_path / "runs")
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert not (run_dir / runs.METRICS_FILE).exists()  # not one epoch was trained
    assert runs.read_run_info(run_dir)["status"] == "failed"
    without_eval = tiny_config(tmp_path, data={"synthetic": {"n_images": 20, "n_patients": 10}},
                               eval={"enabled": False})
    assert runs.read_run_info(train(without_eval, tmp_path / "more"))["status"] == "finished"


def test_the_lock_never_writes_through_a_link(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    precious = tmp_path / "bashrc"
    precious.write_text("my settings\n")
    (run_dir / runs.LOCK_FILE).symlink_to(precious)
    with pytest.raises(CellaeError, match="cannot take"), runs.run_lock(run_dir):
        pass
    assert precious.read_text() == "my settings\n"


def test_resume_copes_with_a_damaged_metrics_csv(tmp_path):
    config = tiny_config(tmp_path, train={"epochs": 2})
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(config, tmp_path / "runs", evaluate=False, callbacks=[StopAfterEpoch(1)])
    (run_dir,) = (tmp_path / "runs").iterdir()
    (run_dir / runs.METRICS_FILE).write_text("")
    resumed = resume(run_dir, evaluate=False)
    assert [int(r["epoch"]) for r in metric_rows(resumed)] == [2]  # epoch 1's row was lost


def test_compile_that_fails_trains_uncompiled_with_a_warning(tmp_path, monkeypatch, capsys):
    calls = []

    def broken_compile(model, **kwargs):
        calls.append(model)

        def fails(*args, **kwargs):
            raise RuntimeError("no C++ compiler found\nlong inductor traceback")

        return fails

    monkeypatch.setattr(torch, "compile", broken_compile)
    run_dir = train(tiny_config(tmp_path, train={"epochs": 1, "compile": True}), tmp_path / "runs",
                    evaluate=False)
    assert len(calls) == 1 and len(metric_rows(run_dir)) == 1
    assert "torch.compile failed (no C++ compiler found); training without it" in capsys.readouterr().err
    # the checkpoint holds the model's own keys, not a compiled wrapper's
    assert not any("_orig_mod" in key or "_forward" in key for key in weights(run_dir))


def test_channels_last_trains_to_the_same_losses(tmp_path):
    """The memory layout is a speed setting: the arithmetic, and so the losses, stay (up to the
    order of float sums, which Adam's normalised steps amplify in the weights themselves)."""
    losses, keys = {}, {}
    for layout in ("never", "always"):
        config = tiny_config(tmp_path / layout, train={"epochs": 2, "channels_last": layout})
        run_dir = train(config, tmp_path / layout / "runs", evaluate=False)
        losses[layout] = [float(r[k]) for r in metric_rows(run_dir) for k in ("train_loss", "test_loss")]
        keys[layout] = set(weights(run_dir))
    assert keys["never"] == keys["always"]
    assert losses["always"] == pytest.approx(losses["never"], rel=1e-4)


def test_precision_auto_is_bf16_on_a_gpu_with_bfloat16_only(monkeypatch):
    from cellae.training import resolved_precision

    assert resolved_precision("auto", "cpu") == "32-true"
    assert resolved_precision("16-mixed", "cpu") == "16-mixed"  # a setting is kept as given
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))  # Hopper
    assert resolved_precision("auto", "gpu") == "bf16-mixed"
    assert resolved_precision("32-true", "gpu") == "32-true"
    # Volta and Turing emulate bfloat16 (slowly): float32 there
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 5))
    assert resolved_precision("auto", "cuda") == "32-true"


def test_a_requeued_slurm_job_resumes_its_own_run(tmp_path, monkeypatch):
    """SLURM runs a requeued job's script again from the top: `cellae train` finds the run
    that job made and resumes it, where it would otherwise start over in a new folder."""
    for name in ("SLURM_NTASKS", "SLURM_PROCID", "SLURM_JOB_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    config = tiny_config(tmp_path, train={"epochs": 3})
    out = tmp_path / "runs"
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(config, out, evaluate=False, callbacks=[DieBeforeEpoch(3)])  # pre-empted
    (run_dir,) = out.iterdir()
    assert runs.read_run_info(run_dir)["slurm_job_id"] == "4242"
    monkeypatch.setenv("SLURM_JOB_ID", "777")  # another job's restart: not this run
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert requeued_run(out, config.name) is None
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    resumed = train(config, out, evaluate=False)
    assert resumed == run_dir and list(out.iterdir()) == [run_dir]
    assert [int(r["epoch"]) for r in metric_rows(run_dir)] == [1, 2, 3]
    assert runs.read_run_info(run_dir)["resumed_from_epoch"] == 2


class LaunchLikeLightning(Callback):
    """Writes into the environment what Lightning's launcher writes as it starts the processes
    of the other devices (LOCAL_RANK, NODE_RANK, WORLD_SIZE, MASTER_*)."""

    def on_train_start(self, trainer, pl_module):
        os.environ.update(LOCAL_RANK="0", NODE_RANK="0", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT="29999")


def test_a_run_leaves_no_launcher_environment_for_the_next_run(tmp_path, monkeypatch):
    """A local sweep trains its runs one after another in one process: LOCAL_RANK left over
    from a DDP run would make the next run wait for device processes nobody starts."""
    keys = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
            "CELLAE_RUN_DIR")
    for key in keys:
        monkeypatch.delenv(key, raising=False)
    train(tiny_config(tmp_path, train={"epochs": 1}), tmp_path / "runs", evaluate=False,
          callbacks=[LaunchLikeLightning()])
    assert [key for key in keys if key in os.environ] == []
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.5")  # a value the user set stays as it was
    train(tiny_config(tmp_path, train={"epochs": 1}), tmp_path / "runs", evaluate=False,
          callbacks=[LaunchLikeLightning()])
    assert os.environ["MASTER_ADDR"] == "10.0.0.5" and "LOCAL_RANK" not in os.environ


def test_epoch_means_are_the_batch_size_weighted_means_lightning_would_log():
    """The module sums each side's terms on the device and logs their epoch means once: the
    same number as a log call per step would give, a short last batch weighing less."""
    from cellae.training.module import EpochMeans

    epoch = EpochMeans(["loss", "recon"], torch.device("cpu"))
    epoch.add({"loss": torch.tensor(2.0), "recon": torch.tensor(1.0)}, 3, {"kl_weight": 0.5})
    epoch.add({"loss": torch.tensor(6.0), "recon": torch.tensor(5.0)}, 1, {"kl_weight": 1.0})
    assert epoch.means().tolist() == pytest.approx([3.0, 2.0])
    assert epoch.weights["kl_weight"] / epoch.images == pytest.approx(0.625)
    assert torch.isfinite(epoch.sums).all() and not epoch.nan
    epoch.add({"loss": torch.tensor(float("nan")), "recon": torch.tensor(float("inf"))}, 2, None)
    assert epoch.nan and not torch.isfinite(epoch.sums).any()


def test_a_checkpoint_counting_automatic_optimizer_steps_resumes_its_schedule(tmp_path):
    # checkpoints written before the module ran its own optimizer step count the steps under
    # Lightning's automatic optimisation; resumed, the KL warm-up must go on, not restart
    config = tiny_config(tmp_path, model={"family": "vae", "kl_warmup_epochs": 4},
                         train={"epochs": 4})
    whole = train(config, tmp_path / "whole", evaluate=False)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(config, tmp_path / "broken", evaluate=False, callbacks=[StopAfterEpoch(2)])
    (broken,) = (tmp_path / "broken").iterdir()
    path = broken / "checkpoints" / "last.ckpt"
    state = runs.load_checkpoint(path)
    loops = state["loops"]["fit_loop"]
    manual = loops["epoch_loop.manual_optimization.optim_step_progress"]
    assert manual["total"]["completed"] > 0
    loops["epoch_loop.automatic_optimization.optim_progress"]["optimizer"]["step"] = {
        side: dict(counts) for side, counts in manual.items()}
    for counts in manual.values():
        counts.update(dict.fromkeys(counts, 0))
    torch.save(state, path)
    resumed = resume(broken, evaluate=False)
    assert ([round(float(r["kl_weight"]), 6) for r in metric_rows(resumed)]
            == [round(float(r["kl_weight"]), 6) for r in metric_rows(whole)])


class GradientNorms(Callback):
    """The norm of all gradients as the optimizer is about to use them."""

    def __init__(self) -> None:
        self.norms: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        grads = [p.grad.flatten() for p in pl_module.parameters() if p.grad is not None]
        self.norms.append(float(torch.cat(grads).norm()))


def test_grad_clip_bounds_the_gradient_the_optimizer_steps_with(tmp_path):
    unclipped, clipped = GradientNorms(), GradientNorms()
    train(tiny_config(tmp_path, train={"epochs": 1}), tmp_path / "a", evaluate=False,
          callbacks=[unclipped])
    train(tiny_config(tmp_path, train={"epochs": 1, "grad_clip": 0.01}), tmp_path / "b",
          evaluate=False, callbacks=[clipped])
    assert unclipped.norms and max(unclipped.norms) > 0.1
    assert len(clipped.norms) == len(unclipped.norms)
    assert max(clipped.norms) <= 0.01 * (1 + 1e-4)


def test_several_steps_a_call_train_the_weights_one_step_a_call_trains(tmp_path):
    # a VAE: its KL warm-up follows the steps taken, which a call of several must count alike;
    # dihedral turns and a second view: random draws taken in the same order
    sections = {"model": {"family": "vae", "kl_warmup_epochs": 3},
                "train": {"epochs": 2, "augment": "dihedral", "invariance": 1.0}}
    one = tiny_config(tmp_path, **{**sections, "train": {**sections["train"], "steps_per_call": 1}})
    several = tiny_config(tmp_path, **{**sections, "train": {**sections["train"], "steps_per_call": 3}})
    a_dir = train(one, tmp_path / "one", evaluate=False)
    b_dir = train(several, tmp_path / "several", evaluate=False)
    a, b = weights(a_dir), weights(b_dir)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    keep = ("train_loss", "test_loss", "kl_weight")
    rows_a, rows_b = metric_rows(a_dir), metric_rows(b_dir)
    assert [{k: r[k] for k in keep} for r in rows_a] == [{k: r[k] for k in keep} for r in rows_b]
    assert 0 < float(rows_a[0]["kl_weight"]) < float(rows_a[1]["kl_weight"])


class BackwardCount(Callback):
    """Counts the backward passes Lightning announces to callbacks."""

    def __init__(self) -> None:
        self.before = self.after = 0

    def on_before_backward(self, trainer, pl_module, loss):
        self.before += 1

    def on_after_backward(self, trainer, pl_module):
        self.after += 1


def test_a_callback_that_listens_to_the_backward_pass_hears_every_step_and_changes_nothing(tmp_path):
    # where nothing listens, the module back-propagates and steps by itself, past Lightning's
    # hooks; where a callback listens it goes through them: both train the same weights, and
    # Lightning counts the same steps
    config = tiny_config(tmp_path, train={"epochs": 2, "steps_per_call": 2})
    counted = BackwardCount()
    quiet_dir = train(config, tmp_path / "quiet", evaluate=False)
    heard_dir = train(config, tmp_path / "heard", evaluate=False, callbacks=[counted])
    steps = 2 * -(-len(runs.read_split(heard_dir)["train"]) // config.train.batch_size)
    assert counted.before == counted.after == steps
    for run_dir in (quiet_dir, heard_dir):
        assert runs.load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == steps
    a, b = weights(quiet_dir), weights(heard_dir)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_the_module_steps_through_lightning_where_it_must(tmp_path):
    from lightning.pytorch.core.optimizer import LightningOptimizer

    from cellae.training.trainer import build_trainer

    config = tiny_config(tmp_path)
    module = CellaeModule(config, channels=3)
    optimizer = LightningOptimizer(module.configure_optimizers())
    plain = build_trainer(config, tmp_path / "a")
    assert module._plain_steps_for(plain, optimizer)
    listening = build_trainer(config, tmp_path / "b", callbacks=[BackwardCount()])
    assert not module._plain_steps_for(listening, optimizer)
    assert not module._plain_steps_for(build_trainer(config, tmp_path / "b",
                                                     callbacks=[GradientNorms()]), optimizer)
    # several optimizers: Lightning's way
    assert not module._plain_steps_for(plain, [optimizer, optimizer])
    # fp16 scales the loss before its backward pass: Lightning's plugin must do it (a GPU's
    # precision; on the CPU Lightning turns 16-mixed into bf16, so the plugin is set by hand)
    from lightning.pytorch.plugins.precision import MixedPrecision

    scaled = build_trainer(config, tmp_path / "c")
    scaled.strategy.precision_plugin = MixedPrecision("16-mixed", "cpu")
    assert scaled.strategy.precision_plugin.scaler is not None
    assert not module._plain_steps_for(scaled, optimizer)
