"""Recipes (``recipe=``, configs/recipes.py): each composes to its parts and fields spelled out and
passes the run checks; parts named beside a recipe and command-line overrides win; the CPU
recipes train (MELD's: the encoder's top layers; IEMOCAP's: those and the dialogue context head
together, on long dialogues too)."""
import functools
import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import ml_collections
import pytest

from configs import recipes
from configs.compose import compose
from conftest import ROOT, WORDS, write_tiny_bert
from emojax import config as config_lib
from emojax.encoders.bert import bert_apply
from emojax.encoders.text import pool_hidden
from emojax.runs import checkpoint as ckpt_lib
from emojax.sweep import set_field
from emojax.training.dialogue_batches import DialogueBatches, dialogue_layout
from emojax.training.evaluation import load_run, predict_proba
from emojax.training.loop import fit
from emojax.training.plan import validate_config
from emojax.training.preparation import prepare
from emojax.training.state import best_target, init_state, make_optimizer

RECIPES = ("meld-cpu", "iemocap-cpu", "meld-gpu", "iemocap-gpu")


def spelled_out(parts: dict, fields: dict, extra: str = ""):
    """The config of ``parts`` composed, then ``fields`` (dotted keys) set: what a recipe stands for."""
    cfg = compose(",".join(f"{k}={v}" for k, v in parts.items()) + extra)
    for dotted, value in fields.items():
        set_field(cfg, dotted, value)
    return cfg


@pytest.fixture(scope="module")
def bert3(tmp_path_factory) -> pathlib.Path:
    """A tiny random BERT with 3 layers: iemocap-cpu's top 2 are a part of it."""
    return write_tiny_bert(tmp_path_factory.mktemp("tiny-bert-3"), layers=3)


@pytest.fixture(scope="module")
def bert4(tmp_path_factory) -> pathlib.Path:
    """A tiny random BERT with 4 layers: meld-cpu's top 3 are a part of it."""
    return write_tiny_bert(tmp_path_factory.mktemp("tiny-bert-4"), layers=4)


# -- composition -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", RECIPES)
def test_recipe_is_its_parts_and_fields_and_passes_the_run_checks(name):
    recipe = recipes.PRESETS[name]
    cfg = compose(f"recipe={name}")
    validate_config(cfg)
    reference = spelled_out(recipe["parts"], recipe["fields"])
    assert cfg.to_dict() == reference.to_dict()
    assert config_lib.config_hash(cfg) == config_lib.config_hash(reference)  # one run, however spelled
    assert "recipe" not in cfg.parts
    assert cfg.dataset.name == recipe["parts"]["dataset"] and cfg.modalities == "T"


TEXT = {"family": "bert", "model": "sentence-transformers/all-MiniLM-L6-v2", "pooling": "mask", "prompt": True,
        "context_turns": 0, "max_length": 128}


def test_meld_cpu_tunes_the_top_three_layers_without_a_context_head():
    """The best setting of the meld-cpu sweep (configs/experiments/meld_cpu.py, top3-mean-no-context):
    the utterance alone, mean-pooled, without the prompt."""
    cfg = compose("recipe=meld-cpu")
    assert cfg.dataset.name == "MELD--E" and cfg.mode == "trainable"
    assert cfg.finetune.tune_layers == 3 and cfg.finetune.lr == 3e-4  # mode=top2's encoder lr
    assert cfg.encoders.T.to_dict() == dict(TEXT, pooling="mean", prompt=False)
    assert "context" not in cfg.model and "context" not in cfg.parts
    assert (cfg.train.lr, cfg.train.epochs, cfg.train.batch_size) == (1e-3, 4, 32)
    assert cfg.loss.classification == "ce" and dict(cfg.loss.extras) == {}


def test_iemocap_cpu_tunes_the_top_two_layers_with_the_gru_context_head():
    cfg = compose("recipe=iemocap-cpu")
    assert cfg.dataset.name == "IEMOCAP--E" and cfg.mode == "trainable"
    assert cfg.finetune.tune_layers == 2 and cfg.finetune.lr == 3e-4
    assert cfg.encoders.T.to_dict() == TEXT
    assert cfg.model.context.kind == "gru" and not cfg.model.context.causal and cfg.model.context.dim == 128
    assert (cfg.train.lr, cfg.train.epochs, cfg.train.batch_size) == (5e-4, 4, 128)
    assert dict(cfg.loss.extras) == {}  # the context head takes per-utterance losses only


