"""Batch prediction: a CSV or a folder of clips in, one scored (or failed) row per input out."""
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from configs.compose import compose
from emojax.training.loop import fit
from emojax.data import load_dataset
from emojax.data.demo import generate_demo
from emojax.inference import Estimator, predict_table

ROOT = pathlib.Path(__file__).resolve().parents[1]
EMOTIONS = ["neutral", "joy", "surprise", "anger", "sadness", "disgust", "fear"]
SMALL = {"train": 24, "dev": 12, "test": 12}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, tiny_bert):
    """A finished T+A+V run on a small generated demo set (real FLAC / MP4 files)."""
    root = tmp_path_factory.mktemp("infer-batch")
    data = generate_demo(root / "demo", seed=0, sizes=SMALL)
    cfg = compose("dataset=demo,encoders=T+A+V")
    cfg.dataset.path, cfg.dataset.generate = str(data), False
    cfg.encoders.T.model = str(tiny_bert)
    cfg.train.epochs, cfg.train.batch_size, cfg.progress = 2, 8, False
    run_dir = fit(cfg, root / "runs")
    return run_dir, data, Estimator(run_dir)


def _dev_samples(data):
    return {s.uid.split("/")[1]: s for s in load_dataset("meld", str(data), target="emotion").splits["dev"].samples}


def _batch_folder(data, folder):
    """The dev split copied in MELD's layout, one video corrupted and one audio file removed."""
    shutil.copy(data / "dev_sent_emo.csv", folder / "dev_sent_emo.csv")
    shutil.copytree(data / "audios" / "dev", folder / "audios" / "dev")
    shutil.copytree(data / "videos" / "dev", folder / "videos" / "dev")
    (folder / "videos" / "dev" / "dia0_utt1.mp4").write_bytes(b"this is not an mp4 file" * 8)
    (folder / "audios" / "dev" / "dia1_utt0.flac").unlink()
    return folder / "dev_sent_emo.csv"


def _probs(table, row):
    return table.loc[row, [f"prob_{name}" for name in EMOTIONS]].to_numpy(dtype=float)


@pytest.mark.slow
def test_infer_batch_csv_reports_bad_files_and_scores_the_rest(tmp_path, demo_run):
    _, data, estimator = demo_run
    source = _batch_folder(data, tmp_path)
    out = tmp_path / "out" / "predictions.csv"
    returned = predict_table(estimator, source, out, progress=False, chunk_size=5)
    table = pd.read_csv(out, keep_default_na=False, na_values=[""])
    assert len(table) == len(returned) == SMALL["dev"]
    assert list(table.columns[:4]) == ["row", "id", "Dialogue_ID", "Utterance_ID"]
    assert list(table.columns[-9:]) == ["predicted", *[f"prob_{n}" for n in EMOTIONS], "error"]
    assert "estimate" not in table.columns  # an emotion run has no estimate score
    table = table.set_index("id")
    errors = table["error"].fillna("")
    assert set(errors[errors != ""].index) == {"dia0_utt1", "dia1_utt0"}
    assert "dia0_utt1.mp4" in errors["dia0_utt1"] and "OpenCV cannot open" in errors["dia0_utt1"]
    assert "dia1_utt0.flac" in errors["dia1_utt0"] and "not found" in errors["dia1_utt0"]
    for bad in ("dia0_utt1", "dia1_utt0"):
        assert pd.isna(table.loc[bad, "predicted"]) and np.isnan(_probs(table, bad)).all()
    samples = _dev_samples(data)
    for name in errors[errors == ""].index:
        sample = samples[name]
        single = estimator.predict(text=sample.text, audio=sample.audio, video=sample.video)
        np.testing.assert_allclose(_probs(table, name), [single["probabilities"][n] for n in EMOTIONS], atol=1e-5)
        assert table.loc[name, "predicted"] == single["predicted"]
        assert table.loc[name, "Emotion"] == EMOTIONS[sample.label]
        assert table.loc[name, "audio"] == str(tmp_path / "audios" / "dev" / f"{name}.flac")


def test_single_input_with_an_undecodable_file_is_refused(tmp_path, demo_run):
    _, data, estimator = demo_run
    sample = _dev_samples(data)["dia0_utt0"]
    (tmp_path / "bad.flac").write_bytes(b"\x00" * 256)
    (tmp_path / "bad.mp4").write_bytes(b"this is not an mp4 file" * 8)
    with pytest.raises(ValueError, match=r"--audio: .*bad\.flac"):
        estimator.predict(text=sample.text, audio=str(tmp_path / "bad.flac"))
    with pytest.raises(ValueError, match=r"--video: .*bad\.mp4.*OpenCV cannot open"):
        estimator.predict(text=sample.text, video=str(tmp_path / "bad.mp4"))
    with pytest.raises(ValueError, match="--text: empty"):
        estimator.predict(text=" ", audio=sample.audio)


