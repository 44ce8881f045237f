"""IEMOCAP: ``IEMOCAP_{train,dev,test}.csv`` with ``Wav_Path`` / ``Video_Path`` relative to the root.

Six emotions (neu, ang, exc, fru, hap, sad). What the released CSV files hold, and what this
loader makes of it:

* ``Speaker`` holds the utterance id ``{Dialogue_ID}_{F|M}{NNN}`` (``Ses01F_impro01_M003``), not a
  speaker. The speaker is the session's actor of that letter: ``Ses01_M`` for every ``_M`` turn of
  session 1, in any of its dialogues (two speakers per dialogue, ten actors in all). A ``Speaker``
  value that is not an utterance id is taken as the speaker's name.
* F and M turns are numbered separately, so the numbers do not order the conversation:
  ``Start_Time`` does. Each dialogue is ordered by ``Start_Time`` (ties: file order), and that
  order is the ``index`` that dialogue context and prompts follow.
* ``Video_Path`` is the whole dialogue's recording: an utterance's video is the segment
  ``[Start_Time, End_Time]`` of it, a reference ``"file.avi#t=start,end"``
  (:func:`emojax.data.media.segment_ref`) that frame sampling and the feature cache honour.
* Media paths are relative to the dataset folder (the release's ``./dataset/IEMOCAP_full_release/...``
  means ``{root}/dataset/IEMOCAP_full_release/...``); a path leading outside it is not read.

Without the time columns (a hand-made CSV), rows keep the order of the utterance number and the
video is the whole file.
"""
from __future__ import annotations

import logging
import math
import pathlib
import re
from typing import Optional

from emojax.data import paths
from emojax.data.types import SPLITS, DatasetError, DatasetKind, DatasetSplits, MediaPaths, Sample

log = logging.getLogger(__name__)

EMOTIONS = ("neu", "ang", "exc", "fru", "hap", "sad")
CSV_FILE = "IEMOCAP_{split}.csv"
MEDIA_COLUMNS = {"A": "Wav_Path", "V": "Video_Path"}
_ALIASES = {"neutral": "neu", "anger": "ang", "angry": "ang", "excited": "exc", "frustration": "fru",
            "frustrated": "fru", "happy": "hap", "happiness": "hap", "sadness": "sad"}
_UTTERANCE_ID = re.compile(
    r"^(?P<dialogue>(?P<session>Ses\d\d)[MF]_\w+?)_(?P<speaker>[MF])(?P<index>\d+)$")


def actor(utterance_id: str) -> Optional[str]:
    """The speaking actor of an IEMOCAP utterance id: ``Ses01F_impro01_M003`` -> ``Ses01_M``."""
    match = _UTTERANCE_ID.match(utterance_id.strip())
    return f"{match['session']}_{match['speaker']}" if match else None


def _seconds(row: dict, column: Optional[str], path: pathlib.Path, row_number: int) -> Optional[float]:
    if column is None:
        return None
    value = str(row[column]).strip()
    try:
        seconds = float(value)
    except ValueError:
        raise DatasetError(f"{path}, row {row_number}: {column} must be a number of seconds, "
                           f"got {value!r}") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise DatasetError(f"{path}, row {row_number}: {column} must be a non-negative number of seconds, "
                           f"got {value!r}")
    return seconds


def load_iemocap(root: str | pathlib.Path, *, target: str = "emotion",
                 allow_outside_paths: bool = False) -> DatasetSplits:
    """Load IEMOCAP's release CSVs (see the module docstring); ``allow_outside_paths`` lets media
    paths lead outside ``root``."""
    from emojax.data import csvutil  # import cost: pandas, when a dataset is loaded only

    root = pathlib.Path(root)
    class_names = IEMOCAP.class_names(target)
    labels = {name: i for i, name in enumerate(class_names)}
    labels.update({alias: labels[short] for alias, short in _ALIASES.items()})
    splits, not_scored = {}, []
    for split, path, frame in csvutil.split_frames(root, CSV_FILE, "IEMOCAP"):
        if frame is None:
            not_scored.append(split)
            continue
        samples = [Sample(uid=f"{split}/{r['name']}", dialogue=r["dialogue"], index=r["index"], speaker=r["speaker"],
                          text=r["text"], audio=r["audio"], video=r["video"], label=r["label"])
                   for r in read_rows(frame, path, root, labels=labels, allow_outside=allow_outside_paths,
                                      split=split)]
        splits[split] = csvutil.finish_split(split, samples, "IEMOCAP")
    return DatasetSplits("IEMOCAP", str(root), class_names, splits, tuple(not_scored))


def media_paths(root: pathlib.Path, split: Optional[str], row: dict, *, where: str = "",
                allow_outside: bool = False) -> MediaPaths:
    """The row's ``Wav_Path`` and ``Video_Path`` relative to ``root`` (the whole dialogue's video:
    :func:`read_rows` cuts the utterance's segment); a path leading outside ``root`` is not used
    unless ``allow_outside``. ``split`` plays no part."""
    found, problems = {}, {}
    for modality, column in MEDIA_COLUMNS.items():
        found[modality], problem = paths.resolve_media(root, row[column], where=where, allow_outside=allow_outside)
        if problem:
            problems[modality] = f"{row[column]}: {problem}"
    return MediaPaths(found["A"], found["V"], problems)


