"""Microscopy data beyond RGB crops: 16-bit multi-channel TIFFs, fields with label masks,
metadata that follows every cell into the embedding, and the explorer in a real browser."""

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from cellae.data.cache import prepare_cache
from cellae.data.channels import ChannelLayout, ChannelPlan
from cellae.data.decode import BadImage, decode_pixels, image_header
from cellae.data.inspection import inspect_source
from cellae.data.sources import open_source
from cellae.data.synthetic_fields import CHANNELS, write_fields
from cellae.errors import CellaeError
from cellae.sections import DataConfig, FieldsConfig

FIELDS = FieldsConfig(class_column="treatment", patient_column="donor")


def _tiff(array: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, **options)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("experiment") / "fields"
    write_fields(folder, n_fields=6, size=160, cells_per_field=8)
    return folder


def _data(folder: Path, tmp_path: Path, **values) -> DataConfig:
    return DataConfig(source=str(folder), cache_dir=str(tmp_path / "cache"), image_size=32,
                      fields=FIELDS, **values)


# -- reading pixels


def test_ome_tiff_keeps_channels_names_and_16_bits():
    pixels = (np.arange(4 * 20 * 30) % 60000).astype(np.uint16).reshape(4, 20, 30)
    data = _tiff(pixels, ome=True, metadata={"axes": "CYX", "Channel": {"Name": list(CHANNELS)}})
    header = image_header(data)
    assert (header.width, header.height, header.channels, header.dtype) == (30, 20, 4, "uint16")
    assert header.channel_names == CHANNELS
    decoded = decode_pixels(data)
    assert decoded.shape == (20, 30, 4) and decoded.dtype == np.uint16
    np.testing.assert_array_equal(decoded[..., 2], pixels[2])


def test_rgb_and_plain_tiffs_put_channels_last():
    rgb = np.random.default_rng(0).integers(0, 255, (12, 16, 3), dtype=np.uint8)
    np.testing.assert_array_equal(decode_pixels(_tiff(rgb, photometric="rgb")), rgb)
    gray = np.arange(12 * 16, dtype=np.uint16).reshape(12, 16)
    assert decode_pixels(_tiff(gray)).shape == (12, 16, 1)


def test_unsupported_tiff_layouts_are_refused_with_the_reason():
    stack = np.zeros((3, 2, 10, 10), dtype=np.uint16)  # z-planes of two channels
    with pytest.raises(BadImage, match="unsupported TIFF layout: axes ZCYX.*Z=3"):
        image_header(_tiff(stack, ome=True, metadata={"axes": "ZCYX"}))
    with pytest.raises(BadImage, match="not a readable TIFF|TIFF without image data"):
        decode_pixels(b"II*\x00" + b"\x00" * 40)


def test_16_bit_scaling_between_percentiles_counts_what_it_clips():
    layout = ChannelLayout(("a", "b"), "uint16")
    pixels = np.stack([np.full((4, 4), 1000, np.uint16), np.full((4, 4), 3000, np.uint16)], -1)
    pixels[0, 0, 0] = 9000  # above channel a's limit: 255, and counted
    plan = ChannelPlan(layout, (1, 0), "percentile", low=(2000.0, 0.0), high=(4000.0, 2000.0))
    eight, clipped = plan.apply(pixels)
    assert eight.dtype == np.uint8 and eight.shape == (4, 4, 2)
    assert eight[1, 1, 0] == 128 and eight[1, 1, 1] == 128  # both mid-range, in the kept order
    assert eight[0, 0, 1] == 255
    assert clipped.tolist() == [[0, 0], [0, 1]]


# -- fields and masks


