"""Labelled time series from files: the UCR/UEA `.ts` format and a plain CSV layout.

    .ts   the sktime/UEA text format: `@` header lines, then `@data` and one series per line,
          dimensions separated by `:`, values by `,`, the class label last.
    .csv  univariate, one series per line: `label,v1,v2,...,vT` (no header line).

Every problem is reported as a `DataFileError` naming the file, the line and what is wrong.
The bundled UCR/UEA data sets of sktime are read by the same code (`bundled_ucr_files`); nothing
is downloaded. NumPy only.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core.config import INNER_FOLDS
from pipeline.core.contract import PAD_VALUE, valid_positions
from pipeline.core.errors import StageFailed
from pipeline.data.synthetic import Dataset

MISSING_TOKENS = ("?", "nan", "NaN", "NAN")
COMMENT_MARKS = ("#", "%")  # comment lines of the .ts format (and of ARFF, which some UEA files keep)


class DataFileError(StageFailed):
    """A data file that cannot be used; the message names the file, the line and the problem."""


@dataclass(frozen=True)
class LabelledSeries:
    """What one file holds: `series[i]` float32 [length_i, channels] with label `labels[i]`."""

    path: Path
    series: list[np.ndarray]
    labels: list[str]
    lines: list[int]  # the file line of each series, for error messages
    declared_labels: tuple[str, ...] | None  # the `.ts` @classLabel list, if any

    @property
    def channels(self) -> int:
        return self.series[0].shape[1]

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(s) for s in self.series])


def _number(token: str, path: Path, line: int, where: str) -> float:
    token = token.strip()
    if token in MISSING_TOKENS or token == "":
        raise DataFileError(
            f"{path}: line {line}, {where}: missing value {token!r}; the pipeline takes complete "
            "series only (fill or drop it)"
        )
    try:
        value = float(token)
    except ValueError:
        raise DataFileError(f"{path}: line {line}, {where}: {token!r} is not a number") from None
    if not math.isfinite(value):
        raise DataFileError(f"{path}: line {line}, {where}: {token!r} is not a finite number")
    return value


def _header(path: Path, lines: list[str]) -> tuple[dict[str, str], int]:
    """The `.ts` header as {key: rest of line} and the index of the line after `@data`."""
    header: dict[str, str] = {}
    for index, raw in enumerate(lines):
        text = raw.strip()
        if not text or text.startswith(COMMENT_MARKS):
            continue
        if not text.startswith("@"):
            raise DataFileError(f"{path}: line {index + 1}: data before the @data line")
        key, _, rest = text[1:].partition(" ")
        if key.lower() == "data":
            return header, index + 1
        header[key.lower()] = rest.strip()
    raise DataFileError(f"{path}: no @data line: not a .ts file, or truncated in its header")


def _flag(header: dict[str, str], key: str, path: Path) -> bool | None:
    value = header.get(key)
    if value is None:
        return None
    if value.lower() not in ("true", "false"):
        raise DataFileError(f"{path}: @{key} must be true or false, got {value!r}")
    return value.lower() == "true"


def read_ts(path: Path) -> LabelledSeries:
    """A `.ts` file with class labels; checks each line against the header's promises."""
    lines = path.read_text(encoding="utf-8").splitlines()
    if not any(line.strip() for line in lines):
        raise DataFileError(f"{path}: empty file")
    header, first_data = _header(path, lines)
    if _flag(header, "timestamps", path):
        raise DataFileError(f"{path}: @timeStamps true is not supported; give plain values")
    class_label = header.get("classlabel", "").split()
    if not class_label or class_label[0].lower() != "true":
        raise DataFileError(f"{path}: @classLabel true <labels...> is required (classification)")
    declared = tuple(class_label[1:])
    equal_length = _flag(header, "equallength", path)
    series_length = int(header["serieslength"]) if "serieslength" in header else None
    dimensions = int(header["dimensions"]) if "dimensions" in header else None
    if _flag(header, "univariate", path):
        dimensions = 1

    series, labels, line_numbers = [], [], []
    for index in range(first_data, len(lines)):
        text = lines[index].strip()
        if not text or text.startswith(COMMENT_MARKS):
            continue
        line = index + 1
        *fields, label = text.split(":")
        label = label.strip()
        if not fields or not label:
            raise DataFileError(f"{path}: line {line}: no class label after the last ':' (truncated?)")
        if dimensions is None:
            dimensions = len(fields)
        if len(fields) != dimensions:
            raise DataFileError(
                f"{path}: line {line}: {len(fields)} dimension(s), expected {dimensions} "
                "(truncated line, or a ':' missing?)"
            )
        if declared and label not in declared:
            raise DataFileError(f"{path}: line {line}: label {label!r} is not declared in @classLabel {list(declared)}")
        channels = [
            [
                _number(token, path, line, f"dimension {d + 1}, value {t + 1}")
                for t, token in enumerate(field.split(","))
            ]
            for d, field in enumerate(fields)
        ]
        lengths = {len(c) for c in channels}
        if len(lengths) > 1:
            raise DataFileError(f"{path}: line {line}: dimensions have different lengths {[len(c) for c in channels]}")
        length = lengths.pop()
        expected = series_length if series_length is not None else (len(series[0]) if series else length)
        if equal_length and length != expected:
            raise DataFileError(
                f"{path}: line {line}: series of length {length}, but the file declares "
                f"@equalLength true with length {expected} (ragged or truncated row)"
            )
        series.append(np.asarray(channels, dtype=np.float32).T)
        labels.append(label)
        line_numbers.append(line)
    if not series:
        raise DataFileError(f"{path}: no series after the @data line (empty or truncated file)")
    return LabelledSeries(path, series, labels, line_numbers, declared or None)


