"""The typed schema of params.yaml, its loading and validation, and its composition from conf/.

Every stage calls `load_config()`; a bad file stops the stage with a `ConfigError` that names the
file, the key and what is allowed. `python -m pipeline.tools.params --write-params` rewrites
params.yaml as the composition of the conf/ defaults (the committed params.yaml must equal it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    Tag,
    ValidationError,
    model_validator,
)

from pipeline.core.contract import CONV_PADDINGS, HEAD_READOUTS, MIL_POOLINGS, OPSET_MAX, TEMPORAL_SCORES, VARIANTS
from pipeline.core.errors import ConfigError

PARAMS_FILE = Path("params.yaml")
CONF_DIR = Path("conf")
SEQUENCE_TASKS = ("planted_step", "planted_region", "find_max", "add_two_numbers")
VECTOR_TASKS = ("planted_feature",)
REGRESSION_TASKS = ("find_max", "add_two_numbers")
FILE_SOURCES = ("ucr", "ts_file")  # real series from files: data.source selects, data.name names
INNER_FOLDS = 3  # data.inner_fold: the stratified folds of a training file for choosing settings


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Splits(_Strict):
    n_samples: int = Field(gt=0)
    val_fraction: float = Field(gt=0, lt=1)
    test_fraction: float = Field(gt=0, lt=1)

    @model_validator(mode="after")
    def _splits_fit(self):
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(
                f"val_fraction + test_fraction must be < 1 (got {self.val_fraction} + {self.test_fraction})"
            )
        for split, fraction in (("val", self.val_fraction), ("test", self.test_fraction)):
            if int(self.n_samples * fraction) < 1:
                raise ValueError(f"the {split} split of {self.n_samples} samples is empty")
        return self


class PlantedStepData(_Splits):
    """Sequences [time_steps, n_features] of noise; step `planted_step` equals the target."""

    name: Literal["planted_step"]
    time_steps: int = Field(ge=2)
    n_features: int = Field(ge=1)
    planted_step: int = Field(ge=0)

    @model_validator(mode="after")
    def _step_in_range(self):
        if self.planted_step >= self.time_steps:
            raise ValueError(f"planted_step must be < time_steps={self.time_steps} (got {self.planted_step})")
        return self


class PlantedRegionData(_Splits):
    """Sequences [time_steps, n_features] of standard normal noise with one informative box per
    sample (after Ismail et al. 2020): `region_length` consecutive steps from a random start,
    shifted by +amplitude (target 1) or -amplitude (target 0). The box's steps are the true
    positions."""

    name: Literal["planted_region"]
    time_steps: int = Field(ge=2)
    n_features: int = Field(ge=1)
    region_length: int = Field(ge=1)
    amplitude: float = Field(gt=0)

    @model_validator(mode="after")
    def _region_fits(self):
        if self.region_length > self.time_steps:
            raise ValueError(f"region_length must be <= time_steps={self.time_steps} (got {self.region_length})")
        return self


class PlantedFeatureData(_Splits):
    """Vectors [n_features] of noise; feature `planted_index` equals the target."""

    name: Literal["planted_feature"]
    n_features: int = Field(ge=2)
    planted_index: int = Field(ge=0)

    @model_validator(mode="after")
    def _index_in_range(self):
        if self.planted_index >= self.n_features:
            raise ValueError(f"planted_index must be < n_features={self.n_features} (got {self.planted_index})")
        return self


class _VariableLength(_Splits):
    time_steps: int
    min_length: int

    @model_validator(mode="after")
    def _length_in_range(self):
        if self.min_length > self.time_steps:
            raise ValueError(f"min_length must be <= time_steps={self.time_steps} (got {self.min_length})")
        return self


class FindMaxData(_VariableLength):
    """Sequences [time_steps, 1] drawn from Beta(1/time_steps, 1); the target is their maximum.
    With min_length < time_steps, lengths vary and the sequences are padded and masked."""

    name: Literal["find_max"]
    time_steps: int = Field(ge=2)
    min_length: int = Field(ge=2)


class AddTwoNumbersData(_VariableLength):
    """Sequences [time_steps, 1] uniform on (0, 1) with two delimiters (0); the target is the
    mean of the two values right after the delimiters. Variable length as in find_max."""

    name: Literal["add_two_numbers"]
    time_steps: int = Field(ge=4)
    min_length: int = Field(ge=4)


class _FileData(_Strict):
    """Labelled series from a TRAIN/TEST file pair; the test file is used by evaluate only.

    A training file of at least `val_min_series` series gives a stratified `val_fraction` of
    itself to a validation split that decides when to stop; a smaller one trains on every series
    and training stops on the training loss (pipeline/data/files.py, `validation_index`).
    normalization "auto" is per_series for one channel and per_channel for several. With
    `inner_fold` k, fold k of INNER_FOLDS stratified folds of the training file is the test split
    and the TEST file is not read: settings are compared this way, on training data only."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    normalization: Literal["auto", "per_series", "per_channel", "none"]
    val_fraction: float = Field(gt=0, lt=1)
    val_min_series: int = Field(ge=2)
    inner_fold: int | None = Field(ge=0, lt=INNER_FOLDS)


