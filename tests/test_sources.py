from __future__ import annotations

import io
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cellae.config import DataConfig, SyntheticConfig
from cellae.data import decode
from cellae.data.inspection import inspect_source
from cellae.data.sources import SOURCES, FileSource, open_source, register_source
from cellae.data.sources.folder_source import FolderSource
from cellae.data.sources.labels import patient_from_name
from cellae.data.sources.zip_source import ZipSource
from cellae.errors import CellaeError
from conftest import cell_array, cell_name, png_bytes


def test_folder_layout_labels_patients_and_samples(tmp_path, make_kaggle_folder):
    root = make_kaggle_folder(tmp_path, n_per_class=6, n_patients=3)
    source = open_source(str(root / "cell_images"))
    assert source.class_names == ["uninfected", "infected"]
    assert source.label_map == {"Parasitized": 1, "Uninfected": 0}
    assert len(source) == 12
    assert sorted(set(source.patients)) == ["C1", "C2", "C3"]
    assert source.unmatched_patients == 0
    assert source.skipped == []
    assert source.ignored  # Thumbs.db and .DS_Store were seen and left out
    samples = list(source)
    assert len(samples) == 12
    for sample in samples:
        assert sample.image.dtype == np.uint8 and sample.image.ndim == 3
        assert sample.image.shape[2] == 3
        folder = sample.file.split("/")[0]
        assert sample.label == {"Parasitized": 1, "Uninfected": 0}[folder]
        assert sample.patient == patient_from_name(sample.file)


def test_parent_folder_and_class_folder_give_the_same_listing(tmp_path, make_kaggle_folder):
    root = make_kaggle_folder(tmp_path)
    from_parent = open_source(str(root))
    from_classes = open_source(str(root / "cell_images"))
    assert from_parent.files == from_classes.files
    assert from_parent.labels == from_classes.labels


def test_nested_duplicate_tree_on_disk_is_not_counted_twice(tmp_path, make_kaggle_folder):
    root = make_kaggle_folder(tmp_path / "a")
    make_kaggle_folder(tmp_path / "a" / "cell_images")  # cell_images/cell_images/...
    source = open_source(str(root))
    assert len(source) == 12
    assert source.class_names == ["uninfected", "infected"]
    assert any("nested duplicate" in what for what in source.ignored)


def test_generic_class_folders_use_sorted_names(tmp_path):
    for name in ("zebra", "apple", "mango"):
        (tmp_path / name).mkdir()
        for i in range(2):
            Image.fromarray(cell_array(i)).save(tmp_path / name / f"img {i}.png")
    source = open_source(str(tmp_path))
    assert source.class_names == ["apple", "mango", "zebra"]
    assert source.label_map == {"apple": 0, "mango": 1, "zebra": 2}
    assert source.layout == "class folders"
    # no patient in these names: each file is its own patient, and that is counted
    assert source.unmatched_patients == 6
    assert len(set(source.patients)) == 6
    report = inspect_source(str(tmp_path))
    assert "WARNING: 6 of 6 files (100.0%) have no patient id" in report
    assert "both sides" in report


def test_every_nih_name_form_gives_its_patient_and_few_fallbacks_stay_quiet(tmp_path):
    """The whole NIH set's 200 patients, named in each form the set uses, and 1% without an id."""
    forms = ("C{n}P{p}thinF_IMG_1_cell_{c}.png", "C{n}P{p}NThinF_IMG_1_cell_{c}.png",
             "C{n}P{p}N_ThinF_IMG_1_cell_{c}.png", "C{n}_thinF_IMG_1_cell_{c}.png",
             "C{n}AP{p}thinF_IMG_1_cell_{c}.png", "C{n}BP{p}_thinF_IMG_1_cell_{c}.png",
             "C{n}P{p}ReThinF_IMG_1_cell_{c}.png", "C{n}NThinF_IMG_1_cell_{c}.png")
    image = png_bytes(cell_array(0))
    names = []
    for patient in range(200):
        for cell in range(2):
            names.append(forms[patient % len(forms)].format(n=patient + 1, p=patient + 7, c=cell))
    names += ["cell_a.png", "cell_b.png", "cell_c.png", "cell_d.png"]  # 4 of 404: under 1%
    for i, name in enumerate(names):
        folder = tmp_path / ("Parasitized" if i % 2 else "Uninfected")
        folder.mkdir(exist_ok=True)
        (folder / name).write_bytes(image)
    source = open_source(str(tmp_path))
    assert source.unmatched_patients == 4
    report = inspect_source(str(tmp_path))
    assert "patients: 204" in report  # 200 from the names, and each unnamed file its own
    assert "WARNING" not in report and "4 files have no patient id" in report


