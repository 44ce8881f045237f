"""A run's identity: its label names the text path, it records the data it was trained on and
refuses other data, and inference uses the encoder weights it trained with (its store entry)."""
import json
import logging
import re
import shutil

import numpy as np
import pytest

from emojax.training.preparation import load_data
from safetensors.numpy import load_file, save_file

from conftest import write_tiny_bert
from configs.compose import compose
from emojax import config as config_lib
from emojax.runs import store
from emojax.training.loop import fit
from emojax.training.preparation import DataChangedError, data_record
from emojax.runs.checkpoint import CheckpointError

TEXTS = ["i am so happy wonderful", "sad lonely cry", "gross nasty ew"]


def _config(data, bert, *, epochs=1, prompt=False):
    cfg = compose("dataset=MELD--E,encoders=T,loss=ce")
    cfg.dataset.path = str(data)
    cfg.encoders.T.model = str(bert)
    cfg.encoders.T.prompt = prompt
    cfg.train.epochs = epochs
    cfg.train.batch_size = 16
    cfg.train.lr = 1e-2
    cfg.progress = False
    return cfg


# ---------------------------------------------------------------------------------------------
# 1. The label names the text path
# ---------------------------------------------------------------------------------------------
def test_label_and_run_dir_differ_by_text_path():
    base = compose("dataset=MELD--E,encoders=T,loss=ce")
    assert config_lib.run_label(base) == "MELD--E T vallina ce 1xE frozen T[pool=mean,ctx=0,len=64] seed=0"
    changes = {"pooling": "cls", "context_turns": 3, "prompt": True, "max_length": 128}
    labels, dirs = {config_lib.run_label(base)}, {config_lib.run_dir(base, "runs")}
    for key, value in changes.items():
        cfg = compose("dataset=MELD--E,encoders=T,loss=ce")
        cfg.encoders.T[key] = value
        config_lib.validate(cfg)
        labels.add(config_lib.run_label(cfg))
        dirs.add(config_lib.run_dir(cfg, "runs"))
    assert len(labels) == len(dirs) == 1 + len(changes)
    # Fine-tuned runs read the prompt at the mask token over the whole dialogue.
    tuned = compose("dataset=MELD--E,encoders=T,mode=trainable")
    assert "T[pool=mask,ctx=all,prompt,len=128] seed=0" in config_lib.run_label(tuned)
    # No text modality, no text part; the label without the seed still names the config.
    assert "T[" not in config_lib.run_label(compose("dataset=MELD--E,encoders=A+V"))
    assert config_lib.run_label(base).rsplit(" seed=", 1)[0].endswith("T[pool=mean,ctx=0,len=64]")


# ---------------------------------------------------------------------------------------------
# 2. A run records its data and refuses other data
# ---------------------------------------------------------------------------------------------
def _outputs(run_dir):
    return {name: (run_dir / name).read_bytes() for name in ("results.json", "meta.json", "data.json",
                                                             "progress.json")}


