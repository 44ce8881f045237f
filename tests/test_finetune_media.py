"""Fine-tuning the audio and video encoders (Whisper, wav2vec2 / data2vec-audio, VideoMAE, CLIP)
inside the train step, on the generated MELD-format demo (FLAC audio, MP4 video) with tiny random
checkpoints in the Hugging Face layout (the writers of tests/test_neural_features.py)."""
import json
import pathlib
import shutil

import jax
import numpy as np
import pytest

from emojax.training.evaluation import load_run, predict_proba, score
from emojax.training.batches import batch_of
from emojax.training.loop import fit
from emojax.training.preparation import prepare
from emojax.training.state import init_state, make_optimizer
from emojax.runs import store
from emojax.runs.checkpoint import RunCheckpoints
from emojax.runs.format import RunFormatError, migrate

pytest.importorskip("transformers")

from test_migrate import to_format_1  # noqa: E402
from test_neural_features import (SIZES, make_config, write_clip, write_data2vec_audio,  # noqa: E402
                                  write_videomae, write_wav2vec2, write_whisper)

WRITERS = {"whisper": write_whisper, "wav2vec2": write_wav2vec2, "data2vec-audio": write_data2vec_audio,
           "videomae": write_videomae, "clip": write_clip}
MODALITY = {"whisper": "A", "wav2vec2": "A", "data2vec-audio": "A", "videomae": "V", "clip": "V"}


@pytest.fixture(scope="module")
def media_checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("tuned-encoders")
    return {name: write(root / name) for name, write in WRITERS.items()}


@pytest.fixture(scope="module")
def media_demo(tmp_path_factory):
    from emojax.data.demo import generate_demo

    return generate_demo(tmp_path_factory.mktemp("tuning-demo") / "demo", seed=0, sizes=SIZES)


def tuning_config(demo, mode, epochs=3, **encoders):
    cfg = make_config(demo, **encoders)
    cfg.mode = mode
    cfg.train.update(epochs=epochs, patience=100, batch_size=7, lr=1e-2)
    cfg.finetune.lr = 1e-3
    cfg.finetune.lora.update(rank=4, alpha=8.0)
    return cfg


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, media_checkpoints, media_demo):
    """One LoRA run tuning Whisper (A) and CLIP (V): ``(cfg, run_dir, work)``, shared by the tests
    that read a finished tuned run."""
    work = tmp_path_factory.mktemp("lora-run")
    cfg = tuning_config(media_demo, "lora", epochs=3, A=("whisper", media_checkpoints["whisper"]),
                        V=("clip", media_checkpoints["clip"]))
    return cfg, fit(cfg, work), work


def _family(name):
    return "wav2vec2" if name == "data2vec-audio" else name


@pytest.mark.slow
@pytest.mark.parametrize("name", list(WRITERS))
def test_finetune_media_in_step_features_reproduce_frozen_features(tmp_path, media_checkpoints, media_demo, name):
    """Before any update, the features computed from the stored inputs (the train step's path)
    equal the frozen feature path's, for every family; a training batch feeds the step."""
    modality = MODALITY[name]
    cfg = tuning_config(media_demo, "trainable", **{modality: (_family(name), media_checkpoints[name])})
    prep = prepare(cfg, tmp_path)
    assert prep.tuning.modalities == (modality,)
    start = prep.tuning.init(jax.random.PRNGKey(0))
    for split in ("train", "dev"):
        data = prep.features[split]
        assert data.present[modality].all()
        refreshed = prep.tuning.refresh(data, start, batch_size=4)
        np.testing.assert_allclose(refreshed.features[modality], data.features[modality], atol=2e-4)
    batch = batch_of(prep.features["train"], np.arange(7))
    features = prep.tuning.features(start, prep.tuning.base_args, batch["inputs"], batch["present"])
    assert features[modality].shape == (7, prep.featurizer.dims[modality])
    if name != "data2vec-audio":  # its positional convolutions see the batch's padding
        np.testing.assert_allclose(np.asarray(features[modality]), prep.features["train"].features[modality][:7],
                                   atol=2e-4)


