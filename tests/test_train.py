"""End to end: features -> jit-compiled training -> dev selection -> test scored once; resume."""
import json
import shutil

import jax
import numpy as np
import pytest

from emojax import config as config_lib
from emojax import train as train_lib


def text_config(data, bert, epochs=4, loss="ce"):
    cfg = config_lib.compose(f"dataset=MELD--E,encoders=T,loss={loss}")
    cfg.dataset.path = str(data)
    cfg.encoders.T.model = str(bert)
    cfg.train.epochs = epochs
    cfg.train.batch_size = 16
    cfg.train.lr = 1e-2
    cfg.progress = False
    return cfg


def test_train_text_run_end_to_end(tmp_path, text_meld, tiny_bert, monkeypatch):
    from emojax.encoders import text as text_lib

    calls = []
    original = text_lib.TextEncoder.encode

    def counting(self, texts, *args, **kwargs):
        calls.append(len(texts))
        return original(self, texts, *args, **kwargs)

    monkeypatch.setattr(text_lib.TextEncoder, "encode", counting)
    cfg = text_config(text_meld, tiny_bert, epochs=15)
    cfg.train.patience = 100
    run_dir = train_lib.fit(cfg, tmp_path)
    assert run_dir == config_lib.run_dir(cfg, tmp_path)
    # Frozen encoder: every split encoded once, before the first epoch, never again.
    assert sum(calls) == 140 + 42 + 42
    results = json.loads((run_dir / "results.json").read_text())
    assert 1 <= results["best_epoch"] <= 15
    assert results["dev"]["scored"] and results["test"]["scored"]
    # Class words are in the text: the head is well above chance (1/7) and close to a
    # scikit-learn logistic-regression probe on the same cached features.
    from sklearn.linear_model import LogisticRegression

    prep = train_lib.prepare(cfg, tmp_path)
    train, dev = prep.features["train"], prep.features["dev"]
    probe = LogisticRegression(max_iter=3000).fit(train.features["T"], train.labels)
    assert results["dev"]["accuracy"] > 0.4
    assert results["dev"]["accuracy"] >= probe.score(dev.features["T"], dev.labels) - 0.1
    calls.clear()
    history = json.loads((run_dir / "history.json").read_text())
    assert [row["epoch"] for row in history] == list(range(1, len(history) + 1))
    best_row = history[results["best_epoch"] - 1]
    assert results["dev"]["weighted_f1"] == pytest.approx(best_row["dev"]["weighted_f1"])
    assert results["dev"]["weighted_f1"] == max(row["dev"]["weighted_f1"] for row in history)
    for name in ("confusion_dev.png", "confusion_test.png", "history.png", "metrics.md", "config.json"):
        assert (run_dir / name).exists(), name
    # A second run of the same data reads every feature from the cache.
    cfg.seed = 1
    train_lib.fit(cfg, tmp_path)
    assert calls == []


@pytest.mark.parametrize("loss", ["ce", "focal+spcl"])
def test_resume_reproduces_uninterrupted_run(tmp_path, text_meld, tiny_bert, loss):
    """Parameters, optimizer, RNG, the SPCL pools and the data order survive a restart."""
    cfg = text_config(text_meld, tiny_bert, epochs=4, loss=loss)
    cfg.train.patience = 100
    whole = train_lib.fit(cfg, tmp_path / "a")
    interrupted = train_lib.fit(cfg, tmp_path / "b", max_epochs=2)
    assert not (interrupted / "results.json").exists()
    progress = json.loads((interrupted / "progress.json").read_text())
    assert progress["epoch"] == 2 and not progress["finished"]
    resumed = train_lib.fit(cfg, tmp_path / "b")
    a = json.loads((whole / "history.json").read_text())
    b = json.loads((resumed / "history.json").read_text())
    np.testing.assert_allclose([r["train_loss"] for r in a], [r["train_loss"] for r in b], rtol=1e-6)
    np.testing.assert_allclose([r["dev"]["weighted_f1"] for r in a], [r["dev"]["weighted_f1"] for r in b])
    ra = json.loads((whole / "results.json").read_text())
    rb = json.loads((resumed / "results.json").read_text())
    assert ra["best_epoch"] == rb["best_epoch"]
    assert ra["test"]["accuracy"] == rb["test"]["accuracy"]


def test_train_absent_test_split_not_scored(tmp_path, text_meld, tiny_bert):
    data = tmp_path / "data"
    shutil.copytree(text_meld, data)
    (data / "test_sent_emo.csv").unlink()
    cfg = text_config(data, tiny_bert, epochs=1)
    run_dir = train_lib.fit(cfg, tmp_path / "runs")
    results = json.loads((run_dir / "results.json").read_text())
    assert results["test"]["scored"] is False and "test" in results["test"]["reason"]
    assert results["dev"]["scored"] is True


def test_infer_estimator_and_evaluate(tmp_path, text_meld, tiny_bert):
    from emojax.inference import Estimator

    cfg = text_config(text_meld, tiny_bert, epochs=3)
    run_dir = train_lib.fit(cfg, tmp_path)
    estimator = Estimator(run_dir)
    out = estimator.predict(text="i am so happy wonderful")
    assert set(out["probabilities"]) == {"neutral", "joy", "surprise", "anger", "sadness", "disgust", "fear"}
    assert sum(out["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert out["predicted"] == max(out["probabilities"], key=out["probabilities"].get)
    # The estimator agrees with the batch evaluation of the same run on a dev utterance.
    prep, eval_step, params, _ = train_lib.load_run(run_dir, tmp_path)
    dev = prep.features["dev"]
    probs = train_lib.predict_proba(eval_step, params, dev, 8)
    sample = prep.featurizer.cfg  # noqa: F841  (the estimator rebuilt the same featurizer)
    from emojax.data import load_dataset

    first = load_dataset("meld", str(text_meld), target="emotion").splits["dev"].samples[0]
    single = estimator.predict(text=first.text)
    np.testing.assert_allclose(list(single["probabilities"].values()), probs[0], atol=1e-5)
    with pytest.raises(FileNotFoundError, match="nope.flac"):
        estimator.predict(text="hi", audio=str(tmp_path / "nope.flac"))
