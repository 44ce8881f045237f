"""Fine-tuning the text encoder: mode=trainable (all weights) and mode=lora (low-rank adapters)."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.compose import compose
from emojax.training.evaluation import load_run, predict_proba, score
from emojax.training.loop import fit
from emojax.training.preparation import prepare
from emojax.encoders import lora as lora_lib
from emojax.encoders.bert import bert_apply, load_bert


def tuning_config(data, bert, mode, epochs=3):
    cfg = compose(f"dataset=MELD--E,encoders=T,mode={mode}")
    cfg.dataset.path = str(data)
    cfg.encoders.T.model = str(bert)
    cfg.encoders.T.update(pooling="mean", prompt=False, context_turns=0)
    cfg.train.epochs = epochs
    cfg.train.patience = 100
    cfg.train.batch_size = 16
    cfg.train.lr = 1e-2
    cfg.finetune.lr = 1e-3
    cfg.finetune.lora.update(rank=4, alpha=8.0)
    cfg.progress = False
    return cfg


@pytest.mark.slow
def test_finetune_lora_adapters_fresh_equal_base_and_merge_matches_numpy(tiny_bert):
    params, config = load_bert(str(tiny_bert))
    adapters = lora_lib.init_lora(params, jax.random.PRNGKey(0), rank=4, targets="query,key,value,dense")
    # BERT's attention (query, key, value, attention_out) and MLP (intermediate, output) projections.
    assert sorted(adapters) == sorted(f"layers.{n}.{m}" for n in range(config.num_layers)
                                      for m in ("query", "key", "value", "attention_out", "intermediate", "output"))
    assert all(not np.any(np.asarray(a["b"])) for a in adapters.values())
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(5, config.vocab_size, size=(2, 9)), jnp.int32)
    mask = jnp.ones_like(ids)
    base = np.asarray(bert_apply(params, ids, mask, config=config))
    fresh = lora_lib.apply_lora(params, adapters, alpha=8.0, rank=4)
    np.testing.assert_array_equal(np.asarray(bert_apply(fresh, ids, mask, config=config)), base)

    trained = {k: {"a": v["a"], "b": jnp.asarray(rng.normal(size=v["b"].shape), jnp.float32) * 0.1}
               for k, v in adapters.items()}
    merged = lora_lib.merge_lora(params, trained, alpha=8.0, rank=4)
    a, b = np.asarray(trained["layers.1.value"]["a"]), np.asarray(trained["layers.1.value"]["b"])
    expected = np.asarray(params["layers"][1]["value"]["w"]) + (8.0 / 4) * a @ b
    np.testing.assert_allclose(np.asarray(merged["layers"][1]["value"]["w"]), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(merged["embeddings"]["word"]), np.asarray(params["embeddings"]["word"]))
    out = bert_apply(lora_lib.apply_lora(params, trained, alpha=8.0, rank=4), ids, mask, config=config)
    np.testing.assert_allclose(np.asarray(out), np.asarray(bert_apply(merged, ids, mask, config=config)), atol=1e-5)
    assert np.abs(np.asarray(out) - base).max() > 1e-3

    with pytest.raises(ValueError, match="no projection of this encoder matches"):
        lora_lib.init_lora(params, jax.random.PRNGKey(0), rank=4, targets="Wqkv")
    # Gradients reach B at initialisation (A's are zero while B is), and dropout needs an rng.
    grads = jax.grad(lambda ad: bert_apply(lora_lib.apply_lora(params, ad, alpha=8.0, rank=4), ids, mask,
                                           config=config).sum())(adapters)
    assert np.abs(np.asarray(grads["layers.0.query"]["b"])).max() > 0
    with pytest.raises(ValueError, match="rng"):
        lora_lib.apply_lora(params, adapters, alpha=8.0, rank=4, dropout=0.1, deterministic=False)


def test_finetune_in_step_features_reproduce_frozen_features(tmp_path, text_meld, tiny_bert):
    """Before any update, the features the train step computes from tokens equal the frozen
    feature path's (standardised, cached) features, for both modes."""
    for mode in ("trainable", "lora"):
        prep = prepare(tuning_config(text_meld, tiny_bert, mode), tmp_path)
        start = prep.tuning.init(jax.random.PRNGKey(0))
        for split in ("train", "dev"):
            refreshed = prep.tuning.refresh(prep.features[split], start, batch_size=16)
            np.testing.assert_allclose(refreshed.features["T"], prep.features[split].features["T"], atol=2e-4)


