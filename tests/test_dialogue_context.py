"""The dialogue context head: a sequence model over each dialogue's fused utterance vectors.

The head against NumPy transcriptions of its formulas; causality and padding checked by
perturbing inputs; dialogue batches and the masked losses against the per-utterance ones; a tiny
run end to end (training, resuming, scoring, batch and single prediction); the config's checks and
the hashes of runs without the head."""
import json
import logging
import math

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from configs.compose import compose
from configs.context import PRESETS
from emojax import config as config_lib
from emojax.model import losses as losses_lib
from emojax.model.dialogue import DialogueContext, check_context_run, context_spec
from emojax.training.evaluation import load_run, predict_proba
from emojax.features.featurizer import FeatureSet
from emojax.inference import Estimator, predict_table
from emojax.model.model import build_model
from emojax.runs import format as format_lib
from emojax.training import dialogue_batches as db
from emojax.training.loop import fit
from emojax.training.steps import make_eval_step, masked_classification_loss

TINY = {"layers": 1, "heads": 2, "dim": 8, "dropout": 0.0, "speakers": 3}
KINDS = [("transformer", False), ("transformer", True), ("gru", False), ("gru", True)]


def _model(kind, causal, fusion="vallina", modalities="T", dims=None):
    cfg = compose(f"encoders={modalities},fusion={fusion}")
    cfg.model.context = dict(TINY, kind=kind, causal=causal)
    if fusion != "vallina":
        cfg.fusion.project_inputs = 8
    dims = dims or {"T": 6}
    model = build_model(cfg, dims, 7)
    # Only the parameters' shapes are needed (their values are replaced below): traced, not run.
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                            {m: np.zeros((2, d), np.float32) for m, d in dims.items()},
                            {m: np.ones(2, bool) for m in dims})["params"]
    # Random values everywhere (LayerNorm scales and biases too), so every parameter matters.
    leaves, tree = jax.tree_util.tree_flatten(params)
    shapes = [x.shape for x in leaves]

    @jax.jit
    def randomize(key):
        keys = jax.random.split(key, len(shapes))
        return [0.5 * jax.random.normal(k, shape) for k, shape in zip(keys, shapes)]

    params = jax.tree_util.tree_unflatten(tree, randomize(jax.random.PRNGKey(1)))
    return model, params


def _logits(model, params, x, speakers, mask=None):
    """The model's logits ``(dialogues, turns, classes)`` for ``x[m] (dialogues, turns, dim)``."""
    features = {m: jnp.asarray(v.reshape(-1, v.shape[-1])) for m, v in x.items()}
    present = {m: jnp.ones(len(v), bool) for m, v in features.items()}
    mask = None if mask is None else jnp.asarray(mask.reshape(-1))
    logits, _, _ = _jitted_apply(model)({"params": params}, features, present, batch_mask=mask,
                                        speakers=jnp.asarray(speakers))
    return np.asarray(logits).reshape(speakers.shape + (-1,))


_APPLY: dict = {}


def _jitted_apply(model):
    """One compiled ``model.apply`` per model (and shape), kept with the model it belongs to."""
    if id(model) not in _APPLY:
        _APPLY[id(model)] = (model, jax.jit(model.apply))
    return _APPLY[id(model)][1]


# ---------------------------------------------------------------------------------------------
# The head against NumPy transcriptions
# ---------------------------------------------------------------------------------------------
def _np_norm(x, p, eps=1e-6):
    mean = x.mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + eps) * p["scale"] + p["bias"]


def _np_dense(x, p):
    return x @ p["kernel"] + p["bias"]


def _np_inputs(p, x, speakers, with_positions):
    h = _np_dense(x, p["input"])
    if with_positions:
        dim = h.shape[-1]
        table = np.zeros((x.shape[1], dim))
        for t in range(x.shape[1]):
            for i in range(0, dim, 2):
                table[t, i] = math.sin(t / 10000 ** (i / dim))
                table[t, i + 1] = math.cos(t / 10000 ** (i / dim))
        h = h + table[None]
    return h + p["speaker"]["embedding"][np.minimum(speakers, len(p["speaker"]["embedding"]) - 1)]


