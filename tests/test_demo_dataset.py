"""The generated demo dataset: determinism, MELD's format, readable media, and signal in every modality."""
import os
import pathlib
import re

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from emojax.data import demo, load_dataset
from emojax.data.demo import DemoError, generate_demo
from emojax.data.media import read_audio, read_video_frames

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared"
MELD_COLUMNS = ["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID", "Season",
                "Episode", "StartTime", "EndTime"]
SMALL = {"train": 24, "dev": 12, "test": 12}


@pytest.fixture(scope="module")
def demo_root(demo_dataset):
    return demo_dataset


@pytest.fixture(scope="module")
def real_meld_train():
    path = SHARED / "datasets" / "MELD" / "train_sent_emo.csv"
    if not path.exists():
        pytest.skip(f"{path} is absent: the real MELD transcripts live in a 'shared' folder beside the repository")
    return pd.read_csv(path)


def _csvs(root):
    return {split: pd.read_csv(root / f"{split}_sent_emo.csv") for split in SMALL}


def test_same_seed_gives_identical_files_and_another_seed_differs(tmp_path):
    a = generate_demo(tmp_path / "a", seed=0, sizes=SMALL)
    b = generate_demo(tmp_path / "b", seed=0, sizes=SMALL)
    c = generate_demo(tmp_path / "c", seed=1, sizes=SMALL)
    first, second = _csvs(a), _csvs(b)
    for split in SMALL:
        pd.testing.assert_frame_equal(first[split], second[split])
        assert len(first[split]) == SMALL[split]
    audios = sorted(p.relative_to(a) for p in a.glob("audios/*/*.flac"))
    assert len(audios) == sum(SMALL.values())
    for rel in audios:
        np.testing.assert_array_equal(sf.read(a / rel)[0], sf.read(b / rel)[0])
    for rel in sorted(p.relative_to(a) for p in a.glob("videos/dev/*.mp4"))[:4]:
        np.testing.assert_array_equal(read_video_frames(a / rel), read_video_frames(b / rel))
    assert not _csvs(c)["train"]["Utterance"].equals(first["train"]["Utterance"])


def test_second_call_reuses_the_folder_and_force_regenerates(tmp_path):
    root = generate_demo(tmp_path / "demo", seed=0, sizes=SMALL)
    csv = root / "train_sent_emo.csv"
    before = os.stat(csv)
    assert generate_demo(root, seed=0, sizes=SMALL) == root
    assert os.stat(csv).st_ino == before.st_ino and os.stat(csv).st_mtime_ns == before.st_mtime_ns
    (root / "notes.txt").write_text("kept")
    generate_demo(root, seed=0, sizes=SMALL, force=True)
    assert os.stat(csv).st_ino != before.st_ino
    assert (root / "notes.txt").read_text() == "kept"  # only the demo's own files are replaced
    pd.testing.assert_frame_equal(pd.read_csv(csv), _csvs(generate_demo(tmp_path / "again", sizes=SMALL))["train"])
    assert not list(tmp_path.glob(".*partial*"))  # no leftover work folders


def test_a_folder_the_demo_did_not_make_is_refused(tmp_path):
    foreign = tmp_path / "MELD"
    foreign.mkdir()
    (foreign / "train_sent_emo.csv").write_text("Sr No.,Utterance\n1,hi\n")
    with pytest.raises(DemoError, match=re.escape(str(foreign))):
        generate_demo(foreign, sizes=SMALL)
    assert (foreign / "train_sent_emo.csv").read_text() == "Sr No.,Utterance\n1,hi\n"
    with pytest.raises(ValueError, match="sizes"):
        generate_demo(tmp_path / "bad", sizes={"train": 10})


