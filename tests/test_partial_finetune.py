"""Partial fine-tuning of the text encoder (``finetune.tune_layers``: the top layers train from
stored hidden states of the frozen ones) and fine-tuning batches padded per length bucket."""
import json
import logging
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs.compose import compose
from conftest import shared_path, write_tiny_bert
from emojax import config as config_lib
from emojax.training.evaluation import load_run, predict_proba
from emojax.training.batches import epoch_order
from emojax.training.loop import fit
from emojax.training.preparation import prepare
from emojax.training.steps import make_eval_step
from emojax.runs import format as format_lib
from emojax.encoders import lora as lora_lib
from emojax.encoders.bert import bert_apply, load_bert
from emojax.encoders.modernbert import load_modernbert, modernbert_apply
from emojax.encoders.text import encode_pooled_from, layer_input, pool_hidden
from emojax.training.finetune_text import HiddenRows, TokenRows, top_layers, with_top_layers
from emojax.training.batches import epoch_batches
from launchers import host_devices_env


@pytest.fixture(scope="module")
def bert3(tmp_path_factory) -> pathlib.Path:
    """A tiny random BERT with 3 layers (so 1 and 2 tuned layers are both partial)."""
    return write_tiny_bert(tmp_path_factory.mktemp("tiny-bert-3"), layers=3)


def tuning_config(data, bert, mode="trainable", tune_layers=0, epochs=2):
    cfg = compose(f"dataset=MELD--E,encoders=T,mode={mode}")  # prompt + mask pooling over the dialogue
    cfg.dataset.path, cfg.encoders.T.model = str(data), str(bert)
    cfg.train.update(epochs=epochs, patience=100, batch_size=16, lr=1e-2)
    cfg.finetune.lr = 1e-3
    cfg.finetune.lora.update(rank=4, alpha=8.0)
    cfg.progress = False
    if tune_layers:
        cfg.finetune.tune_layers = tune_layers
    return cfg


def max_length_inputs(rows: TokenRows, index) -> tuple[np.ndarray, np.ndarray]:
    """The rows' token ids and mask padded to the widest bucket (``max_length``), as before buckets."""
    width = rows.widths[-1]
    ids = np.full((len(index), width), rows.pad_id, np.int32)
    mask = np.zeros((len(index), width), np.int32)
    for r, i in enumerate(index):
        ids[r, :rows.lengths[i]], mask[r, :rows.lengths[i]] = rows.ids[i], 1
    return ids, mask


def reference_features(tuner, whole, ids, mask):
    """Standardised mask-pooled features of the whole encoder ``whole`` over ``max_length``
    columns: the full hidden state indexed at the mask token (no layer ranges, no buckets)."""
    hidden = bert_apply(whole, ids, mask, config=tuner.encoder.config)
    pooled = pool_hidden(hidden, mask, ids, pooling="mask", mask_token_id=tuner.encoder.tokenizer.mask_token_id)
    return (pooled - tuner.mean) / tuner.std


# -- layer ranges ------------------------------------------------------------------------------

