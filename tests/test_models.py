"""Model factory and attention layer: output shapes, attention rows, serialization."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from pipeline.core.config import SEQUENCE_MODELS
from pipeline.core.contract import PAD_VALUE
from pipeline.core.stage import StageFailed
from pipeline.models import TaskSpec, build_model, load_model
from pipeline.models.layers import InputAttention, MultiHeadAttentionPooling, TemporalAttention
from tests.conftest import tiny_config

pytestmark = pytest.mark.numeric

CASES = [("lstm_attention", (20, 2), (6, 20, 2)), ("dense_attention", (32,), (6, 32))]


def _model(experiment: str, input_shape, *overrides: str, task: TaskSpec | None = None):
    keras.utils.set_random_seed(0)
    return build_model(tiny_config(f"experiment={experiment}", *overrides).model, task or TaskSpec(input_shape))


@pytest.mark.parametrize("experiment, input_shape, batch_shape", CASES)
def test_outputs_are_prediction_and_attention_distributions(experiment, input_shape, batch_shape):
    model = _model(experiment, input_shape)
    x = np.random.default_rng(0).standard_normal(batch_shape).astype("float32")
    out = model(x)
    assert {"prediction", "attention", "logit"} <= set(out) <= {"prediction", "attention", "logit", "contribution"}
    prediction, attention = np.asarray(out["prediction"]), np.asarray(out["attention"])
    assert prediction.shape == (6, 1) and ((prediction > 0) & (prediction < 1)).all()
    assert attention.shape == (6, batch_shape[1])
    assert (attention >= 0).all()
    np.testing.assert_allclose(attention.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("variant", SEQUENCE_MODELS)
def test_every_sequence_model_gives_attention_distributions_and_reloads(tmp_path, variant):
    model = _model("lstm_attention", (20, 2), f"model={variant}")
    x = np.random.default_rng(2).standard_normal((5, 20, 2)).astype("float32")
    out = model(x)
    attention = np.asarray(out["attention"])
    assert out["prediction"].shape == (5, 1) and attention.shape == (5, 20)
    assert (attention >= 0).all()
    np.testing.assert_allclose(attention.sum(axis=1), 1.0, atol=1e-5)
    model.save(tmp_path / "model.keras")
    reloaded = load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(reloaded(x)["attention"], attention, atol=1e-7)


def test_regression_head_is_linear():
    keras.utils.set_random_seed(0)
    model = build_model(tiny_config("data=find_max").model, TaskSpec((20, 1), "regression"))
    assert model.get_layer("prediction").task_type == "regression"
    out = model(np.random.default_rng(0).normal(size=(3, 20, 1)).astype("float32"))
    np.testing.assert_array_equal(out["prediction"], out["logit"])


def test_sequence_model_without_position_bias_runs_on_any_length():
    model = _model("lstm_attention", (20, 2), "model.position_bias=false")
    assert model.input.shape == (None, None, 2)
    for length in (3, 20, 41):
        out = model(np.zeros((2, length, 2), "float32"))
        assert out["attention"].shape == (2, length)


def test_position_bias_fixes_the_length_and_scores_each_step():
    model = _model("lstm_attention", (20, 2))
    assert model.input.shape == (None, 20, 2)
    attention_layer = model.get_layer("temporal_attention")
    assert attention_layer.position_scores.shape == (20,)
    assert model.get_layer("lstm").recurrent_regularizer is not None


@pytest.mark.parametrize("experiment, input_shape, batch_shape", CASES)
def test_save_and_reload_in_safe_mode(tmp_path, experiment, input_shape, batch_shape):
    model = _model(experiment, input_shape)
    path = tmp_path / "model.keras"
    model.save(path)
    reloaded = load_model(path)
    x = np.random.default_rng(1).standard_normal(batch_shape).astype("float32")
    for name in ("prediction", "attention"):
        np.testing.assert_allclose(model(x)[name], reloaded(x)[name], atol=1e-7)


def test_lambda_layers_are_refused(tmp_path):
    x = keras.Input((4,))
    model = keras.Model(x, keras.layers.Lambda(lambda t: t * 2)(x))
    path = tmp_path / "lambda.keras"
    model.save(path)
    with pytest.raises(StageFailed, match=r"lambda\.keras: refused to load: it holds Python code"):
        load_model(path)


def test_temporal_attention_validates_and_round_trips_its_config():
    with pytest.raises(ValueError, match="position_bias must be a bool, got 'yes'"):
        TemporalAttention(position_bias="yes")
    with pytest.raises(ValueError, match="score must be one of .* got 'cosine'"):
        TemporalAttention(score="cosine")
    with pytest.raises(ValueError, match="query must be one of .* got 'first'"):
        TemporalAttention(score="dot", query="first")
    with pytest.raises(ValueError, match="shared must be a bool"):
        InputAttention(shared=1)
    with pytest.raises(ValueError, match="heads must be a positive integer, got 0"):
        MultiHeadAttentionPooling(heads=0)
    with pytest.raises(ValueError, match="needs a fixed number of time steps"):
        TemporalAttention(position_bias=True).build((None, None, 4))
    layer = TemporalAttention(position_bias=False, name="attn")
    clone = TemporalAttention.from_config(
        TemporalAttention(score="additive", query="learned", name="attn").get_config()
    )
    assert (clone.score, clone.query, clone.position_bias, clone.name) == ("additive", "learned", False, "attn")
    with pytest.raises(ValueError, match=r"expects states \[batch, time, units\]"):
        layer(np.zeros((2, 3), "float32"))
    context, attention = layer(np.ones((2, 5, 3), "float32"))
    assert context.shape == (2, 3) and attention.shape == (2, 5)
    np.testing.assert_allclose(attention, 0.2, atol=1e-6)  # equal states, equal weights


def test_shared_input_attention_weights_every_feature_alike():
    layer = InputAttention(shared=True)
    x = np.random.default_rng(0).standard_normal((3, 6, 4)).astype("float32")
    weighted, attention = layer(x)
    np.testing.assert_allclose(np.asarray(weighted), x * np.asarray(attention)[:, :, None], atol=1e-6)
    np.testing.assert_allclose(np.asarray(attention).sum(axis=1), 1.0, atol=1e-5)


def _head_weights(layer: MultiHeadAttentionPooling, states: np.ndarray) -> np.ndarray:
    """[batch, heads, time]: each head's softmax weights."""
    query = np.zeros_like(states[:, :1, :]) + np.asarray(layer.query)
    _, scores = layer.attention(query, states, return_attention_scores=True)
    return np.asarray(scores)[:, :, 0, :]


