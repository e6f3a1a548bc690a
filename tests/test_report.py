"""The comparison report, from fake run folders (no training): what it marks best and where it
refuses to, the status of unfinished runs, settings averaged over seeds, the figures across runs,
links to each run's section, escaping, and the folders it reads."""

from __future__ import annotations

import base64
import io
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cellae import runs
from cellae.columns import SAME_IMAGES, SAME_TEST_CELLS, Column
from cellae.config import config_from_dict
from cellae.errors import CellaeError
from cellae.report import write_report
from cellae.report.collect import TEST_LOSS

COLUMNS = (
    Column("reconstruction.psnr_interior", "PSNR interior (dB)", "higher", 2, SAME_IMAGES),
    Column("probe.accuracy", "probe accuracy", "higher", 3, SAME_TEST_CELLS),
    Column("pca_baseline.accuracy", "PCA accuracy", "higher", 3, baseline=True),
)
CELLS = [f"cell_{i}.png" for i in range(10)]


def fake_run(parent: Path, name: str, *, family: str = "ae", background: str = "keep",
             seed: int = 0, status: str = "finished", test_loss: float = 10.0,
             accuracy: float = 0.6, pca: float = 0.55, cells: list[str] | None = CELLS,
             colour: int = 100, declared: list[dict] | None = None, fold: int | None = None) -> Path:
    """A run folder as training and evaluation leave it, with made-up numbers: ``test_loss`` is
    its last epoch's, ``cells`` the test cells its evaluation drew (None: evaluated before
    reconstructions.npz existed)."""
    run_dir = parent / name
    (run_dir / "figures").mkdir(parents=True)
    folds = {} if fold is None else {"folds": 5, "fold": fold}
    config = config_from_dict({"name": name, "seed": seed, "model": {"family": family},
                               "data": {"background": background, **folds}}, check_paths=False)
    runs.write_atomic(run_dir / runs.CONFIG_FILE, config.to_yaml())
    runs.write_json(run_dir / runs.RUN_INFO_FILE, {
        "name": name, "seed": seed, "status": status, "epochs_completed": 3, "fit_seconds": 12.5,
        "parameters": 123456})
    for epoch, factor in enumerate((8.0, 2.0, 1.0), start=1):
        runs.append_metrics(run_dir, {"epoch": epoch, "train_loss": test_loss * factor * 0.9,
                                      "test_loss": test_loss * factor})
    runs.write_json(run_dir / "eval" / "metrics.json", {
        "reconstruction": {"loss": test_loss, "psnr_interior": 20.0 + colour / 100},
        "probe": {"accuracy": accuracy},
        "pca_baseline": {"accuracy": pca},
        "data": {"train": {"images": 80, "patients": 8}, "test": {"images": 20, "patients": 2}},
        "columns": declared if declared is not None else [c.to_dict() for c in COLUMNS],
    })
    if cells is not None:
        # what preprocessing does to a cell: another background, other input pixels
        shade = 0 if background == "keep" else 5
        originals = np.stack([np.full((3, 8, 8), 10 * CELLS.index(c) + shade, np.uint8) for c in cells])
        np.savez(run_dir / "eval" / runs.RECONSTRUCTIONS_FILE, files=np.array(cells),
                 labels=np.arange(len(cells)) % 2, class_names=np.array(["uninfected", "infected"]),
                 originals=originals, reconstructions=np.full_like(originals, colour))
    for figure in ("latent_tsne", "reconstructions", "learning_curves", "inputs"):
        Image.fromarray(np.full((8, 8, 3), colour, np.uint8)).save(run_dir / "figures" / f"{figure}.png")
    return run_dir