def test_fields_source_crops_every_cell_with_its_own_mask(experiment):
    source = open_source(DataConfig(source=str(experiment), fields=FIELDS))
    assert source.kind == "fields"
    assert source.channel_layout().names == CHANNELS
    assert source.class_names == ["control", "drug"]
    assert set(source.patients) <= {"D1", "D2", "D3", "D4"}
    for index in range(0, len(source), 7):
        crop, inside = source.load(index), source.load_mask(index)
        assert crop.dtype == np.uint16 and crop.shape[2] == 4
        assert crop.shape[:2] == inside.shape and inside.any()
        # other cells' pixels (and the background) are zero: the crop holds its own cell only
        assert not crop[~inside].any()
        number, label, top, left, side = source.boxes[index]
        labels = tifffile.imread(experiment / "masks" / source.mask_files[number])
        window = np.zeros((side, side), dtype=bool)
        y0, x0 = max(top, 0), max(left, 0)
        part = labels[y0:top + side, x0:left + side] == label
        window[y0 - top:y0 - top + part.shape[0], x0 - left:x0 - left + part.shape[1]] = part
        np.testing.assert_array_equal(inside, window)
    # cut and tiny objects are skipped and counted
    assert source.cut_by_edge + source.too_small > 0
    assert any("cut by the field's edge" in line or "min_area" in line for line in source.ignored)
    meta = source.metadata
    assert {"field", "object", "area", "well", "cell_cycle"} <= set(meta)
    assert all(len(values) == len(source) for values in meta.values())


def test_inspect_prints_channels_bit_depth_and_cells(experiment):
    text = inspect_source(DataConfig(source=str(experiment), fields=FIELDS))
    assert "channels: 4 (DAPI, actin, tubulin, mito)" in text
    assert "bit depth: 16-bit integer (uint16)" in text
    cells = [line for line in text.splitlines() if line.startswith("cells: ")]
    assert len(cells) == 1 and int(cells[0].split()[1]) > 10
    assert "metadata: field, object, area" in text


def test_cache_of_fields_scales_each_channel_and_keeps_the_metadata(experiment, tmp_path):
    cache = prepare_cache(_data(experiment, tmp_path, channels=["mito", "DAPI"]), progress=False)
    assert cache.images.shape[1:] == (2, 32, 32)
    assert cache.channel_names == ["mito", "DAPI"]
    block = cache.meta["channels"]
    assert block["intensity"] == "percentile" and block["dtype"] == "uint16"
    assert all(0 <= share < 0.01 for share in block["clipped_high"] + block["clipped_low"])
    assert len(cache.metadata["well"]) == len(cache)
    # outside each cell is black, as around a malaria crop (background: keep), but for the
    # resize's blended pixel at the edge
    from scipy import ndimage

    near = ndimage.binary_dilation(np.asarray(cache.masks) != 0, np.ones((1, 3, 3), bool))
    assert np.asarray(cache.images)[:, 0][~near].max() == 0


@pytest.mark.parametrize("damage, message", [
    ("missing", "no mask in"),
    ("size", "must have its image's size"),
    ("float", "labels must be integers"),
])
def test_bad_masks_are_one_line_errors_and_leave_the_cache(experiment, tmp_path, damage, message):
    folder = tmp_path / "broken"
    shutil.copytree(experiment, folder)
    data = _data(folder, tmp_path)
    before = prepare_cache(data, progress=False).path
    mask = sorted((folder / "masks").iterdir())[0]
    if damage == "missing":
        mask.unlink()
    elif damage == "size":
        mask.write_bytes(_tiff(np.zeros((40, 40), dtype=np.uint16)))
    else:
        mask.write_bytes(_tiff(np.zeros((160, 160), dtype=np.float32)))
    with pytest.raises(CellaeError, match=message) as caught:
        prepare_cache(data, progress=False)
    assert "\n" not in str(caught.value) and mask.name.split(".")[0] in str(caught.value)
    assert (before / "images.npy").is_file()  # nothing of the earlier cache is lost


def test_unknown_channel_and_wrong_channel_names_are_one_line_errors(experiment, tmp_path):
    with pytest.raises(CellaeError, match="'GFP' is not a channel .*DAPI, actin, tubulin, mito"):
        prepare_cache(_data(experiment, tmp_path, channels=["GFP"]), progress=False)
    with pytest.raises(CellaeError, match="channel_names names 2 channels"):
        prepare_cache(_data(experiment, tmp_path, channel_names=["a", "b"]), progress=False)
    with pytest.raises(CellaeError, match="'gray' is the luma of RGB crops"):
        prepare_cache(_data(experiment, tmp_path, color="gray"), progress=False)