# The PyTorch suite's SPCL run (emotion-recognition-lab/emotion-recognition: configs/encoders/T.toml,
# configs/dataset/*.toml, configs/losses/spcl.toml, the trainer's AdamW and schedule, the MELD prompt).
SUITE_SPCL = {"model": "FacebookAI/roberta-large", "lr": 1e-6, "weight_decay": 0.01, "epochs": 200,
              "warmup_epochs": 1, "patience": 20, "clip_norm": 10.0, "temperature": 0.08, "pool_size": 512,
              "support_set_size": 64, "batch": {"MELD--E": 2, "IEMOCAP--E": 4}}


@pytest.mark.parametrize("name, dataset", [("meld-gpu", "MELD--E"), ("iemocap-gpu", "IEMOCAP--E")])
def test_gpu_recipes_hold_the_suites_spcl_setting(name, dataset):
    """Config only: the recipes name a hub model and are not trained here."""
    cfg = compose(f"recipe={name}")
    suite = SUITE_SPCL
    assert cfg.dataset.name == dataset and cfg.mode == "trainable" and cfg.finetune.tune_layers == 0
    text = cfg.encoders.T
    assert (text.family, text.model) == ("bert", suite["model"])
    # The whole dialogue so far, "... </s> Now <sK> feels <mask>", pooled at the mask, 512 tokens.
    assert (text.context_turns, text.prompt, text.pooling, text.max_length) == (-1, True, "mask", 512)
    assert cfg.finetune.lr == cfg.train.lr == suite["lr"]
    assert cfg.train.weight_decay == suite["weight_decay"] and cfg.train.clip_norm == suite["clip_norm"]
    assert cfg.train.epochs == suite["epochs"] and cfg.train.patience == suite["patience"]
    assert cfg.train.warmup_ratio * cfg.train.epochs == pytest.approx(suite["warmup_epochs"])
    assert cfg.train.batch_size == suite["batch"][dataset]
    assert cfg.loss.classification == "ce" and list(cfg.loss.extras) == ["spcl"]
    spcl = cfg.loss.extras.spcl
    assert (spcl.temperature, spcl.pool_size, spcl.support_set_size) == (
        suite["temperature"], suite["pool_size"], suite["support_set_size"])
    assert cfg.precision == "float32"


def test_parts_named_beside_a_recipe_replace_its_parts():
    recipe = recipes.PRESETS["meld-cpu"]
    fields = recipe["fields"]
    focal = compose("recipe=meld-cpu,loss=focal")
    assert focal.to_dict() == spelled_out({**recipe["parts"], "loss": "focal"}, fields).to_dict()
    assert focal.loss.classification == "focal" and focal.finetune.tune_layers == 3
    joint = compose("recipe=meld-cpu,context=gru")
    assert joint.model.context.kind == "gru" and joint.finetune.tune_layers == 3 and joint.train.lr == 1e-3
    # Named in any order, the other part wins.
    assert compose("loss=focal,recipe=meld-cpu").to_dict() == focal.to_dict()
    frozen = compose("recipe=meld-cpu,mode=frozen,context=none")
    assert frozen.mode == "frozen" and "context" not in frozen.model and "context" not in frozen.parts
    assert frozen.to_dict() == spelled_out({"dataset": "MELD--E", "encoders": "T"}, fields).to_dict()
    sentiment = compose("recipe=meld-cpu,dataset=MELD--S")
    assert sentiment.dataset.target == "sentiment" and sentiment.finetune.tune_layers == 3
    # A recipe field whose section a named part leaves out is not set: no text encoder, no text fields.
    audio = compose("recipe=meld-gpu,encoders=A,mode=frozen")
    assert set(audio.encoders) == {"A"} and audio.train.batch_size == 2
    validate_config(audio)