@pytest.mark.slow
def test_finetune_trainable_run_tunes_encoder_and_estimator_uses_it(tmp_path, text_meld, tiny_bert):
    from emojax.features.featurizer import standardize
    from emojax.inference import Estimator

    cfg = tuning_config(text_meld, tiny_bert, "trainable", epochs=10)
    run_dir = fit(cfg, tmp_path)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["dev"]["accuracy"] > 0.4  # chance is 1/7
    prep, eval_step, params, progress = load_run(run_dir, tmp_path)
    frozen = prepare(cfg, tmp_path).features["dev"].features["T"]
    tuned = prep.features["dev"].features["T"]
    assert np.abs(tuned - frozen).max() > 1e-2  # the encoder moved
    rescored = score(eval_step, params, prep.features["dev"], len(prep.class_names), 64)
    assert rescored["accuracy"] == pytest.approx(results["dev"]["accuracy"])

    estimator = Estimator(run_dir)
    # the tuned weights get their own feature-cache namespace
    assert estimator.featurizer.encoders["T"].namespace != prep.featurizer.encoders["T"].namespace
    from emojax.data import load_dataset

    dev = load_dataset("meld", str(text_meld), target="emotion").splits["dev"]
    again = standardize(estimator.featurizer.split_features(dev), estimator.feature_stats)
    np.testing.assert_allclose(again.features["T"], tuned, atol=2e-4)
    probs = predict_proba(estimator._eval_step, estimator.params, again, 64)
    assert 100 * float((probs.argmax(-1) == again.labels).mean()) == pytest.approx(100 * results["dev"]["accuracy"])

    # extract-encoders writes the tuned weights: a frozen run on that folder sees the tuned features
    from emojax.encoders.text import TextEncoder
    from emojax.inference.standalone import extract_encoders

    info = extract_encoders(run_dir, tmp_path / "extracted")
    assert info["T"]["tuned"] == "trainable"
    back = TextEncoder.from_pretrained(str(tmp_path / "extracted" / "T"))
    tuned_params = estimator.featurizer.encoders["T"].encoder.params
    for a, b in zip(jax.tree_util.tree_leaves(back.params), jax.tree_util.tree_leaves(tuned_params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
def test_finetune_lora_trains_only_adapters_and_resume_matches(tmp_path, text_meld, tiny_bert):
    import orbax.checkpoint as ocp

    cfg = tuning_config(text_meld, tiny_bert, "lora", epochs=3)
    full = fit(cfg, tmp_path / "full")
    fit(cfg, tmp_path / "split", max_epochs=1)
    resumed = fit(cfg, tmp_path / "split")
    history = [json.loads((d / "history.json").read_text()) for d in (full, resumed)]
    np.testing.assert_allclose([h["train_loss"] for h in history[0]], [h["train_loss"] for h in history[1]],
                               rtol=1e-5)
    best = ocp.StandardCheckpointer().restore(full / "best" / str(json.loads(
        (full / "progress.json").read_text())["best_epoch"]) / "default")
    adapters = best["encoder"]["T"]
    assert set(adapters) == {f"layers.{n}.{m}" for n in range(2)
                             for m in ("query", "key", "value", "attention_out", "intermediate", "output")}
    assert all(set(a) == {"a", "b"} and a["a"].shape[1] == 4 for a in adapters.values())
    assert max(np.abs(a["b"]).max() for a in adapters.values()) > 0  # the adapters trained
    results = json.loads((full / "results.json").read_text())
    assert results["dev"]["accuracy"] > 0.25  # chance is 1/7

    # the extracted encoder is the base with the adapters merged: W + (alpha / rank) A B
    from emojax.inference.standalone import extract_encoders

    extract_encoders(full, tmp_path / "extracted")
    merged, _ = load_bert(str(tmp_path / "extracted" / "T"))
    base, _ = load_bert(str(tiny_bert))
    a, b = adapters["layers.0.query"]["a"], adapters["layers.0.query"]["b"]
    np.testing.assert_allclose(np.asarray(merged["layers"][0]["query"]["w"]),
                               np.asarray(base["layers"][0]["query"]["w"]) + (8.0 / 4) * a @ b, rtol=1e-5, atol=1e-6)