@pytest.mark.parametrize(
    ("name", "patient"),
    [
        ("C33P1thinF_IMG_20150619_114756a_cell_179.png", "C33"),
        ("C103P64ThinF_IMG_20150918_164250_cell_170.png", "C103"),
        ("c7p12thinf_x.png", "C7"),
        ("C12NThinF_IMG_20150614_125741_cell_172.png", "C12"),
        ("C1_thinF_IMG_20150604_104942_cell_72.png", "C1"),
        ("C3thin_original_IMG_20150608_163029_cell_1.png", "C3"),
        ("Parasitized/C33P1thinF_IMG_1_cell_1.png", "C33"),
        ("C51AP12thinF_IMG_20150724_114923_cell_148.png", "C51A"),
        ("C37BP2_thinF_IMG_20150620_133111a_cell_87.png", "C37B"),
        ("C167P128ReThinF_IMG_20151201_110349_cell_36.png", "C167"),
        ("C176P137NThinF_IMG_20151201_122957_cell_21.png", "C176"),
        ("C64P25N_ThinF_IMG_20150818_173318_cell_101.png", "C64"),
        ("cell_001.png", None),
        ("XC33P1thinF.png", None),
    ],
)
def test_patient_from_name(name, patient):
    assert patient_from_name(name) == patient


def test_zip_read_in_place_skips_junk_and_duplicate_tree(tmp_path, make_kaggle_zip):
    archive = make_kaggle_zip(
        tmp_path / "cell_images.zip",
        extra={
            "../evil.png": png_bytes(cell_array(1)),
            "/abs/evil.png": png_bytes(cell_array(2)),
            "cell_images/Parasitized/../../evil2.png": png_bytes(cell_array(3)),
        },
    )
    before = sorted(os.listdir(tmp_path))
    source = open_source(str(archive))
    assert isinstance(source, ZipSource)
    assert len(source) == 12
    assert source.label_map == {"Parasitized": 1, "Uninfected": 0}
    assert all(f.split("/")[0] in ("Parasitized", "Uninfected") for f in source.files)
    unsafe = [file for file, reason in source.skipped if "unsafe" in reason]
    assert len(unsafe) == 3
    assert len(source.skipped) == 3
    assert sum(1 for _ in source) == 12
    report = inspect_source(str(archive))
    assert "images: 12" in report and "skipped: 3 files" in report
    assert "ignored: 12 images in cell_images/cell_images/" in report
    assert sorted(os.listdir(tmp_path)) == before  # nothing extracted


def test_zip_and_folder_give_the_same_images(tmp_path, make_kaggle_zip, make_kaggle_folder):
    folder = open_source(str(make_kaggle_folder(tmp_path / "f")))
    archive = open_source(str(make_kaggle_zip(tmp_path / "a.zip")))
    assert archive.files == folder.files
    assert archive.patients == folder.patients
    for a, b in zip(archive, folder, strict=True):
        np.testing.assert_array_equal(a.image, b.image)


def test_truncated_zip_is_an_error_naming_the_file(tmp_path, make_kaggle_zip):
    archive = make_kaggle_zip(tmp_path / "full.zip")
    broken = tmp_path / "broken.zip"
    broken.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(CellaeError, match="broken.zip"):
        open_source(str(broken))


def test_corrupt_zip_member_is_skipped(tmp_path, make_kaggle_zip):
    archive = make_kaggle_zip(tmp_path / "a.zip", duplicate=False)
    data = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as z:
        info = z.getinfo(f"cell_images/Parasitized/{cell_name(1, 0)}")
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + 40] ^= 0xFF  # flip a byte of the stored data: CRC check fails
    archive.write_bytes(bytes(data))
    source = open_source(str(archive))
    images = list(source)
    assert len(images) == 11
    assert source.skipped[0][0] == f"Parasitized/{cell_name(1, 0)}"


