"""The bad-input matrix: configs, data files and inference requests that must be refused, each
with the error it must give, a non-zero exit, nothing written and nothing lost.

Every case runs in one working directory that holds a complete pipeline run (tiny data); after
each case every file there is byte-identical to before, and no file was added.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import run_stage, tiny_params
from tests.test_files import TS_HEADER, TS_ROWS

pytestmark = pytest.mark.integration

Case = tuple[str, str, Callable, str]  # (name, kind, make the bad input, fragment of the error)


def _set(section: str | None, key: str, value) -> Callable[[dict], None]:
    def change(params: dict) -> None:
        (params[section] if section else params)[key] = value

    return change


def _drop(section: str) -> Callable[[dict], None]:
    return lambda params: params.pop(section)


CONFIGS: list[Case] = [
    ("epochs not a number", "config", _set("train", "epochs", "ten"), "train.epochs: Input should be a valid integer"),
    ("zero epochs", "config", _set("train", "epochs", 0), "train.epochs: Input should be greater than 0"),
    ("misspelt key", "config", _set("train", "epoch", 3), "train.epoch: Extra inputs are not permitted"),
    ("unknown model", "config", _set("model", "name", "transformer"), "model.name: unknown value 'transformer'"),
    ("unknown task", "config", _set("data", "name", "nope"), "data.name: unknown value 'nope'"),
    ("opset 19", "config", _set("export", "opset", 19), "export.opset: Input should be less than or equal to 18"),
    (
        "unknown variant",
        "config",
        _set("export", "variants", ["fp64"]),
        "export.variants.0: Input should be 'fp32', 'fp16', 'int8' or 'int8_qdq'",
    ),
    (
        "negative learning rate",
        "config",
        _set("train", "learning_rate", -1),
        "train.learning_rate: Input should be greater than 0",
    ),
    (
        "validation share above 1",
        "config",
        _set("data", "val_fraction", 1.5),
        "data.val_fraction: Input should be less than 1",
    ),
    ("seed not a number", "config", _set(None, "seed", "abc"), "seed: Input should be a valid integer"),
    (
        "empty experiment name",
        "config",
        _set("mlflow", "experiment_name", ""),
        "mlflow.experiment_name: String should have at least 1 character",
    ),
    (
        "unknown strategy",
        "config",
        _set("train", "strategy", "tpu"),
        "train.strategy: Input should be 'default', 'mirrored' or 'multi_worker'",
    ),
    (
        "zero CPU replicas",
        "config",
        _set("train", "cpu_replicas", 0),
        "train.cpu_replicas: Input should be greater than or equal to 1",
    ),
    ("missing section", "config", _drop("train"), "train: Field required"),
    ("params not YAML", "params text", "seed: [1\n", "params.yaml: not valid YAML at line 2"),
    ("params empty", "params text", "", "params.yaml: expected a mapping of sections, got NoneType"),
    ("params a list", "params text", "- a\n- b\n", "params.yaml: expected a mapping of sections, got list"),
]

DATA_FILES: list[Case] = [
    (
        "NaN in a .ts file",
        "data",
        ("x_TRAIN.ts", TS_HEADER + "1,2,NaN,4:a\n"),
        "x_TRAIN.ts: line 10, dimension 1, value 3: missing value 'NaN'",
    ),
    (
        "ragged .ts row",
        "data",
        ("x_TRAIN.ts", TS_HEADER + TS_ROWS[0] + "\n1,2,3:b\n"),
        "@equalLength true with length 4",
    ),
    ("undeclared label", "data", ("x_TRAIN.ts", TS_HEADER + "1,2,3,4:c\n"), "label 'c' is not declared"),
    ("empty .ts file", "data", ("x_TRAIN.ts", ""), "x_TRAIN.ts: empty file"),
    ("truncated mid-row", "data", ("x_TRAIN.ts", TS_HEADER + TS_ROWS[0] + "\n1,2,3"), "no class label"),
    ("not a number in csv", "data", ("x_TRAIN.csv", "a,1,2,3\nb,1,x,3\n"), "'x' is not a number"),
    ("binary file", "data", ("x_TRAIN.ts", b"\xff\xfe\x00garbage"), "not a text file"),
    ("missing data file", "data", ("absent_TRAIN.ts", None), "absent_TRAIN.ts"),
]

REQUESTS: list[Case] = [
    ("wrong feature count", "request", ("x.npy", np.zeros((2, 20, 3), np.float32)), "feature"),
    ("wrong rank", "request", ("x.npy", np.zeros((2, 40), np.float32)), "rank"),
    ("NaN in a request", "request", ("x.npy", np.full((1, 20, 2), np.nan, np.float32)), "NaN"),
    ("infinity in a request", "request", ("x.json", "[[" + ", ".join(["[1e999, 0]"] * 20) + "]]"), "infinity"),
    ("strings in a request", "request", ("x.json", '[[["a", "b"]]]'), "cannot read json inputs"),
    ("malformed json", "request", ("x.json", '{"inputs": [[[1, 2]]'), "cannot read json inputs"),
    ("empty batch", "request", ("x.npy", np.zeros((0, 20, 2), np.float32)), "empty"),
    ("csv with a word", "request", ("x.csv", "1,2,oops\n"), "cannot read csv inputs"),
    ("unknown input type", "request", ("x.txt", "1 2"), "unknown input type '.txt'"),
    ("pickled object array", "request", ("x.npy", np.array([{"a": 1}], dtype=object)), "pickle"),
    ("model with a custom operator", "model", None, "outside the standard ONNX domains"),
]

MATRIX = CONFIGS + DATA_FILES + REQUESTS


@pytest.fixture
def pipeline_dir(trained_runs, tmp_path):
    """A complete pipeline run, tiny, with its MLflow store (a copy of the session's); the case
    must leave it as it is."""
    return trained_runs.copy(tmp_path / "complete")


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_the_matrix_has_at_least_25_cases_of_each_kind_together():
    assert len(MATRIX) >= 25 and {kind for _, kind, _, _ in MATRIX} >= {"config", "data", "request"}


def _write_input(path: Path, content) -> None:
    if isinstance(content, np.ndarray):
        np.save(path, content, allow_pickle=content.dtype == object)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)


def _custom_operator_model(path: Path) -> None:
    from onnx import TensorProto, helper, save

    graph = helper.make_graph(
        [
            helper.make_node("Run", ["x"], ["prediction"], domain="com.example"),
            helper.make_node("Identity", ["x"], ["attention"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 20, 2])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("prediction", "attention")],
    )
    save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]),
        path,
    )


@pytest.mark.parametrize("name, kind, bad, fragment", MATRIX, ids=[c[0] for c in MATRIX])
def test_bad_input_is_refused_with_its_error_and_nothing_changes(
    pipeline_dir, tmp_path, monkeypatch, capsys, name, kind, bad, fragment
):
    from pipeline.core.errors import run_command
    from pipeline.serving import predict

    monkeypatch.chdir(pipeline_dir)
    params_file = pipeline_dir / "params.yaml"
    original_params = params_file.read_bytes()
    before = snapshot(pipeline_dir)
    try:
        if kind in ("config", "params text", "data"):
            if kind == "config":
                params = tiny_params()
                bad(params)
                params_file.write_text(yaml.safe_dump(params, sort_keys=False))
            elif kind == "params text":
                params_file.write_text(bad)
            else:
                file_name, content = bad
                _write_input(tmp_path / file_name, content)
                test_file = tmp_path / file_name.replace("_TRAIN", "_TEST")
                if content is not None and not test_file.exists():
                    _write_input(test_file, content)
                params_file.write_text(
                    yaml.safe_dump(
                        tiny_params(
                            "data=ts_file",
                            f"data.train_file={tmp_path / file_name}",
                            f"data.test_file={test_file}",
                        ),
                        sort_keys=False,
                    )
                )
            with pytest.raises(SystemExit) as exited:
                run_stage("prepare")
        else:
            model = pipeline_dir / "models/model.onnx"
            if kind == "model":
                model = tmp_path / "custom.onnx"
                _custom_operator_model(model)
                bad = ("x.npy", np.zeros((1, 20, 2), np.float32))
            request = tmp_path / bad[0]
            _write_input(request, bad[1])
            with pytest.raises(SystemExit) as exited:
                run_command(lambda: predict.main([str(model), str(request), "--out", str(tmp_path / "out.json")]))
            assert not (tmp_path / "out.json").exists(), "a refused request writes no output"
    finally:
        params_file.write_bytes(original_params)
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and fragment in error, error
    assert snapshot(pipeline_dir) == before, "nothing written, nothing lost"