def test_a_class_folder_of_16_bit_tiffs_trains_like_any_source(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (tmp_path / "set" / name).mkdir(parents=True)
        for i in range(6):
            cell = np.zeros((2, 24, 24), dtype=np.uint16)
            cell[:, 4:20, 4:20] = rng.integers(500, 4000 if name == "a" else 9000, (2, 16, 16))
            (tmp_path / "set" / name / f"C{i}P1thinF_{name}{i}.tif").write_bytes(_tiff(cell))
    data = DataConfig(source=str(tmp_path / "set"), cache_dir=str(tmp_path / "cache"),
                      image_size=32, channel_names=["nuclei", "membrane"])
    cache = prepare_cache(data, progress=False)
    assert cache.images.shape[1] == 2 and cache.channel_names == ["nuclei", "membrane"]


# -- end to end: train, embed into AnnData, the explorer in Chromium


@pytest.fixture(scope="module")
def fields_run(experiment, tmp_path_factory):
    from cellae.config import load_config
    from cellae.training import train

    out = tmp_path_factory.mktemp("runs")
    config = load_config(None, [
        f"data.source={experiment}", f"data.cache_dir={out / 'cache'}", "data.image_size=32",
        "data.fields.class_column=treatment", "data.fields.patient_column=donor",
        "model.family=ae", "model.latent_dim=4", "model.widths=[8,8]", "train.epochs=1",
        "train.batch_size=16", "eval.tsne_max_points=60", "eval.color_by=[well,area]",
        "eval.maps=[tsne,umap]", "name=fields",
    ])
    return train(config, out)


def test_fields_run_draws_maps_by_metadata_and_writes_metadata(fields_run):
    figures = {p.name for p in (fields_run / "figures").iterdir()}
    assert {"latent_tsne.png", "latent_umap.png", "latent_tsne_by_well.png",
            "latent_tsne_by_area.png", "explorer.html", "inputs.png"} <= figures
    with np.load(fields_run / "eval" / "latents.npz") as latents:
        columns = latents["metadata_columns"].tolist()
        assert "well" in columns and latents["metadata"].shape == (len(latents["codes"]),
                                                                    len(columns))
        assert latents["map_umap"].shape[1] == 2
    with Image.open(fields_run / "figures" / "inputs.png") as image:
        assert image.mode in ("RGB", "RGBA")  # four channels drawn mixed in colour


def test_embed_writes_metadata_into_anndata(fields_run, experiment, tmp_path):
    anndata = pytest.importorskip("anndata")
    from cellae.embed import embed_source

    out = embed_source(fields_run, str(experiment), tmp_path / "cells.h5ad")
    adata = anndata.read_h5ad(out)
    assert adata.obsm["X_cellae"].shape == (adata.n_obs, 4)
    assert {"class", "patient", "side", "well", "treatment" if False else "field", "area",
            "cell_cycle"} <= set(adata.obs.columns)
    assert str(adata.obs["area"].dtype).startswith("int")  # numbers stay numbers
    assert str(adata.obs["well"].dtype) == "category"
    assert set(adata.obs["side"]) <= {"train", "test"}


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def test_explorer_hover_colour_and_click_in_chromium(fields_run, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    browser_path = _chromium()
    if browser_path is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium)")
    page_path = fields_run / "figures" / "explorer.html"
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(page_path.as_uri())
        page.wait_for_function("window.cellaeExplorer && window.cellaeExplorer.ready")
        n = page.evaluate("cellaeExplorer.n")
        assert n > 5 and "well" in page.evaluate("cellaeExplorer.columns")
        # hover: the tooltip shows that cell's file
        x, y = page.evaluate("cellaeExplorer.screenPosition(2)")
        page.mouse.move(x, y)
        tip = page.locator("#tip")
        assert tip.is_visible() and tip.get_attribute("data-index") == "2"
        assert page.evaluate("cellaeExplorer.label('file', 2)") in tip.inner_text()
        # colour switch: the legend and the points' colours follow the column
        before = page.evaluate("[...Array(cellaeExplorer.n).keys()].map(cellaeExplorer.colourOf)")
        page.select_option("#colour-by", "area")
        assert page.locator("#legend").get_attribute("data-column") == "area"
        after = page.evaluate("[...Array(cellaeExplorer.n).keys()].map(cellaeExplorer.colourOf)")
        assert before != after
        # click: the panel shows the cell, its reconstruction and its metadata
        page.mouse.click(x, y)
        panel = page.locator("#cell")
        assert panel.get_attribute("data-index") == "2"
        assert panel.locator("canvas").count() == 2 and "well" in panel.inner_text()
        shots = Path(__file__).resolve().parent.parent / "runs" / "screenshots"
        shots.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shots / "explorer.png"))
        browser.close()
    assert errors == []


