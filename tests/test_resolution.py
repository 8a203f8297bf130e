"""Input resolution: the network on the image shrunk by a factor (techniques/resolution.py).

What holds for every technique (input untouched, report, determinism, every runtime) is
test_contract.py's; here what is particular: the function the transform builds, the models it
refuses and why, fine-tuning at the new scale, the CLI, and how optimize plans it.
"""

from __future__ import annotations

import numpy as np
import pytest

from keras_turbo.data import Dataset
from keras_turbo.errors import KerasTurboError
from keras_turbo.optimize import plan as planner
from keras_turbo.optimize.config import OptimizeConfig
from keras_turbo.techniques import resolution as R
from keras_turbo.quality import Budget
from tests.conftest import keras
from tests.test_cli import run_cli


def _net(size: int, seed: int = 0):
    """A small residual CNN with a global-pooling head, at input size x size x 2."""
    keras.utils.set_random_seed(seed)
    x = keras.Input((size, size, 2), name="image")
    h = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="c1")(x)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(h)
    h = keras.layers.Add(name="add")([h, keras.layers.Conv2D(6, 1, name="skip")(x)])
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    return keras.Model(x, keras.layers.Dense(3, name="logits")(h), name="net")


def test_the_network_runs_on_the_pooled_image():
    """Without fine-tuning, the result is exactly the same network, weights and all, applied to
    the image average-pooled by the factor (rows and columns past a whole multiple dropped)."""
    model = _net(17)
    small = _net(8, seed=1)
    small.set_weights(model.get_weights())
    res = R.apply(model, R.ResolutionConfig(factor=2, finetune=False))
    new = res.model
    assert new.inputs[0].shape == model.inputs[0].shape and new.layers[1].name == R.POOL
    x = np.random.default_rng(0).random((3, 17, 17, 2), dtype="float32")
    pooled = x[:, :16, :16].reshape(3, 8, 2, 8, 2, 2).mean(axis=(2, 4))
    np.testing.assert_allclose(np.asarray(new(x)), np.asarray(small(pooled)), rtol=1e-5, atol=1e-6)
    assert res.report["runs_at"] == [8, 8] and res.report["input"] == [17, 17]
    assert 3.5 < res.report["flops_reduction"] < 4.6 and res.report["params_after"] == res.report["params_before"]


def test_a_fractional_factor_resizes_bilinearly():
    """1.4: 20x20 -> 14x14 by TensorFlow's bilinear resize (half-pixel centres), then the same
    network and weights; the report says so. Every runtime computes it like Keras: the shared
    contract test runs a fractional factor on each."""
    import tensorflow as tf

    model = _net(20)
    res = R.apply(model, R.ResolutionConfig(factor=1.4, finetune=False))
    assert type(res.model.get_layer(R.POOL)).__name__ == "Resizing" and res.report["runs_at"] == [14, 14]
    small = _net(14, seed=1)
    small.set_weights(model.get_weights())
    x = np.random.default_rng(0).random((3, 20, 20, 2), dtype="float32")
    resized = tf.image.resize(x, (14, 14), method="bilinear").numpy()
    np.testing.assert_allclose(np.asarray(res.model(x)), np.asarray(small(resized)), rtol=1e-5, atol=1e-5)
    assert 1.8 < res.report["flops_reduction"] < 2.3
    # A plain call is inference (Keras would otherwise hand Resizing's training=True default on to
    # the BatchNorm), in a functional model and in a Sequential one rebuilt as functional.
    seq = keras.Sequential([keras.Input((12, 12, 2)), keras.layers.Conv2D(4, 3), keras.layers.BatchNormalization(),
                            keras.layers.GlobalMaxPooling2D(), keras.layers.Dense(2)])
    for net, data in ((res.model, x), (R.apply(seq, R.ResolutionConfig(factor=1.5, finetune=False)).model, x[:, :12, :12] + 5)):
        before = [w.copy() for w in net.get_weights()]
        np.testing.assert_allclose(np.asarray(net(data)), np.asarray(net(data, training=False)), rtol=1e-6, atol=1e-6)
        assert all(np.array_equal(a, b) for a, b in zip(before, net.get_weights()))
    with pytest.raises(KerasTurboError, match="a number > 1"):
        R.ResolutionConfig(factor=1.0)


