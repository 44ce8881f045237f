"""MELD: ``{train,dev,test}_sent_emo.csv`` with media under ``audios/{split}`` and ``videos/{split}``."""
from __future__ import annotations

import pathlib

from emojax.data import csvutil
from emojax.data.types import DatasetError, DatasetSplits, Sample

EMOTIONS = ("neutral", "joy", "surprise", "anger", "sadness", "disgust", "fear")
SENTIMENTS = ("neutral", "positive", "negative")
COLUMNS = {"text": "Utterance", "speaker": "Speaker", "emotion": "Emotion", "sentiment": "Sentiment",
           "dialogue": "Dialogue_ID", "utterance": "Utterance_ID"}


def load_meld(root: str | pathlib.Path, *, target: str = "emotion") -> DatasetSplits:
    """Load MELD (or a MELD-format folder) for ``target`` ``"emotion"`` (7) or ``"sentiment"`` (3)."""
    root = pathlib.Path(root)
    if target not in ("emotion", "sentiment"):
        raise DatasetError(f"MELD target {target!r} is not 'emotion' or 'sentiment'")
    class_names = EMOTIONS if target == "emotion" else SENTIMENTS
    labels = {name: i for i, name in enumerate(class_names)}
    splits, not_scored = {}, []
    for split, path, frame in csvutil.split_frames(root, "{split}_sent_emo.csv", "MELD", columns=COLUMNS.values()):
        if frame is None:
            not_scored.append(split)
            continue
        label_column = COLUMNS[target]
        samples, keys = [], []
        for i, row in enumerate(frame.to_dict("records")):
            row_number = csvutil.csv_row(i)
            try:
                dialogue, utterance = int(row["Dialogue_ID"]), int(row["Utterance_ID"])
            except ValueError:
                raise DatasetError(f"{path}, row {row_number}: Dialogue_ID / Utterance_ID must be integers, got "
                                   f"{row['Dialogue_ID']!r} / {row['Utterance_ID']!r}") from None
            keys.append(((dialogue, utterance), row_number))
            name = f"dia{dialogue}_utt{utterance}"
            samples.append(Sample(
                uid=f"{split}/{name}", dialogue=str(dialogue), index=utterance,
                speaker=str(row["Speaker"]).strip(), text=csvutil.clean_text(row["Utterance"]),
                audio=csvutil.existing(root / "audios" / split / f"{name}.flac"),
                video=csvutil.existing(root / "videos" / split / f"{name}.mp4"),
                label=csvutil.label_index(row[label_column], labels, path, row_number, label_column)))
        csvutil.check_unique(path, keys, "(Dialogue_ID, Utterance_ID)")
        splits[split] = csvutil.finish_split(split, samples, "MELD")
    return DatasetSplits("MELD", str(root), class_names, splits, tuple(not_scored))