def _bad_folder(tmp_path: Path, make_kaggle_folder) -> Path:
    root = make_kaggle_folder(tmp_path, n_per_class=4, n_patients=2)
    cls = root / "cell_images" / "Parasitized"
    (cls / "C1P11thinF_empty_cell_9.png").write_bytes(b"")
    good = png_bytes(cell_array(5, 30, 30))
    (cls / "C1P11thinF_trunc_cell_8.png").write_bytes(good[: len(good) // 2])
    (cls / "C1P11thinF_text_cell_7.png").write_bytes(b"this is not a png at all")
    (cls / "notes.txt").write_text("hello")
    return root


def test_bad_files_are_skipped_with_reasons(tmp_path, make_kaggle_folder):
    root = _bad_folder(tmp_path, make_kaggle_folder)
    source = open_source(str(root))
    images = list(source)
    assert len(images) == 8
    reasons = dict(source.skipped)
    assert set(reasons) == {
        "Parasitized/C1P11thinF_empty_cell_9.png",
        "Parasitized/C1P11thinF_trunc_cell_8.png",
        "Parasitized/C1P11thinF_text_cell_7.png",
        "Parasitized/notes.txt",
    }
    assert "empty" in reasons["Parasitized/C1P11thinF_empty_cell_9.png"]
    assert "truncated" in reasons["Parasitized/C1P11thinF_trunc_cell_8.png"]
    assert "not a readable image" in reasons["Parasitized/C1P11thinF_text_cell_7.png"]
    assert "not an image" in reasons["Parasitized/notes.txt"]


def test_strict_raises_on_the_first_bad_file(tmp_path, make_kaggle_folder):
    root = _bad_folder(tmp_path, make_kaggle_folder)
    with pytest.raises(CellaeError, match="strict"):
        list(open_source(DataConfig(source=str(root), strict=True)))


def test_no_images_is_an_error_naming_the_path(tmp_path):
    (tmp_path / "Parasitized").mkdir()
    (tmp_path / "Uninfected").mkdir()
    with pytest.raises(CellaeError, match=str(tmp_path)):
        open_source(str(tmp_path))


def test_single_class_is_an_error(tmp_path, make_kaggle_folder):
    root = make_kaggle_folder(tmp_path)
    for f in (root / "cell_images" / "Uninfected").iterdir():
        f.unlink()  # an empty class folder counts as a missing class
    with pytest.raises(CellaeError, match="only one class.*Parasitized.*empty.*Uninfected"):
        open_source(str(root))


def test_missing_path_and_non_zip_file(tmp_path):
    with pytest.raises(CellaeError, match="no such file"):
        open_source(str(tmp_path / "nope"))
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(CellaeError, match=r"cannot read .*x\.txt: give .*'synthetic', a \.zip"):
        open_source(str(tmp_path / "x.txt"))
    (tmp_path / "damaged.zip").write_bytes(b"PK not really")
    with pytest.raises(CellaeError, match="damaged.zip is not a zip file or is truncated"):
        open_source(str(tmp_path / "damaged.zip"))


def test_decompression_bombs_are_refused(tmp_path, make_kaggle_folder, monkeypatch):
    root = make_kaggle_folder(tmp_path, n_per_class=3)
    cls = root / "cell_images" / "Uninfected"
    Image.fromarray(cell_array(1, 40, 40)).save(cls / "C1P11thinF_warn_cell_1.png")  # 1600 px
    Image.fromarray(cell_array(2, 60, 60)).save(cls / "C1P11thinF_error_cell_2.png")  # 3600 px
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1500)  # warn above 1500, error above 3000
    source = open_source(str(root))
    list(source)
    reasons = dict(source.skipped)
    assert "decompression-bomb" in reasons["Uninfected/C1P11thinF_warn_cell_1.png"]
    assert "decompression-bomb" in reasons["Uninfected/C1P11thinF_error_cell_2.png"]
    assert len(source.skipped) == 2
    report = inspect_source(str(root))
    assert "decompression-bomb" in report
    with pytest.raises(CellaeError, match="decompression-bomb"):
        list(open_source(DataConfig(source=str(root), strict=True)))


def _decode_one(tmp_path: Path, make_kaggle_folder, image: Image.Image) -> np.ndarray:
    root = make_kaggle_folder(tmp_path, n_per_class=2, junk=False)
    image.save(root / "cell_images" / "Parasitized" / "C9P1thinF_mode_cell_1.png")
    source = open_source(str(root))
    return source.load(source.files.index("Parasitized/C9P1thinF_mode_cell_1.png"))


def test_grayscale_png_becomes_rgb(tmp_path, make_kaggle_folder):
    gray = np.array([[0, 100], [200, 255]], dtype=np.uint8)
    out = _decode_one(tmp_path, make_kaggle_folder, Image.fromarray(gray, mode="L"))
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., 0], gray)
    np.testing.assert_array_equal(out[..., 2], gray)


