"""The recipe for time-series classification and its peers: the small-set training protocol, the
global-average-pooling ablation, and MiniRocket as a Keras model that exports to ONNX."""

from __future__ import annotations

import json
import re

import keras
import numpy as np
import pytest

from pipeline.core import stage
from pipeline.core.config import ConfigError
from pipeline.data.files import bundled_ucr_files, read_series, to_arrays
from pipeline.experiments.study import SELECTION_BASE, unless_set
from pipeline.models import TaskSpec, build_model
from pipeline.models.layers import MiniRocketFeatures
from pipeline.models.minirocket import transform_weights
from pipeline.serving.inference import OnnxModel
from pipeline.training import EpochBatches, batch_size_for, window_slices
from tests.conftest import run_stage, stages_run, tiny_config


@pytest.mark.parametrize(
    "requested, n_series, used",
    [
        (16, 36, 3),
        (16, 50, 5),
        (16, 400, 16),
        (64, 7000, 64),
        (16, 12, 2),
        (16, 3, 2),
    ],
)
def test_a_batch_is_at_most_a_tenth_of_the_training_set_and_at_least_two(requested, n_series, used):
    assert batch_size_for(requested, n_series) == used


@pytest.mark.parametrize("n_series, batch_size", [(21, 10), (7, 2), (13, 4), (20, 10), (3, 2)])
def test_no_batch_of_one_reaches_batch_normalization(n_series, batch_size):
    batches = EpochBatches(
        np.zeros((n_series, 4, 1), "float32"), np.zeros((n_series, 1), "float32"), batch_size, seed=0
    )
    sizes = [len(x) for x, _ in batches._batches()]
    assert sum(sizes) == n_series and min(sizes) >= 2 and max(sizes) <= batch_size + 1
    assert len(sizes) == len(batches.bounds())


def test_window_slicing_stretches_a_window_of_each_series_back_to_its_length():
    """A ramp 0..T-1 sliced to a window of w steps starting at s comes back as T evenly spaced
    values from s to s + w - 1; padding stays, and each series draws its own start."""
    x = np.tile(np.arange(20, dtype="float32")[None, :, None], (40, 1, 2))
    x[:20, 12:] = -1.0  # the first 20 series: 12 steps, then padding
    sliced = window_slices(x, 0.5, np.random.default_rng(0), padded=True)
    assert sliced.shape == x.shape and sliced.dtype == x.dtype
    for row, length in zip(sliced, [12] * 20 + [20] * 20, strict=True):
        start, window = row[0, 0], round(0.5 * length)
        np.testing.assert_allclose(row[:length, 0], np.linspace(start, start + window - 1, length), rtol=1e-6)
        np.testing.assert_array_equal(row[:, 0], row[:, 1])  # the channels of a step move together
        assert 0 <= start <= length - window and (row[length:] == -1.0).all()
    assert len(np.unique(sliced[20:, 0, 0])) > 3, "the starts differ between series"