def read_csv(path: Path) -> LabelledSeries:
    """A CSV file of univariate series, `label,v1,...,vT` per line, all of the same length."""
    lines = path.read_text(encoding="utf-8").splitlines()
    series, labels, line_numbers = [], [], []
    for index, raw in enumerate(lines):
        text = raw.strip()
        if not text:
            continue
        line = index + 1
        label, *tokens = [token.strip() for token in text.split(",")]
        if not label or not tokens:
            raise DataFileError(f"{path}: line {line}: expected `label,v1,...,vT`, got {text[:40]!r}")
        values = [_number(token, path, line, f"value {t + 1}") for t, token in enumerate(tokens)]
        if series and len(values) != len(series[0]):
            raise DataFileError(
                f"{path}: line {line}: {len(values)} values, but line {line_numbers[0]} has "
                f"{len(series[0])}; CSV series must all have the same length (ragged or truncated "
                "row; use a .ts file for variable-length series)"
            )
        series.append(np.asarray(values, dtype=np.float32)[:, None])
        labels.append(label)
        line_numbers.append(line)
    if not series:
        raise DataFileError(f"{path}: empty file")
    return LabelledSeries(path, series, labels, line_numbers, None)


READERS = {".ts": read_ts, ".csv": read_csv}


def read_series(path: str | Path) -> LabelledSeries:
    """A `.ts` or `.csv` file of labelled series."""
    path = Path(path)
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise DataFileError(f"{path}: unknown file type {path.suffix!r}; expected one of {list(READERS)}")
    if not path.is_file():
        raise DataFileError(f"{path}: not found")
    try:
        return reader(path)
    except UnicodeDecodeError as err:
        raise DataFileError(f"{path}: not a text file ({err.reason} at byte {err.start})") from None


def check_pair(train: LabelledSeries, test: LabelledSeries) -> list[str]:
    """The class labels (sorted; the index of a label is its class) after checking that the test
    file fits the training file: same channels, no class the training file lacks."""
    if test.channels != train.channels:
        raise DataFileError(f"{test.path}: {test.channels} channel(s), but {train.path} has {train.channels}")
    known = set(train.labels)
    for label, line in zip(test.labels, test.lines):
        if label not in known:
            raise DataFileError(
                f"{test.path}: line {line}: label {label!r} does not occur in the training file "
                f"{train.path} (it has {sorted(known)}); the model cannot learn it"
            )
    if len(known) < 2:
        raise DataFileError(f"{train.path}: only one class {sorted(known)}; classification needs two")
    return sorted(known)


def padded_array(part: LabelledSeries, length: int) -> np.ndarray:
    """float32 [n, length, channels]: each series, then PAD_VALUE after its end."""
    x = np.full((len(part.series), length, part.channels), PAD_VALUE, dtype=np.float32)
    for row, values in enumerate(part.series):
        if np.all(values == PAD_VALUE, axis=1).any():
            step = int(np.flatnonzero(np.all(values == PAD_VALUE, axis=1))[0])
            raise DataFileError(
                f"{part.path}: line {part.lines[row]}: step {step + 1} holds {PAD_VALUE} on every "
                "channel, the padding value of variable-length series; it would be masked"
            )
        x[row, : len(values)] = values
    return x


def bundled_ucr_files(name: str) -> tuple[Path, Path]:
    """The TRAIN and TEST `.ts` files of a UCR/UEA data set shipped inside sktime."""
    spec = importlib.util.find_spec("sktime")
    if spec is None or spec.origin is None:
        raise DataFileError("data=ucr reads the data sets bundled in sktime: `pip install sktime`")
    root = Path(spec.origin).parent / "datasets" / "data"
    folder = root / name
    files = folder / f"{name}_TRAIN.ts", folder / f"{name}_TEST.ts"
    if not all(f.is_file() for f in files):
        available = sorted(p.name for p in root.iterdir() if (p / f"{p.name}_TRAIN.ts").is_file())
        raise DataFileError(f"data.name: no bundled UCR/UEA data set {name!r}; sktime has {available}")
    return files