def test_multihead_pooling_reads_out_the_norm_of_what_each_step_adds_to_the_context():
    states = np.random.default_rng(0).standard_normal((2, 7, 5)).astype("float32")
    layer = MultiHeadAttentionPooling(heads=3, key_dim=4)
    context, attention, step_values = (np.asarray(t) for t in layer(states))
    assert context.shape == (2, 5) and attention.shape == (2, 7)
    weights = _head_weights(layer, states)
    values = np.asarray(layer.attention.value_dense(states))  # [batch, time, heads, key_dim]
    kernel = np.asarray(layer.attention.output_dense.kernel)  # [heads, key_dim, units]
    added = np.einsum("bht,bthd,hdu->btu", weights, values, kernel)  # what each step adds
    np.testing.assert_allclose(step_values, added, atol=1e-5)
    np.testing.assert_allclose(added.sum(axis=1) + np.asarray(layer.attention.output_dense.bias), context, atol=1e-5)
    norms = np.linalg.norm(added, axis=-1)
    np.testing.assert_allclose(attention, norms / norms.sum(axis=1, keepdims=True), atol=1e-5)

    averaged = MultiHeadAttentionPooling(heads=3, key_dim=4, readout="heads_mean")
    averaged(states)
    averaged.set_weights(layer.get_weights())
    np.testing.assert_allclose(np.asarray(averaged(states)[1]), weights.mean(axis=1), atol=1e-6)
    assert not np.allclose(np.asarray(averaged(states)[1]), attention, atol=1e-3)
    with pytest.raises(ValueError, match="readout must be one of"):
        MultiHeadAttentionPooling(readout="max")