def test_window_slices_are_drawn_from_the_seed_and_the_epoch():
    """The same (seed, epoch) gives the same slices, so a resumed run trains on what an
    uninterrupted one did; another epoch slices anew; the order of the series does not change."""
    x = np.random.default_rng(2).normal(size=(30, 16, 1)).astype("float32")
    y = np.arange(30, dtype="float32")[:, None]

    def epoch_batches(epoch, window_slice=0.75, seed=4):
        batches = EpochBatches(x, y, batch_size=8, seed=seed, window_slice=window_slice)
        batches.on_epoch_begin(epoch)
        return list(batches._batches())

    first, again, later = epoch_batches(3), epoch_batches(3), epoch_batches(4)
    for (x1, y1), (x2, y2) in zip(first, again, strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(first[0][0], later[0][0])
    for (sliced, y_sliced), (whole, y_whole) in zip(first, epoch_batches(3, window_slice=None), strict=True):
        np.testing.assert_array_equal(y_sliced, y_whole)
        np.testing.assert_array_equal(whole, x[y_whole[:, 0].astype(int)])
        assert not np.allclose(sliced, whole)


@pytest.mark.parametrize("window_slice", [None, 0.75])
@pytest.mark.integration
def test_fit_trains_each_epoch_on_the_batches_drawn_for_it(window_slice):
    """Keras's fit over EpochBatches.dataset() sees, in epoch e, the batches of (seed, e) in their
    order (a lone last sample joined to the batch before it), also when it starts at a later
    epoch as a resumed run does."""

    current_epoch = {}  # set by Keras's own epoch count, apart from EpochBatches

    class Recorder(keras.Model):
        def train_step(self, data):
            seen.append((current_epoch["e"], *(np.asarray(part) for part in data)))
            return {"batches": float(len(seen))}

    x = np.random.default_rng(1).normal(size=(17, 6, 1)).astype("float32")
    y = np.arange(17, dtype="float32")[:, None]
    inputs = keras.Input((6, 1))
    for initial_epoch in (0, 2):
        seen = []
        recorder = Recorder(inputs, keras.layers.Flatten()(inputs))
        recorder.compile(run_eagerly=True)
        batches = EpochBatches(x, y, batch_size=4, seed=5, window_slice=window_slice)
        epoch_of = keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: current_epoch.update(e=epoch))
        recorder.fit(batches.dataset(), epochs=4, initial_epoch=initial_epoch, callbacks=[batches, epoch_of], verbose=0)
        assert [epoch for epoch, _, _ in seen] == [e for e in range(initial_epoch, 4) for _ in range(4)]
        for epoch in range(initial_epoch, 4):
            batches.on_epoch_begin(epoch)
            drawn = [(e, bx, by) for e, bx, by in seen if e == epoch]
            for (_, got_x, got_y), (want_x, want_y) in zip(drawn, batches._batches(), strict=True):
                np.testing.assert_array_equal(got_x, want_x)
                np.testing.assert_array_equal(got_y, want_y)


def test_window_slicing_is_refused_for_data_without_a_time_axis(stage_dir, capsys):
    stage_dir.write_params("data=planted_feature", "model=feature_attention", "train.window_slice=0.9")
    run_stage("prepare")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        run_stage("train")
    assert exited.value.code == 2
    assert re.search(r"error: .*train.window_slice=0.9: .*no time axis", capsys.readouterr().err)
    assert not (stage_dir / stage.KERAS_MODEL).exists()
    with pytest.raises(ConfigError, match="window_slice"):
        tiny_config("experiment=ucr", "train.window_slice=1.0")


@pytest.mark.parametrize("workers, replicas_per_worker", [(2, 1), (2, 2), (3, 1)])
def test_the_replicas_of_all_workers_share_each_batch_exactly_once(workers, replicas_per_worker):
    """Under several workers each input pipeline yields its replicas' parts of every batch; the
    parts of one step, over all pipelines, are the batch, each part with the batch's size."""
    import tensorflow as tf

    x = np.arange(23 * 2, dtype="float32").reshape(23, 2, 1)
    batches = EpochBatches(x, np.arange(23, dtype="float32"), batch_size=8, seed=3)
    replicas = workers * replicas_per_worker
    pipelines = [
        list(batches.replica_dataset(tf.distribute.InputContext(workers, worker, replicas)).as_numpy_iterator())
        for worker in range(workers)
    ]
    whole = list(batches._batches())
    assert all(len(parts) == len(whole) * replicas_per_worker for parts in pipelines)
    for step, (batch_x, batch_y) in enumerate(whole):
        parts = [
            part for parts in pipelines for part in parts[step * replicas_per_worker : (step + 1) * replicas_per_worker]
        ]
        np.testing.assert_array_equal(np.concatenate([y for _, y, _ in parts]), batch_y)
        np.testing.assert_array_equal(np.concatenate([x for x, _, _ in parts]), batch_x)
        assert {int(size) for _, _, size in parts} == {len(batch_y)}
        assert max(len(y) for _, y, _ in parts) - min(len(y) for _, y, _ in parts) <= 1