def test_batchnorm_statistics_are_re_estimated_at_the_new_scale():
    """With train data, even without fine-tuning, every BatchNorm's moving statistics become
    the plain average over the data at the new scale; the momenta are put back."""
    from keras_turbo.techniques._training import recalibrate_batchnorm

    model = _net(16)
    bn = model.get_layer("bn")
    x = 3.0 + np.random.default_rng(1).random((96, 16, 16, 2), dtype="float32")
    data = Dataset((x,), None, "train")
    res = R.apply(model, R.ResolutionConfig(factor=2, finetune=False), train=data)
    assert res.report["batchnorm_recalibrated"] == 96
    new_bn = res.model.get_layer("bn")
    assert new_bn.momentum == bn.momentum == 0.99
    np.testing.assert_allclose(model.get_layer("bn").moving_mean.numpy(), 0.0)  # the original is untouched
    seen = keras.Model(res.model.inputs, res.model.get_layer("c1").output)
    batches = [np.asarray(seen(x[i:i + 32])) for i in range(0, 96, 32)]
    mean = np.mean([b.mean(axis=(0, 1, 2)) for b in batches], axis=0)
    var = np.mean([b.var(axis=(0, 1, 2)) for b in batches], axis=0)
    np.testing.assert_allclose(new_bn.moving_mean.numpy(), mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(new_bn.moving_variance.numpy(), var, rtol=1e-3, atol=1e-5)
    assert recalibrate_batchnorm(res.model, Dataset((x[:0],), None, "empty")) == 0


def test_a_sequential_model_and_a_taken_name():
    seq = keras.Sequential([keras.Input((12, 12, 1)), keras.layers.Conv2D(4, 3, name=R.POOL),
                            keras.layers.GlobalMaxPooling2D(), keras.layers.Dense(2)])
    new = R.apply(seq, R.ResolutionConfig(factor=3, finetune=False)).model
    assert new.layers[1].name == f"{R.POOL}_1" and new.layers[1].output.shape[1:3] == (4, 4)
    assert new.get_layer(R.POOL).output.shape[1:3] == (2, 2)


@pytest.mark.parametrize("make,match", [
    (lambda: keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(2, 3), keras.layers.Flatten(),
                               keras.layers.Dense(2, name="head")]), "layer 'head' has weights sized to the input"),
    (lambda: keras.Sequential([keras.Input((None, None, 3)), keras.layers.Conv2D(2, 3),
                               keras.layers.GlobalAveragePooling2D()]), "any size: feed smaller images"),
    (lambda: keras.Sequential([keras.Input((6,)), keras.layers.Dense(2)]), "needs an image input"),
    (lambda: _net(3), "too small to shrink by 2"),
])
def test_models_it_cannot_shrink_are_refused_with_the_reason(make, match):
    with pytest.raises(KerasTurboError, match=match):
        R.apply(make(), R.ResolutionConfig(factor=2, finetune=False))


def test_fine_tuning_recovers_the_accuracy_at_the_new_scale():
    """Images upsampled 2x from 8x8 hold nothing a 2x pooling loses: the pooled network, only
    copied, is far off; fine-tuned with the original as teacher, it comes back to within a few
    points of it."""
    rng = np.random.default_rng(0)
    i, j = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
    textures = np.stack([i % 2, j % 2, (i + j) % 2]).astype("float32")  # rows, columns, checkerboard
    y = rng.integers(0, 3, 600)
    flip = rng.integers(0, 2, (600, 1, 1)).astype("float32")  # random phase
    src = np.abs(textures[y] - flip)[..., None] + 0.3 * rng.standard_normal((600, 8, 8, 2)).astype("float32")
    x = np.repeat(np.repeat(src, 2, 1), 2, 2)  # upsampled 2x: a 2x pooling loses nothing
    train, val = Dataset((x[:450],), y[:450], "train"), Dataset((x[450:],), y[450:], "val")
    model = _net(16)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[:450], y[:450], epochs=25, batch_size=32, verbose=0)
    raw = R.apply(model, R.ResolutionConfig(factor=2, finetune=False), val=val).report
    tuned = R.apply(model, R.ResolutionConfig(factor=2, epochs=12), train, val).report
    assert raw["accuracy_before"] > 0.9
    assert tuned["accuracy_after"] >= raw["accuracy_before"] - 0.05
    assert tuned["accuracy_after"] > raw["accuracy_after"]
    with pytest.raises(KerasTurboError, match="needs train data"):
        R.apply(model, R.ResolutionConfig(factor=2))


