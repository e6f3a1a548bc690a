"""A tiny run config shared by the tests that train: seconds on one CPU core."""

from pathlib import Path

from cellae.config import Config, config_from_dict


def tiny_config(tmp_path: Path, **sections: dict | str) -> Config:
    values = {
        "name": "tiny",
        "seed": 3,
        "data": {
            "source": "synthetic",
            "synthetic": {"n_images": 96, "n_patients": 6},
            "image_size": 32,
            "cache_dir": str(tmp_path / "cache"),
            "workers": 1,
        },
        "model": {"family": "ae", "latent_dim": 4, "widths": [8, 16]},
        "train": {"epochs": 3, "batch_size": 32, "lr": 0.003},
        "eval": {"tsne_max_points": 60, "n_samples": 8, "n_traversal_dims": 2, "knn_k": 3},
    }
    for section, updates in sections.items():
        if isinstance(updates, dict):
            values.setdefault(section, {}).update(updates)
        else:
            values[section] = updates
    return config_from_dict(values)