def test_make_fields_command_and_inspect_with_settings(tmp_path):
    folder = tmp_path / "made"
    run = [sys.executable, "-m", "cellae.cli"]
    made = subprocess.run([*run, "data", "make-fields", str(folder), "--fields", "2"],
                          capture_output=True, text=True, check=True)
    assert "wrote 2 fields" in made.stdout
    shown = subprocess.run([*run, "data", "inspect", str(folder), "--set",
                            "fields.class_column=treatment"], capture_output=True, text=True,
                           check=True)
    assert "labels: control = 0, drug = 1" in shown.stdout
    assert json.dumps  # noqa: B018 - the module is used by the other tests' fixtures


def test_the_api_prepares_a_field_crop_as_the_run_did(fields_run, experiment, tmp_path):
    from cellae import load_run
    from cellae.data.sources import open_source

    run = load_run(fields_run, cache_dir=str(tmp_path / "own-cache"))
    source = open_source(run.config.data)
    crop = source.load(0)
    path = tmp_path / "cell.tif"
    path.write_bytes(_tiff(np.moveaxis(np.where(source.load_mask(0)[..., None], crop, 0), -1, 0),
                           photometric="minisblack", metadata={"axes": "CYX"}))
    prepared = run.prepare(path)
    assert prepared.shape == (1, 4, 32, 32)
    codes = run.encode(path)
    assert codes.shape == (1, 4) and np.isfinite(codes).all()


def test_a_csv_sources_further_columns_are_metadata(tmp_path):
    rng = np.random.default_rng(1)
    rows = ["file,label,patient,Plate,well"]
    for i in range(8):
        cell = np.zeros((20, 20, 3), dtype=np.uint8)
        cell[4:16, 4:16] = rng.integers(60, 250, (12, 12, 3))
        Image.fromarray(cell).save(tmp_path / f"c{i}.png")
        rows.append(f"c{i}.png,{'ab'[i % 2]},P{i // 4},plate{i // 4},A{i}")
    (tmp_path / "cells.csv").write_text("\n".join(rows) + "\n")
    data = DataConfig(source=str(tmp_path / "cells.csv"), cache_dir=str(tmp_path / "cache"),
                      image_size=32)
    source = open_source(data)
    assert source.metadata == {"plate": ["plate0"] * 4 + ["plate1"] * 4,
                               "well": [f"A{i}" for i in range(8)]}
    cache = prepare_cache(data, progress=False)
    assert cache.metadata["well"].tolist() == [f"A{i}" for i in range(8)]
    (tmp_path / "bad.csv").write_text("file,label,side\nc0.png,a,x\nc1.png,b,y\n")
    with pytest.raises(CellaeError, match="'side' is a name cellae uses"):
        open_source(str(tmp_path / "bad.csv"))


def test_embedding_a_source_of_other_channels_is_one_line(fields_run, tmp_path, capsys):
    from cellae.cli import main

    assert main(["embed", str(fields_run), "synthetic", "--out", str(tmp_path / "c.csv")]) == 2
    # the cache's progress lines come first on a slow machine; the error is one line of its own
    lines = [line for line in capsys.readouterr().err.strip().splitlines()
             if not line.startswith("cache: ")]
    assert len(lines) == 1 and "gives 3 channel(s) (red, green, blue)" in lines[0]
    assert "this run's model takes 4" in lines[0]


def test_a_damaged_field_image_skips_its_cells_with_the_reason(experiment, tmp_path):
    folder = tmp_path / "damaged"
    shutil.copytree(experiment, folder)
    first = sorted((folder / "images").iterdir())[0]
    first.write_bytes(first.read_bytes()[:100])
    source = open_source(DataConfig(source=str(folder), fields=FIELDS))
    assert [file for file, _ in source.skipped] == [f"images/{first.name}"]
    assert not any(name.startswith(first.name) for name in source.files)
    assert len(source) > 0


def test_a_map_coloured_by_a_missing_column_is_refused_before_training(tmp_path, capsys):
    from cellae.cli import main

    out = tmp_path / "runs"
    argv = ["train", "configs/quickstart.yaml", "--out", str(out), "--set",
            f"data.cache_dir={tmp_path / 'cache'}", "data.synthetic.n_images=100",
            "eval.color_by=[well]"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "eval.color_by: no column 'well'" in err and "file, class, patient" in err
    assert not out.exists() or not any(out.iterdir())  # no run folder was made