def test_cli_writes_the_model_and_refuses_a_flatten_head_in_one_line(tmp_path, capsys):
    path = tmp_path / "net.keras"
    _net(16).save(path)
    out = tmp_path / "small.keras"
    code, stdout, _ = run_cli(capsys, "resolution", path, "--factor", "4", "--no-finetune", "-o", out,
                              "--json", tmp_path / "r.json")
    assert code == 0 and "runs_at: [4, 4]" in stdout
    assert keras.saving.load_model(out).get_layer(R.POOL).pool_size == (4, 4)
    code, stdout, _ = run_cli(capsys, "resolution", path, "--factor", "1.6", "--no-finetune", "-o", out, "--force")
    assert code == 0 and "runs_at: [10, 10]" in stdout
    with pytest.raises(SystemExit) as e:
        run_cli(capsys, "resolution", path, "--factor", "1", "--no-finetune", "-o", out, "--force")
    assert e.value.code == 2 and "--factor must be a number > 1" in capsys.readouterr().err
    flat = tmp_path / "flat.keras"
    keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(2, 3), keras.layers.Flatten(),
                      keras.layers.Dense(2)]).save(flat)
    code, _, err = run_cli(capsys, "resolution", flat, "--no-finetune", "-o", tmp_path / "x.keras")
    errors = [ln for ln in err.splitlines() if ln.startswith("keras-turbo:")]  # beside the progress line
    assert code == 2 and "Traceback" not in err and len(errors) == 1 and "global-pooling head" in errors[0]


def test_optimize_searches_the_factor_or_says_why_not():
    cfg = OptimizeConfig(budget=Budget(max_accuracy_drop=1.0), techniques=("runtimes", "resolution", "structured"))
    caps = planner.MachineCaps(("keras-predict", "litert"))
    taken = planner.first_plan(planner.ModelInfo("fp"), caps, cfg, has_train=True)
    assert any(n.startswith("resolution: strength search over factor [1.25, 1.4, 1.6, 2, 2.8]") for n in taken.notes)
    base = [planner.Outcome(r, True, True, 1.0) for r in taken.recipes]
    probes = planner.follow_ups(planner.ModelInfo("fp"), base, cfg, True).recipes
    assert {r.name for r in probes} == {"resolution(1/1.4 size) probe", "structured(flops/2) probe"}
    info = planner.ModelInfo("fp", refused=(("resolution", "needs one image input, the model has 2 inputs"),))
    refused = planner.first_plan(info, caps, cfg, has_train=True)
    assert dict(refused.left_out)["resolution"] == "needs one image input, the model has 2 inputs"
    assert not any(n.startswith("resolution") for n in refused.notes)
    # the share goes to the one technique left, and no resolution recipe is planned
    assert any(f"at most {planner.time_share(cfg, ['structured']):.0f} s" in n for n in refused.notes)
    assert [r.name for r in planner.follow_ups(info, base, cfg, True).recipes] == ["structured(flops/2) probe"]


def test_optimize_asks_every_registered_refusal_of_the_model(model_files):
    """optimize's planner input: each technique in REFUSALS is asked about the model at its
    weakest searched setting; a refusal comes back with its reason, a model it takes with none."""
    from types import SimpleNamespace

    from keras_turbo.model import as_ref
    from keras_turbo.optimize.driver import _model_info
    from keras_turbo.techniques import REFUSALS

    assert "resolution" in REFUSALS

    def info(name):
        return _model_info(SimpleNamespace(ref=as_ref(model_files[name][0]), store=SimpleNamespace(model="fp"),
                                           job={"train_samples": 300}))

    assert dict(info("two_input").refused)["resolution"] == "needs one image input, the model has 2 inputs"
    assert info("residual").refused == () and info("residual").train_samples == 300


