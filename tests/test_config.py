"""params.yaml stays the composition of conf/, and bad configs stop with a message naming the key."""

from __future__ import annotations

import pytest
import yaml

from pipeline.core.config import ConfigError, compose_defaults, load_config, validate
from tests.conftest import REPO_ROOT, tiny_params


def test_params_yaml_equals_composed_defaults():
    committed = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    assert committed == compose_defaults(REPO_ROOT / "conf"), (
        "params.yaml drifted from conf/: run `make params` and commit the result"
    )


def test_committed_params_are_valid():
    cfg = load_config(REPO_ROOT / "params.yaml")
    assert cfg.model.name == "lstm_attention" and cfg.data.name == "planted_step"


@pytest.mark.parametrize(
    "experiment, data, model",
    [("dense_attention", "planted_feature", "feature_attention"), ("lstm_attention", "planted_step", "lstm_attention")],
)
def test_experiment_presets_pair_data_with_model(experiment, data, model):
    composed = compose_defaults(REPO_ROOT / "conf", [f"experiment={experiment}", "train.epochs=3"])
    cfg = validate(composed)
    assert (cfg.data.name, cfg.model.name, cfg.train.epochs) == (data, model, 3)
    assert cfg.mlflow.experiment_name == f"attention-{data}"


def _mutated(path: str, value):
    raw = tiny_params()
    *parents, leaf = path.split(".")
    node = raw
    for key in parents:
        node = node[key]
    if value is KeyError:
        del node[leaf]
    else:
        node[leaf] = value
    return raw


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("model.name", "transformer", ["model.name", "transformer", "lstm_attention", "feature_attention"]),
        ("data.name", "mnist", ["data.name", "mnist", "planted_step", "planted_feature"]),
        ("train.learning_rate", -0.1, ["train.learning_rate", "greater than 0", "-0.1"]),
        ("train.epochs", "ten", ["train.epochs", "valid integer", "ten"]),
        ("train.optimizer", "adagrad", ["train.optimizer", "'adam'", "adagrad"]),
        ("data.n_samples", KeyError, ["data.n_samples", "Field required"]),
        ("train.momentum", 0.9, ["train.momentum", "Extra inputs are not permitted"]),
        ("export.opset", 19, ["export.opset", "less than or equal to 18"]),
        ("data.planted_step", 25, ["data", "planted_step must be < time_steps=20"]),
    ],
)
def test_bad_values_name_the_key_and_what_is_allowed(key, value, expected):
    with pytest.raises(ConfigError) as caught:
        validate(_mutated(key, value), "params.yaml")
    message = str(caught.value)
    assert message.startswith("params.yaml: invalid config")
    for fragment in expected:
        assert fragment in message, f"{fragment!r} missing from: {message}"


def test_missing_section_is_named():
    raw = tiny_params()
    del raw["export"]
    with pytest.raises(ConfigError, match=r"export: Field required"):
        validate(raw)


def test_variable_length_limits():
    with pytest.raises(ConfigError, match="min_length must be <= time_steps=20"):
        validate(tiny_params("data=find_max", "data.min_length=25"))
    with pytest.raises(ConfigError, match="attention_before_lstm needs fixed-length data"):
        validate(tiny_params("data=find_max", "data.min_length=5", "model=attention_before_lstm"))
    assert validate(tiny_params("data=add_two_numbers", "data.min_length=8")).padded


def test_model_must_fit_the_data():
    with pytest.raises(ConfigError, match="feature_attention needs vector data"):
        validate(tiny_params("model=feature_attention"))


def test_unreadable_files_are_reported(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "params.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("seed: [1, 2\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML.*line"):
        load_config(broken)
    broken.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(broken)


@pytest.mark.parametrize(
    "overrides, fragments",
    [
        (("data=ucr", "data.normalization=zscore"), ["data.normalization", "'per_series'", "zscore"]),
        (("data=ucr", "data.val_fraction=1.5"), ["data.val_fraction", "less than 1"]),
        (("data=ucr", "data.name=../etc"), ["data.name", "should match pattern"]),
        (("data=ts_file", "data.source=s3"), ["data.source: unknown value 's3'", "'ucr'", "'ts_file'"]),
        (
            ("data=ucr", "model=conv_attention", "model.kernel_sizes=[8,5]"),
            ["model", "filters and kernel_sizes need one entry per block, got 3 and 2"],
        ),
        (("data=ucr", "model=conv_attention", "model.score=last_state"), ["model.score", "last_state"]),
        (("data=ucr", "model=feature_attention"), ["feature_attention needs vector data"]),
        (("data=ucr", "model=conv_gap", "model.score=additive"), ["model", "score 'mean'", "conv_gap"]),
        (("data=ucr", "model=conv_attention", "model.score=mean"), ["model", "score 'mean'", "conv_attention"]),
        (("model=minirocket",), ["minirocket classifies series from files"]),
        (("data=ucr", "model=minirocket", "model.num_kernels=10"), ["model.num_kernels", "84"]),
        (("data=ucr", "train.min_learning_rate=0.1"), ["train", "min_learning_rate must be <= learning_rate"]),
        (("data=ucr", "data.normalization=zscore"), ["data.normalization", "auto"]),
        (("data=ucr", "data.inner_fold=3"), ["data.inner_fold", "less than 3"]),
    ],
)
def test_bad_real_data_configs_name_the_key(overrides, fragments):
    with pytest.raises(ConfigError) as caught:
        validate(tiny_params(*overrides))
    for fragment in fragments:
        assert fragment in str(caught.value), f"{fragment!r} missing from: {caught.value}"


@pytest.mark.parametrize("model", ["conv_attention", "conv_gap", "minirocket"])
def test_the_series_recipe_is_the_same_for_every_data_set(model):
    """One preset names the data set and nothing else: two data sets compose to configs that
    differ in data.name alone, and the preset sets no data, model or train value of its own."""
    configs = {
        name: validate(compose_defaults(REPO_ROOT / "conf", ["experiment=ucr", f"data.name={name}", f"model={model}"]))
        for name in ("GunPoint", "JapaneseVowels")
    }
    gun_point, vowels = (c.model_dump() for c in configs.values())
    assert {k for k in gun_point if gun_point[k] != vowels[k]} == {"data", "mlflow"}
    assert {k for k in gun_point["data"] if gun_point["data"][k] != vowels["data"][k]} == {"name"}
    cfg = configs["JapaneseVowels"]
    assert (cfg.data.source, cfg.model.name, cfg.task_type) == ("ucr", model, "multiclass")
    assert cfg.mlflow.experiment_name == "attention-JapaneseVowels"
    preset = yaml.safe_load((REPO_ROOT / "conf/experiment/ucr.yaml").read_text())
    assert set(preset) == {"defaults"}, "the preset holds no value of its own"
    assert not list((REPO_ROOT / "conf/experiment").glob("ucr_*.yaml")), "no per-data-set preset"