def test_rgba_png_is_composited_on_black(tmp_path, make_kaggle_folder):
    rgba = np.array([[[200, 100, 50, 255], [200, 100, 50, 0], [200, 100, 50, 128]]], np.uint8)
    out = _decode_one(tmp_path, make_kaggle_folder, Image.fromarray(rgba, mode="RGBA"))
    np.testing.assert_array_equal(out[0, 0], [200, 100, 50])
    np.testing.assert_array_equal(out[0, 1], [0, 0, 0])
    np.testing.assert_array_equal(out[0, 2], [100, 50, 25])


def test_palette_png_becomes_rgb(tmp_path, make_kaggle_folder):
    rgb = cell_array(3, 12, 10, colour=(210, 140, 150))
    palette = Image.fromarray(rgb).quantize(colors=16)
    assert palette.mode == "P"
    out = _decode_one(tmp_path, make_kaggle_folder, palette)
    np.testing.assert_array_equal(out, np.asarray(palette.convert("RGB")))


def test_16_bit_png_keeps_its_16_bits_and_full_range_scales_it_to_8(tmp_path, make_kaggle_folder):
    values = np.array([[0, 257 * 128, 65535]], dtype=np.uint16)
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    out = _decode_one(tmp_path, make_kaggle_folder, image)
    # one channel at 16 bits: fluorescence, not a grey crop to repeat into RGB
    assert out.shape == (1, 3, 1) and out.dtype == np.uint16
    np.testing.assert_array_equal(out[0, :, 0], values[0])
    from cellae.data.channels import ChannelLayout, ChannelPlan

    plan = ChannelPlan(ChannelLayout(("ch0",), "uint16"), (0,), "full_range")
    eight, clipped = plan.apply(out)
    np.testing.assert_array_equal(eight[0, :, 0], [0, 128, 255])
    assert clipped.sum() == 0


def _chunk(kind: bytes, body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")


def _png(width: int, height: int, depth: int, colour: int, rows: bytes) -> bytes:
    """A PNG written chunk by chunk, for the kinds Pillow cannot save (16-bit RGB)."""
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([depth, colour, 0, 0, 0])
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(rows)) + _chunk(b"IEND", b""))