@pytest.mark.slow
def test_finished_run_refuses_changed_data(tmp_path, text_meld, tiny_bert, launcher):
    data = tmp_path / "data"
    shutil.copytree(text_meld, data)
    cfg = _config(data, tiny_bert)
    run_dir = fit(cfg, tmp_path / "runs")
    record = json.loads((run_dir / "data.json").read_text())
    assert record["path"] == str(data.resolve())
    assert sorted(record["files"]) == ["dev_sent_emo.csv", "test_sent_emo.csv", "train_sent_emo.csv"]
    assert all(re.fullmatch(r"[0-9a-f]{64}", digest) for digest in record["files"].values())
    before = _outputs(run_dir)

    # The same data: rescored as before, same bytes.
    assert fit(cfg, tmp_path / "runs") == run_dir
    assert _outputs(run_dir) == before

    # One CSV changed: refused, naming the file; nothing rewritten.
    original = (data / "dev_sent_emo.csv").read_text()
    (data / "dev_sent_emo.csv").write_text(original.replace("lonely", "sorry", 1))
    with pytest.raises(DataChangedError,
                       match=rf"{re.escape(str(data.resolve() / 'dev_sent_emo.csv'))}: has changed .*new --workdir"):
        fit(cfg, tmp_path / "runs")
    assert _outputs(run_dir) == before
    # A split file gone since is a change too.
    (data / "dev_sent_emo.csv").write_text(original)
    (data / "test_sent_emo.csv").rename(data / "moved.csv")
    with pytest.raises(DataChangedError, match=r"test_sent_emo.csv: is gone"):
        fit(cfg, tmp_path / "runs")
    (data / "moved.csv").rename(data / "test_sent_emo.csv")

    # The same files in another folder: refused, naming both folders.
    other = tmp_path / "other"
    shutil.copytree(data, other)
    moved = _config(other, tiny_bert)
    with pytest.raises(DataChangedError,
                       match=rf"trained on {re.escape(str(data.resolve()))}, not {re.escape(str(other.resolve()))}"):
        fit(moved, tmp_path / "runs")
    assert _outputs(run_dir) == before

    # Data restored: accepted again, results unchanged.
    fit(cfg, tmp_path / "runs")
    assert _outputs(run_dir) == before

    # The launcher reports the refusal as one error line.
    (data / "train_sent_emo.csv").write_text((data / "train_sent_emo.csv").read_text() + "\n")
    out = launcher.run("train", "--config=configs/train.py:dataset=MELD--E,encoders=T,loss=ce",
                       f"--config.dataset.path={data}", f"--config.encoders.T.model={tiny_bert}",
                       "--config.train.epochs=1", "--config.train.batch_size=16", "--config.train.lr=0.01",
                       "--config.progress=False", f"--workdir={tmp_path / 'runs'}", timeout=300)
    assert out.returncode == 1, out.stderr[-3000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "train_sent_emo.csv: has changed" in last, out.stderr[-3000:]
    assert _outputs(run_dir) == before


@pytest.mark.slow
def test_unfinished_run_refuses_changed_data_and_old_runs_record_it(tmp_path, text_meld, tiny_bert):
    data = tmp_path / "data"
    shutil.copytree(text_meld, data)
    cfg = _config(data, tiny_bert, epochs=2)
    run_dir = fit(cfg, tmp_path / "runs", max_epochs=1)
    assert not (run_dir / "results.json").exists() and (run_dir / "data.json").exists()
    progress = (run_dir / "progress.json").read_bytes()
    (data / "train_sent_emo.csv").write_text((data / "train_sent_emo.csv").read_text().replace("lonely", "sorry"))
    with pytest.raises(DataChangedError, match=r"train_sent_emo.csv: has changed"):
        fit(cfg, tmp_path / "runs")
    assert (run_dir / "progress.json").read_bytes() == progress
    # A run written before runs recorded their data goes on, and records the data it now uses.
    (run_dir / "data.json").unlink()
    fit(cfg, tmp_path / "runs")
    assert (run_dir / "results.json").exists()
    recorded = json.loads((run_dir / "data.json").read_text())
    assert recorded == data_record(cfg, load_data(cfg))
    assert recorded["media"] == {}  # a text run reads no media file


# ---------------------------------------------------------------------------------------------
# 3. Inference uses the run's store entry
# ---------------------------------------------------------------------------------------------
def _probabilities(estimator):
    return np.array([list(estimator.predict(text=text)["probabilities"].values()) for text in TEXTS])


@pytest.mark.slow
def test_estimator_uses_the_store_entry_and_checks_its_weights(tmp_path, text_meld, caplog):
    from emojax.inference import Estimator

    bert = write_tiny_bert(tmp_path / "bert", seed=0)
    cfg = _config(text_meld, bert, prompt=True)  # speaker tokens: the entry's vocabulary grew
    run_dir = fit(cfg, tmp_path / "runs")
    expected = _probabilities(Estimator(run_dir))

    # The model folder now holds other weights: predictions still come from the stored encoder.
    write_tiny_bert(bert, seed=5)
    assert np.array_equal(_probabilities(Estimator(run_dir)), expected)

    entry = store.resolve_run_encoder(run_dir, "T")
    record = store.run_encoders(run_dir)["T"]
    # An entry written without the manifest's vocab_size is checked as well.
    manifest = json.loads((entry / "store.json").read_text())
    grown = json.loads((entry / "config.json").read_text())["vocab_size"]
    assert manifest["added_tokens"] and grown == manifest["vocab_size"] + len(manifest["added_tokens"])
    (entry / "store.json").write_text(json.dumps({k: v for k, v in manifest.items() if k != "vocab_size"}))
    assert np.array_equal(_probabilities(Estimator(run_dir)), expected)
    (entry / "store.json").write_text(json.dumps(manifest))

    # Other weights in the entry: refused, naming the entry.
    weights = entry / "model.safetensors"
    original = weights.read_bytes()
    tensors = load_file(str(weights))
    tensors["encoder.layer.0.output.dense.bias"] = tensors["encoder.layer.0.output.dense.bias"] + 0.5
    save_file(tensors, str(weights), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(entry))}: the encoder there .* not the one the run "
                                              rf"trained with \({record['hash'][:12]}"):
        Estimator(run_dir)
    weights.write_bytes(original)

    # A missing entry: refused, naming the link and the entry.
    hidden = entry.parent / "hidden"
    entry.rename(hidden)
    with pytest.raises(CheckpointError, match=rf"encoders/T: dangling link .*{record['hash']}"):
        Estimator(run_dir)
    hidden.rename(entry)

    # An encoder the run could not store: the config's model path, with a warning, and checked.
    (run_dir / "encoders" / "T").unlink()
    (run_dir / "encoders.json").write_text(json.dumps({"T": {**record, "error": "disk full"}}))
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(bert))}: the T encoder there"):
        Estimator(run_dir)
    write_tiny_bert(bert, seed=0)
    with caplog.at_level(logging.WARNING, logger="emojax.inference"):
        assert np.array_equal(_probabilities(Estimator(run_dir)), expected)
    assert "was not stored when the run trained (disk full)" in caplog.text
