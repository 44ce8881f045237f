"""Dataset loaders: formats, labels, missing media, bad input, dialogue context."""
import numpy as np
import pandas as pd
import pytest

from conftest import shared_path, write_text_meld
from emojax.data import DatasetError, load_dataset
from emojax.data.context import all_speaker_tokens, build_texts, speaker_map
from emojax.data.types import Sample, Split


def test_meld_loads_labels_media_and_weights(tmp_path):
    root = write_text_meld(tmp_path / "meld", per_split=(21, 7, 7))
    (root / "audios" / "train").mkdir(parents=True)
    (root / "audios" / "train" / "dia0_utt1.flac").write_bytes(b"x")
    (root / "videos" / "dev").mkdir(parents=True)
    (root / "videos" / "dev" / "dia1_utt0.mp4").write_bytes(b"x")
    data = load_dataset("meld", str(root), target="emotion")
    assert data.class_names == ("neutral", "joy", "surprise", "anger", "sadness", "disgust", "fear")
    train = data.splits["train"]
    assert len(train) == 21 and train.missing == {"A": 20, "V": 21}
    assert [s for s in train.samples if s.audio][0].uid == "train/dia0_utt1"
    assert data.splits["dev"].missing == {"A": 7, "V": 6}
    frame = pd.read_csv(root / "train_sent_emo.csv")
    expected = [data.class_names.index(e) for e in frame.sort_values(["Dialogue_ID", "Utterance_ID"]).Emotion]
    assert list(train.labels) == expected
    counts = np.bincount(train.labels, minlength=7)
    weights = data.class_weights()
    np.testing.assert_allclose(weights, (1 / counts) / (1 / counts).mean(), rtol=1e-6)
    sentiment = load_dataset("meld", str(root), target="sentiment")
    assert sentiment.class_names == ("neutral", "positive", "negative")


def test_meld_unknown_label_names_file_and_row(tmp_path):
    root = write_text_meld(tmp_path / "meld", per_split=(14, 7, 7))
    frame = pd.read_csv(root / "dev_sent_emo.csv")
    frame.loc[3, "Emotion"] = "bored"
    frame.to_csv(root / "dev_sent_emo.csv", index=False)
    with pytest.raises(DatasetError, match=r"dev_sent_emo\.csv, row 5: unknown label 'bored'"):
        load_dataset("meld", str(root), target="emotion")


def test_meld_missing_column_and_malformed_csv(tmp_path):
    root = write_text_meld(tmp_path / "meld", per_split=(14, 7, 7))
    pd.read_csv(root / "train_sent_emo.csv").drop(columns=["Speaker"]).to_csv(root / "train_sent_emo.csv", index=False)
    with pytest.raises(DatasetError, match=r"train_sent_emo\.csv: missing column 'Speaker'"):
        load_dataset("meld", str(root), target="emotion")
    (root / "train_sent_emo.csv").write_text('a,b\n1,"unterminated\n')
    with pytest.raises(DatasetError, match=r"train_sent_emo\.csv: malformed CSV"):
        load_dataset("meld", str(root), target="emotion")


def test_meld_absent_split_not_scored(tmp_path):
    root = write_text_meld(tmp_path / "meld", per_split=(14, 7, 7))
    (root / "test_sent_emo.csv").unlink()
    data = load_dataset("meld", str(root), target="emotion")
    assert set(data.splits) == {"train", "dev"} and data.not_scored == ("test",)
    (root / "train_sent_emo.csv").unlink()
    with pytest.raises(DatasetError, match="train_sent_emo.csv"):
        load_dataset("meld", str(root), target="emotion")


def test_meld_real_transcripts_load():
    root = shared_path("datasets", "MELD")
    data = load_dataset("meld", str(root), target="emotion")
    assert len(data.splits["train"]) == 9989 and len(data.splits["dev"]) == 1109
    assert data.not_scored == ("test",)
    assert data.splits["train"].missing == {"A": 9989, "V": 9989}
    texts = [s.text for s in data.splits["train"].samples]
    assert not any("\x92" in t for t in texts) and any("company's" in t for t in texts)
    assert np.bincount(data.splits["train"].labels, minlength=7).tolist() == [4710, 1743, 1205, 1109, 683, 271, 268]


