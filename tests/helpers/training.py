"""The tiny training recipe every engine test starts from: ESPNet (alpha2=alpha3=1) on synthetic data."""

from __future__ import annotations

TINY = {"alpha2": 1, "alpha3": 1}


def tiny_recipe(tmp_path, name: str = "run", *, seed: int = 3, num_train: int = 16, num_val: int = 4,
                **train_kw) -> dict:
    """A recipe dict writing under ``tmp_path/runs``: 8 steps of batch 4 on 64x64 crops; ``train_kw`` overrides."""
    tr = {"iterations": 8, "batch_size": 4, "crop": [64, 64], "lr": 0.02, "warmup_iters": 2, "log_interval": 2,
          "eval_interval": 4, "ckpt_interval": 4, "device": "cpu", "sync_bn": False}
    tr.update(train_kw)
    return {
        "name": name, "seed": seed, "output_dir": str(tmp_path / "runs"),
        "model": {"name": "espnet", "kwargs": dict(TINY)},
        "data": {"dataset": "synthetic", "workers": 0,
                 "options": {"num_train": num_train, "num_val": num_val, "size": [64, 96]},
                 "augment": {"scale": [0.75, 1.25]}},
        "train": tr,
        "eval": {"batch_size": 2},
    }
