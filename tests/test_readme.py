"""The README's Python snippet runs as written, after a run like the README's first command."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cellae
from cellae.errors import CellaeError
from cellae.training import train
from conftest import cell_array
from tiny import tiny_config

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory) -> Path:
    tmp_path = tmp_path_factory.mktemp("readme")
    config = tiny_config(tmp_path, name="quickstart", train={"epochs": 1})
    train(config, tmp_path / "runs", evaluate=False)
    return tmp_path


def test_the_python_snippet_runs_as_written(quickstart_run, monkeypatch):
    (snippet,) = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    monkeypatch.chdir(quickstart_run)
    for name in re.findall(r'"(data/cell_images/[^"]+\.png)"', snippet):
        Path(name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(cell_array(5, 90, 80)).save(name)
    namespace: dict = {}
    exec(compile(snippet, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    run = namespace["run"]
    assert namespace["codes"].shape == (len(namespace["images"]), run.model.latent_dim)
    assert namespace["recons"].shape == namespace["images"][:8].shape
    assert namespace["cells"].shape == (1, run.model.latent_dim)


def test_files_and_pil_images_are_preprocessed_the_runs_way(quickstart_run, tmp_path):
    run = cellae.load_run(next((quickstart_run / "runs").iterdir()))
    array = cell_array(3, 70, 60)
    Image.fromarray(array).save(tmp_path / "cell.png")
    prepared = run.prepare([tmp_path / "cell.png", Image.fromarray(array)])
    assert prepared.dtype == np.uint8 and prepared.shape == (2, 3, 32, 32)
    assert np.array_equal(prepared[0], prepared[1])
    np.testing.assert_allclose(run.encode(tmp_path / "cell.png"), run.encode(prepared[:1]), rtol=1e-5)


@pytest.mark.parametrize("shape", [(2, 3, 64, 64), (2, 1, 32, 32), (32, 32)])
def test_a_wrong_shape_is_one_line_naming_the_expected_one(quickstart_run, shape):
    run = cellae.load_run(next((quickstart_run / "runs").iterdir()))
    with pytest.raises(CellaeError, match=r"must be shaped \(N, 3, 32, 32\)"):
        run.encode(np.zeros(shape, np.uint8))
    with pytest.raises(CellaeError, match="cannot read"):
        run.encode(["/no/such/cell.png"])