@pytest.mark.slow
def test_finetune_media_lora_run_tunes_audio_and_video_and_estimator_uses_them(lora_run, media_demo):
    import orbax.checkpoint as ocp

    from emojax.data import load_dataset
    from emojax.features.featurizer import standardize
    from emojax.inference import Estimator

    cfg, run_dir, work = lora_run
    results = json.loads((run_dir / "results.json").read_text())
    best = ocp.StandardCheckpointer().restore(run_dir / "best" / str(results["best_epoch"]) / "default")
    assert set(best["encoder"]) == {"A", "V"}
    # Whisper's and CLIP's attention and MLP projections carry adapters, and they trained.
    assert {k.rsplit(".", 1)[-1] for k in best["encoder"]["A"]} == {"query", "key", "value", "attn_out", "fc1",
                                                                     "fc2"}
    for adapters in best["encoder"].values():
        assert max(np.abs(a["b"]).max() for a in adapters.values()) > 0

    prep, eval_step, params, _ = load_run(run_dir, work)
    frozen = prepare(cfg, work).features["dev"]
    for m in ("A", "V"):
        assert np.abs(prep.features["dev"].features[m] - frozen.features[m]).max() > 1e-4  # the encoders moved
    rescored = score(eval_step, params, prep.features["dev"], len(prep.class_names), 64)
    assert rescored["accuracy"] == pytest.approx(results["dev"]["accuracy"])

    estimator = Estimator(run_dir)
    assert estimator.tuned_modalities == ("A", "V")
    dev = load_dataset("meld", str(media_demo), target="emotion").splits["dev"]
    again = standardize(estimator.featurizer.split_features(dev), estimator.feature_stats)
    for m in ("A", "V"):
        np.testing.assert_allclose(again.features[m], prep.features["dev"].features[m], atol=2e-4)
    probs = predict_proba(estimator._eval_step, estimator.params, again, 64)
    assert float((probs.argmax(-1) == again.labels).mean()) == pytest.approx(results["dev"]["accuracy"])


@pytest.mark.slow
def test_finetune_media_trainable_with_text_frozen_and_unreadable_file(tmp_path, media_checkpoints, media_demo,
                                                                       tiny_bert, caplog, monkeypatch):
    """``finetune.tune=A``: only wav2vec2 is tuned (BERT stays frozen); a corrupt audio file is a
    logged skip (the sample lacks audio); the run written by format 1 (wav2vec2's earlier layer
    names in its checkpoints and weights hash) is refused, and restores as trained once migrated;
    the stored inputs are read back, not recomputed."""
    import logging
    import shutil

    from emojax.encoders import media_encoders

    demo = tmp_path / "demo"
    shutil.copytree(media_demo, demo)
    cfg = tuning_config(demo, "trainable", epochs=1, T=("bert", tiny_bert),
                        A=("wav2vec2", media_checkpoints["wav2vec2"]))
    cfg.finetune.tune = "A"
    cfg.train.keep_state = True  # the training state is restored below
    from emojax.data import load_dataset

    broken = pathlib.Path(load_dataset("meld", str(demo), target="emotion").splits["train"].samples[3].audio)
    broken.write_bytes(b"not audio")
    with caplog.at_level(logging.WARNING):
        run_dir = fit(cfg, tmp_path / "work")
    assert any("skipping A input" in r.getMessage() and str(broken) in r.getMessage() for r in caplog.records)
    prep, _, params, _ = load_run(run_dir, tmp_path / "work")
    assert prep.tuning.modalities == ("A",)
    assert not prep.features["train"].present["A"][3] and prep.features["train"].present["A"].sum() == 13

    # the stored inputs are reused: preparing again (the frozen features) decodes no file
    def refuse(self, path):
        raise AssertionError(f"decoded {path} again")

    # The run as format 1 wrote it: wav2vec2's layer arrays checkpointed under their earlier names
    # (final_norm, intermediate, output), its store entry named by the weights hash taken on them.
    # Refused until migrated; migrated, it restores as written: the state a resume starts from and
    # the selected epoch's parameters; the files are read, not rewritten.
    target = init_state(prep, make_optimizer(cfg, 1))
    with RunCheckpoints(run_dir) as checkpoints:
        state = checkpoints.restore_state(1, target)
    entry = store.resolve_run_encoder(run_dir, "A")
    assert _store_under_earlier_names(run_dir, {"A": "wav2vec2"}) == 2  # state/1, best/1
    earlier = to_format_1(run_dir, tmp_path / "work", layer_keys={"A": EARLIER_LAYER_KEYS["wav2vec2"]})
    with pytest.raises(RunFormatError, match=r"\(run format 1\); run python -m launch.tool migrate"):
        load_run(earlier, tmp_path / "work")
    (move,) = migrate(tmp_path / "work", apply=True)
    assert (move.source, move.target, move.done, move.refused) == (earlier, run_dir, True, None)
    assert "layer keys of best/1, state/1" in move.changes and move.rehashed == ["A"]
    assert store.resolve_run_encoder(run_dir, "A") == entry  # stored again under today's hash
    saved = _files(run_dir)
    with RunCheckpoints(run_dir) as checkpoints:
        _assert_same(checkpoints.restore_state(1, target), state)
    _assert_same(load_run(run_dir, tmp_path / "work")[2], params)
    assert _files(run_dir) == saved

    monkeypatch.setattr(media_encoders.Wav2Vec2Features, "tuning_item", refuse)
    frozen = prepare(cfg, tmp_path / "work").features
    assert np.abs(prep.features["dev"].features["A"] - frozen["dev"].features["A"]).max() > 1e-4
    np.testing.assert_array_equal(prep.features["dev"].features["T"], frozen["dev"].features["T"])
    again = frozen["train"]
    assert not again.present["A"][3] and again.present["A"].sum() == 13