def test_iemocap_loads_paths_and_rejects_sentiment(tmp_path):
    root = tmp_path / "iemocap"
    (root / "wav").mkdir(parents=True)
    (root / "wav" / "Ses01F_impro01_F000.wav").write_bytes(b"x")
    rows = [{"Utterance_ID": f"Ses01F_impro01_{s}{i:03d}", "Text": f"line {i}", "Label": lab,
             "Wav_Path": f"wav/Ses01F_impro01_{s}{i:03d}.wav", "Video_Path": f"video/Ses01F_impro01_{s}{i:03d}.mp4"}
            for i, (s, lab) in enumerate([("F", "neu"), ("M", "ang"), ("F", "exc"), ("M", "fru"), ("F", "hap"),
                                           ("M", "sad")])]
    for split in ("train", "dev", "test"):
        pd.DataFrame(rows).to_csv(root / f"IEMOCAP_{split}.csv", index=False)
    data = load_dataset("iemocap", str(root), target="emotion")
    assert data.class_names == ("neu", "ang", "exc", "fru", "hap", "sad")
    train = data.splits["train"]
    assert list(train.labels) == [0, 1, 2, 3, 4, 5]
    assert train.samples[0].audio == str(root / "wav" / "Ses01F_impro01_F000.wav")
    assert train.samples[0].dialogue == "Ses01F_impro01" and train.samples[1].speaker == "Ses01_M"
    assert train.missing == {"A": 5, "V": 6}
    with pytest.raises(DatasetError, match="sentiment"):
        load_dataset("iemocap", str(root), target="sentiment")
    pd.DataFrame(rows).drop(columns=["Wav_Path"]).to_csv(root / "IEMOCAP_dev.csv", index=False)
    with pytest.raises(DatasetError, match=r"IEMOCAP_dev\.csv: missing column 'Wav_Path'"):
        load_dataset("iemocap", str(root), target="emotion")


def test_sims_modes_media_and_errors(tmp_path):
    root = tmp_path / "sims"
    (root / "Raw" / "video_0001").mkdir(parents=True)
    (root / "Raw" / "video_0001" / "0002.mp4").write_bytes(b"x")
    (root / "Raw" / "video_0001" / "0002.wav").write_bytes(b"x")
    rows = [{"video_id": "video_0001", "clip_id": c, "text": f"clip {c}", "annotation": a, "mode": m}
            for c, a, m in [(1, "Negative", "train"), (2, "Positive", "train"), (3, "Neutral", "valid"),
                            (4, "Positive", "test")]]
    pd.DataFrame(rows).to_csv(root / "label.csv", index=False)
    data = load_dataset("sims", str(root), target="sentiment")
    assert data.class_names == ("Negative", "Neutral", "Positive")
    assert set(data.splits) == {"train", "dev", "test"}
    clip = data.splits["train"].samples[1]
    assert clip.video.endswith("video_0001/0002.mp4") and clip.audio.endswith("video_0001/0002.wav")
    assert list(data.splits["train"].labels) == [0, 2] and list(data.splits["dev"].labels) == [1]
    rows[2]["annotation"] = "Mixed"
    pd.DataFrame(rows).to_csv(root / "label.csv", index=False)
    with pytest.raises(DatasetError, match=r"label\.csv, row 4: unknown label 'Mixed'"):
        load_dataset("sims", str(root), target="sentiment")


def _dialogue():
    rows = [("d1", 0, "Ross", "Hi."), ("d1", 1, "Monica", "Hey you."), ("d1", 2, "Ross", "Guess what?"),
            ("d2", 0, "Joey", "How you doin'?")]
    return Split("dev", [Sample(f"dev/{d}_{i}", d, i, spk, text, None, None, 0) for d, i, spk, text in rows])


def test_context_speakers_and_prompt():
    split = _dialogue()
    assert speaker_map(split) == {"Ross": "<s0>", "Monica": "<s1>", "Joey": "<s2>"}
    texts = build_texts(split, turns=None, prompt=True, sep_token="</s>", mask_token="<mask>")
    assert texts[2] == "<s0>: Hi. <s1>: Hey you. <s0>: Guess what? </s> Now <s0> feels <mask>"
    assert texts[3] == "<s2>: How you doin'? </s> Now <s2> feels <mask>"
    one = build_texts(split, turns=1, prompt=False, sep_token="[SEP]", mask_token="[MASK]")
    assert one[2] == "<s1>: Hey you. <s0>: Guess what?"
    none = build_texts(split, turns=0, prompt=True, sep_token="[SEP]", mask_token="[MASK]")
    assert none[1] == "<s1>: Hey you. [SEP] Now <s1> feels [MASK]"


def test_context_speaker_tokens_cover_largest_split(tmp_path):
    root = write_text_meld(tmp_path / "meld", per_split=(14, 7, 7))
    data = load_dataset("meld", str(root), target="emotion")
    assert all_speaker_tokens(data) == ["<s0>", "<s1>"]