def read_rows(frame, path: pathlib.Path, root: pathlib.Path, *, labels: Optional[dict] = None,
              allow_outside: bool = False, split: str = "") -> list[dict]:
    """The rows of one IEMOCAP CSV as the loader reads them, in file order: per row ``name``
    (utterance id), ``dialogue``, ``index`` (position in the dialogue by ``Start_Time``, ties in
    file order), ``speaker`` (the actor), ``text``, ``audio`` / ``video`` (existing files, the video
    as the utterance's segment; ``None`` where absent), ``looked`` (modality -> the path looked
    for), ``problems`` (modality -> the path given and why it was not used), ``row`` (spreadsheet
    row) and ``label`` (an index into ``labels``; ``None`` without ``labels``). Batch prediction
    reads a CSV of this layout through here too.
    """
    from emojax.data import csvutil  # import cost: pandas and the media readers, when rows are read only
    from emojax.data.media import segment_ref

    pick = lambda names, what, required=True: csvutil.pick_column(  # noqa: E731
        frame, path, names, what, required=required)
    wav_col = pick([MEDIA_COLUMNS["A"]], "audio path relative to the dataset root")
    pick([MEDIA_COLUMNS["V"]], "video path relative to the dataset root")
    label = pick(["Label", "Emotion", "label", "emotion"], "emotion label", labels is not None)
    text = pick(["Text", "Utterance", "Transcript", "text"], "transcript")
    ident = pick(["Utterance_ID", "Name", "ID", "utterance_id"], "utterance id", False)
    dialogue_col = pick(["Dialogue_ID", "Dialog_ID", "dialogue"], "dialogue", False)
    speaker_col = pick(["Speaker", "speaker"], "speaker", False)
    start_col = pick(["Start_Time", "start_time", "Start"], "segment start (s)", False)
    end_col = pick(["End_Time", "end_time", "End"], "segment end (s)", False)

    rows, missing_example = [], {}
    for i, row in enumerate(frame.to_dict("records")):
        row_number = csvutil.csv_row(i)
        where = f"{path}, row {row_number}"
        speaker_cell = str(row[speaker_col]).strip() if speaker_col else ""
        if ident:
            name = str(row[ident]).strip()
        elif actor(speaker_cell):  # the release: the Speaker column holds the utterance id
            name = speaker_cell
        else:
            name = pathlib.Path(str(row[wav_col]).strip()).stem
        match = _UTTERANCE_ID.match(name)
        dialogue = str(row[dialogue_col]).strip() if dialogue_col else (match["dialogue"] if match else name)
        speaker = actor(speaker_cell) or speaker_cell or actor(name) or "speaker"
        start, end = _seconds(row, start_col, path, row_number), _seconds(row, end_col, path, row_number)
        if start is not None and end is not None and not end > start:
            raise DatasetError(f"{where}: End_Time ({end}) must be after Start_Time ({start})")
        media = media_paths(root, split or None, row, where=where, allow_outside=allow_outside)
        audio_path, video_path, problems = media.audio, media.video, dict(media.problems)
        audio = csvutil.existing(audio_path) if audio_path else None
        video = csvutil.existing(video_path) if video_path else None
        for modality, looked, found in (("A", audio_path, audio), ("V", video_path, video)):
            if looked is not None and found is None:
                missing_example.setdefault(modality, looked)
        if video is not None and start is not None and end is not None:
            video = segment_ref(video, start, end)
        rows.append(dict(
            name=name, dialogue=dialogue, speaker=speaker, row=row_number, problems=problems,
            order=(start if start is not None else (int(match["index"]) if match else i), i),
            text=csvutil.clean_text(row[text]), audio=audio, video=video, looked={"A": audio_path, "V": video_path},
            label=None if labels is None else csvutil.label_index(row[label], labels, path, row_number, label)))
    csvutil.check_unique(path, [(r["name"], r["row"]) for r in rows], "utterance id")
    for modality, looked in missing_example.items():
        kind = "audio" if modality == "A" else "video"
        log.warning("IEMOCAP %s: %s files are looked for relative to %s; e.g. %s does not exist "
                    "(place the release so that the CSV's paths resolve there)", split or path.name, kind, root,
                    looked)

    # Position within the dialogue by time (ties: file order), not by the per-actor numbering.
    by_dialogue: dict[str, list[dict]] = {}
    for r in rows:
        by_dialogue.setdefault(r["dialogue"], []).append(r)
    for members in by_dialogue.values():
        for index, r in enumerate(sorted(members, key=lambda r: r["order"])):
            r["index"] = index
    return rows


IEMOCAP = DatasetKind(
    kind="iemocap", name="IEMOCAP", csv_files={split: CSV_FILE.format(split=split) for split in SPLITS},
    targets={"emotion": EMOTIONS}, load=load_iemocap, media_paths=media_paths)