def stratified_val_index(y: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Indices of a validation split holding `fraction` of each class (rounded, at least one
    sample of every class that has two or more), sorted."""
    chosen = []
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        if len(members) >= 2:
            chosen.append(members[: max(1, round(len(members) * fraction))])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def validation_index(y: np.ndarray, data_cfg, rng: np.random.Generator) -> np.ndarray:
    """The training-file rows held out for validation: a stratified `data_cfg.val_fraction` when
    the file has at least `data_cfg.val_min_series` series, none below. A small training set
    needs every series to train, and a fifth of it is too few to choose an epoch by: training
    then watches its own loss (the protocol of Fawaz et al. 2019)."""
    if len(y) < data_cfg.val_min_series:
        return np.zeros(0, dtype=np.int64)
    return stratified_val_index(y, data_cfg.val_fraction, rng)


def normalization_mode(requested: str, channels: int) -> str:
    """The normalization a data config asks for; "auto" decides from the data: each series
    z-normalised on its own when univariate (shape matters, not level: the UCR convention), each
    channel by the training split's statistics when multivariate (channels keep their scales
    relative to each other)."""
    if requested != "auto":
        return requested
    return "per_series" if channels == 1 else "per_channel"


def fit_normalization(mode: str, x: np.ndarray, padded: bool) -> dict:
    """The Standardize layer's arguments: per-channel mean and std of the valid steps of the
    training split x [n, time, channels] for "per_channel"; nothing to fit otherwise."""
    if mode != "per_channel":
        return {"mode": mode}
    values = x[valid_positions(x)] if padded else x.reshape(-1, x.shape[2])
    std = values.std(axis=0)
    std = np.where(std > 1e-8, std, 1.0)  # a constant channel stays constant
    return {"mode": mode, "mean": values.mean(axis=0).tolist(), "std": std.tolist()}


def to_arrays(part: LabelledSeries, labels: list[str], length: int, padded: bool) -> tuple[np.ndarray, np.ndarray]:
    """x float32 [n, length, channels] (padded after each series' end if `padded`) and
    y float32 [n, 1], the index of each series' label in `labels`."""
    x = padded_array(part, length) if padded else np.stack(part.series).astype(np.float32)
    index = {label: i for i, label in enumerate(labels)}
    y = np.array([[index[label]] for label in part.labels], dtype=np.float32)
    return x, y


def source_files(data_cfg) -> tuple[Path, Path]:
    """The TRAIN and TEST files a data config names: bundled in sktime (source ucr) or the
    user's own (source ts_file, paths relative to the repository root)."""
    if data_cfg.source == "ucr":
        return bundled_ucr_files(data_cfg.name)
    return Path(data_cfg.train_file), Path(data_cfg.test_file)


def inner_fold_index(y: np.ndarray, folds: int, fold: int) -> np.ndarray:
    """Rows of fold `fold` of a stratified split of the training file into `folds` parts (each
    class dealt round-robin after a fixed shuffle: the same folds whatever the run's seed)."""
    rng = np.random.default_rng(0)
    assignment = np.zeros(len(y), dtype=np.int64)
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        assignment[members] = np.arange(len(members)) % folds
    return np.flatnonzero(assignment == fold)


def file_splits(data_cfg, rng: np.random.Generator) -> tuple[dict[str, Dataset], dict]:
    """Train / val / test datasets from a TRAIN/TEST file pair, and what meta.json records of
    them: labels, whether padded, the normalization fitted on the training split, the files.

    The validation split comes from the TRAIN file (`validation_index`: empty for a small
    one); the TEST file is the test split, untouched. With `data_cfg.inner_fold` set, the TEST
    file is not even read: fold k of the TRAIN file is the test split and the other folds train,
    so that settings are compared on training data only."""
    train_path, test_path = source_files(data_cfg)
    train_file = read_series(train_path)
    inner = data_cfg.inner_fold is not None
    test_file = train_file if inner else read_series(test_path)
    labels = check_pair(train_file, test_file)
    lengths = np.concatenate([train_file.lengths, test_file.lengths])
    padded = bool(lengths.min() != lengths.max())
    length = int(lengths.max())
    x, y = to_arrays(train_file, labels, length, padded)
    full = Dataset(x, y, np.zeros((len(y), 0), dtype=np.int64))
    if inner:
        held_out = inner_fold_index(y[:, 0], INNER_FOLDS, data_cfg.inner_fold)
        test = full.take(held_out)
        full = full.take(np.setdiff1d(np.arange(len(y)), held_out))
    else:
        x_test, y_test = to_arrays(test_file, labels, length, padded)
        test = Dataset(x_test, y_test, np.zeros((len(y_test), 0), dtype=np.int64))
    val_index = validation_index(full.y[:, 0], data_cfg, rng)
    splits = {
        "train": full.take(np.setdiff1d(np.arange(len(full)), val_index)),
        "val": full.take(val_index),
        "test": test,
    }
    read = (("train", train_path),) if inner else (("train", train_path), ("test", test_path))
    info = {
        "labels": labels,
        "padded": padded,
        "lengths": {"min": int(lengths.min()), "max": length},
        "normalization": fit_normalization(
            normalization_mode(data_cfg.normalization, train_file.channels), splits["train"].x, padded
        ),
        "files": {
            split: {"path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()} for split, path in read
        },
        "test_split": (
            f"inner fold {data_cfg.inner_fold} of {INNER_FOLDS} of the TRAIN file" if inner else "the TEST file"
        ),
    }
    return splits, info