@pytest.mark.slow
def test_finetune_media_extract_encoders_writes_tuned_weights(tmp_path, lora_run):
    """extract-encoders writes the tuned audio / video encoders (adapters merged) as Hugging Face
    folders that load back to the estimator's weights."""
    from emojax.encoders.clip_vision import load_clip_vision
    from emojax.encoders.whisper import load_whisper
    from emojax.inference import Estimator
    from emojax.inference.standalone import extract_encoders

    run_dir = lora_run[1]
    info = extract_encoders(run_dir, tmp_path / "extracted")
    assert info["A"]["tuned"] == "lora" and info["V"]["tuned"] == "lora"
    estimator = Estimator(run_dir)
    for m, load in (("A", load_whisper), ("V", load_clip_vision)):
        back, _ = load(str(tmp_path / "extracted" / m))
        tuned = estimator.featurizer.encoders[m].params
        for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(tuned)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert info[m]["hash"] == estimator.featurizer.encoders[m].weights_hash


# wav2vec2's layer keys as checkpoints (and weights hashes) of format 1 written before the shared
# encoder block held them (today's name -> that name), from emojax.encoders.wav2vec2 at the time.
EARLIER_LAYER_KEYS = {"wav2vec2": {"mlp_norm": "final_norm", "fc1": "intermediate", "fc2": "output"}}


def _with_earlier_names(tree, modality_family):
    """``tree`` (a restored checkpoint, nested dicts and lists) with each encoder layer's keys
    renamed to the earlier names of the family of the modality above it."""
    def walk(node, family, parent):
        if isinstance(node, dict):
            renames = EARLIER_LAYER_KEYS.get(family, {}) if parent == "layer" else {}
            return {renames.get(k, k): walk(v, modality_family.get(k, family), "layers" if k == "layers" else None)
                    for k, v in node.items()}
        if isinstance(node, (list, tuple)):
            return [walk(v, family, "layer" if parent == "layers" else None) for v in node]
        return node
    return walk(tree, None, None)


def _store_under_earlier_names(run_dir, modality_family) -> int:
    """Rewrite every Orbax checkpoint of ``run_dir`` with the encoders' layer arrays under their
    earlier names; returns how many changed."""
    import orbax.checkpoint as ocp

    changed = 0
    for item in sorted(run_dir.glob("*/[0-9]*/default")):
        checkpointer = ocp.StandardCheckpointer()
        tree = checkpointer.restore(item)
        earlier = _with_earlier_names(tree, modality_family)
        if jax.tree_util.tree_structure(earlier) != jax.tree_util.tree_structure(tree):
            changed += 1
            shutil.rmtree(item)
            checkpointer.save(item, earlier)
            checkpointer.wait_until_finished()
        checkpointer.close()
    return changed


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _assert_same(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