class UcrData(_FileData):
    """A UCR/UEA classification data set bundled in sktime, e.g. GunPoint or JapaneseVowels."""

    source: Literal["ucr"]


class TsFileData(_FileData):
    """The user's own TRAIN/TEST pair (.ts or .csv) under data/, tracked by DVC."""

    source: Literal["ts_file"]
    train_file: str = Field(min_length=1)
    test_file: str = Field(min_length=1)


RECURRENT_VARIANTS = (
    "lstm_attention",
    "gru_attention",
    "bilstm_attention",
    "luong_dot",
    "luong_general",
    "scaled_dot",
    "bahdanau",
    "lstm_baseline",
)


class RecurrentAttentionModel(_Strict):
    """A recurrent encoder whose states are pooled by attention (conf/model/<name>.yaml)."""

    name: Literal[RECURRENT_VARIANTS]
    cell: Literal["lstm", "gru"]
    bidirectional: StrictBool
    units: int = Field(gt=0)
    score: Literal[tuple(s for s in TEMPORAL_SCORES if s != "mean")]
    query: Literal["last", "learned"]
    recurrent_l2: float = Field(ge=0)
    position_bias: StrictBool
    # what the attention weighs: the recurrent states (the classic recipe), or a projection of
    # each step's own inputs, so that the prediction holds only what the attended steps hold
    values: Literal["states", "inputs"] = "states"

    @model_validator(mode="after")
    def _values_need_attention(self):
        if self.values == "inputs" and self.score == "last_state":
            raise ValueError("values=inputs needs an attention score: last_state weighs no steps")
        return self


class InputAttentionModel(_Strict):
    """Attention over time on the raw inputs, before the recurrent layer, whose last state
    predicts: one attention vector per feature, or one shared by all features."""

    name: Literal["attention_before_lstm"]
    cell: Literal["lstm", "gru"]
    units: int = Field(gt=0)
    shared: StrictBool


class MultiHeadPoolingModel(_Strict):
    """Multi-head attention pooling of the recurrent states with a learned query."""

    name: Literal["multihead_pooling"]
    cell: Literal["lstm", "gru"]
    bidirectional: StrictBool
    units: int = Field(gt=0)
    heads: int = Field(gt=0)
    key_dim: int = Field(gt=0)
    readout: Literal[HEAD_READOUTS]


class ConvAttentionModel(_Strict):
    """Conv1D-BatchNorm-ReLU blocks (the fully convolutional network of time-series
    classification) whose states are pooled by attention instead of a global average;
    `conv_gap` is the same encoder with the global average (score "mean"), its ablation."""

    name: Literal["conv_attention", "conv_gap"]
    filters: list[Annotated[int, Field(gt=0)]] = Field(min_length=1)
    kernel_sizes: list[Annotated[int, Field(gt=0)]] = Field(min_length=1)
    score: Literal[("gated", "class", *MIL_POOLINGS, *(s for s in TEMPORAL_SCORES if s != "last_state"))]
    query: Literal["last", "learned"]
    position_bias: StrictBool
    gate_floor: float = Field(default=0.0, ge=0, lt=1)
    state_dropout: float = Field(default=0.0, ge=0, lt=1)
    positional_encoding: StrictBool = False
    padding: Literal[CONV_PADDINGS] = "zero"

    @model_validator(mode="after")
    def _gap_is_the_mean(self):
        if (self.name == "conv_gap") != (self.score == "mean"):
            raise ValueError(
                f"score 'mean' (global average pooling) is model conv_gap and only it "
                f"(got name {self.name!r} with score {self.score!r})"
            )
        if self.score in ("gated", "class", *MIL_POOLINGS) and self.position_bias:
            raise ValueError(f"position_bias needs a softmax-scored attention, not score {self.score!r}")
        if self.positional_encoding and self.score == "mean":
            raise ValueError("positional_encoding needs an attention pooling: the mean of the positions is constant")
        if self.gate_floor and self.score != "gated":
            raise ValueError(f"gate_floor is a floor of the gates of score 'gated', not of score {self.score!r}")
        return self

    @model_validator(mode="after")
    def _one_kernel_per_block(self):
        if len(self.filters) != len(self.kernel_sizes):
            raise ValueError(
                f"filters and kernel_sizes need one entry per block, got {len(self.filters)} "
                f"and {len(self.kernel_sizes)}"
            )
        return self