def test_a_head_that_adds_nothing_does_not_move_the_norm_readout():
    """A head whose value projection is zero may weigh any step: the context does not change,
    and neither does the attention read out by norm (the heads' mean would)."""
    states = np.random.default_rng(1).standard_normal((4, 9, 6)).astype("float32")
    layer = MultiHeadAttentionPooling(heads=2, key_dim=3)
    layer(states)
    value_kernel = np.asarray(layer.attention.value_dense.kernel).copy()  # [units, heads, key_dim]
    value_bias = np.asarray(layer.attention.value_dense.bias).copy()  # [heads, key_dim]
    value_kernel[:, 1], value_bias[1] = 0.0, 0.0
    layer.attention.value_dense.kernel.assign(value_kernel)
    layer.attention.value_dense.bias.assign(value_bias)
    context, attention, _ = (np.asarray(t) for t in layer(states))
    weights = _head_weights(layer, states)
    query_kernel = np.asarray(layer.attention.query_dense.kernel).copy()
    query_kernel[:, 1] *= -3.0  # head 1 now weighs other steps
    layer.attention.query_dense.kernel.assign(query_kernel)
    moved_context, moved_attention, _ = (np.asarray(t) for t in layer(states))
    assert np.abs(_head_weights(layer, states)[:, 1] - weights[:, 1]).max() > 0.05
    np.testing.assert_allclose(moved_context, context, atol=1e-5)
    np.testing.assert_allclose(moved_attention, attention, atol=1e-5)


@pytest.mark.parametrize("variant", SEQUENCE_MODELS)
def test_every_sequence_model_takes_raw_multiclass_series(variant):
    """Real-data task: softmax over 4 classes, z-normalisation inside, padding masked."""
    padded = variant != "attention_before_lstm"  # it takes fixed-length series only
    task = TaskSpec((12, 3), "multiclass", padded=padded, n_classes=4, normalization={"mode": "per_series"})
    model = _model("lstm_attention", None, f"model={variant}", task=task)
    x = np.random.default_rng(4).normal(50.0, 10.0, size=(6, 12, 3)).astype("float32")
    if padded:
        x[:, 9:] = PAD_VALUE
    out = model(x)
    prediction, attention = np.asarray(out["prediction"]), np.asarray(out["attention"])
    assert prediction.shape == (6, 4)
    np.testing.assert_allclose(prediction.sum(axis=1), 1.0, atol=1e-5)
    if padded:
        assert (attention[:, 9:] == 0).all()


# conv_gap pools uniformly already; lstm_baseline reads the last step
ABLATED = [m for m in SEQUENCE_MODELS if m not in ("conv_gap", "lstm_baseline")]


@pytest.mark.parametrize("variant", ABLATED)
def test_the_uniform_attention_copy_weighs_every_valid_step_alike(variant):
    from pipeline.models import uniform_attention_copy

    padded = variant != "attention_before_lstm"  # it needs fixed-length data
    overrides = [f"model={variant}", *(["data=find_max", "data.min_length=5"] if padded else [])]
    model = _model("lstm_attention", (20, 2), *overrides, task=TaskSpec((20, 2), padded=padded))
    rng = np.random.default_rng(3)
    for weight in model.trainable_weights:  # trained-looking weights: the attention is not uniform
        weight.assign(weight.numpy() + rng.normal(0, 0.5, weight.shape).astype("float32"))
    x = rng.standard_normal((4, 20, 2)).astype("float32")
    valid = 12 if padded else 20
    x[:, valid:] = PAD_VALUE
    before = np.asarray(model(x)["attention"])
    copy = uniform_attention_copy(model)
    attention = np.asarray(copy(x)["attention"])
    assert not np.allclose(before[:, :valid], 1 / valid, atol=1e-3), "the trained attention is uniform already"
    np.testing.assert_allclose(attention[:, :valid], 1 / valid, atol=1e-6)
    np.testing.assert_array_equal(attention[:, valid:], 0.0)
    np.testing.assert_array_equal(np.asarray(model(x)["attention"]), before)  # the model is untouched