@pytest.mark.slow
def test_layer_ranges_compose_to_transformers_outputs():
    """BERT and ModernBERT run in two layer ranges reproduce transformers' PyTorch last hidden
    state (the golden fixtures); with dropout, two ranges draw the masks one pass draws."""
    folder = shared_path("fixtures", "golden", "bert")
    params, config = load_bert(str(folder))
    inputs, outputs = np.load(folder / "inputs.npz"), np.load(folder / "outputs.npz")
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    valid = np.asarray(mask, bool)
    for split in range(config.num_layers + 1):
        low = bert_apply(params, ids, mask, config=config, layers=slice(0, split))
        out = bert_apply(params, None, mask, config=config, layers=slice(split, None), hidden_states=low)
        np.testing.assert_allclose(np.asarray(out)[valid], outputs["last_hidden_state"][valid], atol=1e-5)
    at = jnp.asarray([1, 0] * (len(ids) // 2) + [0] * (len(ids) % 2), jnp.int32)
    low = bert_apply(params, ids, mask, config=config, layers=slice(0, 1))
    pooled = bert_apply(params, None, mask, config=config, layers=slice(1, None), hidden_states=low,
                        pool_positions=at)
    np.testing.assert_allclose(np.asarray(pooled), outputs["last_hidden_state"][np.arange(len(ids)), np.asarray(at)],
                               atol=1e-5)
    rng = jax.random.PRNGKey(3)
    whole = bert_apply(params, ids, mask, config=config, deterministic=False, rng=rng)
    low = bert_apply(params, ids, mask, config=config, deterministic=False, rng=rng, layers=slice(0, 1))
    high = bert_apply(params, None, mask, config=config, deterministic=False, rng=rng, layers=slice(1, None),
                      hidden_states=low)
    np.testing.assert_allclose(np.asarray(high), np.asarray(whole), atol=1e-6)
    with pytest.raises(ValueError, match="hidden_states"):
        bert_apply(params, ids, mask, config=config, layers=slice(1, None))

    folder = shared_path("fixtures", "golden", "modernbert")
    params, config = load_modernbert(str(folder))
    inputs, outputs = np.load(folder / "inputs.npz"), np.load(folder / "outputs.npz")
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    valid = np.asarray(mask, bool)
    with jax.default_matmul_precision("highest"):
        for split in range(config.num_layers + 1):
            low = modernbert_apply(params, ids, mask, config=config, layers=slice(0, split))
            out = modernbert_apply(params, None, mask, config=config, layers=slice(split, None), hidden_states=low)
            np.testing.assert_allclose(np.asarray(out)[valid], outputs["last_hidden_state"][valid], atol=1e-4)
        # The tuner's path: the top part of the parameters (final norm included) from the layer input.
        start = config.num_layers - 1
        top = top_layers(params, start)
        layers = [top["layers"][str(n)] for n in range(start, config.num_layers)]
        pooled = encode_pooled_from(layers, layer_input(params, ids, mask, config=config, start=start,
                                                        dtype=jnp.float32),
                                    mask, ids, config=config, start=start, dtype=jnp.float32, pooling="mean",
                                    final_norm=top["final_norm"])
        expected = (outputs["last_hidden_state"] * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
        np.testing.assert_allclose(np.asarray(pooled), expected, atol=1e-4)
        assert jax.tree_util.tree_structure(with_top_layers(params, top)) == jax.tree_util.tree_structure(params)


# -- losses and gradients ----------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("mode", ["trainable", "lora"])
def test_tuned_layers_get_the_loss_and_gradients_of_whole_encoder_tuning(tmp_path, text_meld, bert3, mode):
    """From stored hidden states and bucket-padded rows, the top K layers get the loss and the
    gradients that fine-tuning the whole encoder (max_length padding, one pass) gives them;
    K = all layers is the whole encoder, embeddings included."""
    index = np.arange(12)
    w = jnp.asarray(np.random.default_rng(0).normal(size=32), jnp.float32)

    def loss_of(features):
        return jnp.sum(jnp.tanh(features) * w)

    whole_prep = prepare(tuning_config(text_meld, bert3, mode), tmp_path)
    tuner = whole_prep.tuning.tuners["T"]
    rows = whole_prep.features["train"].inputs["T"]
    assert isinstance(rows, TokenRows) and not isinstance(rows, HiddenRows)
    ids, mask = max_length_inputs(rows, index)
    base = jax.tree_util.tree_map(jnp.asarray, tuner.whole)
    rng = np.random.default_rng(1)
    if mode == "lora":
        # Trained-looking adapters everywhere (B != 0, so A gets gradients too).
        adapters = lora_lib.init_lora(base, jax.random.PRNGKey(0), rank=4, targets="query,key,value,dense")
        adapters = {k: {"a": v["a"], "b": jnp.asarray(rng.normal(size=v["b"].shape) * 0.1, jnp.float32)}
                    for k, v in adapters.items()}

    for tune_layers in (3, 1):
        prep = prepare(tuning_config(text_meld, bert3, mode, tune_layers), tmp_path)
        part = prep.tuning.tuners["T"]
        start = part.start
        assert start == (0 if tune_layers == 3 else 3 - tune_layers)
        batch = prep.features["train"].inputs["T"].batch(index)
        assert batch["input_ids"].shape[1] < 128  # padded to the batch's bucket, not max_length
        if mode == "trainable":
            trainable = part.init(jax.random.PRNGKey(0))

            def reference(params):
                return loss_of(reference_features(tuner, params, ids, mask))

            def tuned(tree):
                return loss_of(part.features(tree, part.base_args, batch))

            ref_loss, ref_grads = jax.jit(jax.value_and_grad(reference))(base)  # one program each, not op by op
            loss, grads = jax.jit(jax.value_and_grad(tuned))(trainable)
            if start:
                ref_grads = {"layers": {str(n): ref_grads["layers"][n] for n in range(start, 3)}}
        else:
            bottom = {k: {"a": v["a"], "b": jnp.zeros_like(v["b"])} for k, v in adapters.items()
                      if int(k.split(".")[1]) < start}  # frozen layers: base weights
            top = {k: v for k, v in adapters.items() if int(k.split(".")[1]) >= start}
            assert set(part.init(jax.random.PRNGKey(0))) == set(top)

            def reference(ad):
                params = lora_lib.apply_lora(base, {**bottom, **ad}, alpha=8.0, rank=4)
                return loss_of(reference_features(tuner, params, ids, mask))

            def tuned(ad):
                return loss_of(part.features(ad, part.base_args, batch))

            ref_loss, ref_grads = jax.value_and_grad(reference)(top)
            loss, grads = jax.value_and_grad(tuned)(top)
        np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5, atol=1e-5)
        flat_ref = dict(jax.tree_util.tree_flatten_with_path(ref_grads)[0])
        flat = dict(jax.tree_util.tree_flatten_with_path(grads)[0])
        assert set(flat) == set(flat_ref)
        for key, value in flat_ref.items():
            np.testing.assert_allclose(np.asarray(flat[key]), np.asarray(value), rtol=2e-4, atol=2e-5,
                                       err_msg=jax.tree_util.keystr(key))


# -- the store of hidden states ----------------------------------------------------------------

@pytest.mark.slow
def test_stored_hidden_states_are_the_bottom_layers_and_damage_is_rebuilt(tmp_path, text_meld, bert3, caplog):
    cfg = tuning_config(text_meld, bert3, "trainable", tune_layers=1)
    prep = prepare(cfg, tmp_path)
    tuner, rows = prep.tuning.tuners["T"], prep.features["dev"].inputs["T"]
    assert isinstance(rows, HiddenRows) and tuner.start == 2
    whole, config = tuner.whole, tuner.encoder.config
    for i in (0, 5, len(rows) - 1):
        alone = bert_apply(whole, rows.ids[i][None], None, config=config)  # one sample, no padding ...
        below = np.asarray(bert_apply(whole, rows.ids[i][None], None, config=config, layers=slice(0, 2)))[0]
        stored = rows.stored.item(i)["hidden"]
        assert stored.shape == (rows.lengths[i], config.hidden_size)
        np.testing.assert_allclose(stored, below, atol=2e-5)
        top = bert_apply(whole, None, None, config=config, layers=slice(2, None), hidden_states=stored[None])
        np.testing.assert_allclose(np.asarray(top), np.asarray(alone), atol=2e-5)  # ... and the rest on top
    original = [rows.stored.item(i)["hidden"].copy() for i in range(len(rows))]

    # The key follows the layer split, the text path and the compute dtype.
    ids = rows.ids
    other = prepare(tuning_config(text_meld, bert3, "trainable", tune_layers=2), tmp_path)
    assert other.tuning.tuners["T"].hidden_key(ids) != tuner.hidden_key(ids)
    assert other.features["dev"].inputs["T"].stored.folder != rows.stored.folder
    cfg_ctx = tuning_config(text_meld, bert3, "trainable", tune_layers=1)
    cfg_ctx.encoders.T.context_turns = 1
    ctx = prepare(cfg_ctx, tmp_path).features["dev"].inputs["T"]
    assert ctx.stored.folder != rows.stored.folder and ctx.lengths.sum() < rows.lengths.sum()

    # Changed bytes (same size), a truncated file, a missing index: reported by name, rebuilt.
    folder = rows.stored.folder
    for damage, expected in (("bytes", "hidden.bin does not match its sha256"), ("truncate", "hidden.bin has"),
                             ("index", "index.json is missing")):
        path = folder / "hidden.bin"
        if damage == "bytes":
            data = bytearray(path.read_bytes())
            data[100:108] = b"\x00\x01\x02\x03\x04\x05\x06\x07"
            path.write_bytes(bytes(data))
            os.utime(path, ns=(1, 1))
        elif damage == "truncate":
            path.write_bytes(path.read_bytes()[:-4])
        else:
            (folder / "index.json").unlink()
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            again = prepare(cfg, tmp_path).features["dev"].inputs["T"]
        assert any(expected in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]
        assert again.stored.folder == folder
        for i, value in enumerate(original):
            np.testing.assert_array_equal(again.stored.item(i)["hidden"], value)


# -- length buckets ----------------------------------------------------------------------------

def test_bucketed_epoch_batches_cover_rows_once_and_replay_by_seed_and_epoch():
    rng = np.random.default_rng(0)
    widths = (16, 32, 64, 128)
    lengths = rng.choice([5, 14, 20, 30, 40, 100, 128], size=96, p=[.3, .2, .2, .1, .1, .05, .05])
    rows = TokenRows([np.arange(n) + 5 for n in lengths], 0, widths)
    np.testing.assert_array_equal(rows.buckets, np.searchsorted(widths, lengths))
    batches = epoch_batches(0, 1, len(rows), 8, rows.buckets)
    assert len(batches) == 12 and all(len(b) == 8 for b in batches)
    np.testing.assert_array_equal(np.sort(np.concatenate(batches)), np.arange(96))  # every row once
    for b in batches:  # a batch is padded to its own bucket, which holds all of its rows
        batch = rows.batch(b)
        assert batch["input_ids"].shape[1] == widths[rows.buckets[b].max()]
        np.testing.assert_array_equal(batch["attention_mask"].sum(1), lengths[b])
        for r, i in enumerate(b):
            np.testing.assert_array_equal(batch["input_ids"][r, :lengths[i]], rows.ids[i])
    # a pure function of (seed, epoch): replayed alike, another epoch or seed another order
    for a, b in zip(batches, epoch_batches(0, 1, len(rows), 8, rows.buckets)):
        np.testing.assert_array_equal(a, b)
    assert not all(np.array_equal(a, b) for a, b in zip(batches, epoch_batches(0, 2, len(rows), 8, rows.buckets)))
    assert not all(np.array_equal(a, b) for a, b in zip(batches, epoch_batches(1, 1, len(rows), 8, rows.buckets)))
    # n not a multiple of the batch: fewer than one batch of rows is left out, none twice
    short = epoch_batches(3, 1, 90, 8, rows.buckets[:90])
    seen = np.concatenate(short)
    assert len(short) == 90 // 8 and len(np.unique(seen)) == len(seen) and 90 - len(seen) < 8
    # mostly one bucket per batch: only rows carried over from a narrower bucket mix in
    mixed = sum(len(np.unique(rows.buckets[b])) > 1 for b in batches)
    assert mixed <= len(np.unique(rows.buckets)) - 1
    # without buckets: the plain epoch order, as before
    plain = epoch_batches(0, 1, 96, 8)
    np.testing.assert_array_equal(np.concatenate(plain), epoch_order(0, 1, 96))


@pytest.mark.slow
@pytest.mark.parametrize("tune_layers", [0, 1])
def test_bucket_padding_gives_the_features_and_logits_of_max_length_padding(tmp_path, text_meld, bert3, tune_layers):
    from emojax.model.model import build_model

    cfg = tuning_config(text_meld, bert3, "lora", tune_layers)
    prep = prepare(cfg, tmp_path)
    tuner, dev = prep.tuning.tuners["T"], prep.features["dev"]
    rows = dev.inputs["T"]
    assert len(rows.groups()) > 1  # the dev texts span several buckets
    trainable = prep.tuning.init(jax.random.PRNGKey(0))
    trainable = jax.tree_util.tree_map(lambda x: x + 0.05, trainable)  # moved away from the base
    refreshed = prep.tuning.refresh(dev, trainable, batch_size=8).features["T"]
    ids, mask = max_length_inputs(rows, np.arange(len(rows)))
    reference = reference_features(tuner, tuner.merged(trainable["T"]), ids, mask)
    np.testing.assert_allclose(refreshed, np.asarray(reference), atol=1e-4)
    model = build_model(cfg, prep.featurizer.dims, len(prep.class_names))
    params = model.init(jax.random.PRNGKey(1), {"T": refreshed[:2]}, {"T": np.ones(2, bool)})["params"]
    eval_step = jax.jit(make_eval_step(model))
    logits = eval_step(params, {"T": refreshed}, {"T": np.ones(len(rows), bool)})
    padded = eval_step(params, {"T": np.asarray(reference)}, {"T": np.ones(len(rows), bool)})
    np.testing.assert_allclose(np.asarray(logits), np.asarray(padded), atol=1e-4)


@pytest.mark.slow
def test_tune_layers_in_bfloat16_stores_its_own_states_close_to_float32(tmp_path, text_meld, bert3):
    """precision=bfloat16: the frozen layers run in bfloat16 matmuls (their own store) and the
    tuned features stay within bfloat16 rounding of the float32 ones."""
    out = {}
    for precision in ("float32", "bfloat16"):
        cfg = tuning_config(text_meld, bert3, "trainable", tune_layers=1)
        cfg.precision = precision
        prep = prepare(cfg, tmp_path)
        dev = prep.features["dev"]
        out[precision] = (dev.inputs["T"].stored.folder,
                          prep.tuning.refresh(dev, prep.tuning.init(jax.random.PRNGKey(0)), 16).features["T"])
    assert out["float32"][0] != out["bfloat16"][0]
    f32, bf16 = out["float32"][1], out["bfloat16"][1]
    assert np.abs(bf16 - f32).mean() < 0.05 * np.abs(f32).mean()
    assert np.abs(bf16 - f32).max() > 1e-4  # computed in bfloat16, not float32


# -- whole runs --------------------------------------------------------------------------------

@pytest.mark.slow
def test_tune_layers_run_resumes_exactly_and_estimator_and_export_reproduce_it(tmp_path, text_meld, bert3):
    from emojax.data import load_dataset
    from emojax.features.featurizer import standardize
    from emojax.inference import Estimator
    from emojax.inference.standalone import extract_encoders

    cfg = tuning_config(text_meld, bert3, "lora", tune_layers=1, epochs=2)
    whole = fit(cfg, tmp_path / "whole")
    fit(cfg, tmp_path / "split", max_epochs=1)
    resumed = fit(cfg, tmp_path / "split")
    history = [json.loads((d / "history.json").read_text()) for d in (whole, resumed)]
    np.testing.assert_allclose([h["train_loss"] for h in history[0]], [h["train_loss"] for h in history[1]],
                               rtol=1e-6)
    results = json.loads((whole / "results.json").read_text())
    assert results["test"]["accuracy"] == json.loads((resumed / "results.json").read_text())["test"]["accuracy"]

    # The estimator runs the whole tuned encoder on the raw test texts and scores as the run did.
    estimator = Estimator(whole)
    test = load_dataset("meld", str(text_meld), target="emotion").splits["test"]
    features = standardize(estimator.featurizer.split_features(test), estimator.feature_stats)
    probs = predict_proba(estimator._eval_step, estimator.params, features, 64)
    assert float((probs.argmax(-1) == features.labels).mean()) == pytest.approx(results["test"]["accuracy"])
    prep, _, _, _ = load_run(whole, tmp_path / "whole")
    np.testing.assert_allclose(features.features["T"], prep.features["test"].features["T"], atol=2e-4)

    # Exported: the embeddings and the frozen layers are the base's, the tuned layer has the adapters.
    extract_encoders(whole, tmp_path / "extracted")
    exported, _ = load_bert(str(tmp_path / "extracted" / "T"))
    base = prep.tuning.tuners["T"].whole
    tuned = estimator.featurizer.encoders["T"].encoder.params
    for n in (0, 1):
        for name in ("query", "intermediate"):
            np.testing.assert_array_equal(exported["layers"][n][name]["w"], base["layers"][n][name]["w"])
    np.testing.assert_array_equal(exported["embeddings"]["word"], base["embeddings"]["word"])
    np.testing.assert_array_equal(exported["layers"][2]["query"]["w"], tuned["layers"][2]["query"]["w"])
    assert np.abs(np.asarray(tuned["layers"][2]["query"]["w"]) - base["layers"][2]["query"]["w"]).max() > 0


DATA_PARALLEL = """
import json, sys
from configs.compose import compose
from emojax.training.loop import fit
data, bert, workdir = sys.argv[1:4]
out = {}
for devices in (1, 8):
    cfg = compose("dataset=MELD--E,encoders=T,mode=lora")
    cfg.dataset.path, cfg.encoders.T.model = data, bert
    cfg.finetune.lr, cfg.finetune.tune_layers = 1e-3, 1
    cfg.finetune.lora.update(rank=4, alpha=8.0)
    cfg.train.update(epochs=1, batch_size=16, lr=1e-2, patience=100, devices=devices)
    cfg.progress = False
    run_dir = fit(cfg, f"{workdir}/{devices}")
    history = json.loads((run_dir / "history.json").read_text())
    out[devices] = {"loss": [r["train_loss"] for r in history], "wf1": [r["dev"]["weighted_f1"] for r in history]}
print(json.dumps(out))
"""


@pytest.mark.slow
def test_tune_layers_data_parallel_matches_one_device(tmp_path, text_meld, bert3):
    """LoRA on the top layer, split over 8 (host) devices: the losses and scores of 1 device (the
    adapters' gradients summed across devices as the head's are)."""
    env = host_devices_env(8)
    env["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], str(pathlib.Path(__file__).parent)])
    done = subprocess.run([sys.executable, "-c", DATA_PARALLEL, str(text_meld), str(bert3), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(out["8"]["loss"], out["1"]["loss"], rtol=1e-4)
    np.testing.assert_allclose(out["8"]["wf1"], out["1"]["wf1"], atol=1e-6)


def test_tune_layers_config_errors_name_the_key(tmp_path, text_meld, bert3):
    for bad in (-1, 1.5, True, "2"):  # as a config.json may hold them
        written = tuning_config(text_meld, bert3, "trainable").to_dict()
        written["finetune"]["tune_layers"] = bad
        with pytest.raises(config_lib.ConfigError, match="finetune.tune_layers"):
            config_lib.validate(ml_collections.ConfigDict(written))
    with pytest.raises(TypeError):  # a composed config refuses a non-integer on assignment already
        tuning_config(text_meld, bert3, "trainable").finetune.tune_layers = 1.5
    with pytest.raises(config_lib.ConfigError, match="finetune.tune_layers: 4, but .* has 3 layers"):
        prepare(tuning_config(text_meld, bert3, "trainable", tune_layers=4), tmp_path)
    # 0 (the default: every layer) is the run of format 1 written before the key existed: the
    # migration writes the 0 out, giving the run today's hash (and directory)
    plain = tuning_config(text_meld, bert3, "trainable")
    assert plain.finetune.tune_layers == 0
    written = plain.to_dict()
    del written["finetune"]["tune_layers"]
    assert format_lib.format_1_hash(written) == format_lib.format_1_hash(plain)
    migrated = ml_collections.ConfigDict(format_lib.config_of_format_2(written)[0])
    assert config_lib.config_hash(migrated) == config_lib.config_hash(plain)
    tuned = tuning_config(text_meld, bert3, "trainable", tune_layers=2)
    assert config_lib.config_hash(tuned) != config_lib.config_hash(plain)