@pytest.mark.numeric
def test_conv_gap_is_the_global_average_of_the_same_encoder():
    """conv_gap weights every valid step alike: its attention is uniform on the valid steps and 0
    on padding, and the prediction is the head on the mean of the encoder's states."""
    cfg = tiny_config("experiment=ucr", "model=conv_gap", "model.filters=[8,8]", "model.kernel_sizes=[3,3]")
    task = TaskSpec((10, 2), "multiclass", padded=True, n_classes=3, normalization={"mode": "none"})
    keras.utils.set_random_seed(0)
    model = build_model(cfg.model, task)
    x = np.random.default_rng(0).normal(size=(4, 10, 2)).astype("float32")
    x[:2, 6:] = -1.0  # the padding value: the first two series have 6 steps
    attention = np.asarray(model(x)["attention"])
    np.testing.assert_allclose(attention[:2, :6], 1 / 6, rtol=1e-6)
    np.testing.assert_allclose(attention[2:], 1 / 10, rtol=1e-6)
    assert (attention[:2, 6:] == 0).all()
    states = keras.Model(model.input, model.get_layer("conv_encoder").output)(x[2:])
    head = model.get_layer("prediction")
    np.testing.assert_allclose(model(x[2:])["prediction"], head(np.asarray(states).mean(axis=1))[0], atol=1e-6)


@pytest.mark.parametrize("name", ["GunPoint", "BasicMotions"])
@pytest.mark.numeric
def test_minirocket_features_in_keras_equal_sktime_s_transform(name):
    """The Keras transform (dilated Conv1D with fixed weights, then PPV) gives sktime's features:
    equal but for a step where a convolution output ties with a bias (rounding), which moves a
    feature by one counted step (of T, or of the T - 8d inner steps of an inner kernel)."""
    from sktime.transformations.rocket import MiniRocketMultivariate

    series = read_series(bundled_ucr_files(name)[0])
    x, _ = to_arrays(series, sorted(set(series.labels)), int(series.lengths.max()), padded=False)
    rocket = MiniRocketMultivariate(num_kernels=840, random_state=3).fit(x.transpose(0, 2, 1))
    expected = rocket.transform(x.transpose(0, 2, 1)).to_numpy()
    kernels, biases = transform_weights(rocket.parameters, x.shape[2])
    layer = MiniRocketFeatures([int(d) for d in rocket.parameters[2]], [b.shape[1] for b in biases], x.shape[2])
    layer.build(x.shape)
    layer.set_weights([*kernels, *biases])
    difference = np.abs(np.asarray(layer(x)) - expected)
    assert difference.shape == (len(x), 840)
    fewest_steps = x.shape[1] - 8 * int(max(rocket.parameters[2]))
    assert difference.max() <= 1 / fewest_steps + 1e-6 and (difference > 1e-6).mean() < 1e-3