def np_transformer(p, x, speakers, mask, *, causal, heads):
    """Pre-LN transformer blocks over ``x (D, T, F)``, written out in NumPy."""
    h = _np_inputs(p, x, speakers, True)
    d, t, dim = h.shape
    size = dim // heads
    erf = np.vectorize(math.erf)
    for i in range(len([k for k in p if k.startswith("block_")])):
        b = p[f"block_{i}"]
        qkv = _np_dense(_np_norm(h, b["attention_norm"]), b["attention"]["qkv"]).reshape(d, t, 3, heads, size)
        out = np.zeros((d, t, heads, size))
        for n in range(d):
            for head in range(heads):
                q, k, v = qkv[n, :, 0, head], qkv[n, :, 1, head], qkv[n, :, 2, head]
                for query in range(t):
                    keys = [j for j in range(t) if mask[n, j] and (not causal or j <= query)]
                    scores = np.array([q[query] @ k[j] / math.sqrt(size) for j in keys])
                    weights = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()
                    out[n, query, head] = sum(w * v[j] for w, j in zip(weights, keys))
        h = h + _np_dense(out.reshape(d, t, dim), b["attention"]["out"])
        inner = _np_dense(_np_norm(h, b["mlp_norm"]), b["mlp_in"])
        h = h + _np_dense(0.5 * inner * (1 + erf(inner / math.sqrt(2))), b["mlp_out"])
    return _np_norm(h, p["final_norm"])


def _np_gru_cell(c, x, h):
    sig = lambda a: 1 / (1 + np.exp(-a))  # noqa: E731
    r = sig(_np_dense(x, c["ir"]) + h @ c["hr"]["kernel"])
    z = sig(_np_dense(x, c["iz"]) + h @ c["hz"]["kernel"])
    n = np.tanh(_np_dense(x, c["in"]) + r * _np_dense(h, c["hn"]))
    return (1 - z) * n + z * h


def np_gru(p, x, speakers, mask, *, causal):
    """Pre-LN residual GRU blocks, each dialogue read utterance by utterance (forward, and
    backward from its own last utterance unless causal)."""
    h = _np_inputs(p, x, speakers, False)
    d, _, dim = h.shape
    for i in range(len([k for k in p if k.startswith("block_")])):
        b = p[f"block_{i}"]
        a = _np_norm(h, b["norm"])
        out = np.zeros_like(h)
        for n in range(d):
            length = int(mask[n].sum())
            fwd, bwd, state = [], [None] * length, np.zeros(dim)
            for t in range(length):
                state = _np_gru_cell(b["forward"], a[n, t], state)
                fwd.append(state)
            state = np.zeros(dim)
            for t in reversed(range(length)):
                state = _np_gru_cell(b["backward"], a[n, t], state) if not causal else state
                bwd[t] = state
            for t in range(length):
                y = fwd[t] if causal else np.concatenate([fwd[t], bwd[t]])
                out[n, t] = _np_dense(y, b["out"])
        h = h + out
    return _np_norm(h, p["final_norm"])


@pytest.mark.slow
@pytest.mark.parametrize("kind,causal", KINDS)
def test_head_matches_numpy_transcription(kind, causal):
    spec = dict(TINY, kind=kind, causal=causal, layers=2)
    head = DialogueContext(**spec)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 4, 5)).astype(np.float32)
    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0]], bool)
    speakers = np.array([[0, 1, 0, 4], [0, 1, 0, 0]], np.int32)  # 4: beyond the table, shares the last row
    params = jax.eval_shape(head.init, jax.random.PRNGKey(0), x, speakers, mask)["params"]  # shapes only
    leaves, tree = jax.tree_util.tree_flatten(params)
    params = jax.tree_util.tree_unflatten(tree, [0.5 * rng.normal(size=a.shape).astype(np.float32) for a in leaves])
    got = np.asarray(jax.jit(head.apply)({"params": params}, x, speakers, mask))  # one program, not op by op
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    if kind == "transformer":
        want = np_transformer(p, x.astype(np.float64), speakers, mask, causal=causal, heads=TINY["heads"])
    else:
        want = np_gru(p, x.astype(np.float64), speakers, mask, causal=causal)
    np.testing.assert_allclose(got[mask], want[mask], atol=2e-4, rtol=2e-4)


