"""MELD: ``{train,dev,test}_sent_emo.csv`` with media under ``audios/{split}`` and ``videos/{split}``."""
from __future__ import annotations

import pathlib
from typing import Optional

from emojax.data.types import SPLITS, DatasetError, DatasetKind, DatasetSplits, MediaPaths, Sample

EMOTIONS = ("neutral", "joy", "surprise", "anger", "sadness", "disgust", "fear")
SENTIMENTS = ("neutral", "positive", "negative")
COLUMNS = {"text": "Utterance", "speaker": "Speaker", "emotion": "Emotion", "sentiment": "Sentiment",
           "dialogue": "Dialogue_ID", "utterance": "Utterance_ID"}
CSV_FILE = "{split}_sent_emo.csv"


def utterance_key(row: dict, where: str) -> tuple[int, int]:
    """``(Dialogue_ID, Utterance_ID)`` of a CSV row; :class:`DatasetError` naming ``where`` unless
    both are integers."""
    try:
        return int(row["Dialogue_ID"]), int(row["Utterance_ID"])
    except ValueError:
        raise DatasetError(f"{where}: Dialogue_ID / Utterance_ID must be integers, got "
                           f"{row['Dialogue_ID']!r} / {row['Utterance_ID']!r}") from None


def utterance_name(dialogue: int, utterance: int) -> str:
    """The media files' stem: ``dia{D}_utt{U}``."""
    return f"dia{dialogue}_utt{utterance}"


def media_paths(root: pathlib.Path, split: Optional[str], row: dict, *, where: str = "",
                allow_outside: bool = False) -> MediaPaths:
    """``{root}/audios/{split}/dia{D}_utt{U}.flac`` and ``{root}/videos/{split}/...mp4`` (without
    ``split``: ``audios/`` and ``videos/`` directly). Named by the row's ids, so always inside
    ``root`` (``allow_outside`` has nothing to allow)."""
    name = utterance_name(*utterance_key(row, where))
    folders = [split] if split else []
    return MediaPaths(pathlib.Path(root).joinpath("audios", *folders, f"{name}.flac"),
                      pathlib.Path(root).joinpath("videos", *folders, f"{name}.mp4"))


def load_meld(root: str | pathlib.Path, *, target: str = "emotion", allow_outside_paths: bool = False
              ) -> DatasetSplits:
    """Load MELD (or a MELD-format folder) for ``target`` ``"emotion"`` (7) or ``"sentiment"`` (3).
    MELD's CSVs name no paths (media follow the ids), so ``allow_outside_paths`` changes nothing."""
    from emojax.data import csvutil  # import cost: pandas, when a dataset is loaded only

    root = pathlib.Path(root)
    class_names = MELD.class_names(target)
    labels = {name: i for i, name in enumerate(class_names)}
    splits, not_scored = {}, []
    for split, path, frame in csvutil.split_frames(root, CSV_FILE, "MELD", columns=COLUMNS.values()):
        if frame is None:
            not_scored.append(split)
            continue
        label_column = COLUMNS[target]
        samples, keys = [], []
        for i, row in enumerate(frame.to_dict("records")):
            row_number = csvutil.csv_row(i)
            where = f"{path}, row {row_number}"
            dialogue, utterance = utterance_key(row, where)
            keys.append(((dialogue, utterance), row_number))
            media = media_paths(root, split, row, where=where)
            samples.append(Sample(
                uid=f"{split}/{utterance_name(dialogue, utterance)}", dialogue=str(dialogue), index=utterance,
                speaker=str(row["Speaker"]).strip(), text=csvutil.clean_text(row["Utterance"]),
                audio=csvutil.existing(media.audio), video=csvutil.existing(media.video),
                label=csvutil.label_index(row[label_column], labels, path, row_number, label_column)))
        csvutil.check_unique(path, keys, "(Dialogue_ID, Utterance_ID)")
        splits[split] = csvutil.finish_split(split, samples, "MELD")
    return DatasetSplits("MELD", str(root), class_names, splits, tuple(not_scored))


MELD = DatasetKind(
    kind="meld", name="MELD", csv_files={split: CSV_FILE.format(split=split) for split in SPLITS},
    targets={"emotion": EMOTIONS, "sentiment": SENTIMENTS}, load=load_meld, media_paths=media_paths)
