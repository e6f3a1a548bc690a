"""Evaluation of a trained run, from its folder alone: figures, numbers, codes, other sources."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

import cellae
from cellae import runs
from cellae.cli import main
from cellae.embed import embed_source
from cellae.evaluate import evaluate_run
from cellae.training import train
from tiny import tiny_config

FIGURES = {"inputs.png", "learning_curves.png", "latent_tsne.png", "reconstructions.png"}
VAE_FIGURES = {"prior_samples.png", "traversals.png"}


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("vae")
    config = tiny_config(tmp_path, model={"family": "vae", "kl_warmup_epochs": 1})
    return train(config, tmp_path / "runs")


def metrics(run_dir, *parts):
    return json.loads(run_dir.joinpath("eval", *parts, "metrics.json").read_text())


def test_training_leaves_every_figure_and_number(vae_run):
    figures = {p.name for p in (vae_run / "figures").glob("*.png")}
    assert figures == FIGURES | VAE_FIGURES
    result = metrics(vae_run)
    rec = result["reconstruction"]
    assert 5 < rec["psnr"] < 60 and 5 < rec["psnr_interior"] < 60 and 0 < rec["ssim"] <= 1
    assert rec["n_images"] == result["data"]["test"]["images"]
    assert result["vae"]["elbo"] < 0 and len(result["vae"]["kl_per_dimension"]) == 4
    assert 0 <= result["vae"]["active_units"] <= 4
    for block in (result["probe"], result["pca_baseline"]):
        assert 0 <= block["accuracy"] <= 1 and 0 <= block["auroc"] <= 1
        assert block["n_test"] == result["data"]["test"]["images"]
    assert result["probe"]["test_patients"] == result["data"]["test"]["patients"] >= 1
    codes = np.load(vae_run / "eval" / "latents.npz")
    n = result["data"]["train"]["images"] + result["data"]["test"]["images"]
    assert codes["codes"].shape == (n, 4)
    assert len(codes["labels"]) == len(codes["patients"]) == len(codes["files"]) == n
    assert set(codes["side"]) == {"train", "test"}
    # each part's seconds, so a slow evaluation says which part to blame; they fit the total
    parts = result["seconds_by_part"]
    assert {"encode", "reconstruction", "tsne", "pca_baseline", "figures"} <= set(parts)
    assert 0 < sum(parts.values()) <= result["seconds"] + 0.01


def test_a_moved_run_evaluates_the_same_from_its_folder_alone(vae_run, tmp_path):
    moved = tmp_path / "elsewhere" / vae_run.name
    shutil.copytree(vae_run, moved)
    shutil.rmtree(moved / "eval")
    shutil.rmtree(moved / "figures")
    original = metrics(vae_run)
    again = evaluate_run(moved, quiet=True)
    assert {p.name for p in (moved / "figures").glob("*.png")} == FIGURES | VAE_FIGURES
    for key in ("psnr", "psnr_interior", "ssim", "loss"):
        assert again["reconstruction"][key] == pytest.approx(original["reconstruction"][key], rel=1e-5)
    assert again["probe"]["auroc"] == pytest.approx(original["probe"]["auroc"], rel=1e-6)
    np.testing.assert_allclose(np.load(moved / "eval" / "latents.npz")["codes"],
                               np.load(vae_run / "eval" / "latents.npz")["codes"], rtol=1e-5)


def test_load_run_encodes_decodes_and_reconstructs(vae_run):
    run = cellae.load_run(vae_run)
    assert run.config.model.family == "vae"
    stored = np.load(vae_run / "eval" / "latents.npz")
    from cellae.data.cache import open_cache

    cache = open_cache(json.loads((vae_run / "run.json").read_text())["data"]["cache"])
    position = {name: i for i, name in enumerate(cache.files.tolist())}
    rows = [position[name] for name in stored["files"][:5]]
    images = np.asarray(cache.images[rows])
    np.testing.assert_allclose(run.encode(images), stored["codes"][:5], rtol=1e-4, atol=1e-5)
    recon = run.reconstruct(images)
    assert recon.shape == (5, 3, 32, 32) and recon.min() >= 0 and recon.max() <= 1
    assert run.decode(np.zeros((2, 4))).shape == (2, 3, 32, 32)
    assert run.encode(images[0]).shape == (1, 4)  # one image without a batch axis


def test_evaluate_on_another_source_keeps_the_runs_own_evaluation(
    vae_run, tmp_path, make_kaggle_folder, capsys
):
    own = (vae_run / "eval" / "metrics.json").read_bytes()
    folder = make_kaggle_folder(tmp_path / "other", n_per_class=12, n_patients=4)
    assert main(["evaluate", str(vae_run), "--data", str(folder / "cell_images")]) == 0
    assert "probe acc" in capsys.readouterr().out
    (out,) = [p for p in (vae_run / "eval").iterdir() if p.is_dir()]
    assert out.name == "other-cell_images"
    result = metrics(vae_run, out.name)
    assert result["data"]["train"]["images"] + result["data"]["test"]["images"] == 24
    assert {p.name for p in (out / "figures").glob("*.png")} >= {"latent_tsne.png"}
    assert (vae_run / "eval" / "metrics.json").read_bytes() == own


@pytest.mark.parametrize("suffix", [".npz", ".csv", ".parquet", ".h5ad"])
def test_embed_writes_codes_with_files_labels_and_patients(vae_run, tmp_path, make_kaggle_folder,
                                                           suffix):
    folder = make_kaggle_folder(tmp_path / "data", n_per_class=5, n_patients=2)
    out = embed_source(vae_run, str(folder), tmp_path / f"codes{suffix}")
    if suffix == ".npz":
        stored = np.load(out)
        assert stored["codes"].shape == (10, 4)
        table = {"file": stored["files"], "patient": stored["patients"], "class": stored["classes"]}
        assert set(stored["sides"]) == {"unseen"}  # another source than the run's
    elif suffix == ".h5ad":
        anndata = pytest.importorskip("anndata")
        adata = anndata.read_h5ad(out)
        assert adata.X.shape == (10, 4) and list(adata.var_names) == ["z0", "z1", "z2", "z3"]
        table = {"file": adata.obs_names, "patient": adata.obs["patient"], "class": adata.obs["class"]}
    else:
        pd = pytest.importorskip("pandas")
        table = pd.read_csv(out) if suffix == ".csv" else pd.read_parquet(out)
        assert [f"z{i}" for i in range(4)] == [c for c in table.columns if c.startswith("z")]
    assert len(table["file"]) == 10
    assert sorted(set(np.asarray(table["patient"]).tolist())) == ["C1", "C2"]
    assert sorted(set(np.asarray(table["class"]).tolist())) == ["infected", "uninfected"]


def test_embed_refuses_an_unknown_suffix(vae_run, tmp_path):
    with pytest.raises(cellae.CellaeError, match=r"\.npz, \.csv, \.parquet, \.h5ad"):
        embed_source(vae_run, "synthetic", tmp_path / "codes.txt")


def test_embed_of_the_runs_own_source_says_each_images_side(vae_run, tmp_path):
    out = embed_source(vae_run, "synthetic", tmp_path / "codes.npz")
    stored = np.load(out)
    split = json.loads((vae_run / "split.json").read_text())
    sides = dict(zip(stored["files"].tolist(), stored["sides"].tolist(), strict=True))
    assert {sides[f] for f in split["train"]} == {"train"} and {sides[f] for f in split["test"]} == {"test"}


def test_embed_replaces_a_file_only_when_asked_and_keeps_its_mode(vae_run, tmp_path):
    out = tmp_path / "codes.csv"
    out.write_text("someone's codes")
    out.chmod(0o640)
    with pytest.raises(cellae.CellaeError, match="exists; pass --overwrite"):
        embed_source(vae_run, "synthetic", out)
    assert out.read_text() == "someone's codes"
    embed_source(vae_run, "synthetic", out, overwrite=True)
    assert out.read_text().startswith("file,") and (out.stat().st_mode & 0o777) == 0o640
    fresh = embed_source(vae_run, "synthetic", tmp_path / "new.npz")
    assert fresh.stat().st_mode & 0o777 == 0o666 & ~current_umask()  # like any other new file
    with pytest.raises(cellae.CellaeError, match="is a folder"):
        embed_source(vae_run, "synthetic", _folder(tmp_path / "x.npz"))
    with pytest.raises(cellae.CellaeError, match="under a file"):
        embed_source(vae_run, "synthetic", out / "codes.npz")


def current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _folder(path):
    path.mkdir()
    return path


def test_embed_csv_keeps_one_row_per_image_whatever_its_file_name(vae_run, tmp_path):
    pd = pytest.importorskip("pandas")
    folder = tmp_path / "data"
    for name in ("Parasitized", "Uninfected"):
        (folder / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((20, 20, 3), 40 * i + 30, np.uint8)).save(
                folder / name / f"C1P1thinF_{i}\r,\"x\".png")
    table = pd.read_csv(embed_source(vae_run, str(folder), tmp_path / "codes.csv"))
    assert len(table) == 6 and table["file"].str.contains("\r").all()


def test_evaluating_a_run_trained_without_evaluation_finishes_it(tmp_path):
    run_dir = train(tiny_config(tmp_path, train={"epochs": 1}), tmp_path / "runs", evaluate=False)
    runs.update_run_info(run_dir, status="trained")  # as training leaves it before evaluation
    evaluate_run(run_dir, quiet=True)
    assert runs.read_run_info(run_dir)["status"] == "finished"