# ---------------------------------------------------------------------------------------------
# Causality and padding
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("kind,causal", KINDS)
def test_causal_head_hides_later_utterances(kind, causal):
    model, params = _model(kind, causal)
    rng = np.random.default_rng(1)
    x = {"T": rng.normal(size=(1, 5, 6)).astype(np.float32)}
    speakers = np.array([[0, 1, 0, 1, 2]], np.int32)
    before = _logits(model, params, x, speakers)
    x["T"][0, 3] += 3.0  # a later utterance changes
    after = _logits(model, params, x, speakers)
    assert not np.allclose(before[0, 3:], after[0, 3:], atol=1e-4)  # itself (and, bidirectional, the rest)
    if causal:
        np.testing.assert_allclose(before[0, :3], after[0, :3], atol=1e-6)
    else:
        assert not np.allclose(before[0, :3], after[0, :3], atol=1e-4)


# Bidirectional heads: a causal one never looks past an utterance, into the padding.
@pytest.mark.parametrize("kind,causal", [("transformer", False), ("gru", False)])
def test_padding_dialogues_and_turns_changes_nothing(kind, causal):
    model, params = _model(kind, causal)
    rng = np.random.default_rng(2)
    x = {"T": rng.normal(size=(1, 3, 6)).astype(np.float32)}
    speakers = np.array([[0, 1, 0]], np.int32)
    alone = _logits(model, params, x, speakers)
    # The same dialogue second in a batch of three, beside longer ones, padded to 8 turns.
    batch = rng.normal(size=(3, 8, 6)).astype(np.float32)
    batch[1, :3] = x["T"][0]
    mask = np.array([[1] * 8, [1, 1, 1, 0, 0, 0, 0, 0], [1] * 6 + [0, 0]], bool)
    big_speakers = rng.integers(0, 3, size=(3, 8)).astype(np.int32)
    big_speakers[1, :3] = speakers[0]
    batched = _logits(model, params, {"T": batch}, big_speakers, mask)
    np.testing.assert_allclose(batched[1, :3], alone[0], atol=1e-5)
    # Padding slots hold anything: the real rows do not see them.
    batch[1, 3:] = 100.0
    np.testing.assert_allclose(_logits(model, params, {"T": batch}, big_speakers, mask)[1, :3], alone[0], atol=1e-5)


@pytest.mark.slow
def test_fusion_across_the_batch_sees_only_the_real_utterances():
    """With the suite's attention across the batch the fusion sees the batch's utterances; padding
    slots (whole dialogues of it too) are kept out, so the real rows score as in an unpadded batch."""
    dims = {"T": 6, "A": 4}
    model, params = _model("transformer", False, fusion="self-attention", modalities="T+A", dims=dims)
    rng = np.random.default_rng(3)
    x = {m: rng.normal(size=(2, 4, d)).astype(np.float32) for m, d in dims.items()}
    speakers = np.array([[0, 1, 0, 1], [0, 0, 1, 1]], np.int32)
    tight = _logits(model, params, x, speakers)
    padded = {m: np.full((4, 8, d), 7.0, np.float32) for m, d in dims.items()}
    for m in dims:
        padded[m][:2, :4] = x[m]
    mask = np.zeros((4, 8), bool)
    mask[:2, :4] = True
    big_speakers = np.zeros((4, 8), np.int32)
    big_speakers[:2, :4] = speakers
    loose = _logits(model, params, padded, big_speakers, mask)
    np.testing.assert_allclose(loose[:2, :4], tight, atol=1e-5)
    # Padding counted as real (same shapes, one compiled program): it leaks into the real rows.
    assert not np.allclose(_logits(model, params, padded, big_speakers, np.ones_like(mask))[:2, :4], tight,
                           atol=1e-4)