def test_a_composition_shrinks_the_image_of_the_pruned_model_it_reuses(tmp_path):
    """optimize's composition of structured pruning then input resolution, built as its recipe:
    the pruned model is the first step's artifact, reused from the recipe that made it (not
    pruned again), and the second step shrinks what that pruned network sees."""
    from keras_turbo.model import io_specs
    from keras_turbo.model import load_keras, resolve
    from keras_turbo.optimize.build import BuildJob, build
    from keras_turbo.optimize.measure import DataRef
    from keras_turbo.optimize.recipe import Recipe, Step

    keras.utils.set_random_seed(0)
    x = keras.Input((8, 8, 1), name="image")
    h = keras.layers.Conv2D(16, 3, padding="same", name="c1")(x)
    h = keras.layers.ReLU()(keras.layers.BatchNormalization(name="bn1")(h))
    h = keras.layers.Conv2D(16, 3, padding="same", name="c2")(h)
    h = keras.layers.ReLU()(keras.layers.BatchNormalization(name="bn2")(h))
    model = keras.Model(x, keras.layers.Dense(10, name="logits")(keras.layers.GlobalAveragePooling2D()(h)))
    path = tmp_path / "m.keras"
    model.save(path)
    ref = resolve(path)
    data = DataRef("builtin:digits:train")
    pruned = Step("train", "structured", {"target_flops_reduction": 2.0, "epochs": 1, "distill": True, "importance": "bn"})
    shrunk = Step("train", "resolution", {"factor": 2, "epochs": 1, "distill": True})
    alone = Recipe(ref.cache_key(), (pruned, Step("runtime", "tf-function")))
    both = Recipe(ref.cache_key(), (pruned, shrunk, Step("runtime", "tf-function")), label="flops/2; 1/2 size")
    assert both.name == "structured(flops/2) + resolution(1/2 size) + tf-function fp32"
    job = dict(model_path=str(path), root=str(tmp_path / "root"), calib=data, eval=data, reference="",
               inputs=tuple(io_specs(ref)[0]), outputs=tuple(io_specs(ref)[1]), train=data, evaluate=False)
    first = build(BuildJob(alone, **job))
    res = build(BuildJob(both, **job))
    assert first["ok"] and res["ok"], (first["error"], res["error"])
    assert res["steps"][0]["cached"] and not res["steps"][1]["cached"]
    out = load_keras(resolve(res["artifact"]))
    assert out.layers[1].name == R.POOL and out.get_layer("c2").filters < 16
    assert out.predict(np.zeros((2, 8, 8, 1), "float32"), verbose=0).shape == (2, 10)


def test_the_search_keeps_the_network_as_scaled_where_its_fine_tune_scores_below_it():
    """optimize's resolution fine-tunes judge their start (`keep_start`): the build gets the
    validation split to judge on, and the full fine-tune still trains on all the train data."""
    from pathlib import Path
    from types import SimpleNamespace

    from keras_turbo.optimize import driver
    from keras_turbo.optimize.measure import DataRef
    from keras_turbo.optimize.recipe import Recipe, Step

    k = planner.SEARCH["resolution"]
    assert k.proxy["keep_start"] and k.full["keep_start"] and R.ResolutionConfig.from_dict(k.full).keep_start
    refs = {n: DataRef(f"builtin:digits:{s}") for n, s in (("train", "train"), ("probe_train", "train"), ("val", "val"),
                                                            ("eval", "test"), ("calib", "train"))}
    run = SimpleNamespace(job={n: None for n in driver._SHARED} | refs, out=Path("/nowhere"), deadline=None, executor=None)
    for settings, train in (({"factor": 2, **k.full}, "train"), ({"factor": 2, "epochs": 3}, "train")):
        r = Recipe("m", (Step("train", "resolution", settings), Step("runtime", "tf-function")))
        job = driver._job(run, r, True)
        assert job.train is refs[train] and job.eval is refs["eval"]
        assert job.val is (refs["val"] if settings.get("keep_start") else None)
    probe = Recipe("m", (Step("train", "resolution", {"factor": 2, **k.proxy}), Step("runtime", "tf-function")), role="probe")
    job = driver._job(run, probe, True)
    assert job.train is refs["probe_train"] and job.eval is job.val is refs["val"]
