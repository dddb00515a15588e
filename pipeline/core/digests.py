"""The digests the pipeline identifies things by, each named for what it hashes (sha256, hex)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def whole_config_digest(cfg) -> str:
    """The run's whole validated config, canonical JSON: which config made a model (the ONNX
    metadata key config_digest)."""
    return hashlib.sha256(_canonical(cfg.model_dump())).hexdigest()


def _sha256(prefix: bytes, paths: Iterable[Path]) -> str:
    """sha256 of `prefix` and then the bytes of the files, in the order given."""
    digest = hashlib.sha256(prefix)
    for path in paths:
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()


def files_digest(paths: Iterable[Path]) -> str:
    """The bytes of the files, in the order given: the prepared splits as a dataset (data.digest)."""
    return _sha256(b"", paths)


def training_inputs_digest(cfg, split_files: Iterable[Path]) -> str:
    """Everything that decides the trained weights: the seed, the data, model and train sections
    and the prepared splits' bytes. A training backup is resumed only by a run of the same digest."""
    decisive = {k: cfg.section(k) for k in ("data", "model", "train")} | {"seed": cfg.seed}
    return _sha256(json.dumps(decisive, sort_keys=True).encode(), split_files)


def result_params_digest(params: dict[str, str]) -> str:
    """16 hex digits of the MLflow params that decide a run's result: a ledger row counts only
    while its recipe is unchanged (pipeline/experiments/ledger.py)."""
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
