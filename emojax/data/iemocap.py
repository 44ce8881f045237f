"""IEMOCAP: ``IEMOCAP_{train,dev,test}.csv`` with ``Wav_Path`` / ``Video_Path`` relative to the root.

Six emotions (neu, ang, exc, fru, hap, sad). Dialogue and speaker come from their columns where
present, else from the utterance id (``Ses01F_impro01_F000`` -> dialogue ``Ses01F_impro01``,
speaker ``F``).
"""
from __future__ import annotations

import logging
import pathlib
import re

from emojax.data import csvutil
from emojax.data.types import DatasetError, DatasetSplits, Sample, SPLITS

log = logging.getLogger(__name__)

EMOTIONS = ("neu", "ang", "exc", "fru", "hap", "sad")
_ALIASES = {"neutral": "neu", "anger": "ang", "angry": "ang", "excited": "exc", "frustration": "fru",
            "frustrated": "fru", "happy": "hap", "happiness": "hap", "sadness": "sad"}
_UTTERANCE_ID = re.compile(r"^(?P<dialogue>Ses\d\d[MF]_\w+?)_(?P<speaker>[MF])(?P<index>\d+)$")


def load_iemocap(root: str | pathlib.Path, *, target: str = "emotion") -> DatasetSplits:
    root = pathlib.Path(root)
    if target != "emotion":
        raise DatasetError(f"IEMOCAP has emotion labels only; target {target!r} is not available")
    labels = {name: i for i, name in enumerate(EMOTIONS)}
    labels.update({alias: labels[short] for alias, short in _ALIASES.items()})
    splits, not_scored = {}, []
    for split in SPLITS:
        path = root / f"IEMOCAP_{split}.csv"
        if not path.exists():
            if split == "train":
                raise DatasetError(f"{path}: IEMOCAP training file not found")
            log.warning("IEMOCAP: %s not found; the %s split is not scored", path, split)
            not_scored.append(split)
            continue
        frame = csvutil.read_csv(path)
        wav = csvutil.pick_column(frame, path, ["Wav_Path"], "audio path relative to the dataset root")
        video = csvutil.pick_column(frame, path, ["Video_Path"], "video path relative to the dataset root")
        label = csvutil.pick_column(frame, path, ["Label", "Emotion", "label", "emotion"], "emotion label")
        text = csvutil.pick_column(frame, path, ["Text", "Utterance", "Transcript", "text"], "transcript")
        ident = csvutil.pick_column(frame, path, ["Utterance_ID", "Name", "ID", "utterance_id"],
                                    "utterance id", required=False)
        dialogue_col = csvutil.pick_column(frame, path, ["Dialogue_ID", "Dialog_ID", "dialogue"], "dialogue",
                                           required=False)
        speaker_col = csvutil.pick_column(frame, path, ["Speaker", "speaker"], "speaker", required=False)
        samples = []
        for i, row in enumerate(frame.to_dict("records")):
            row_number = csvutil.csv_row(i)
            name = str(row[ident]) if ident else pathlib.Path(str(row[wav])).stem
            match = _UTTERANCE_ID.match(name)
            dialogue = str(row[dialogue_col]) if dialogue_col else (match["dialogue"] if match else name)
            speaker = str(row[speaker_col]) if speaker_col else (match["speaker"] if match else "speaker")
            index = int(match["index"]) if match else i
            samples.append(Sample(
                uid=f"{split}/{name}", dialogue=dialogue, index=index, speaker=speaker,
                text=csvutil.clean_text(row[text]),
                audio=csvutil.existing(root / str(row[wav])) if row[wav] else None,
                video=csvutil.existing(root / str(row[video])) if row[video] else None,
                label=csvutil.label_index(row[label], labels, path, row_number, label)))
        splits[split] = csvutil.finish_split(split, samples, "IEMOCAP")
    return DatasetSplits("IEMOCAP", str(root), EMOTIONS, splits, tuple(not_scored))
