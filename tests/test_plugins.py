"""Plug-ins from outside the package: the family of docs/extending.md, a metric and a loss of
the user's own, each used through the config alone with no edit of cellae."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from cellae import runs
from cellae.report import write_report

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_FAMILY = "docs/examples/denoising_family.py:DenoisingAutoencoder"

USER_PLUGINS = '''
from dataclasses import dataclass

import numpy as np

from cellae.columns import Column
from cellae.evaluation.latent_metrics import LatentMetric
from cellae.models.losses import ReconstructionLoss


def _spread(split):
    return {"code_spread": float(np.std(split.test_codes))}


SPREAD = LatentMetric("code_spread", _spread, (Column("probe.code_spread", "code spread", ""),))


@dataclass
class L1(ReconstructionLoss):
    name: str = "l1"
    scale: float = 1.0

    def elementwise(self, logits, target):
        return self.scale * (logits.sigmoid() - target).abs()
'''


def tiny_values(tmp_path: Path) -> dict:
    return {
        "name": "outside",
        "seed": 1,
        "data": {"source": "synthetic", "synthetic": {"n_images": 64, "n_patients": 4},
                 "image_size": 32, "cache_dir": str(tmp_path / "cache"), "workers": 1},
        "model": {"family": EXAMPLE_FAMILY, "latent_dim": 4, "widths": [8, 16], "noise_std": 0.2,
                  "loss": {"name": "user_plugins:L1", "scale": 2.0}},
        "train": {"epochs": 1, "batch_size": 32},
        "eval": {"tsne_max_points": 40, "knn_k": 3,
                 "metrics": ["linear_probe", "knn", "user_plugins:SPREAD"]},
    }


def test_a_family_metric_and_loss_from_outside_train_evaluate_and_report(tmp_path):
    (tmp_path / "user_plugins.py").write_text(USER_PLUGINS)
    config = tmp_path / "outside.yaml"
    config.write_text(yaml.safe_dump(tiny_values(tmp_path)))
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-m", "cellae.cli", "train", str(config), "--out", str(tmp_path / "runs")],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    header = (run_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "train_noise_mse" in header and "test_noise_mse" in header
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert metrics["family"] == "dae" and "noise_psnr_gain" in metrics["dae"]
    assert metrics["probe"]["code_spread"] > 0 and "silhouette" not in metrics["probe"]
    keys = [c["key"] for c in metrics["columns"]]
    assert "dae.noise_psnr_gain" in keys and "probe.code_spread" in keys
    assert runs.read_config_values(run_dir)["model"]["loss"] == {"name": "user_plugins:L1", "scale": 2.0}
    page = write_report([run_dir], tmp_path / "report.html").read_text()
    assert "denoising gain (dB)" in page and "code spread" in page


def test_a_key_the_outside_family_does_not_take_is_named(tmp_path):
    values = tiny_values(tmp_path)
    values["model"]["beta"] = 2.0
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(values))
    result = subprocess.run(
        [sys.executable, "-m", "cellae.cli", "train", str(config), "--out", str(tmp_path / "runs")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "'model.beta' is not taken by the 'docs/examples/denoising_family.py" in result.stderr
    assert "Traceback" not in result.stderr
