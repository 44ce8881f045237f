"""Batch prediction rebuilds each row as training built it: a split's own CSV reproduces the
run's test predictions for every text path; single inputs on a context run take the previous turns."""
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import shared_path
from configs.compose import compose
from emojax.training.evaluation import load_run, predict_proba
from emojax.training.loop import fit
from emojax.inference import Estimator, predict_table

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Text paths: pooling, previous turns (-1: the whole dialogue so far), prompt, max length.
TEXT_PATHS = {
    "mean": dict(pooling="mean", context_turns=0, prompt=False, max_length=64),
    "mask-context-prompt": dict(pooling="mask", context_turns=2, prompt=True, max_length=64),
    "cls-whole-dialogue-short": dict(pooling="cls", context_turns=-1, prompt=False, max_length=16),
}


def _train(cfg, workdir):
    cfg.train.epochs, cfg.train.batch_size, cfg.train.eval_batch_size, cfg.progress = 1, 16, 8, False
    return fit(cfg, workdir)


def _reference(run_dir, split):
    """The run's own scoring of ``split``: the features and batches ``results.json`` came from."""
    prep, eval_step, params, _ = load_run(run_dir)
    data = prep.features[split]
    probs = predict_proba(eval_step, params, data, int(prep.cfg.train.eval_batch_size))
    return {uid.split("/", 1)[1]: row for uid, row in zip(data.uids, probs)}, data


def _probs(table, names):
    return table[[f"prob_{n}" for n in names]].to_numpy(dtype=float)


@pytest.fixture(scope="module")
def meld_runs(tmp_path_factory, text_meld, tiny_bert):
    """Text path name -> a finished MELD run with that path, trained on first use."""
    runs = {}

    def run_for(name):
        if name not in runs:
            cfg = compose("dataset=MELD--E,encoders=T")
            cfg.dataset.path, cfg.encoders.T.model = str(text_meld), str(tiny_bert)
            cfg.encoders.T.update(TEXT_PATHS[name])
            runs[name] = _train(cfg, tmp_path_factory.mktemp(f"ctx-{name}"))
        return runs[name]

    return run_for


@pytest.fixture(params=list(TEXT_PATHS))
def meld_run(request, meld_runs):
    return request.param, meld_runs(request.param)


@pytest.mark.slow
def test_batch_prediction_of_a_split_csv_reproduces_the_test_scoring(meld_run, text_meld):
    name, run_dir = meld_run
    estimator = Estimator(run_dir)
    table = predict_table(estimator, text_meld / "test_sent_emo.csv", None, progress=False)
    assert (table["error"] == "").all()
    reference, data = _reference(run_dir, "test")
    expected = np.stack([reference[i] for i in table["id"]])
    np.testing.assert_allclose(_probs(table, estimator.class_names), expected, atol=2e-5)
    # The same numbers as results.json.
    import json

    results = json.loads((run_dir / "results.json").read_text())["test"]
    labels = [estimator.class_names.index(e) for e in table["Emotion"]]
    predicted = [estimator.class_names.index(p) for p in table["predicted"]]
    confusion = np.zeros((len(estimator.class_names),) * 2, int)
    np.add.at(confusion, (labels, predicted), 1)
    assert confusion.tolist() == results["confusion"]


def test_rows_in_another_order_give_the_same_predictions(meld_runs, text_meld, tmp_path):
    run_dir = meld_runs("mask-context-prompt")
    estimator = Estimator(run_dir)
    frame = pd.read_csv(text_meld / "test_sent_emo.csv")
    shuffled = frame.sample(frac=1.0, random_state=3)
    shuffled.to_csv(tmp_path / "test_sent_emo.csv", index=False)
    straight = predict_table(estimator, text_meld / "test_sent_emo.csv", None, progress=False).set_index("id")
    mixed = predict_table(estimator, tmp_path / "test_sent_emo.csv", None, progress=False)
    assert list(mixed["row"]) == list(range(len(frame)))  # output follows the input's rows
    mixed = mixed.set_index("id")
    np.testing.assert_allclose(_probs(mixed, estimator.class_names),
                               _probs(straight.loc[mixed.index], estimator.class_names), atol=2e-5)


def test_single_input_on_a_context_run_takes_the_previous_turns(meld_run, text_meld):
    name, run_dir = meld_run
    estimator = Estimator(run_dir)
    frame = pd.read_csv(text_meld / "test_sent_emo.csv")
    table = predict_table(estimator, text_meld / "test_sent_emo.csv", None, progress=False).set_index("id")
    dialogue = frame[frame.Dialogue_ID == 2].sort_values("Utterance_ID")
    turns = [f"{r.Speaker}: {r.Utterance}" for r in dialogue.itertuples()]
    last = dialogue.iloc[-1]
    with_context = estimator.predict(text=last.Utterance, context=turns[:-1], speaker=last.Speaker)
    expected = _probs(table.loc[[f"dia2_utt{last.Utterance_ID}"]], estimator.class_names)[0]
    np.testing.assert_allclose([with_context["probabilities"][n] for n in estimator.class_names], expected,
                               atol=2e-5)
    if TEXT_PATHS[name]["context_turns"] == 0:
        alone = estimator.predict(text=last.Utterance)  # no context needed, none asked for
        np.testing.assert_allclose([alone["probabilities"][n] for n in estimator.class_names], expected, atol=2e-5)
    else:
        with pytest.raises(ValueError, match="trained with dialogue context"):
            estimator.predict(text=last.Utterance)
        first = estimator.predict(text=dialogue.iloc[0].Utterance, context=[], speaker=dialogue.iloc[0].Speaker)
        np.testing.assert_allclose([first["probabilities"][n] for n in estimator.class_names],
                                   _probs(table.loc[["dia2_utt0"]], estimator.class_names)[0], atol=2e-5)