def test_command_line_overrides_win_over_the_recipe(tmp_path):
    """The launchers' form: ``--config=configs/train.py:recipe=...`` then ``--config.<field>=`` overrides."""
    code = ("import sys, json; from absl import flags; from ml_collections import config_flags;"
            "C = config_flags.DEFINE_config_file('config', lock_config=True); flags.FLAGS(sys.argv);"
            "print(json.dumps(C.value.to_dict()))")
    args = ["--config=configs/train.py:recipe=iemocap-cpu,loss=focal", "--config.train.epochs=6",
            f"--config.dataset.path={tmp_path}", "--config.model.context.dim=64"]
    out = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    cfg = ml_collections.ConfigDict(json.loads(out.stdout))
    assert cfg.train.epochs == 6 and cfg.dataset.path == str(tmp_path) and cfg.model.context.dim == 64
    assert cfg.loss.classification == "focal" and cfg.train.lr == 5e-4  # the rest stays the recipe's
    reference = compose("recipe=iemocap-cpu,loss=focal")
    reference.train.epochs, reference.dataset.path, reference.model.context.dim = 6, str(tmp_path), 64
    assert cfg.to_dict() == json.loads(json.dumps(reference.to_dict()))  # tuples come back as lists
    validate_config(cfg)


def test_unknown_recipe_and_unknown_recipe_field_are_named(monkeypatch):
    with pytest.raises(config_lib.ConfigError, match=r"unknown recipe 'meld'; choices: iemocap-cpu, iemocap-gpu, "
                                                     r"meld-cpu, meld-gpu"):
        compose("recipe=meld")
    with pytest.raises(config_lib.ConfigError, match="config part 'recipe' is given twice"):
        compose("recipe=meld-cpu,recipe=meld-gpu")
    monkeypatch.setitem(recipes.PRESETS, "typo", {"parts": {"dataset": "MELD--E"}, "fields": {"train.epochz": 3}})
    with pytest.raises(config_lib.ConfigError, match=r"recipe=typo: field 'train.epochz' is not a field"):
        compose("recipe=typo")


# -- training ----------------------------------------------------------------------------------

def restored_encoder(run_dir: pathlib.Path, prep):
    """The fine-tuned encoder part of the run's selected epoch, as its checkpoint holds it."""
    progress = ckpt_lib.finished_run(run_dir)
    state = init_state(prep, make_optimizer(prep.cfg, 1))
    with ckpt_lib.RunCheckpoints(run_dir, keep_epochs=int(prep.cfg.train.keep_epochs)) as checkpoints:
        return checkpoints.restore_best(best_target(state, prep.tuning), progress["best_epoch"])["encoder"]


def reference_text_features(tuner, whole, rows, pooling="mask") -> np.ndarray:
    """Standardised ``pooling``-pooled features of the whole encoder ``whole`` on every row, in one
    batch padded to ``max_length`` (no stored hidden states, no length buckets)."""
    ids = np.full((len(rows), rows.widths[-1]), rows.pad_id, np.int32)
    mask = np.zeros_like(ids)
    for r, row in enumerate(rows.ids):
        ids[r, :len(row)], mask[r, :len(row)] = row, 1

    @jax.jit
    def features(params, ids, mask):
        hidden = bert_apply(params, ids, mask, config=tuner.encoder.config)
        pooled = pool_hidden(hidden, mask, ids, pooling=pooling, mask_token_id=tuner.encoder.tokenizer.mask_token_id)
        return (pooled - tuner.mean) / tuner.std

    return np.asarray(features(whole, ids, mask))


def reference_dialogue_probabilities(prep, params, data) -> np.ndarray:
    """Class probabilities of every row of ``data``: each dialogue alone through the model (its
    turns in order, speakers numbered by first appearance), no padding."""
    apply = jax.jit(functools.partial(prep.model.apply, deterministic=True))
    probs = np.zeros((len(data), len(prep.class_names)), np.float32)
    layout = dialogue_layout(data)
    for rows, speakers in zip(layout.rows, layout.speakers):
        features = {m: jnp.asarray(data.features[m][rows]) for m in data.features}
        present = {m: jnp.ones(len(rows), bool) for m in data.features}
        logits, _, _ = apply({"params": params}, features, present, batch_mask=jnp.ones(len(rows), bool),
                             speakers=jnp.asarray(speakers[None]))
        probs[rows] = np.asarray(jax.nn.softmax(logits, axis=-1))
    return probs