def _switched_on_and_off(n_series: int, length: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Series of a device switched on and off: flat stretches at a few levels, some noise while
    on (like ACSF1); class 1 is on for longer. x [n, length, 1], y [n, 1]."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=(n_series, 1))
    x = np.zeros((n_series, length, 1), "float32")
    for series, label in zip(x, y[:, 0]):
        start = rng.integers(0, length // 2)
        on = int(length * (0.2 + 0.3 * label))
        series[start : start + on, 0] = rng.choice([3.0, 7.0]) + 0.3 * rng.normal(size=len(series[start : start + on]))
    return x, y


@pytest.mark.integration
@pytest.mark.numeric
def test_minirocket_onnx_features_equal_keras_on_series_with_flat_stretches(monkeypatch):
    """Flat stretches put many convolution outputs on a bias up to float rounding, where TensorFlow
    and ONNX Runtime can round apart; the fitted transform counts those ties alike in both."""
    from pipeline.models.minirocket import fit_minirocket
    from pipeline.onnx.conversion import to_onnx

    cfg = tiny_config("experiment=ucr", "model=minirocket", "model.num_kernels=840")
    task = TaskSpec((400, 1), "multiclass", n_classes=2, normalization={"mode": "per_series"})
    x, y = _switched_on_and_off(60, 400, seed=0)
    model, _ = fit_minirocket(cfg.model, task, x, y, seed=1)
    features = keras.Model(
        model.input, {"prediction": model.get_layer("minirocket").output, "attention": model.output["attention"]}
    )
    test_x, _ = _switched_on_and_off(40, 400, seed=1)
    from_keras = np.asarray(features(test_x)["prediction"])
    from_onnx = OnnxModel(to_onnx(features, opset=17).SerializeToString()).run(test_x)["prediction"]
    assert np.abs(from_onnx - from_keras).max() <= 2 / 400  # a step or two counted apart at most


@pytest.mark.integration
def test_minirocket_runs_through_every_stage_and_deploys_as_onnx(tmp_path):
    """model=minirocket is a pipeline config like any other: fitted in train (no epochs), exported
    by tf2onnx within the parity gate, evaluated by ONNX Runtime, logged to MLflow."""
    with stages_run(
        tmp_path, "experiment=ucr", "data.name=BasicMotions", "model=minirocket", "model.num_kernels=168", "seed=5"
    ) as workdir:
        report = json.loads((workdir / stage.TRAIN_REPORT).read_text())
        metrics = json.loads((workdir / stage.METRICS_FILE).read_text())
        runtime = OnnxModel(workdir / stage.ONNX_MODEL)
        with np.load(workdir / "data/prepared/test.npz") as test:
            outputs = runtime.run(test["x"][:8])
    assert report["train/epochs"] == 0 and report["train/features"] == 168 and report["train/ridge_alpha"] > 0
    assert metrics["test/accuracy"] >= 0.75 and metrics["export/parity_max_abs"] <= 1e-4
    assert runtime.metadata["seed"] == "5"
    assert outputs["prediction"].shape == (8, 4)
    np.testing.assert_allclose(outputs["attention"], 1 / 100, rtol=1e-5)  # MiniRocket weighs every step alike


def _class_attention_model(score="class", *overrides):
    """The pooling straight on the encoder's states: the recipe's positions and state dropout
    off unless `overrides` set them."""
    plain = unless_set(SELECTION_BASE["conv_attention"], overrides)
    cfg = tiny_config(
        "experiment=ucr", "model.filters=[8,8]", "model.kernel_sizes=[3,3]", f"model.score={score}", *plain, *overrides
    )
    task = TaskSpec((12, 2), "multiclass", padded=True, n_classes=3, normalization={"mode": "per_series"})
    keras.utils.set_random_seed(1)
    model = build_model(cfg.model, task)
    x = np.random.default_rng(1).normal(size=(5, 12, 2)).astype("float32")
    x[:2, 8:] = -1.0  # two series of 8 steps
    return model, x


@pytest.mark.numeric
def test_class_attention_starts_as_the_global_average_and_predicts_from_its_own_weights():
    """score "class": with alpha 0 the weights are uniform, exactly the global
    average of the head's per-step scores; with alpha > 0 the predicted class's logit is the sum
    of its per-step scores weighted by the attention the model returns."""
    model, x = _class_attention_model()
    pooling = model.get_layer("prediction")
    assert pooling.__class__.__name__ == "ClassAttentionPooling"
    states = np.asarray(keras.Model(model.input, model.get_layer("conv_encoder").output)(x))
    evidence = states @ np.asarray(pooling.kernel) + np.asarray(pooling.bias)  # [batch, time, classes]
    out = model(x)
    np.testing.assert_allclose(np.asarray(out["attention"])[2:], 1 / 12, rtol=1e-6)
    assert (np.asarray(out["attention"])[:2, 8:] == 0).all()
    lengths = [8, 8, 12, 12, 12]
    averages = np.stack([evidence[i, :n].mean(axis=0) for i, n in enumerate(lengths)])
    np.testing.assert_allclose(out["prediction"], np.asarray(keras.ops.softmax(averages)), rtol=1e-5)

    alpha = np.array([3.0, 1.0, 2.0], "float32")
    pooling.alpha.assign(alpha)
    out = model(x)
    valid = np.arange(12)[None, :, None] < np.array(lengths)[:, None, None]
    scores = np.where(valid, alpha * evidence, -np.inf)
    weights = np.exp(scores - scores.max(axis=1, keepdims=True))
    weights /= weights.sum(axis=1, keepdims=True)  # [batch, time, classes]
    logits = (weights * evidence).sum(axis=1)
    np.testing.assert_allclose(out["prediction"], np.asarray(keras.ops.softmax(logits)), rtol=1e-5)
    predicted = logits.argmax(axis=1)
    np.testing.assert_allclose(out["attention"], weights[np.arange(5), :, predicted], atol=1e-6)
    assert np.asarray(out["attention"])[2:].std(axis=1).min() > 0, "no longer uniform"


@pytest.mark.numeric
def test_gated_attention_is_the_mean_of_gated_states_and_its_uniform_copy_keeps_the_mean_gate():
    """score "gated" (the default): context = (1/T) sum_t g_t h_t over the valid steps, with the
    attention returned g_t / sum g; the uniform ablation weighs the steps 1/T and keeps the
    mean gate; padded steps get no weight."""
    from pipeline.models import uniform_attention_copy

    model, x = _class_attention_model(score="gated")
    pooling = model.get_layer("gated_attention")
    rng = np.random.default_rng(2)
    for weight in pooling.trainable_weights:  # gates that differ between steps
        weight.assign(rng.normal(0, 1.0, weight.shape).astype("float32"))
    states = np.asarray(keras.Model(model.input, model.get_layer("conv_encoder").output)(x))
    hidden = np.tanh(states @ np.asarray(pooling.gate_kernel) + np.asarray(pooling.gate_bias))
    gates = 1 / (1 + np.exp(-(hidden @ np.asarray(pooling.gate_vector))[..., 0] - np.asarray(pooling.gate_offset)))
    lengths = [8, 8, 12, 12, 12]
    contexts = np.stack([(gates[i, :n, None] * states[i, :n]).mean(axis=0) for i, n in enumerate(lengths)])
    head = model.get_layer("prediction")
    logits = contexts @ np.asarray(head.kernel) + np.asarray(head.bias)
    out = model(x)
    np.testing.assert_allclose(out["prediction"], np.asarray(keras.ops.softmax(logits)), rtol=1e-4)
    attention = np.asarray(out["attention"])
    for i, n in enumerate(lengths):
        np.testing.assert_allclose(attention[i, :n], gates[i, :n] / gates[i, :n].sum(), rtol=1e-5)
        assert (attention[i, n:] == 0).all()
    assert attention[2:].std(axis=1).min() > 0, "the gates differ between steps"

    uniform = uniform_attention_copy(model)(x)
    mean_gate = np.array([gates[i, :n].mean() for i, n in enumerate(lengths)])
    averages = np.stack([states[i, :n].mean(axis=0) for i, n in enumerate(lengths)]) * mean_gate[:, None]
    logits = averages @ np.asarray(head.kernel) + np.asarray(head.bias)
    np.testing.assert_allclose(uniform["prediction"], np.asarray(keras.ops.softmax(logits)), rtol=1e-4)
    np.testing.assert_allclose(np.asarray(uniform["attention"])[2:], 1 / 12, rtol=1e-6)


@pytest.mark.numeric
def test_a_gate_floor_mixes_the_global_average_into_the_gated_mean():
    """model.gate_floor f: gates f + (1 - f) g_t, so the context is f x the mean of the states plus
    (1 - f) x the gated mean, and each valid step keeps attention of at least f / T."""
    floored, x = _class_attention_model("gated", "model.gate_floor=0.5")
    plain, _ = _class_attention_model("gated")
    rng = np.random.default_rng(3)
    for weight, twin in zip(floored.weights, plain.weights, strict=True):
        value = rng.normal(0, 1.0, weight.shape).astype("float32") if weight.trainable else np.asarray(twin)
        weight.assign(value)
        twin.assign(value)
    lengths = [8, 8, 12, 12, 12]

    def pooled(model):
        return np.asarray(keras.Model(model.input, model.get_layer("gated_attention").output[0])(x))

    states = np.asarray(keras.Model(plain.input, plain.get_layer("conv_encoder").output)(x))
    averages = np.stack([states[i, :n].mean(axis=0) for i, n in enumerate(lengths)])
    np.testing.assert_allclose(pooled(floored), 0.5 * averages + 0.5 * pooled(plain), rtol=1e-4, atol=1e-6)
    attention = np.asarray(floored(x)["attention"])
    for i, n in enumerate(lengths):
        assert attention[i, :n].min() >= 0.5 / n * (1 - 1e-6)
        assert (attention[i, n:] == 0).all()
    assert attention[2:].std(axis=1).min() > 0, "the gates still differ between steps"


@pytest.mark.numeric
def test_state_dropout_drops_encoder_states_in_training_only():
    """model.state_dropout p: while training, a fraction p of the encoder's states is zeroed (the
    rest scaled by 1 / (1 - p)) before the pooling; at inference, and in the exported ONNX model,
    it is the model without it, padded steps still masked."""
    from pipeline.onnx.conversion import to_onnx

    dropped, x = _class_attention_model("gated", "model.state_dropout=0.5")
    plain, _ = _class_attention_model("gated")
    for weight, twin in zip(dropped.weights, plain.weights, strict=True):
        twin.assign(weight)
    inference = dropped(x)
    np.testing.assert_allclose(inference["prediction"], plain(x)["prediction"], rtol=1e-6)
    np.testing.assert_array_equal(inference["attention"], plain(x)["attention"])
    assert (np.asarray(inference["attention"])[:2, 8:] == 0).all()
    exported = to_onnx(dropped, opset=17)
    assert not {node.op_type for node in exported.graph.node} & {"Dropout", "RandomUniform", "RandomUniformLike"}
    from_onnx = OnnxModel(exported.SerializeToString()).run(x)
    for name in ("prediction", "attention"):
        np.testing.assert_allclose(from_onnx[name], inference[name], rtol=1e-5, atol=1e-6)

    # training mode (its BatchNorm uses the batch's statistics, and updates the moving ones)
    trained = np.asarray(keras.Model(dropped.input, dropped.get_layer("state_dropout").output)(x, training=True))
    encoded = np.asarray(keras.Model(dropped.input, dropped.get_layer("conv_encoder").output)(x, training=True))
    active, kept = encoded != 0, trained != 0  # ReLU states: zeros before any dropout
    assert 0.3 < (active & ~kept).sum() / active.sum() < 0.7
    np.testing.assert_allclose(trained[kept], 2 * encoded[kept], rtol=1e-5)


@pytest.mark.numeric
def test_positional_encoding_adds_each_steps_sinusoid_to_the_states_and_exports_at_any_length():
    """model.positional_encoding: the pooling sees state_t + PE[t], PE[t, 2i] = sin(t / 10000^(2i/d)),
    PE[t, 2i+1] = cos(...); the exported ONNX model computes it for the input's own length, and
    padded steps stay masked."""
    from pipeline.onnx.conversion import to_onnx

    model, x = _class_attention_model("gated", "model.positional_encoding=true")
    states = np.asarray(keras.Model(model.input, model.get_layer("conv_encoder").output)(x))
    encoded = np.asarray(keras.Model(model.input, model.get_layer("positional_encoding").output)(x))
    steps, units = np.arange(12)[:, None], np.arange(8)
    angles = steps / 10000.0 ** (2 * (units // 2) / 8)
    expected = np.where(units % 2 == 0, np.sin(angles), np.cos(angles))
    np.testing.assert_allclose(encoded - states, np.broadcast_to(expected, states.shape), atol=1e-6)
    out = model(x)
    assert (np.asarray(out["attention"])[:2, 8:] == 0).all()

    exported = OnnxModel(to_onnx(model, opset=17).SerializeToString())
    longer = np.random.default_rng(2).normal(size=(3, 20, 2)).astype("float32")
    for series in (x, longer):
        from_onnx, from_keras = exported.run(series), model(series)
        for name in ("prediction", "attention"):
            np.testing.assert_allclose(from_onnx[name], from_keras[name], rtol=1e-5, atol=1e-6)


def test_positional_encoding_is_refused_for_the_global_average():
    with pytest.raises(ConfigError, match="positional_encoding"):
        tiny_config("experiment=ucr", "model=conv_gap", "model.positional_encoding=true")


def test_gate_floor_is_refused_for_other_scores():
    with pytest.raises(ConfigError, match="gate_floor"):
        tiny_config("experiment=ucr", "model.score=additive", "model.gate_floor=0.5")
    with pytest.raises(ConfigError, match="gate_floor"):
        tiny_config("experiment=ucr", "model.gate_floor=1.0")


def test_gated_and_class_attention_refuse_a_position_bias():
    with pytest.raises(ConfigError, match="position_bias"):
        tiny_config("experiment=ucr", "model.position_bias=true")