class MiniRocketModel(_Strict):
    """MiniRocket (random dilated convolutions, PPV features, a ridge classifier): the peer of
    time-series classification for accuracy per second; fitted, not trained by gradient descent."""

    name: Literal["minirocket"]
    num_kernels: int = Field(ge=84)
    max_dilations_per_kernel: int = Field(ge=1)
    # The ONNX export gate of this model, in place of export.parity_tolerance: a feature counts the
    # steps where a convolution exceeds a threshold, so an output within rounding of a threshold
    # moves a feature by one step and the probabilities by up to about 1e-3.
    parity_tolerance: float = Field(gt=0)


SEQUENCE_MODELS = (  # trained by gradient descent on sequences (minirocket: series from files only)
    *RECURRENT_VARIANTS,
    "attention_before_lstm",
    "multihead_pooling",
    "conv_attention",
    "conv_gap",
)


class FeatureAttentionModel(_Strict):
    name: Literal["feature_attention"]
    hidden_units: int = Field(gt=0)
    attention_l2: float = Field(ge=0)


class TrainConfig(_Strict):
    """Keras fit settings. The monitored loss is the validation loss, or the training loss where
    the data has no validation split. With `early_stopping_patience` > 0, training stops after
    that many epochs without the monitored loss falling `min_delta` below its best; the weights
    of its best epoch are kept. The learning rate follows `lr_schedule`: "plateau" halves it after
    `lr_decay_patience` (> 0; 0: a constant rate) epochs without a lower monitored loss, down to
    `min_learning_rate`; "cosine" lowers it along half a cosine from `learning_rate` at the first
    epoch to `min_learning_rate` at the last the run may train (`epochs`, or fewer under
    `max_series_steps`), so a run that trains fewer epochs still ends at the low rate. A batch is
    at most a tenth of the training series (at least 2). With
    `max_series_steps`, training also ends once that many series x time steps have passed
    through the model (an epoch over n series of T steps counts n * T): a larger or longer
    training set trains fewer epochs, in about the same time. With `ema_momentum`, the weights
    kept are an exponential moving average of the weights over the training steps (the Keras
    optimizer's `use_ema`: each step the average moves 1 - ema_momentum of the way to the new
    weights) in place of the best epoch's; BatchNorm keeps the running statistics of the last
    step."""

    epochs: int = Field(gt=0)
    max_series_steps: int | None = Field(default=None, gt=0)
    batch_size: int = Field(gt=0)
    learning_rate: float = Field(gt=0)
    min_learning_rate: float = Field(gt=0)
    optimizer: Literal["adam", "rmsprop", "sgd"]
    early_stopping_patience: int = Field(ge=0)
    # the least fall of the monitored loss that early stopping counts as progress
    min_delta: float = Field(default=0.0, ge=0)
    lr_decay_patience: int = Field(ge=0)
    lr_schedule: Literal["plateau", "cosine"] = "plateau"
    ema_momentum: float | None = Field(default=None, gt=0, lt=1)  # null: keep the best epoch's weights
    # null: the series as they are | a fraction such as 0.9: each epoch each training series is a
    # random window of that fraction of its steps, stretched back to its length (window slicing)
    window_slice: float | None = Field(default=None, gt=0, lt=1)
    # epochs between backups of an unfinished training (.checkpoints/train): a killed training
    # redoes at most this many epochs, to the same result; each backup costs a save of the
    # weights and optimizer state
    backup_every: int = Field(default=1, ge=1)
    # default: one device; mirrored: synchronous data parallelism over this machine's GPUs (or,
    # without GPUs, over `cpu_replicas` logical CPU devices); multi_worker: over the machines that
    # the TF_CONFIG variable names (tf.distribute.MultiWorkerMirroredStrategy).
    strategy: Literal["default", "mirrored", "multi_worker"] = "default"
    cpu_replicas: int = Field(default=1, ge=1, le=64)

    @model_validator(mode="after")
    def _schedule_is_consistent(self):
        if self.min_learning_rate > self.learning_rate:
            raise ValueError(
                f"min_learning_rate must be <= learning_rate={self.learning_rate} (got {self.min_learning_rate})"
            )
        if self.lr_schedule == "cosine" and self.lr_decay_patience:
            raise ValueError(
                f"lr_decay_patience={self.lr_decay_patience} halves the rate on plateaus (lr_schedule=plateau); "
                "with lr_schedule=cosine set it to 0"
            )
        return self


