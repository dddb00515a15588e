"""Real labelled series from files: the bundled UCR/UEA sets, the user's .ts and .csv files, the
stratified validation split, and a clear error for each kind of bad file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.core import stage
from pipeline.core.contract import PAD_VALUE
from pipeline.data.files import DataFileError, bundled_ucr_files, file_splits, read_series, stratified_val_index
from tests.conftest import REPO_ROOT, run_stage, subprocess_env, tiny_config

TS_HEADER = """# a comment
@problemName Tiny
@timeStamps false
@missing false
@univariate true
@equalLength true
@seriesLength 4
@classLabel true a b
@data
"""
TS_ROWS = ["1,2,3,4:a", "4,3,2,1:b", "1,1,2,2:a", "2,2,1,1:b"]


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "name, n_train, n_test, shape, labels, padded",
    [
        ("GunPoint", 50, 150, (150, 1), ["1", "2"], False),
        ("ItalyPowerDemand", 67, 1029, (24, 1), ["1", "2"], False),
        ("BasicMotions", 40, 40, (100, 6), ["Badminton", "Running", "Standing", "Walking"], False),
        ("JapaneseVowels", 270, 370, (29, 12), [str(i) for i in range(1, 10)], True),
    ],
)
def test_bundled_ucr_sets_load_with_a_stratified_validation_split(name, n_train, n_test, shape, labels, padded):
    cfg = tiny_config("data=ucr", f"data.name={name}", f"data.val_min_series={n_train}")
    splits, info = file_splits(cfg.data, np.random.default_rng(0))
    assert len(splits["train"]) + len(splits["val"]) == n_train and len(splits["test"]) == n_test
    assert splits["train"].x.shape[1:] == shape and splits["test"].x.shape[1:] == shape
    assert info["labels"] == labels and info["padded"] is padded
    assert splits["train"].target_positions.shape == (len(splits["train"]), 0)
    train_classes = np.bincount(splits["train"].y[:, 0].astype(int), minlength=len(labels))
    val_classes = np.bincount(splits["val"].y[:, 0].astype(int), minlength=len(labels))
    assert (val_classes >= 1).all(), "every class is in the validation split"
    np.testing.assert_allclose(val_classes / (train_classes + val_classes), 0.2, atol=0.1)
    if padded:  # JapaneseVowels: 7 to 29 steps, padded after the end
        lengths = (splits["test"].x != PAD_VALUE).any(axis=2).sum(axis=1)
        assert (info["lengths"]["min"], info["lengths"]["max"]) == (7, 29) and lengths.min() >= 7


@pytest.mark.parametrize("name, channels, mode", [("ArrowHead", 1, "per_series"), ("BasicMotions", 6, "per_channel")])
def test_a_small_training_file_trains_on_every_series_and_normalization_follows_the_channels(name, channels, mode):
    """Below data.val_min_series (500) there is no validation split (training watches its own
    loss); at the threshold the stratified split returns. "auto" picks the normalization from
    the number of channels."""
    cfg = tiny_config("data=ucr", f"data.name={name}")
    assert cfg.data.normalization == "auto" and cfg.data.val_min_series == 500
    splits, info = file_splits(cfg.data, np.random.default_rng(0))
    n_train = len(read_series(bundled_ucr_files(name)[0]).series)
    assert (len(splits["train"]), len(splits["val"])) == (n_train, 0)
    assert splits["val"].x.shape[1:] == splits["train"].x.shape[1:] and splits["train"].x.shape[2] == channels
    assert info["normalization"]["mode"] == mode
    at_threshold = tiny_config("data=ucr", f"data.name={name}", f"data.val_min_series={n_train}")
    splits, _ = file_splits(at_threshold.data, np.random.default_rng(0))
    assert 0.1 * n_train <= len(splits["val"]) <= 0.3 * n_train and len(splits["train"]) + len(splits["val"]) == n_train


def test_stratified_split_keeps_singleton_classes_in_training():
    y = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2])
    val = stratified_val_index(y, 0.2, np.random.default_rng(0))
    assert sorted(y[val]) == [0, 1]


def test_user_csv_files_give_the_same_arrays_as_the_bundled_ts_files():
    """data/raw holds ItalyPowerDemand as CSV: the same loader gives the same data as data=ucr."""
    ucr, ucr_info = file_splits(tiny_config("data=ucr", "data.name=ItalyPowerDemand").data, np.random.default_rng(1))
    csv, csv_info = file_splits(tiny_config("data=ts_file").data, np.random.default_rng(1))
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(ucr[split].x, csv[split].x)
        np.testing.assert_array_equal(ucr[split].y, csv[split].y)
    assert ucr_info["labels"] == csv_info["labels"]


def test_the_user_s_copy_of_a_ucr_ts_pair_gives_what_data_ucr_gives(tmp_path):
    """The README's data=ts_file command on a copy of a bundled pair (UnitTest: its header opens
    with `%` comment lines): the same splits, labels and normalization as data=ucr."""
    copies = []
    for source in bundled_ucr_files("UnitTest"):
        copies.append(tmp_path / source.name)
        copies[-1].write_bytes(source.read_bytes())
    assert copies[0].read_text().startswith("%")
    ucr, ucr_info = file_splits(tiny_config("experiment=ucr", "data.name=UnitTest").data, np.random.default_rng(3))
    user, user_info = file_splits(
        tiny_config(
            "data=ts_file", "data.name=UnitTest", f"data.train_file={copies[0]}", f"data.test_file={copies[1]}"
        ).data,
        np.random.default_rng(3),
    )
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(ucr[split].x, user[split].x)
        np.testing.assert_array_equal(ucr[split].y, user[split].y)
    assert (len(ucr["train"]), len(ucr["val"]), len(ucr["test"])) == (20, 0, 22)
    assert ucr_info["labels"] == user_info["labels"] and ucr_info["normalization"] == user_info["normalization"]


def test_user_ts_file_with_variable_length_and_two_channels(tmp_path):
    header = TS_HEADER.replace("@univariate true", "@univariate false\n@dimensions 2").replace(
        "@equalLength true\n@seriesLength 4", "@equalLength false"
    )
    rows = ["1,2,3:3,2,1:a", "1,2:2,1:b", "5,5,5,5:1,1,1,1:a", "0,1:1,0:b"]
    train = _write(tmp_path / "t_TRAIN.ts", header + "\n".join(rows) + "\n")
    test = _write(tmp_path / "t_TEST.ts", header + "\n".join(rows[:2]) + "\n")
    cfg = tiny_config(
        "data=ts_file",
        f"data.train_file={train}",
        f"data.test_file={test}",
        "data.val_fraction=0.5",
        "data.normalization=per_channel",
    )
    splits, info = file_splits(cfg.data, np.random.default_rng(0))
    assert info["padded"] and splits["test"].x.shape == (2, 4, 2)
    np.testing.assert_array_equal(splits["test"].x[1], [[1, 2], [2, 1], [PAD_VALUE] * 2, [PAD_VALUE] * 2])
    # per-channel statistics come from the training split's valid steps only
    assert info["normalization"]["mode"] == "per_channel" and len(info["normalization"]["mean"]) == 2
    valid = splits["train"].x[(splits["train"].x != PAD_VALUE).any(axis=2)]
    np.testing.assert_allclose(info["normalization"]["mean"], valid.mean(axis=0), rtol=1e-6)


BAD_FILES = [
    # (case, file name, content, fragments the error must hold)
    (
        "nan in a .ts file",
        "x.ts",
        TS_HEADER + "1,2,NaN,4:a\n",
        ["x.ts", "line 10", "dimension 1, value 3", "missing value 'NaN'"],
    ),
    ("? in a .ts file", "x.ts", TS_HEADER + TS_ROWS[0] + "\n1,?,3,4:b\n", ["line 11", "missing value '?'"]),
    ("nan in a csv file", "x.csv", "a,1,2,3\nb,1,nan,3\n", ["x.csv", "line 2", "value 2", "missing value"]),
    (
        "ragged row in a fixed-length .ts",
        "x.ts",
        TS_HEADER + TS_ROWS[0] + "\n1,2,3:b\n",
        ["line 11", "length 3", "@equalLength true with length 4"],
    ),
    ("ragged row in a csv", "x.csv", "a,1,2,3\nb,1,2\n", ["line 2", "2 values", "line 1 has 3"]),
    ("not a number", "x.ts", TS_HEADER + "1,2,x3,4:a\n", ["line 10", "'x3' is not a number"]),
    ("label not declared", "x.ts", TS_HEADER + "1,2,3,4:c\n", ["line 10", "label 'c' is not declared"]),
    ("empty .ts", "x.ts", "", ["x.ts", "empty file"]),
    ("empty csv", "x.csv", "\n", ["x.csv", "empty file"]),
    ("truncated in the header", "x.ts", TS_HEADER.split("@classLabel")[0], ["no @data line"]),
    ("truncated after @data", "x.ts", TS_HEADER, ["no series after the @data line"]),
    ("truncated mid-row", "x.ts", TS_HEADER + TS_ROWS[0] + "\n1,2,3", ["line 11", "no class label"]),
    (
        "missing dimension",
        "x.ts",
        TS_HEADER.replace("@univariate true", "@univariate false\n@dimensions 2") + "1,2,3,4:a\n",
        ["line 11", "1 dimension(s), expected 2"],
    ),
    ("not text", "x.ts", None, ["not a text file"]),
]


@pytest.mark.parametrize("case, name, content, fragments", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_bad_files_are_refused_naming_file_line_and_problem(tmp_path, case, name, content, fragments):
    path = tmp_path / name
    if content is None:
        path.write_bytes(b"\xff\xfe\x00garbage")
    else:
        _write(path, content)
    with pytest.raises(DataFileError) as caught:
        read_series(path)
    for fragment in fragments:
        assert fragment in str(caught.value), f"{fragment!r} missing from: {caught.value}"


def _pair_config(tmp_path, train_text: str, test_text: str, suffix=".ts"):
    train = _write(tmp_path / f"p_TRAIN{suffix}", train_text)
    test = _write(tmp_path / f"p_TEST{suffix}", test_text)
    return tiny_config("data=ts_file", f"data.train_file={train}", f"data.test_file={test}")


def test_a_label_only_in_the_test_file_is_refused(tmp_path):
    cfg = _pair_config(tmp_path, "a,1,2\nb,2,1\na,1,1\n", "a,1,2\nc,0,0\n", ".csv")
    with pytest.raises(
        DataFileError,
        match=r"p_TEST.csv: line 2: label 'c' does not occur in the "
        r"training file .*p_TRAIN.csv",
    ):
        file_splits(cfg.data, np.random.default_rng(0))


def test_test_file_with_other_channel_count_is_refused(tmp_path):
    two = TS_HEADER.replace("@univariate true", "@univariate false\n@dimensions 2")
    cfg = _pair_config(tmp_path, TS_HEADER + "\n".join(TS_ROWS) + "\n", two + "1,2,3,4:1,2,3,4:a\n")
    with pytest.raises(DataFileError, match=r"p_TEST.ts: 2 channel\(s\), but .*p_TRAIN.ts has 1"):
        file_splits(cfg.data, np.random.default_rng(0))


def test_missing_and_unknown_files_are_named(tmp_path):
    with pytest.raises(DataFileError, match=r"nowhere.ts: not found"):
        read_series(tmp_path / "nowhere.ts")
    with pytest.raises(DataFileError, match=r"unknown file type '.arff'"):
        read_series(_write(tmp_path / "x.arff", "@data"))
    with pytest.raises(DataFileError, match=r"no bundled UCR/UEA data set 'Gunpoint'; sktime has .*GunPoint"):
        bundled_ucr_files("Gunpoint")


def test_bundled_files_come_from_the_installed_sktime():
    train, test = bundled_ucr_files("GunPoint")
    assert train.name == "GunPoint_TRAIN.ts" and "sktime" in train.parts and test.is_file()


@pytest.mark.e2e
def test_prepare_stage_with_a_bad_file_exits_2_and_keeps_the_previous_splits(stage_dir):
    raw = stage_dir / "data" / "raw"
    raw.mkdir(parents=True)
    _write(raw / "u_TRAIN.ts", TS_HEADER + "\n".join(TS_ROWS * 3) + "\n")
    _write(raw / "u_TEST.ts", TS_HEADER + "\n".join(TS_ROWS) + "\n")
    stage_dir.write_params("data=ts_file", "data.train_file=data/raw/u_TRAIN.ts", "data.test_file=data/raw/u_TEST.ts")
    run_stage("prepare")
    meta = json.loads(stage.META_FILE.read_text())
    assert meta["labels"] == ["a", "b"] and meta["task_type"] == "multiclass"
    before = {p: p.read_bytes() for p in stage.PREPARED_DIR.iterdir()}
    _write(raw / "u_TEST.ts", TS_HEADER + TS_ROWS[0] + "\n1,2,3:b\n")  # a ragged row
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.stages.prepare"],
        cwd=stage_dir,
        env={**subprocess_env(), "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "data/raw/u_TEST.ts: line 11: series of length 3" in result.stderr
    assert {p: p.read_bytes() for p in stage.PREPARED_DIR.iterdir()} == before


def test_an_inner_fold_evaluates_on_training_data_and_never_reads_the_test_file(tmp_path):
    """data.inner_fold=k: fold k of 3 stratified folds of the TRAIN file is the test split; the
    TEST file is not opened (here it does not exist), and the folds do not depend on the seed."""
    train = bundled_ucr_files("ArrowHead")[0]
    folds = []
    for fold in range(3):
        cfg = tiny_config(
            "data=ts_file",
            f"data.train_file={train}",
            f"data.test_file={tmp_path / 'absent.ts'}",
            f"data.inner_fold={fold}",
        )
        splits, info = file_splits(cfg.data, np.random.default_rng(fold))  # another seed each time
        assert info["test_split"] == f"inner fold {fold} of 3 of the TRAIN file" and list(info["files"]) == ["train"]
        assert len(splits["train"]) + len(splits["test"]) == 36 and len(splits["val"]) == 0
        assert np.bincount(splits["test"].y[:, 0].astype(int)).tolist() == [4, 4, 4]  # 12 per class
        folds.append({row.tobytes() for row in splits["test"].x})
    assert not (folds[0] & folds[1]) and not (folds[1] & folds[2]) and sum(map(len, folds)) == 36
    with pytest.raises(DataFileError, match="absent.ts: not found"):
        file_splits(
            tiny_config("data=ts_file", f"data.train_file={train}", f"data.test_file={tmp_path / 'absent.ts'}").data,
            np.random.default_rng(0),
        )
