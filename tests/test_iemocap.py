"""IEMOCAP as released: actors as speakers, time order, dialogue videos cut into segments."""
import logging
import pathlib
import shutil

import numpy as np
import pandas as pd
import pytest

from conftest import shared_path
from emojax.features.cache import file_identity
from emojax.data import load_dataset
from emojax.data.context import build_texts, speaker_map
from emojax.data.iemocap import actor
from emojax.data.media import read_audio, read_video_frames, segment_ref, split_ref
from emojax.encoders import classic

FPS = 10.0


def write_ramp_video(path: pathlib.Path, seconds: float, fps: float = FPS, size=(64, 48)) -> None:
    """A video whose frame k is one flat grey of level ``round(k * 255 / (frames - 1))``: the
    level tells which moment of the recording a frame shows."""
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    frames = int(seconds * fps)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    for k in range(frames):
        level = int(round(k * 255 / (frames - 1)))
        writer.write(np.full((size[1], size[0], 3), level, np.uint8))
    writer.release()


def write_tone(path: pathlib.Path, seconds: float, rate: int = 16000) -> None:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    sf.write(str(path), (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), rate)


@pytest.fixture()
def release(tmp_path):
    """The release-format fixture CSVs in a dataset folder, with the media of dialogue
    ``Ses01F_impro01`` present (its recording 40 s long)."""
    source = shared_path("fixtures", "iemocap-format")
    root = tmp_path / "IEMOCAP"
    root.mkdir()
    for split in ("train", "dev", "test"):
        shutil.copy(source / f"IEMOCAP_{split}.csv", root / f"IEMOCAP_{split}.csv")
    frame = pd.read_csv(root / "IEMOCAP_train.csv")
    dialogue = frame[frame.Dialogue_ID == "Ses01F_impro01"]
    write_ramp_video(root / dialogue.Video_Path.iloc[0], seconds=40.0)
    for _, row in dialogue.iterrows():
        write_tone(root / row.Wav_Path, row.End_Time - row.Start_Time)
    return root


def test_iemocap_speakers_are_the_session_actors(release):
    data = load_dataset("iemocap", str(release), target="emotion")
    train = data.splits["train"]
    frame = pd.read_csv(release / "IEMOCAP_train.csv")
    expected = {f"{u[:5]}_{u.rsplit('_', 1)[1][0]}" for u in frame.Speaker}
    assert {s.speaker for s in train.samples} == expected
    # Two speakers per dialogue, the same actor across the dialogues of a session.
    per_dialogue = {}
    for s in train.samples:
        per_dialogue.setdefault(s.dialogue, set()).add(s.speaker)
    assert all(len(v) == 2 for v in per_dialogue.values())
    assert per_dialogue["Ses01F_impro01"] == per_dialogue["Ses01M_script01_1"] == {"Ses01_F", "Ses01_M"}
    assert actor("Ses01F_impro01_M003") == "Ses01_M" and actor("Ses05M_script03_2_F001") == "Ses05_F"
    assert len(speaker_map(train)) == len(expected) < len(train)


def test_iemocap_dialogues_follow_start_time(release):
    data = load_dataset("iemocap", str(release), target="emotion")
    frame = pd.read_csv(release / "IEMOCAP_train.csv")
    start = dict(zip(frame.Speaker, frame.Start_Time))
    train = data.splits["train"]
    for dialogue in {s.dialogue for s in train.samples}:
        members = [s for s in train.samples if s.dialogue == dialogue]
        times = [start[s.uid.split("/", 1)[1]] for s in members]
        assert times == sorted(times), dialogue
        assert [s.index for s in members] == list(range(len(members)))
    # The fixture's row 7 (M003, 23.47 s) comes before M002 (16.84 s) in the file: time wins.
    names = [s.uid.split("/", 1)[1] for s in train.samples if s.dialogue == "Ses01F_impro01"]
    assert names == ["Ses01F_impro01_F000", "Ses01F_impro01_M000", "Ses01F_impro01_F001", "Ses01F_impro01_M001",
                     "Ses01F_impro01_F002", "Ses01F_impro01_M002", "Ses01F_impro01_M003", "Ses01F_impro01_F005",
                     "Ses01F_impro01_M004"]
    # Context and prompts follow that order: the turn before M003 is M002's.
    texts = build_texts(train, turns=1, prompt=True, sep_token="[SEP]", mask_token="[MASK]")
    by_name = {s.uid.split("/", 1)[1]: i for i, s in enumerate(train.samples)}
    m002, m003 = train.samples[by_name["Ses01F_impro01_M002"]], train.samples[by_name["Ses01F_impro01_M003"]]
    token = speaker_map(train)[m003.speaker]
    assert texts[by_name["Ses01F_impro01_M003"]] == (
        f"{token}: {m002.text} {token}: {m003.text} [SEP] Now {token} feels [MASK]")