def _dialogue_set(lengths, dim=6, seed=4):
    """A feature set of dialogues ``lengths``, rows shuffled, positions with gaps."""
    rng = np.random.default_rng(seed)
    dialogues, positions, speakers = [], [], []
    for d, n in enumerate(lengths):
        dialogues += [str(d)] * n
        positions += [10 * t for t in range(n)]
        speakers += [["Ross", "Monica", "Joey"][(t * 2 + d) % 3] for t in range(n)]
    order = rng.permutation(len(dialogues))
    n = len(order)
    return FeatureSet({"T": rng.normal(size=(n, dim)).astype(np.float32)}, {"T": np.ones(n, bool)},
                      rng.integers(0, 7, n).astype(np.int32), [f"u{i}" for i in range(n)],
                      dialogues=np.asarray(dialogues, object)[order], positions=np.asarray(positions)[order],
                      speakers=np.asarray(speakers, object)[order])


@pytest.mark.parametrize("kind,causal", [("transformer", False), ("gru", True)])
def test_scoring_gives_each_dialogue_whole_in_any_batching(kind, causal):
    model, params = _model(kind, causal)
    data = _dialogue_set([3, 1, 6, 2, 5, 12, 1])
    eval_step = jax.jit(make_eval_step(model))
    layout = db.dialogue_layout(data)
    # Reference: every dialogue in one batch, its utterances put in position order by hand (padding
    # changes nothing: test_padding_dialogues_and_turns_changes_nothing).
    x, speakers = np.zeros((len(layout.rows), 12, 6), np.float32), np.zeros((len(layout.rows), 12), np.int32)
    mask = np.zeros((len(layout.rows), 12), bool)
    for d, rows in enumerate(layout.rows):
        names = list(data.speakers[rows])
        x[d, :len(rows)], mask[d, :len(rows)] = data.features["T"][rows], True
        speakers[d, :len(rows)] = [list(dict.fromkeys(names)).index(s) for s in names]
    logits = _logits(model, params, {"T": x}, speakers, mask)
    reference = np.zeros((len(data), 7))
    for d, rows in enumerate(layout.rows):
        reference[rows] = np.asarray(jax.nn.softmax(logits[d, :len(rows)], axis=-1))
    for batch_size in (4, 256):  # tight batches (long dialogues alone) and one loose batch
        np.testing.assert_allclose(predict_proba(eval_step, params, data, batch_size), reference, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Dialogue batches and the masked losses
# ---------------------------------------------------------------------------------------------
def test_dialogue_batches_cover_each_dialogue_once_in_position_order():
    data = _dialogue_set([3, 1, 7, 2, 5, 5, 12, 1, 4, 30])
    layout = db.dialogue_layout(data)
    for rows, speakers in zip(layout.rows, layout.speakers):
        assert len(set(data.dialogues[rows])) == 1
        assert list(data.positions[rows]) == sorted(data.positions[rows])
        names = list(data.speakers[rows])
        assert list(speakers) == [list(dict.fromkeys(names)).index(s) for s in names]  # by first appearance
    plans = {epoch: db.epoch_plan(layout, 16, seed=3, epoch=epoch) for epoch in (1, 2)}
    assert [g.tolist() for g in plans[1]] == [g.tolist() for g in db.epoch_plan(layout, 16, seed=3, epoch=1)]
    assert [g.tolist() for g in plans[1]] != [g.tolist() for g in plans[2]]
    shapes = set()
    for plan in plans.values():
        assert sorted(np.concatenate(plan).tolist()) == list(range(len(layout.rows)))
        for group in plan:
            batch = db.dialogue_batch(data, layout, group, 16)
            dialogues, turns = batch["speakers"].shape
            shapes.add((dialogues, turns))
            assert turns & (turns - 1) == 0 and (dialogues * turns == 16 or dialogues == 1)
            real = batch["index"][batch["mask"]]
            assert sorted(real.tolist()) == sorted(np.concatenate([layout.rows[d] for d in group]).tolist())
            np.testing.assert_array_equal(batch["labels"][batch["mask"]], data.labels[real])
    assert (1, 32) in shapes  # a dialogue longer than the batch has a batch of its own
    assert len(shapes) <= 6


@pytest.mark.parametrize("kind", ["ce", "weighted", "focal"])
def test_masked_loss_is_the_loss_of_the_real_rows(kind):
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(12, 7)).astype(np.float32)
    labels = rng.integers(0, 7, 12).astype(np.int32)
    mask = rng.random(12) < 0.6
    weights = rng.random(7).astype(np.float32) + 0.5
    got = masked_classification_loss(kind, logits, labels, weights, mask)
    want = losses_lib.classification_loss(kind, logits[mask], labels[mask], weights)
    np.testing.assert_allclose(float(got), float(want), rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------
def test_config_checks_name_the_key_and_runs_without_the_head_keep_their_hash():
    # Hashes of these configs as computed before the context head existed (format 1, the
    # migration's), by format 2 and today.
    before = {"dataset=MELD--E,encoders=T": ("fe33a7a7", "9051dbcb", "cacf2fa6"),
              "dataset=MELD--E,encoders=T,mode=lora": ("b707fc7f", "9e29a0d9", "e2d0b807")}
    for arg, (format_1, format_2, digest) in before.items():
        cfg = compose(arg)
        assert "context" not in cfg.model and context_spec(cfg) is None
        assert format_lib.format_1_hashes(cfg) == {format_1} and config_lib.config_hash(cfg) == digest
        assert format_lib.format_2_hash(cfg) == format_2
        with_head = compose(arg + ",context=transformer")
        assert config_lib.config_hash(with_head) != digest
        assert config_lib.run_dir(with_head, "runs") != config_lib.run_dir(cfg, "runs")
        assert context_spec(with_head) == PRESETS["transformer"]
    for name in PRESETS:
        cfg = compose(f"encoders=T,context={name}")
        assert (context_spec(cfg) is None) == (name == "none")
    bad = {"kind": ("lstm", "model.context.kind"), "heads": (3, "model.context.heads"),
           "layers": (0, "model.context.layers"), "dropout": (1.0, "model.context.dropout"),
           "causal": ("yes", "model.context.causal"), "window": (4, "model.context.window")}
    for key, (value, named) in bad.items():
        cfg = compose("encoders=T,context=transformer")
        cfg.model.context = {**PRESETS["transformer"], key: value}
        with pytest.raises(config_lib.ConfigError, match=named.replace(".", r"\.")):
            context_spec(cfg)
    with pytest.raises(config_lib.ConfigError, match=r"loss\.extras\.spcl"):
        check_context_run(compose("encoders=T,loss=focal+spcl,context=gru"))
    assert check_context_run(compose("encoders=T,loss=weight,context=gru"))["kind"] == "gru"


# ---------------------------------------------------------------------------------------------
# A tiny run end to end
# ---------------------------------------------------------------------------------------------
LENGTHS = (1, 3, 4, 2)


@pytest.fixture(scope="module")
def dialogue_meld(tmp_path_factory, text_meld):
    """The text MELD fixture regrouped into dialogues of several lengths and three speakers."""
    folder = tmp_path_factory.mktemp("dialogue-meld")
    for split in ("train", "dev", "test"):
        frame = pd.read_csv(text_meld / f"{split}_sent_emo.csv")
        ids, turns, d = [], [], 0
        while len(ids) < len(frame):
            n = LENGTHS[d % len(LENGTHS)]
            ids += [d] * n
            turns += list(range(n))
            d += 1
        frame["Dialogue_ID"], frame["Utterance_ID"] = ids[:len(frame)], turns[:len(frame)]
        frame["Speaker"] = [["Ross", "Monica", "Joey"][(t * t + i) % 3] for i, t in enumerate(frame["Utterance_ID"])]
        frame.to_csv(folder / f"{split}_sent_emo.csv", index=False)
    return folder


@pytest.fixture(scope="module")
def context_run(tmp_path_factory, dialogue_meld, tiny_bert):
    """A finished run with a causal transformer head and the weighted loss (features cached once)."""
    cfg = compose("dataset=MELD--E,encoders=T,loss=weight,context=transformer-causal")
    cfg.dataset.path, cfg.encoders.T.model = str(dialogue_meld), str(tiny_bert)
    cfg.cache.dir = str(tmp_path_factory.mktemp("context-cache"))
    cfg.model.context.update(dim=16, heads=2, layers=1)
    cfg.train.update(epochs=3, batch_size=16, eval_batch_size=32, lr=1e-2, patience=100)
    cfg.progress = False
    return cfg, fit(cfg, tmp_path_factory.mktemp("context-run"))


@pytest.mark.slow
def test_context_run_trains_and_resumes_exactly(context_run, dialogue_meld, tiny_bert, tmp_path):
    cfg, whole = context_run
    assert "ctx[transformer,causal,1x16]" in json.loads((whole / "results.json").read_text())["label"]
    interrupted = fit(cfg, tmp_path, max_epochs=1)
    assert not (interrupted / "results.json").exists()
    resumed = fit(cfg, tmp_path)
    a = json.loads((whole / "history.json").read_text())
    b = json.loads((resumed / "history.json").read_text())
    assert len(a) == 3 and all(np.isfinite(r["train_loss"]) for r in a)
    np.testing.assert_allclose([r["train_loss"] for r in a], [r["train_loss"] for r in b], rtol=1e-6)
    assert [r["steps"] for r in a] == [r["steps"] for r in b]
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (whole, resumed))
    assert ra["dev"]["confusion"] == rb["dev"]["confusion"] and ra["test"]["confusion"] == rb["test"]["confusion"]