def train_one_epoch_of_top_layers(cfg, tmp_path, tuned: set):
    """``fit`` one epoch of ``cfg``; checks that the selected epoch's encoder holds exactly the
    layers ``tuned`` (their numbers), each moved from the checkpoint's, and that the tuner starts
    at the lowest of them. Returns the run's results, its prepared data, eval step, parameters,
    tuner and restored encoder."""
    cfg.train.epochs, cfg.progress = 1, False
    run_dir = fit(cfg, tmp_path)
    results = json.loads((run_dir / "results.json").read_text())
    prep, eval_step, params, _ = load_run(run_dir)
    tuner = prep.tuning.tuners["T"]
    assert tuner.start == min(tuned)
    encoder = restored_encoder(run_dir, prep)["T"]
    assert set(encoder["layers"]) == {str(n) for n in tuned}
    for n in sorted(tuned):
        moved = [float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree_util.tree_leaves(encoder["layers"][str(n)]),
                                                                jax.tree_util.tree_leaves(tuner.whole["layers"][n]))]
        assert max(moved) > 1e-4, f"layer {n} was not trained"
    return results, prep, eval_step, params, tuner, encoder


@pytest.mark.slow
def test_meld_cpu_trains_its_top_layers(tmp_path, text_meld, bert4):
    """One epoch of meld-cpu (tiny 4-layer BERT, tiny MELD-format set): the selected epoch holds
    its top 3 layers trained and the bottom one the checkpoint's; its dev scores are those of the
    whole encoder with those layers, each utterance alone."""
    cfg = compose("recipe=meld-cpu")
    cfg.dataset.path, cfg.encoders.T.model = str(text_meld), str(bert4)
    results, prep, eval_step, params, tuner, encoder = train_one_epoch_of_top_layers(cfg, tmp_path, {1, 2, 3})
    assert "context" not in params
    dev = prep.features["dev"]
    assert cfg.encoders.T.pooling == "mean"
    expected = reference_text_features(tuner, tuner.merged(encoder), dev.inputs["T"], pooling="mean")
    np.testing.assert_allclose(dev.features["T"], expected, rtol=1e-4, atol=1e-4)
    scored = predict_proba(eval_step, params, dev, int(cfg.train.eval_batch_size))
    assert results["dev"]["accuracy"] == pytest.approx(float(np.mean(scored.argmax(-1) == dev.labels)))


@pytest.mark.slow
def test_top_layers_and_context_head_train_together(tmp_path, text_meld, bert3):
    """One epoch of meld-cpu with the context head (``context=gru``, top 2 of a tiny 3-layer BERT,
    tiny MELD-format set): the selected epoch holds trained top layers (the bottom one stays the
    checkpoint's) and a context head; the scores it wrote are those of the whole encoder with
    those layers, each utterance alone, then each dialogue alone."""
    cfg = compose("recipe=meld-cpu,context=gru")
    cfg.finetune.tune_layers, cfg.encoders.T.pooling, cfg.encoders.T.prompt = 2, "mask", True
    cfg.dataset.path, cfg.encoders.T.model = str(text_meld), str(bert3)
    results, prep, eval_step, params, tuner, encoder = train_one_epoch_of_top_layers(cfg, tmp_path, {1, 2})
    assert "context" in params and "speaker" in params["context"]
    dev = prep.features["dev"]
    expected = reference_text_features(tuner, tuner.merged(encoder), dev.inputs["T"])
    np.testing.assert_allclose(dev.features["T"], expected, rtol=1e-4, atol=1e-4)
    reference = reference_dialogue_probabilities(prep, params, dev)
    scored = predict_proba(eval_step, params, dev, int(cfg.train.eval_batch_size))
    np.testing.assert_allclose(scored, reference, atol=1e-5)
    accuracy = float(np.mean(reference.argmax(-1) == dev.labels))
    assert results["dev"]["accuracy"] == pytest.approx(accuracy)


IEMOCAP_WORDS = {"neu": "neutral", "ang": "anger", "exc": "surprise", "fru": "disgust", "hap": "joy", "sad": "sadness"}
FILLER = ["i", "am", "so", "the", "is", "now", "okay", "really"]
# Turns per dialogue: IEMOCAP's longest dialogues run past 100 turns.
LONG_DIALOGUES = {"train": (110, 101, 60, 20), "dev": (105, 14), "test": (120, 7)}


