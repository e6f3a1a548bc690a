import base64
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cellae import runs
from cellae.config import config_from_dict
from cellae.errors import CellaeError
from cellae.report import write_report


def fake_run(parent: Path, name: str, latent_dim: int, accuracy: float, colour: int) -> Path:
    """A run folder as training and evaluation leave it, with made-up numbers."""
    run_dir = parent / name
    (run_dir / "figures").mkdir(parents=True)
    config = config_from_dict({"name": name, "model": {"latent_dim": latent_dim}}, check_paths=False)
    runs.write_atomic(run_dir / runs.CONFIG_FILE, config.to_yaml())
    runs.write_json(run_dir / runs.RUN_INFO_FILE, {"name": name, "status": "finished"})
    runs.write_json(run_dir / "eval" / "metrics.json", {
        "reconstruction": {"loss": 10.0 + latent_dim, "psnr_interior": 20.0 + latent_dim / 10, "ssim": 0.5},
        "probe": {"accuracy": accuracy, "auroc": accuracy + 0.05, "knn_accuracy": 0.6},
        "pca_baseline": {"accuracy": 0.55, "auroc": 0.6},
        "data": {"train": {"images": 80, "patients": 8}, "test": {"images": 20, "patients": 2}},
        "columns": [{"key": "reconstruction.psnr_interior", "title": "PSNR interior (dB)",
                     "better": "higher", "digits": 2},
                    {"key": "probe.accuracy", "title": "probe accuracy", "better": "higher"},
                    {"key": "pca_baseline.accuracy", "title": "PCA accuracy", "better": "higher"}],
    })
    for figure in ("latent_tsne", "reconstructions", "learning_curves"):
        Image.fromarray(np.full((8, 8, 3), colour, np.uint8)).save(run_dir / "figures" / f"{figure}.png")
    return run_dir


def test_report_is_self_contained_and_marks_the_best(tmp_path):
    fake_run(tmp_path / "sweep", "ae-z20", 20, 0.61, 10)
    fake_run(tmp_path / "sweep", "ae-z50", 50, 0.72, 200)
    out = write_report([tmp_path / "sweep"], tmp_path / "out" / "report.html")
    page = out.read_text()
    # every figure embedded, nothing fetched from elsewhere
    images = re.findall(r'<img src="([^"]+)"', page)
    assert len(images) == 6 and all(src.startswith("data:image/png;base64,") for src in images)
    assert base64.b64decode(images[0].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "http://" not in page and "https://" not in page
    # only the differing key is a column; the better probe accuracy is marked
    assert "model.latent_dim" in page and "model.family" not in page
    assert re.search(r'<td class="best" data-value="0.72">', page)
    assert not re.search(r'<td class="best" data-value="0.61">', page)
    # figures in the study's order
    assert page.index("latent_tsne of ae-z20") < page.index("reconstructions of ae-z20")
    markdown = out.with_suffix(".md").read_text()
    assert "**0.720**" in markdown and "| ae-z20 |" in markdown.replace("\\", "")
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert len(linked) == 6 and all((out.parent / p).is_file() for p in linked)


def test_strings_from_runs_are_escaped(tmp_path):
    evil = "<script>alert(1)</script>"
    run_dir = fake_run(tmp_path, "<img src=x onerror=alert(2)>", 20, 0.5, 30)
    config = config_from_dict({"name": evil}, check_paths=False)
    runs.write_atomic(run_dir / runs.CONFIG_FILE, config.to_yaml())
    other = fake_run(tmp_path, "plain", 50, 0.5, 60)
    config = config_from_dict({"name": "plain", "data": {"source": f"/data/{evil}"}}, check_paths=False)
    runs.write_atomic(other / runs.CONFIG_FILE, config.to_yaml())
    page = write_report([run_dir, other], tmp_path / "r.html").read_text()
    assert evil not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(2)&gt;" in page
    # the only script is the page's own sorting code
    assert page.count("<script>") == 1


def test_report_refuses_folders_without_runs(tmp_path):
    with pytest.raises(CellaeError, match="no such run or sweep folder"):
        write_report([tmp_path / "absent"], tmp_path / "r.html")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CellaeError, match="holds no cellae run folders"):
        write_report([tmp_path / "empty"], tmp_path / "r.html")