@pytest.fixture(scope="module")
def estimator(context_run):
    return Estimator(context_run[1])


@pytest.mark.slow
def test_batch_prediction_of_a_split_csv_reproduces_the_scoring(context_run, estimator, dialogue_meld):
    _, run_dir = context_run
    assert estimator.dialogue_context
    frame = pd.read_csv(dialogue_meld / "test_sent_emo.csv")
    shuffled = frame.sample(frac=1.0, random_state=1)  # rows in any order: dialogues rebuilt by position
    shuffled.to_csv(run_dir.parent / "test_sent_emo.csv", index=False)
    table = predict_table(estimator, run_dir.parent / "test_sent_emo.csv", None, progress=False)
    assert (table["error"] == "").all()
    prep, eval_step, params, _ = load_run(run_dir)
    data = prep.features["test"]
    probs = predict_proba(eval_step, params, data, int(prep.cfg.train.eval_batch_size))
    reference = {uid.split("/", 1)[1]: row for uid, row in zip(data.uids, probs)}
    names = estimator.class_names
    got = table[[f"prob_{n}" for n in names]].to_numpy(float)
    np.testing.assert_allclose(got, np.stack([reference[i] for i in table["id"]]), atol=2e-5)
    results = json.loads((run_dir / "results.json").read_text())["test"]
    confusion = np.zeros((len(names),) * 2, int)
    np.add.at(confusion, ([names.index(e) for e in table["Emotion"]], [names.index(p) for p in table["predicted"]]), 1)
    assert confusion.tolist() == results["confusion"]