@pytest.mark.slow
def test_csv_format_and_labels_follow_meld(demo_root):
    stamp = re.compile(r"^\d\d:\d\d:\d\d,\d\d\d$")
    for split, size in demo.SPLIT_SIZES.items():
        frame = pd.read_csv(demo_root / f"{split}_sent_emo.csv")
        assert list(frame.columns) == MELD_COLUMNS and len(frame) == size
        assert frame["Sr No."].tolist() == list(range(1, size + 1))
        assert set(frame["Emotion"]) == set(demo.EMOTIONS)
        assert (frame["Sentiment"] == frame["Emotion"].map(demo.SENTIMENT)).all()
        for _, dialogue in frame.groupby("Dialogue_ID"):
            assert 3 <= len(dialogue) <= 8 and 2 <= dialogue["Speaker"].nunique() <= 3
            assert dialogue["Utterance_ID"].tolist() == list(range(len(dialogue)))
        assert frame["StartTime"].str.match(stamp).all() and frame["EndTime"].str.match(stamp).all()


@pytest.mark.slow
def test_columns_and_sentiment_pairs_occur_in_real_meld(demo_root, real_meld_train):
    frame = pd.read_csv(demo_root / "train_sent_emo.csv")
    assert list(frame.columns) == list(real_meld_train.columns)
    real_pairs = set(zip(real_meld_train["Emotion"], real_meld_train["Sentiment"]))
    assert set(zip(frame["Emotion"], frame["Sentiment"])) <= real_pairs
    assert set(frame["Emotion"]) == set(real_meld_train["Emotion"])


@pytest.mark.slow
def test_every_media_file_is_readable(demo_root):
    data = load_dataset("meld", str(demo_root), target="emotion")
    assert data.class_names == demo.EMOTIONS
    for name, split in data.splits.items():
        assert not any(split.missing.values()), (name, split.missing)
        assert len(split) == demo.SPLIT_SIZES[name]
        for sample in split.samples:
            audio = read_audio(sample.audio)
            assert 0.7 < len(audio) / demo.SAMPLE_RATE < 1.4 and np.abs(audio).max() > 0.01
            frames = read_video_frames(sample.video, num_frames=16)
            assert frames.shape == (16, 64, 64, 3)


@pytest.mark.slow
def test_each_modality_alone_is_above_chance_and_together_beat_each(demo_root):
    """Linear probes on dev: audio and video classic features each beat the majority class on the
    seven emotions and recover their own class grouping; text + audio + video beats every one alone."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from emojax.encoders import classic

    data = load_dataset("meld", str(demo_root), target="emotion")
    train, dev = data.splits["train"].samples[:210], data.splits["dev"].samples
    names = {part: [data.class_names[s.label] for s in samples] for part, samples in (("train", train), ("dev", dev))}
    y = {part: np.array([demo.EMOTIONS.index(n) for n in names[part]]) for part in names}
    words = CountVectorizer().fit([s.text for s in train])
    features = {part: {"A": np.stack([classic.audio_features(s.audio) for s in samples]),
                       "V": np.stack([classic.video_features(s.video) for s in samples]),
                       "T": words.transform([s.text for s in samples]).toarray().astype(np.float64)}
                for part, samples in (("train", train), ("dev", dev))}

    def probe(modalities, target):
        scale = StandardScaler().fit(np.hstack([features["train"][m] for m in modalities]))
        x = {part: scale.transform(np.hstack([features[part][m] for m in modalities])) for part in features}
        model = LogisticRegression(C=0.1, max_iter=5000).fit(x["train"], target["train"])
        return model.score(x["dev"], target["dev"])

    majority = np.bincount(y["dev"]).max() / len(y["dev"])
    scores = {m: probe([m], y) for m in ("T", "A", "V")}
    for modality in ("A", "V"):
        assert scores[modality] > majority + 0.05, (modality, scores, majority)
        grouping = demo.AUDIO_GROUP if modality == "A" else demo.VIDEO_GROUP
        groups = {part: np.array([grouping[n] for n in names[part]]) for part in names}
        group_majority = np.bincount(groups["dev"]).max() / len(groups["dev"])
        assert probe([modality], groups) > group_majority + 0.15, modality
    fused = probe(["T", "A", "V"], y)
    assert fused > max(scores.values()) + 0.08, (fused, scores)