def test_the_uniform_copy_of_feature_attention_weighs_every_feature_alike():
    from pipeline.models import uniform_attention_copy

    model = _model("dense_attention", (32,))
    x = np.random.default_rng(0).standard_normal((3, 32)).astype("float32")
    np.testing.assert_allclose(uniform_attention_copy(model)(x)["attention"], 1 / 32, atol=1e-7)


@pytest.mark.parametrize("attention_l2", [0.0, 0.01])
def test_feature_attention_penalises_its_attention_kernel_as_configured(attention_l2):
    model = _model("dense_attention", (32,), f"model.attention_l2={attention_l2}")
    kernel = np.asarray(model.get_layer("attention").kernel)
    penalty = sum(float(loss) for loss in model.losses)
    np.testing.assert_allclose(penalty, attention_l2 * np.square(kernel).sum(), rtol=1e-5)


def test_attention_over_inputs_sums_each_step_s_own_values():
    """values=inputs: the head sees Σ_t a_t Dense(x_t), so a step with no weight cannot reach it,
    however much the LSTM carries it forward."""
    model = _model("lstm_attention", (20, 2), "model.values=inputs", "model.position_bias=false")
    attended = model.get_layer("attended_inputs")
    values_layer = model.get_layer("values")
    x = np.random.default_rng(3).standard_normal((4, 20, 2)).astype("float32")
    attention = np.asarray(model(x)["attention"])
    values = np.asarray(values_layer(x))  # no standardization in this model
    np.testing.assert_allclose(attended(values, attention), np.einsum("bt,btu->bu", attention, values), atol=1e-6)
    one_hot = np.eye(20, dtype="float32")[[3, 3, 7, 0]]
    changed = x.copy()
    changed[:, 10:] += 5.0  # steps that carry no weight
    np.testing.assert_allclose(attended(values_layer(changed), one_hot), attended(values, one_hot), atol=1e-6)


def test_attention_over_inputs_needs_an_attention_score():
    with pytest.raises(Exception, match="values=inputs needs an attention score"):
        tiny_config("model=lstm_baseline", "+model.values=inputs")


def test_replicate_padding_repeats_the_ends_and_ignores_the_padding():
    """ConvEncoder(padding="replicate") convolves as numpy over the series with its first and last
    steps repeated ("edge" padding, the longer half after for an even kernel), and a padded
    series gives the same states on its valid steps as the series alone (its last valid step is
    repeated, not the padding)."""
    from pipeline.models.layers import ConvEncoder

    keras.utils.set_random_seed(5)
    encoder = ConvEncoder([3], [4], norm_folded=True, padding="replicate")
    x = np.random.default_rng(0).standard_normal((2, 9, 2)).astype("float32")
    states = np.asarray(encoder(x))
    kernel, bias = encoder.blocks[0][0].get_weights()  # [4, 2, 3], [3]
    padded = np.pad(x, ((0, 0), (1, 2), (0, 0)), mode="edge")
    expected = np.stack([np.einsum("bkc,kcf->bf", padded[:, t : t + 4], kernel) for t in range(9)], axis=1) + bias
    np.testing.assert_allclose(states, np.maximum(expected, 0), atol=1e-5)
    zero = np.asarray(ConvEncoder([3], [4], norm_folded=True, padding="zero")(x, training=False))
    assert not np.allclose(zero, states)  # the options differ where the kernel reaches past the ends

    deeper = ConvEncoder([4, 3], [5, 3], norm_folded=True, padding="replicate")
    longer = np.concatenate([x[:1], np.full((1, 6, 2), 7.0, "float32")], axis=1)  # 6 steps of padding
    mask = np.arange(15)[None, :] < 9
    np.testing.assert_allclose(np.asarray(deeper(longer, mask=mask))[0, :9], np.asarray(deeper(x[:1]))[0], atol=1e-5)
    with pytest.raises(ValueError, match="padding must be one of"):
        ConvEncoder([3], [4], padding="reflect")