def test_infer_batch_folder_of_clips_pairs_by_stem(tmp_path, demo_run):
    _, data, estimator = demo_run
    clips = tmp_path / "clips"
    clips.mkdir()
    for name in ("dia0_utt0", "dia2_utt1"):
        shutil.copy(data / "audios" / "dev" / f"{name}.flac", clips / f"{name}.flac")
        shutil.copy(data / "videos" / "dev" / f"{name}.mp4", clips / f"{name}.mp4")
    samples, rate = sf.read(data / "audios" / "dev" / "dia1_utt1.flac")
    sf.write(clips / "voice_only.wav", samples, rate)  # audio alone, as WAV
    shutil.copy(data / "videos" / "dev" / "dia2_utt2.mp4", clips / "face_only.mp4")
    (clips / "broken.flac").write_bytes(b"\x00" * 64)
    (clips / "notes.txt").write_text("not a clip")
    table = predict_table(estimator, clips, tmp_path / "folder.csv", progress=False)
    assert list(table["id"]) == ["broken", "dia0_utt0", "dia2_utt1", "face_only", "voice_only"]
    table = table.set_index("id")
    assert "broken.flac" in table.loc["broken", "error"] and table.loc["broken", "predicted"] == ""
    expected = {
        "dia0_utt0": dict(audio=clips / "dia0_utt0.flac", video=clips / "dia0_utt0.mp4"),
        "dia2_utt1": dict(audio=clips / "dia2_utt1.flac", video=clips / "dia2_utt1.mp4"),
        "voice_only": dict(audio=clips / "voice_only.wav"),
        "face_only": dict(video=clips / "face_only.mp4"),
    }
    for name, inputs in expected.items():
        assert table.loc[name, "error"] == ""
        for kind in ("audio", "video"):
            assert table.loc[name, kind] == (str(inputs[kind]) if kind in inputs else "")
        single = estimator.predict(**{k: str(v) for k, v in inputs.items()})  # no text: placeholder
        np.testing.assert_allclose(_probs(table, name), [single["probabilities"][n] for n in EMOTIONS], atol=1e-5)
        assert table.loc[name, "predicted"] == single["predicted"]


def test_infer_batch_sentiment_run_writes_the_suite_estimate(tmp_path, text_meld, tiny_bert):
    cfg = compose("dataset=MELD--S,encoders=T")
    cfg.dataset.path, cfg.encoders.T.model = str(text_meld), str(tiny_bert)
    cfg.train.epochs, cfg.train.batch_size, cfg.progress = 2, 16, False
    estimator = Estimator(fit(cfg, tmp_path / "runs"))
    assert estimator.provides_estimate and estimator.class_names == ("neutral", "positive", "negative")
    # A text-only run: the dataset has no media, and none is needed.
    table = predict_table(estimator, text_meld / "test_sent_emo.csv", None, progress=False)
    assert len(table) == 42 and (table["error"] == "").all()
    probs = table[["prob_neutral", "prob_positive", "prob_negative"]].to_numpy()
    np.testing.assert_allclose(table["estimate"], (1 - (probs @ np.arange(3)) / 3) * 100, rtol=1e-6)
    first = pd.read_csv(text_meld / "test_sent_emo.csv")["Utterance"][0]
    single = estimator.predict(text=first)
    assert single["estimate"] == pytest.approx(table.loc[0, "estimate"], abs=1e-3)
    assert estimator.estimate(text=first) == pytest.approx(single["estimate"])


def _launch(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "launch.infer", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_infer_launcher_batch_and_single_end_to_end(tmp_path, demo_run):
    run_dir, data, estimator = demo_run
    source = _batch_folder(data, tmp_path)
    out = tmp_path / "launcher.csv"
    batch = _launch(f"--run_dir={run_dir}", f"--input_csv={source}", f"--output={out}", "--noprogress")
    assert batch.returncode == 0, batch.stderr[-3000:]
    assert "10 of 12 rows scored, 2 with errors" in batch.stdout
    assert "dia0_utt1" in batch.stderr and "dia1_utt0" in batch.stderr
    table = pd.read_csv(out, keep_default_na=False)
    library = predict_table(estimator, source, None, progress=False)
    assert list(table["predicted"]) == list(library["predicted"])
    assert list(table["error"] != "") == list(library["error"] != "")

    sample = _dev_samples(data)["dia2_utt0"]
    single = _launch(f"--run_dir={run_dir}", f"--text={sample.text}", f"--audio={sample.audio}")
    assert single.returncode == 0, single.stderr[-3000:]
    lines = single.stdout.strip().splitlines()
    assert sorted(line.split()[0] for line in lines[:-1]) == sorted(EMOTIONS)
    assert lines[-1] == f"predicted: {estimator.predict(text=sample.text, audio=sample.audio)['predicted']}"

    mixed = _launch(f"--run_dir={run_dir}", "--text=hi", f"--input_csv={source}", f"--output={out}")
    assert mixed.returncode != 0 and "--text" in mixed.stderr