def test_iemocap_video_is_the_utterance_segment(release):
    data = load_dataset("iemocap", str(release), target="emotion")
    frame = pd.read_csv(release / "IEMOCAP_train.csv").set_index("Speaker")
    samples = {s.uid.split("/", 1)[1]: s for s in data.splits["train"].samples if s.video}
    assert set(samples) == set(frame.index[frame.Dialogue_ID == "Ses01F_impro01"])
    total = int(40.0 * FPS)
    for name, sample in samples.items():
        file, segment = split_ref(sample.video)
        assert file == str(release / frame.loc[name, "Video_Path"])
        assert segment == pytest.approx((frame.loc[name, "Start_Time"], frame.loc[name, "End_Time"]), abs=1e-4)
        frames = read_video_frames(sample.video, num_frames=4)
        levels = frames.reshape(4, -1).mean(axis=1)
        first, stop = np.floor(segment[0] * FPS), np.ceil(segment[1] * FPS)
        low, high = first * 255 / (total - 1), (stop - 1) * 255 / (total - 1)
        assert np.all(levels >= low - 3) and np.all(levels <= high + 3), (name, levels, low, high)
        assert levels[-1] > levels[0]
    a, b = samples["Ses01F_impro01_F000"], samples["Ses01F_impro01_M004"]
    features_a, features_b = classic.video_features(a.video), classic.video_features(b.video)
    assert not np.allclose(features_a, features_b)
    whole = classic.video_features(split_ref(a.video)[0])
    assert not np.allclose(features_a, whole)
    # The feature cache keys on the segment: one recording, distinct entries.
    assert file_identity(a.video) != file_identity(b.video) != file_identity(split_ref(a.video)[0])
    assert file_identity(a.video).startswith(file_identity(split_ref(a.video)[0]))


def test_segment_reference_round_trip_and_audio_cut(tmp_path):
    ref = segment_ref(tmp_path / "rec.avi", 1.5, 3.25)
    assert ref.endswith("rec.avi#t=1.5000,3.2500")
    assert split_ref(ref) == (str(tmp_path / "rec.avi"), (1.5, 3.25))
    assert split_ref(str(tmp_path / "plain#1.avi")) == (str(tmp_path / "plain#1.avi"), None)
    with pytest.raises(ValueError, match="start < end"):
        segment_ref("x.avi", 2.0, 2.0)
    write_tone(tmp_path / "a.wav", 4.0)
    cut = read_audio(segment_ref(tmp_path / "a.wav", 1.0, 2.5))
    np.testing.assert_allclose(cut, read_audio(tmp_path / "a.wav")[16000:40000])
    write_ramp_video(tmp_path / "short.avi", seconds=2.0)
    with pytest.raises(Exception, match=r"segment \[5.0, 6.0\]"):
        read_video_frames(segment_ref(tmp_path / "short.avi", 5.0, 6.0))


def test_iemocap_missing_media_names_an_example_path(release, caplog):
    with caplog.at_level(logging.WARNING):
        data = load_dataset("iemocap", str(release), target="emotion")
    assert data.splits["dev"].missing == {"A": 3, "V": 3}
    example = str(release / ("dataset/IEMOCAP_full_release/Session2/sentences/wav/"
                             "Ses02F_impro03/Ses02F_impro03_F000.wav"))
    assert any(example in r.getMessage() and "relative to" in r.getMessage() for r in caplog.records)


def test_iemocap_paths_outside_the_dataset_folder_are_not_read(release, tmp_path, caplog):
    secret = tmp_path / "outside.wav"
    write_tone(secret, 1.0)
    frame = pd.read_csv(release / "IEMOCAP_test.csv")
    frame.loc[0, "Wav_Path"] = "../outside.wav"
    frame.loc[1, "Wav_Path"] = str(secret)
    frame.loc[2, "Wav_Path"] = "../does-not-exist.wav"
    frame.to_csv(release / "IEMOCAP_test.csv", index=False)
    with caplog.at_level(logging.WARNING):
        data = load_dataset("iemocap", str(release), target="emotion")
    assert all(s.audio is None for s in data.splits["test"].samples)
    warnings = [r.getMessage() for r in caplog.records if "outside the dataset folder" in r.getMessage()]
    assert len(warnings) == 3
    assert any("IEMOCAP_test.csv, row 2" in w for w in warnings) and any("row 3" in w for w in warnings)
    # The same words whether or not the outside file exists.
    strip = lambda w: w.split(": ", 1)[1].split("'", 2)[2]  # noqa: E731
    assert strip(warnings[0]) == strip(warnings[2])
    allowed = load_dataset("iemocap", str(release), target="emotion", allow_outside_paths=True)
    audios = {s.uid: s.audio for s in allowed.splits["test"].samples}
    assert sorted(a for a in audios.values() if a) == sorted([str(release / "../outside.wav"), str(secret)])


@pytest.mark.parametrize("family", ["videomae", "clip"])
def test_iemocap_neural_video_features_per_segment_and_cached_per_segment(release, tmp_path, family):
    from test_neural_features import make_config, write_clip, write_videomae

    from emojax.features.cache import FeatureCache
    from emojax.features.featurizer import Featurizer

    folder = (write_videomae if family == "videomae" else write_clip)(tmp_path / family)
    cfg = make_config(release, V=(family, folder))
    cfg.dataset.name, cfg.dataset.kind = "IEMOCAP--E", "iemocap"
    split = load_dataset("iemocap", str(release), target="emotion").splits["train"]
    cache = FeatureCache(tmp_path / "cache")
    data = Featurizer(cfg, cache=cache).split_features(split)
    rows = data.features["V"][data.present["V"]]
    assert len(rows) == 9  # the nine utterances of the dialogue whose recording exists
    assert len({tuple(np.round(r, 5)) for r in rows}) == 9  # nine segments, nine features
    encoder = Featurizer(cfg).encoders["V"]
    first = next(s for s in split.samples if s.video)
    np.testing.assert_allclose(encoder.compute([first.video]), rows[:1], atol=1e-5)
    assert not np.allclose(encoder.compute([split_ref(first.video)[0]]), rows[:1], atol=1e-3)
    # A second pass reads each segment's own entry from the cache, computing nothing.
    again = Featurizer(cfg, cache=FeatureCache(tmp_path / "cache"))
    again.encoders["V"].compute = lambda *a, **k: pytest.fail("recomputed a cached segment")
    np.testing.assert_array_equal(again.split_features(split).features["V"], data.features["V"])
