"""The prepared splits: made from a config (generated, or read from files), described in
meta.json, written to and read from data/prepared/ (npz, no pickle). NumPy only.

    prepared(cfg) -> ({train, val, test}: Dataset, meta)
    load_split("train") -> Dataset (x [n, ...], y [n, 1], target_positions [n, k])
"""

from __future__ import annotations

import numpy as np

from pipeline.core import stage
from pipeline.core.contract import PAD_VALUE
from pipeline.data import Dataset, generate, split
from pipeline.data.files import file_splits


def describe(cfg, splits: dict[str, Dataset], file_info: dict | None = None) -> dict:
    """meta.json: shapes, sizes, padding, the true attention positions (synthetic tasks) and
    what `file_splits` found in the files (labels, normalization, lengths, paths)."""
    x = splits["train"].x
    is_sequence = x.ndim == 3
    padded = file_info["padded"] if file_info else cfg.padded
    return {
        "task": cfg.data.name,
        "task_type": cfg.task_type,
        "seed": cfg.seed,
        "input_shape": list(x.shape[1:]),
        "input_layout": "batch,time,features" if is_sequence else "batch,features",
        "attention_axis": "time" if is_sequence else "features",
        "positions": int(x.shape[1]),
        **(file_info or {}),
        "padded": padded,
        "pad_value": PAD_VALUE if padded else None,
        "target_positions": sorted(
            int(p) for p in np.unique(np.concatenate([s.target_positions for s in splits.values()]))
        ),
        "splits": {name: len(part) for name, part in splits.items()},
    }


def save_splits(splits: dict[str, Dataset]) -> None:
    for name, part in splits.items():
        with stage.atomic_path(stage.split_file(name)) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, x=part.x, y=part.y, target_positions=part.target_positions)


def load_split(name: str) -> Dataset:
    """One split as the prepare stage writes it (no pickle)."""
    path = stage.split_file(name)
    try:
        with np.load(path, allow_pickle=False) as arrays:
            return Dataset(arrays["x"], arrays["y"], arrays["target_positions"])
    except FileNotFoundError:
        raise stage.StageFailed(f"{path}: not found; run `dvc repro prepare` first") from None
    except (KeyError, ValueError, OSError) as err:
        raise stage.StageFailed(f"{path}: not a prepared split ({err})") from None


def prepared(cfg) -> tuple[dict[str, Dataset], dict]:
    """The train / val / test splits the config asks for, and their meta.json."""
    rng = np.random.default_rng(cfg.seed)
    if cfg.from_files:
        splits, file_info = file_splits(cfg.data, rng)
    else:
        dataset = generate(cfg.data, rng)
        splits, file_info = split(dataset, cfg.data.val_fraction, cfg.data.test_fraction, rng), None
    return splits, describe(cfg, splits, file_info)


def prepared_for(overrides: list[str]) -> tuple[object, dict[str, Dataset], dict]:
    """(config, splits, meta) of the config composed from conf/ with Hydra `overrides` (a run's cell)."""
    from pipeline.core.config import compose_defaults, validate

    cfg = validate(compose_defaults(overrides=overrides), "conf/ with " + " ".join(overrides))
    return (cfg, *prepared(cfg))