class QuantizationConfig(_Strict):
    """Static int8 quantization (variant int8_qdq): activation ranges from `calibration_series`
    series of the training split, found by `calibration_method`; only `quantized_ops` (ONNX op
    types) are quantized, every other op stays float; activations as `activation_type`, weights
    signed int8 per channel; with `float_first_conv` the convolution that reads the input series
    stays float (the series itself is never rounded to 8 bits)."""

    calibration_series: int = Field(default=128, gt=0)
    calibration_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    activation_type: Literal["int8", "uint8"] = "uint8"
    float_first_conv: bool = True
    quantized_ops: list[str] = Field(default=["Conv", "Relu"], min_length=1)


class ExportConfig(_Strict):
    """ONNX export and the gates of its variants (pipeline/onnx/variants.py)."""

    opset: int = Field(ge=13, le=OPSET_MAX)
    parity_tolerance: float = Field(gt=0)
    parity_samples: int = Field(gt=0)
    variants: list[Literal[VARIANTS]] = Field(min_length=1)
    variant_tolerance: dict[Literal[tuple(v for v in VARIANTS if v != "fp32")], Annotated[float, Field(gt=0)]]
    attention_sum_tolerance: float = Field(gt=0)
    min_class_agreement: float = Field(ge=0, le=1)
    max_accuracy_drop: float = Field(default=0.005, ge=0, le=1)
    quantization: QuantizationConfig = QuantizationConfig()

    @model_validator(mode="after")
    def _variants_have_tolerances(self):
        if "fp32" not in self.variants:
            raise ValueError(f"variants must include fp32, the reference (got {self.variants})")
        if len(set(self.variants)) != len(self.variants):
            raise ValueError(f"variants repeat a name: {self.variants}")
        missing = [v for v in self.variants if v != "fp32" and v not in self.variant_tolerance]
        if missing:
            raise ValueError(f"variant_tolerance has no value for {missing}")
        return self


class EvaluateConfig(_Strict):
    """How evaluate measures the attention's faithfulness (pipeline/core/faithfulness.py)."""

    baseline: Literal["mean", "zero", "pad"] = "mean"
    fractions: list[Annotated[float, Field(gt=0, lt=1)]] = Field(default=[0.05, 0.1, 0.2, 0.5])
    random_draws: int = Field(default=5, ge=1)
    samples: int = Field(default=500, ge=1)
    occlusion_samples: int = Field(default=100, ge=1)
    occlusion_segments: int = Field(default=64, ge=2)


class MlflowConfig(_Strict):
    tracking_uri: str | None
    required: bool = True  # false: an unreachable server at the start means "record offline, sync later"
    experiment_name: str = Field(min_length=1)
    registered_model: str = Field(min_length=1)


def _data_tag(raw: Any) -> str | None:
    """The variant of a data section: its `source` (ucr, ts_file), else its synthetic task name."""
    if isinstance(raw, dict):
        return raw.get("source") or raw.get("name")
    return getattr(raw, "source", None) or getattr(raw, "name", None)


DataConfig = Annotated[
    Annotated[PlantedStepData, Tag("planted_step")]
    | Annotated[PlantedRegionData, Tag("planted_region")]
    | Annotated[PlantedFeatureData, Tag("planted_feature")]
    | Annotated[FindMaxData, Tag("find_max")]
    | Annotated[AddTwoNumbersData, Tag("add_two_numbers")]
    | Annotated[UcrData, Tag("ucr")]
    | Annotated[TsFileData, Tag("ts_file")],
    Discriminator(_data_tag),
]
ModelConfig = Annotated[
    RecurrentAttentionModel
    | InputAttentionModel
    | MultiHeadPoolingModel
    | ConvAttentionModel
    | MiniRocketModel
    | FeatureAttentionModel,
    Field(discriminator="name"),
]