def test_single_prediction_reads_the_context_turns(estimator, dialogue_meld, caplog):
    table = predict_table(estimator, dialogue_meld / "test_sent_emo.csv", None, progress=False).set_index("id")
    frame = pd.read_csv(dialogue_meld / "test_sent_emo.csv")
    dialogue = frame[frame.Dialogue_ID == 2].sort_values("Utterance_ID")
    assert len(dialogue) == 4
    names = estimator.class_names
    for k in (0, 2, 3):  # the head is causal: a turn's scores need only the turns before it
        row = dialogue.iloc[k]
        turns = [f"{r.Speaker}: {r.Utterance}" for r in dialogue.iloc[:k].itertuples()]
        out = estimator.predict(text=row.Utterance, context=turns, speaker=row.Speaker)
        np.testing.assert_allclose([out["probabilities"][n] for n in names],
                                   table.loc[f"dia2_utt{k}", [f"prob_{n}" for n in names]].to_numpy(float), atol=2e-5)
    # Without turns: a dialogue of its own (as its first utterance), said in the log.
    first = dialogue.iloc[0]
    with caplog.at_level(logging.WARNING):
        alone = estimator.predict(text=first.Utterance)
    assert "dialogue context head" in caplog.text
    np.testing.assert_allclose([alone["probabilities"][n] for n in names],
                               table.loc["dia2_utt0", [f"prob_{n}" for n in names]].to_numpy(float), atol=2e-5)