def _png_kinds() -> dict[str, bytes]:
    rgb = cell_array(5, 30, 26)
    with_alpha_key = io.BytesIO()
    Image.fromarray(rgb).save(with_alpha_key, format="PNG", transparency=(0, 0, 0))
    deep = np.arange(2 * 3 * 3, dtype=">u2").reshape(2, 3, 3) * 3000
    rows = b"".join(b"\x00" + row.tobytes() for row in deep)
    corrupt = bytearray(png_bytes(rgb))
    corrupt[len(corrupt) // 2] ^= 0xFF  # inside the pixel data; both ends intact
    return {"rgb": png_bytes(rgb), "rgb with a transparent colour": with_alpha_key.getvalue(),
            "16-bit rgb": _png(3, 2, 16, 2, rows), "corrupt pixel data": bytes(corrupt),
            "gray": png_bytes(rgb[..., 0]), "rgba": png_bytes(np.dstack([rgb, rgb[..., :1]])),
            "padded after its end chunk": png_bytes(rgb) + bytes(16),
            # Pillow reads the chunks after the pixel data, libspng does not: this text expands
            # past Pillow's limit for one, so Pillow refuses the file
            "text after the pixel data": png_bytes(rgb)[:-12] + _chunk(b"tEXt", b"note\0cell")
            + _chunk(b"IEND", b""),
            "a text bomb after the pixel data": png_bytes(rgb)[:-12]
            + _chunk(b"zTXt", b"k\0\0" + zlib.compress(b"a" * 2**21)) + _chunk(b"IEND", b"")}


@pytest.mark.parametrize("kind", list(_png_kinds()))
def test_libspng_and_pillow_decode_every_png_alike(kind, monkeypatch):
    pytest.importorskip("pyspng", reason="the png extra (pyspng) is not installed")
    data = _png_kinds()[kind]

    def outcome() -> object:
        try:
            return decode.decode_image(data)
        except decode.BadImage as exc:
            return f"BadImage: {exc}"

    fast = outcome()
    # which PNGs libspng decodes: plain 8-bit RGB; a damaged one, or one with chunks after its
    # pixel data, goes to Pillow
    by_libspng = kind in ("rgb", "rgb with a transparent colour", "padded after its end chunk")
    assert (decode._decode_rgb_png(data) is not None) == by_libspng
    monkeypatch.setattr(decode, "pyspng", None)
    pillow = outcome()
    if isinstance(pillow, str):
        assert fast == pillow
    else:
        assert fast.dtype == np.uint8 and fast.shape == pillow.shape
        np.testing.assert_array_equal(fast, pillow)


def test_libspng_decodes_the_malaria_crops_as_pillow_does(malaria_sample, monkeypatch):
    pytest.importorskip("pyspng", reason="the png extra (pyspng) is not installed")
    files = sorted(malaria_sample.rglob("*.png"))[::150]
    fast = [decode.decode_image(f.read_bytes()) for f in files]
    monkeypatch.setattr(decode, "pyspng", None)
    for path, pixels in zip(files, fast, strict=True):
        np.testing.assert_array_equal(pixels, decode.decode_image(path.read_bytes()), err_msg=path.name)


def test_symlink_loop_does_not_hang(tmp_path, make_kaggle_folder):
    root = make_kaggle_folder(tmp_path)
    cls = root / "cell_images" / "Parasitized"
    (cls / "loop").symlink_to(root, target_is_directory=True)
    (root / "cell_images" / "cell_images").symlink_to(root / "cell_images")
    source = open_source(str(root))
    assert len(source) == 12


def test_unicode_and_spaces_in_paths(tmp_path, make_kaggle_folder):
    root = make_kaggle_folder(tmp_path / "données de test ü 細胞")
    extra = root / "cell_images" / "Parasitized" / "C5P1thinF cellule été_cell_1.png"
    Image.fromarray(cell_array(7)).save(extra)
    source = FolderSource(DataConfig(source=str(root)))
    assert "Parasitized/C5P1thinF cellule été_cell_1.png" in source.files
    assert len(list(source)) == 13
    assert "13" in inspect_source(str(root))


def test_inspect_report(tmp_path, make_kaggle_folder):
    root = _bad_folder(tmp_path, make_kaggle_folder)
    report = inspect_source(str(root))
    assert "Parasitized = infected = 1" in report
    assert "Uninfected = uninfected = 0" in report
    assert "images: 8" in report
    assert "Parasitized: 4" in report and "Uninfected: 4" in report
    assert "patients: 2" in report
    assert "images per patient: min 4, median 4, max 4" in report
    assert "C1 " in report and "C2 " in report  # the per-patient table
    assert "width 18-21 px, height 20-23 px" in report
    assert "skipped: 4 files" in report
    assert "empty file" in report and "not an image file" in report
    assert "truncated" in report  # found from the header and the missing PNG end chunk


def test_inspect_synthetic():
    report = inspect_source(DataConfig(synthetic=SyntheticConfig(n_images=50, n_patients=4)))
    assert "(synthetic, synthetic generator)" in report
    assert "synthetic: {'n_images': 50, 'n_patients': 4" in report
    assert "images: 50" in report
    assert "patients: 4" in report
    assert "S01" in report


def test_inspect_malaria_sample(malaria_sample):
    report = inspect_source(str(malaria_sample.parent))
    assert "Parasitized: 1,764" in report
    assert "Uninfected: 2,740" in report
    assert "patients: 40" in report
    assert "skipped: 0 files" in report


def test_class_folders_are_numbered_in_natural_order(tmp_path):
    for name in ("stage10", "stage2", "stage1"):
        (tmp_path / name).mkdir()
        Image.fromarray(cell_array(len(name))).save(tmp_path / name / "cell.png")
    assert open_source(str(tmp_path)).class_names == ["stage1", "stage2", "stage10"]


class ManifestSource(FileSource):
    """A plug-in: a folder with a MANIFEST naming one image per line as ``label path``."""

    kind = "manifest"
    spec_help = "a folder with a MANIFEST"

    @classmethod
    def accepts(cls, spec: str) -> bool:
        return (Path(spec) / "MANIFEST").is_file()

    def __init__(self, data: DataConfig) -> None:
        super().__init__(data)
        self.root = Path(data.source)
        rows = [line.split(" ", 1) for line in (self.root / "MANIFEST").read_text().splitlines()]
        self.class_names = sorted({label for label, _ in rows})
        self.label_map = {name: i for i, name in enumerate(self.class_names)}
        self.paths = self.files = [path for _, path in rows]
        self.labels = [self.label_map[label] for label, _ in rows]
        self.patients = list(self.files)
        self.layout = "manifest"

    def read_bytes(self, index: int) -> bytes:
        return (self.root / self.paths[index]).read_bytes()

    def fingerprint(self) -> str:
        return (self.root / "MANIFEST").read_text()


@pytest.fixture
def isolated_sources(monkeypatch):
    """Plug-ins registered by a test are gone after it."""
    monkeypatch.setattr(SOURCES, "_items", {name: SOURCES.get(name) for name in SOURCES.names()})


def test_a_registered_plug_in_is_asked_before_the_folder_fallback(tmp_path, isolated_sources):
    (tmp_path / "a").mkdir()  # a folder the folder source would read as one class folder
    (tmp_path / "a" / "x.png").write_bytes(png_bytes(cell_array(1)))
    (tmp_path / "y.png").write_bytes(png_bytes(cell_array(2)))
    (tmp_path / "MANIFEST").write_text("red a/x.png\nblue y.png")
    with pytest.raises(CellaeError, match="no class folders|only one class"):
        open_source(str(tmp_path))
    assert register_source(ManifestSource) is ManifestSource
    source = open_source(str(tmp_path))
    assert isinstance(source, ManifestSource)
    assert [s.label for s in source] == [1, 0]
    assert "labels: blue = 0, red = 1" in inspect_source(str(tmp_path))
    assert "a folder with a MANIFEST" in str(pytest.raises(
        CellaeError, open_source, str(tmp_path / "MANIFEST")).value)


def test_register_source_refuses_what_is_not_a_source(isolated_sources):
    with pytest.raises(TypeError, match="not a concrete subclass"):
        register_source(dict)
    with pytest.raises(TypeError, match="not a concrete subclass"):
        register_source(FileSource)  # abstract: says nothing about which specs it reads

    class Impostor(ManifestSource):
        kind = "zip"

    with pytest.raises(ValueError, match="named 'zip'"):
        register_source(Impostor)
    before = SOURCES.names()
    register_source(ZipSource)  # registering a class again changes nothing
    assert SOURCES.names() == before and SOURCES.get("zip") is ZipSource


def test_a_zip_member_named_twice_is_read_once(tmp_path):
    import warnings

    archive = tmp_path / "cells.zip"
    with zipfile.ZipFile(archive, "w") as zf, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate, and writes it
        for i in range(3):
            zf.writestr(f"Parasitized/C1P1thinF_a_cell_{i}.png", png_bytes(cell_array(i)))
            zf.writestr(f"Uninfected/C2P2thinF_b_cell_{i}.png", png_bytes(cell_array(i + 3)))
        zf.writestr("Parasitized/C1P1thinF_a_cell_0.png", png_bytes(cell_array(9)))
    source = open_source(str(archive))
    assert len(source) == 6 and len(set(source.files)) == 6
    assert dict(source.skipped) == {
        "Parasitized/C1P1thinF_a_cell_0.png": "a second member of the same name in the zip, not read"}


def test_classes_differing_only_in_case_are_refused(tmp_path):
    for name in ("Parasitized", "parasitized", "Uninfected"):
        (tmp_path / name).mkdir()
        for i in range(2):
            Image.fromarray(cell_array(i)).save(tmp_path / name / f"C1P1thinF_{i}.png")
    with pytest.raises(CellaeError, match="'Parasitized' and 'parasitized' differ only in case"):
        open_source(str(tmp_path))


def test_inspect_escapes_names_that_would_forge_lines(tmp_path):
    for name in ("Parasitized", "Uninfected"):
        (tmp_path / name).mkdir()
        for i in range(2):
            Image.fromarray(cell_array(i)).save(tmp_path / name / f"C1P1thinF_{i}.png")
    (tmp_path / "Uninfected" / "bad\rskipped: 0 files\x1b[2K.png").write_bytes(b"not a png")
    report = inspect_source(str(tmp_path))
    assert "bad\\rskipped: 0 files\\x1b[2K.png" in report
    assert "\r" not in report and "\x1b" not in report


def test_a_class_folder_that_is_a_link_is_followed(tmp_path, make_kaggle_folder):
    elsewhere = make_kaggle_folder(tmp_path / "store") / "cell_images" / "Uninfected"
    root = tmp_path / "data"
    (root / "Parasitized").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(cell_array(i)).save(root / "Parasitized" / f"C9P1thinF_{i}.png")
    (root / "Uninfected").symlink_to(elsewhere, target_is_directory=True)
    source = open_source(str(root))
    assert source.class_names == ["uninfected", "infected"]
    assert sum(1 for f in source.files if f.startswith("Uninfected/")) == 6  # its 6 images