class _Tables(HTMLParser):
    """Every table of a page: per row, each cell's text and classes; and the row's classes."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[tuple[list[str], list[tuple[str, set[str]]]]]] = {}
        self.ids: set[str] = set()
        self.links: list[str] = []
        self._table: str | None = None
        self._cell: list | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        if tag == "table":
            self._table = attrs.get("id")
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append(((attrs.get("class") or "").split(), []))
        elif tag in ("td", "th") and self._table:
            self._cell = ["", set((attrs.get("class") or "").split())]
        elif tag == "a" and self._table and attrs.get("href", "").startswith("#"):
            self.links.append(attrs["href"][1:])

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[self._table][-1][1].append((self._cell[0], self._cell[1]))
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell[0] += data


def parse(page: str) -> _Tables:
    parser = _Tables()
    parser.feed(page)
    return parser


def rows_of(page: str, table: str) -> dict[str, dict[str, tuple[str, set[str]]]]:
    """A table as {first cell: {column title: (text, classes)}}, plus each row's classes under
    the key ``"<row>"``."""
    (_, header), *body = parse(page).tables[table]
    titles = [text for text, _ in header]
    rows = {}
    for row_classes, cells in body:
        rows[cells[0][0]] = dict(zip(titles, cells, strict=True)) | {"<row>": ("", set(row_classes))}
    return rows


def best(rows: dict, run: str, title: str) -> bool:
    return "best" in rows[run][title][1]


def test_report_is_self_contained_with_figures_across_runs(tmp_path):
    fake_run(tmp_path / "sweep", "ae-z20", colour=10)
    fake_run(tmp_path / "sweep", "ae-z50", background="fill_mean", colour=200)
    out = write_report([tmp_path / "sweep"], tmp_path / "out" / "report.html")
    page = out.read_text()
    images = re.findall(r'<img[^>]* src="([^"]+)"', page)
    # four figures per run, the overlaid learning curves and the same cells side by side
    assert len(images) == 10 and all(src.startswith("data:image/png;base64,") for src in images)
    assert "http://" not in page and "https://" not in page
    for figure in ("learning_curves_all", "same_test_cells"):
        src = re.search(rf'<img id="{figure}" src="data:image/png;base64,([^"]+)"', page).group(1)
        width, height = Image.open(io.BytesIO(base64.b64decode(src))).size
        assert width > 400 and height > 200
    # the inputs differ (fill_mean): the top row is labelled as the first run's, and said so
    assert "the top row is ae-z20&#x27;s" in page
    # each run's figures in the study's order, named with the run
    assert page.index("latent tsne — ae-z20") < page.index("reconstructions — ae-z20")
    assert page.index("learning curves — ae-z20") < page.index("inputs — ae-z20")
    assert "max-height" not in page and "max-width: 100%" in page
    markdown = out.with_suffix(".md").read_text()
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert len(linked) == 10 and all((out.parent / p).is_file() for p in linked)
    assert "report_files/learning_curves_all.png" in linked
    assert "report_files/same_test_cells.png" in linked
    assert "## Settings" in markdown and "## Each run" in markdown


def test_best_is_marked_only_among_comparable_runs_and_never_on_a_baseline(tmp_path):
    fake_run(tmp_path, "ae-a", test_loss=10.0, accuracy=0.70, pca=0.50, colour=10)
    fake_run(tmp_path, "ae-b", test_loss=12.0, accuracy=0.65, pca=0.60, colour=50)
    # the lowest loss of all, but a VAE's loss is another objective: it competes with no AE
    fake_run(tmp_path, "vae", family="vae", test_loss=5.0, accuracy=0.60, pca=0.70, colour=90)
    fake_run(tmp_path, "ae-mean", background="fill_mean", test_loss=1.0, accuracy=0.62, colour=250)
    out = write_report([tmp_path / n for n in ("ae-a", "ae-b", "vae", "ae-mean")], tmp_path / "r.html")
    rows = rows_of(out.read_text(), "runs")
    loss = TEST_LOSS.title
    assert best(rows, "ae-a", loss) and not best(rows, "ae-b", loss)
    # alone in its comparison: the VAE, and the AE on other inputs (data.background differs)
    assert not best(rows, "vae", loss) and not best(rows, "ae-mean", loss)
    # PSNR compares within the same images: AE and VAE compete, the fill_mean run does not
    assert best(rows, "vae", "PSNR interior (dB)") and not best(rows, "ae-mean", "PSNR interior (dB)")
    # the probe scores the same test cells in every run: all four compete
    assert best(rows, "ae-a", "probe accuracy")
    assert [r for r in rows if best(rows, r, "probe accuracy")] == ["ae-a"]
    # a baseline is a reference, not a result
    assert not any(best(rows, r, "PCA accuracy") for r in rows)
    # every value of a column with the column's decimals, counts with separators
    assert rows["ae-a"]["probe accuracy"][0] == "0.700" and rows["ae-a"][loss][0] == "10.0000"
    assert rows["ae-a"]["parameters"][0] == "123,456" and rows["ae-a"]["epochs"][0] == "3"
    assert rows["ae-a"]["fit time (s)"][0] == "12.5"
    markdown = out.with_suffix(".md").read_text()
    assert "**0.700**" in markdown and "**10.0000**" in markdown and "**5.0000**" not in markdown


def test_columns_declared_before_compare_within_are_read_as_declared_today(tmp_path):
    old = [{"key": c.key, "title": c.title, "better": c.better, "digits": c.digits} for c in COLUMNS]
    fake_run(tmp_path, "a", pca=0.5, declared=old)
    fake_run(tmp_path, "b", pca=0.7, declared=old)
    rows = rows_of(write_report([tmp_path / "a", tmp_path / "b"], tmp_path / "r.html").read_text(),
                   "runs")
    assert not best(rows, "b", "PCA accuracy") and best(rows, "a", "probe accuracy") is False


def test_an_unfinished_run_is_flagged_and_competes_for_nothing(tmp_path):
    fake_run(tmp_path, "done", test_loss=10.0, accuracy=0.6)
    fake_run(tmp_path, "cut", status="interrupted", test_loss=2.0, accuracy=0.9)
    fake_run(tmp_path, "worse", test_loss=12.0, accuracy=0.5)
    out = write_report([tmp_path / n for n in ("done", "cut", "worse")], tmp_path / "r.html")
    page = out.read_text()
    rows = rows_of(page, "runs")
    status, classes = rows["cut"]["status"]
    assert "interrupted" in status and "3 of" in status and "warn" in classes
    assert "unfinished" in rows["cut"]["<row>"][1] and "unfinished" not in rows["done"]["<row>"][1]
    assert rows["done"]["status"] == ("finished", {"text"})
    assert not best(rows, "cut", TEST_LOSS.title) and best(rows, "done", TEST_LOSS.title)
    assert best(rows, "done", "probe accuracy")
    assert "this run is interrupted, not finished" in page
    # a finished run alone with an unfinished one has nobody to beat
    alone = rows_of(write_report([tmp_path / "done", tmp_path / "cut"], tmp_path / "r2.html").read_text(),
                    "runs")
    assert not any("best" in cell[1] for row in alone.values() for cell in row.values())
    markdown = out.with_suffix(".md").read_text()
    assert "⚠ interrupted" in markdown and "*2.0000*" in markdown


def test_settings_average_over_seeds_and_mark_on_means(tmp_path):
    fake_run(tmp_path, "ae-s0", seed=0, accuracy=0.70, test_loss=10.0)
    fake_run(tmp_path, "ae-s1", seed=1, accuracy=0.80, test_loss=11.0)
    fake_run(tmp_path, "ae-s2", seed=2, accuracy=0.99, test_loss=1.0, status="failed")
    fake_run(tmp_path, "vae-s0", family="vae", seed=0, accuracy=0.60)
    out = write_report([tmp_path / n for n in ("ae-s0", "ae-s1", "ae-s2", "vae-s0")],
                       tmp_path / "r.html")
    page = out.read_text()
    settings = rows_of(page, "settings")
    assert list(settings) == ["ae-s0, ae-s1, ae-s2", "vae-s0"]
    ae, vae = settings["ae-s0, ae-s1, ae-s2"], settings["vae-s0"]
    # the failed run is left out of the mean, and said so
    assert ae["n"][0] == "2 (+1 not finished)" and "warn" in ae["n"][1] and vae["n"][0] == "1"
    assert ae["seeds"][0] == "0, 1, 2" and ae["model.family"][0] == "ae"
    assert ae["probe accuracy"][0] == "0.750 ± 0.071" and vae["probe accuracy"][0] == "0.600"
    assert best(settings, "ae-s0, ae-s1, ae-s2", "probe accuracy")
    # an AE's loss and a VAE's are not compared, means or not
    assert not any(best(settings, r, TEST_LOSS.title) for r in settings)
    assert ae[TEST_LOSS.title][0] == "10.5000 ± 0.7071"
    assert "**0.750 ± 0.071**" in out.with_suffix(".md").read_text()
    # the per-run table stays, one row per run
    assert set(rows_of(page, "runs")) == {"ae-s0", "ae-s1", "ae-s2", "vae-s0"}


def test_a_k_fold_setting_averages_over_folds_and_seeds(tmp_path):
    for fold, seed, accuracy in ((0, 0, 0.7), (0, 1, 0.8), (1, 0, 0.6), (1, 1, 0.9)):
        fake_run(tmp_path, f"ae-f{fold}-s{seed}", seed=seed, fold=fold, accuracy=accuracy)
    page = write_report([tmp_path], tmp_path / "r.html").read_text()
    settings = rows_of(page, "settings")
    assert len(settings) == 1
    (row,) = settings.values()
    assert row["n"][0] == "4" and row["probe accuracy"][0] == "0.750 ± 0.129"


def test_table_rows_link_to_each_runs_section(tmp_path):
    fake_run(tmp_path / "sweep", "ae one")
    fake_run(tmp_path / "sweep", "vae/two".replace("/", "_"), family="vae")
    page = write_report([tmp_path / "sweep"], tmp_path / "r.html").read_text()
    parsed = parse(page)
    assert len(parsed.links) >= 4 and set(parsed.links) <= parsed.ids
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", target) for target in parsed.links)
    sections = re.findall(r'<section class="run" id="([^"]+)"><h3>([^<]+)<', page)
    assert [name for _, name in sections] == ["ae one", "vae_two"]


def test_same_cells_needs_shared_files_and_says_what_is_missing(tmp_path):
    fake_run(tmp_path, "a", cells=CELLS[:5])
    fake_run(tmp_path, "b", cells=CELLS[3:])
    fake_run(tmp_path, "old", cells=None)
    page = write_report([tmp_path / n for n in ("a", "b", "old")], tmp_path / "r.html").read_text()
    assert '<img id="same_test_cells"' in page
    assert "no drawn test cells recorded (eval/reconstructions.npz) for old; re-run cellae evaluate" in page
    page = write_report([tmp_path / "a", tmp_path / "b"], tmp_path / "r.html").read_text()
    assert "input (first run)" not in page and "inputs of these cells differ" not in page
    fake_run(tmp_path, "c", cells=CELLS[6:])
    page = write_report([tmp_path / "a", tmp_path / "c"], tmp_path / "r.html").read_text()
    assert '<img id="same_test_cells"' not in page and "drew no test cells in common" in page


def test_a_folder_of_sweeps_gives_every_run_named_by_its_sweep(tmp_path):
    for sweep in ("quick", "study"):
        for name in ("ae", "vae"):
            fake_run(tmp_path / "runs" / sweep, name, family=name)
        runs.write_json(tmp_path / "runs" / sweep / runs.SWEEP_STATUS_FILE, {"order": ["vae", "ae"]})
    page = write_report([tmp_path / "runs"], tmp_path / "r.html").read_text()
    assert list(rows_of(page, "runs")) == ["quick/vae", "quick/ae", "study/vae", "study/ae"]


def test_strings_from_runs_are_escaped(tmp_path):
    evil = "<script>alert(1)</script>"
    run_dir = fake_run(tmp_path, "<img src=x onerror=alert(2)>", colour=30)
    config = config_from_dict({"name": evil}, check_paths=False)
    runs.write_atomic(run_dir / runs.CONFIG_FILE, config.to_yaml())
    runs.write_json(run_dir / runs.RUN_INFO_FILE, {"status": evil})
    other = fake_run(tmp_path, "plain", colour=60)
    config = config_from_dict({"name": "plain", "data": {"source": f"/data/{evil}"}}, check_paths=False)
    runs.write_atomic(other / runs.CONFIG_FILE, config.to_yaml())
    page = write_report([run_dir, other], tmp_path / "r.html").read_text()
    assert evil not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(2)&gt;" in page
    # the only script is the page's own sorting code
    assert page.count("<script>") == 1
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", target) for target in parse(page).links)


def test_report_refuses_folders_without_runs(tmp_path):
    with pytest.raises(CellaeError, match="no such run or sweep folder"):
        write_report([tmp_path / "absent"], tmp_path / "r.html")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CellaeError, match="holds no cellae run folders"):
        write_report([tmp_path / "empty"], tmp_path / "r.html")


def test_the_report_imports_no_training_sweep_or_plug_in_code():
    code = ("import sys, cellae.report; print(sorted(m for m in sys.modules if m.startswith("
            "('cellae.training', 'cellae.sweep', 'cellae.models', 'cellae.evaluation'))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_a_report_replaces_only_the_figures_folder_it_made(tmp_path):
    run = fake_run(tmp_path, "a")
    out = tmp_path / "r.html"
    write_report([run], out)
    (tmp_path / "r_files" / "stale.png").write_bytes(b"old")
    write_report([run], out)  # its own folder: replaced whole
    assert not (tmp_path / "r_files" / "stale.png").exists()
    theirs = tmp_path / "mine_files"
    theirs.mkdir()
    (theirs / "thesis.tex").write_text("years of work")
    with pytest.raises(CellaeError, match="was not written by cellae report"):
        write_report([run], tmp_path / "mine.html")
    assert (theirs / "thesis.tex").read_text() == "years of work"
    assert not (tmp_path / "mine.html").exists()
    # the run folder itself named as the report's figures folder
    named_so = fake_run(tmp_path, "b_files")  # cellae report b_files --out b.html
    with pytest.raises(CellaeError, match="was not written by cellae report"):
        write_report([named_so], tmp_path / "b.html")
    assert (named_so / "config.yaml").is_file()
    with pytest.raises(CellaeError, match=r"must name an \.html file"):
        write_report([run], tmp_path / "r.md")


def test_a_report_embeds_only_the_runs_own_regular_png_files(tmp_path):
    run = fake_run(tmp_path, "a")
    secret = tmp_path / "private.png"
    Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(secret)
    figures = run / "figures"
    (figures / "leak.png").symlink_to(secret)
    os.mkfifo(figures / "hang.png")
    (figures / "zero.png").symlink_to("/dev/zero")
    (figures / "fake.png").write_bytes(b"not an image at all")
    out = write_report([run], tmp_path / "r.html")  # returns: the FIFO was never opened
    page = out.read_text()
    for name in ("leak", "hang", "zero", "fake"):
        assert f"{name}.png" not in page and not list(tmp_path.glob(f"r_files/*/{name}.png"))
    assert base64.b64encode(secret.read_bytes()).decode() not in page
    assert list(tmp_path.glob("r_files/*/latent_tsne.png"))  # the run's own figures still go in


def test_a_report_of_too_many_runs_is_refused_before_it_reads_them(tmp_path, monkeypatch):
    import cellae.report as report

    monkeypatch.setattr(report, "MAX_RUNS", 2)
    for name in ("a", "b", "c"):
        fake_run(tmp_path / "runs", name)
    with pytest.raises(CellaeError, match="3 runs found; a report compares at most 2"):
        write_report([tmp_path / "runs"], tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


def test_a_report_replaces_the_figures_folder_of_a_report_made_before_the_mark(tmp_path):
    run = fake_run(tmp_path, "a")
    old = tmp_path / "r_files"
    (old / "00-a").mkdir(parents=True)
    (old / "00-a" / "latent_tsne.png").write_bytes(b"png")
    (old / "learning_curves_all.png").write_bytes(b"png")
    write_report([run], tmp_path / "r.html")
    assert (old / ".cellae-report").is_file() and (old / "00-a" / "latent_tsne.png").read_bytes() != b"png"