def test_empty_text_is_refused(meld_run):
    _, run_dir = meld_run
    estimator = Estimator(run_dir)
    for empty in ("", "   "):
        with pytest.raises(ValueError, match="--text: empty"):
            estimator.predict(text=empty, context=[])


@pytest.mark.slow
def test_infer_launcher_context_flag(tmp_path, meld_runs):
    run_dir = meld_runs("mask-context-prompt")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    launch = lambda *a: subprocess.run([sys.executable, "-m", "launch.infer", f"--run_dir={run_dir}", *a],  # noqa
                                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    (tmp_path / "turns.txt").write_text("Ross: i am sad\nMonica: wow really\n")
    from_file = launch("--text=so happy", "--speaker=Ross", f"--context={tmp_path / 'turns.txt'}")
    repeated = launch("--text=so happy", "--speaker=Ross", "--context=Ross: i am sad", "--context=Monica: wow really")
    assert from_file.returncode == 0 and repeated.returncode == 0, from_file.stderr[-2000:]
    assert from_file.stdout == repeated.stdout
    expected = Estimator(run_dir).predict(text="so happy", speaker="Ross",
                                          context=[("Ross", "i am sad"), ("Monica", "wow really")])
    assert from_file.stdout.strip().splitlines()[-1] == f"predicted: {expected['predicted']}"
    shown = {line.split()[0]: float(line.split()[1]) for line in from_file.stdout.strip().splitlines()[:-1]}
    assert shown == pytest.approx(expected["probabilities"], abs=1e-4)


# -- IEMOCAP: the release layout through training and batch prediction ---------------------------

@pytest.fixture(scope="module")
def iemocap_run(tmp_path_factory, tiny_bert):
    from test_iemocap import write_ramp_video, write_tone

    source = shared_path("fixtures", "iemocap-format")
    root = tmp_path_factory.mktemp("iemocap") / "IEMOCAP"
    root.mkdir()
    for split in ("train", "dev", "test"):
        shutil.copy(source / f"IEMOCAP_{split}.csv", root / f"IEMOCAP_{split}.csv")
        frame = pd.read_csv(root / f"IEMOCAP_{split}.csv")
        for video in frame.Video_Path.unique():
            write_ramp_video(root / video, seconds=float(frame.End_Time.max()) + 1.0)
        for wav in frame.Wav_Path:
            write_tone(root / wav, 1.0)
    cfg = compose("dataset=IEMOCAP--E,encoders=T+V,fusion=self-attention")
    cfg.dataset.path, cfg.encoders.T.model = str(root), str(tiny_bert)
    cfg.encoders.T.update(TEXT_PATHS["mask-context-prompt"])
    return root, _train(cfg, tmp_path_factory.mktemp("iemocap-runs"))


@pytest.mark.slow
def test_iemocap_batch_prediction_reproduces_the_test_scoring(iemocap_run, tmp_path):
    root, run_dir = iemocap_run
    estimator = Estimator(run_dir)
    assert estimator.cfg.fusion.batch_as_sequence  # samples attend to their batch mates
    table = predict_table(estimator, root / "IEMOCAP_test.csv", None, progress=False)
    assert (table["error"] == "").all()
    assert all("#t=" in v for v in table["video"])  # each row's own segment of the dialogue video
    reference, _ = _reference(run_dir, "test")
    np.testing.assert_allclose(_probs(table, estimator.class_names),
                               np.stack([reference[i] for i in table["id"]]), atol=2e-5)
    # A path leading outside the folder is not read, and the error does not say whether it exists.
    frame = pd.read_csv(root / "IEMOCAP_test.csv")
    frame.loc[0, "Video_Path"] = "../../../../etc/passwd"
    frame.loc[1, "Video_Path"] = "../../../../no/such/file.avi"
    frame.to_csv(tmp_path / "IEMOCAP_test.csv", index=False)
    moved = predict_table(estimator, tmp_path / "IEMOCAP_test.csv", None, progress=False, media_root=root)
    assert "outside the dataset folder" in moved.loc[0, "error"]
    assert moved.loc[0, "error"].replace("etc/passwd", "X") == moved.loc[1, "error"].replace("no/such/file.avi", "X")
    assert moved.loc[2, "error"] == ""