def write_long_iemocap(folder, lengths=LONG_DIALOGUES, seed: int = 0) -> pathlib.Path:
    """IEMOCAP_{train,dev,test}.csv in the release's layout (utterance ids in ``Speaker``, F and M
    turns numbered apart, order by ``Start_Time``, one row out of time order per dialogue, media
    paths that are absent) with dialogues of ``lengths`` turns and class words in each utterance
    of 2 to 12 words."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    labels = list(IEMOCAP_WORDS)
    number = 0
    for split, dialogue_lengths in lengths.items():
        rows = []
        for turns in dialogue_lengths:
            number += 1
            session = f"Ses0{1 + number % 5}"
            dialogue = f"{session}F_impro{number:02d}"
            counts = {"F": 0, "M": 0}
            block = []
            for turn in range(turns):
                who = "FM"[turn % 2] if rng.random() < 0.8 else "MF"[turn % 2]
                label = labels[rng.integers(len(labels))]
                words = list(rng.choice(WORDS[IEMOCAP_WORDS[label]], size=2))
                words += list(rng.choice(FILLER, size=int(rng.integers(0, 11))))
                rng.shuffle(words)
                start = 2.0 + 3.0 * turn
                block.append({"Utterance": " ".join(words), "Speaker": f"{dialogue}_{who}{counts[who]:03d}",
                              "Dialogue_ID": dialogue, "Start_Time": f"{start:.4f}", "End_Time": f"{start + 2.5:.4f}",
                              "Wav_Path": f"./dataset/IEMOCAP_full_release/{session}/sentences/wav/{dialogue}/"
                                          f"{dialogue}_{who}{counts[who]:03d}.wav",
                              "Video_Path": f"./dataset/IEMOCAP_full_release/{session}/dialog/avi/DivX/{dialogue}.avi",
                              "Emotion": label})
                counts[who] += 1
            if turns > 3:
                block[1], block[2] = block[2], block[1]  # the release's rows are nearly in time order
            rows += block
        pd.DataFrame(rows).to_csv(folder / f"IEMOCAP_{split}.csv", index=False)
    return folder


@pytest.mark.slow
def test_iemocap_cpu_batches_long_dialogues_whole_and_trains(tmp_path, bert3):
    """Dialogues of 100+ turns: every training batch of iemocap-cpu is 128 utterance slots (two
    dialogues of up to 64 turns, or one of up to 128), each dialogue whole in one batch in the
    order of its Start_Time; one epoch trains and scores dev and test."""
    data = write_long_iemocap(tmp_path / "IEMOCAP")
    cfg = compose("recipe=iemocap-cpu")
    cfg.dataset.path, cfg.encoders.T.model = str(data), str(bert3)
    cfg.train.epochs, cfg.progress = 1, False
    prep = prepare(cfg, tmp_path / "runs")
    train = prep.features["train"]
    csv = pd.read_csv(data / "IEMOCAP_train.csv")
    in_time = {d: [f"train/{u}" for u in g.sort_values("Start_Time", kind="stable").Speaker]
               for d, g in csv.groupby("Dialogue_ID")}
    batches = list(DialogueBatches(train, int(cfg.train.batch_size), int(cfg.seed)).batches(1))
    assert {len(b["mask"]) for b in batches} == {128}
    shapes = sorted(b["speakers"].shape for b in batches)
    assert shapes == [(1, 128), (1, 128), (2, 64)]  # 110 | 101 | 60 and 20
    seen = []
    for batch in batches:
        dialogues, turns = batch["speakers"].shape
        index, mask = batch["index"].reshape(dialogues, turns), batch["mask"].reshape(dialogues, turns)
        for slot in range(dialogues):
            rows = index[slot][mask[slot]]
            if not len(rows):
                continue
            ids = set(train.dialogues[rows])
            assert len(ids) == 1
            (dialogue,) = ids
            seen.append(dialogue)
            assert [train.uids[i] for i in rows] == in_time[dialogue]
    assert sorted(seen) == sorted(in_time)
    run_dir = fit(cfg, tmp_path / "runs")
    results = json.loads((run_dir / "results.json").read_text())
    assert results["dev"]["scored"] and results["test"]["scored"]
    assert results["dev"]["count"] == sum(LONG_DIALOGUES["dev"])
