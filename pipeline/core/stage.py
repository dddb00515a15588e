"""What every stage shares: its output paths, atomic writes and its failure (StageFailed).

A stage computes everything first, then writes each output to a temporary file beside it and
renames it into place, so a stage that fails (bad params, a failed gate) leaves the outputs of the
previous run intact. dvc.yaml marks the outputs `persist` so that DVC does not delete them first.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.core.errors import StageFailed

PREPARED_DIR = Path("data/prepared")
SPLITS = ("train", "val", "test")
META_FILE = PREPARED_DIR / "meta.json"
KERAS_MODEL = Path("models/model.keras")
TRAIN_BACKUP_DIR = Path(".checkpoints/train")  # BackupAndRestore of an unfinished training
ONNX_MODEL = Path("models/model.onnx")
UNIFORM_ONNX = Path("models/uniform_attention.onnx")  # the uniform-attention ablation (evaluate reads it)
VARIANTS_DIR = Path("models/variants")  # model_fp16.onnx, model_int8.onnx: the configured variants
VARIANTS_MANIFEST = VARIANTS_DIR / "variants.json"  # {variant: its file}, fp32 included
REPORTS = Path("reports")
TRAIN_REPORT = REPORTS / "train.json"
HISTORY_CSV = REPORTS / "history.csv"
MLFLOW_RUN_FILE = REPORTS / "mlflow_run.json"
EXPORT_REPORT = REPORTS / "export.json"
METRICS_FILE = REPORTS / "metrics.json"
ATTENTION_PNG = REPORTS / "attention.png"
ATTENTION_CSV = REPORTS / "attention.csv"
PREDICTIONS_CSV = REPORTS / "predictions.csv"
ATTENTION_SERIES_PNG = REPORTS / "attention_series.png"
CONTRIBUTION_SERIES_PNG = REPORTS / "contribution_series.png"
DELETION_CSV = REPORTS / "deletion.csv"
DELETION_PNG = REPORTS / "deletion.png"


def split_file(split: str) -> Path:
    return PREPARED_DIR / f"{split}.npz"


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def variant_file(variant: str) -> Path:
    """Where the export stage writes an ONNX variant (fp32 is the contract's models/model.onnx)."""
    return ONNX_MODEL if variant == "fp32" else VARIANTS_DIR / f"model_{variant}.onnx"


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    tmp.chmod(0o755)  # mkdtemp makes it private
    try:
        yield tmp
        old = path.with_name(f".{path.name}.old")
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: Path, payload: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StageFailed(f"{path}: not found; run the stage that writes it first") from None
    except json.JSONDecodeError as err:
        raise StageFailed(f"{path}: not valid JSON ({err})") from None