class Config(_Strict):
    seed: int = Field(ge=0)
    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    export: ExportConfig
    mlflow: MlflowConfig
    evaluate: EvaluateConfig = EvaluateConfig()

    @model_validator(mode="after")
    def _model_fits_data(self):
        if self.model.name == "feature_attention" and self.data.name not in VECTOR_TASKS:
            raise ValueError(
                f"model feature_attention needs vector data {list(VECTOR_TASKS)}, got data.name={self.data.name!r}"
            )
        if self.model.name == "attention_before_lstm" and self.padded:
            raise ValueError(
                "model attention_before_lstm needs fixed-length data; "
                f"got data.min_length={self.data.min_length} < data.time_steps={self.data.time_steps}"
            )
        if self.evaluate.baseline == "pad" and not self.from_files and not self.padded:
            raise ValueError(
                "evaluate.baseline=pad deletes a position by padding it, which only a model of "
                f"variable-length data masks; data.name={self.data.name!r} is fixed-length (use mean or zero)"
            )
        if self.model.name == "minirocket" and not self.from_files:
            raise ValueError(
                f"model minirocket classifies series from files (data.source in {list(FILE_SOURCES)}), "
                f"got data.name={self.data.name!r}"
            )
        if self.model.name in SEQUENCE_MODELS and not self.sequence_data:
            raise ValueError(
                f"model {self.model.name} needs sequence data {list(SEQUENCE_TASKS)} or "
                f"data.source in {list(FILE_SOURCES)}, got data.name={self.data.name!r}"
            )
        return self

    @property
    def from_files(self) -> bool:
        """Real labelled series read from files (data.source ucr or ts_file)."""
        return isinstance(self.data, _FileData)

    @property
    def sequence_data(self) -> bool:
        return self.from_files or self.data.name in SEQUENCE_TASKS

    @property
    def task_type(self) -> str:
        """ "regression" (MAE, mean squared error), "binary" (accuracy, cross-entropy on one
        sigmoid) or "multiclass" (accuracy, cross-entropy on a softmax over the classes)."""
        if self.from_files:
            return "multiclass"
        return "regression" if self.data.name in REGRESSION_TASKS else "binary"

    @property
    def padded(self) -> bool:
        """Whether synthetic sequences vary in length (padded with PAD_VALUE and masked in the
        model). For data from files the files decide: see data/prepared/meta.json."""
        min_length = getattr(self.data, "min_length", None)
        return min_length is not None and min_length < self.data.time_steps

    def section(self, name: str) -> dict[str, Any]:
        """One top-level section as plain data, e.g. `section("train")`."""
        return getattr(self, name).model_dump()


def _error_key(raw: Any, loc: tuple) -> str:
    """The dotted key of a pydantic error, without the union tag pydantic inserts after
    `data` or `model` (loc ('data', 'planted_step', 'n_samples') -> 'data.n_samples')."""
    parts, node, tag_skipped = [], raw, False
    for part in loc:
        if isinstance(node, dict) and not tag_skipped and part in (node.get("source"), node.get("name")):
            tag_skipped = True
            continue
        parts.append(str(part))
        node = node.get(part) if isinstance(node, dict) else None
        tag_skipped = False
    return ".".join(parts) or "(top level)"


def _describe(error: dict, raw: Any) -> str:
    key = _error_key(raw, error["loc"])
    if error["type"] == "union_tag_invalid":
        allowed = error["ctx"]["expected_tags"]
        node = raw
        for part in error["loc"]:
            node = node.get(part) if isinstance(node, dict) else None
        tag_key = "source" if isinstance(node, dict) and node.get("source") else "name"
        return f"{key}.{tag_key}: unknown value {error['ctx']['tag']!r}; allowed: {allowed}"
    if error["type"] == "union_tag_not_found":
        return f"{key}.name: missing; it selects the variant"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] in ("missing", "extra_forbidden") or error["type"].startswith("value_error"):
        return f"{key}: {message}"
    return f"{key}: {message} (got {error['input']!r})"


def validate(raw: Any, source: str = str(PARAMS_FILE)) -> Config:
    """Validate parsed params against the schema; raise ConfigError naming every bad key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        problems = [_describe(e, raw) for e in err.errors()]
        listed = f" {problems[0]}" if len(problems) == 1 else "".join(f"\n  - {p}" for p in problems)
        raise ConfigError(f"{source}: invalid config:{listed}") from None


def load_config(path: str | Path = PARAMS_FILE) -> Config:
    """Read and validate params.yaml (or another file of the same schema)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found (run from the repository root)") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or err
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    return validate(raw, str(path))


def compose_defaults(conf_dir: Path = CONF_DIR, overrides: list[str] | None = None) -> dict:
    """The Hydra composition of conf/ (as `dvc exp run` writes it to params.yaml), resolved."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(str(conf_dir.resolve()), version_base=None):
        cfg = compose(config_name="config", overrides=overrides or [])
    return OmegaConf.to_container(cfg, resolve=True)


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}: config sections as MLflow params."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat
