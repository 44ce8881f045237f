"""Batch prediction: a dataset-style CSV (MELD, IEMOCAP, CH-SIMS) or a folder of clips in, one output
row per input row out, with the error of a row whose media cannot be read."""
from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from emojax.data import csvutil, meld, paths, sims
from emojax.data.iemocap import read_rows
from emojax.data.types import DatasetError, MediaPaths
from emojax.files import write_text_atomic
from emojax.progress import progress_bar

from emojax.inference.estimator import Estimator, has_words

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac")  # a stem with both: the .wav is used (as the CH-SIMS loader does)
VIDEO_SUFFIXES = (".mp4",)
TEXT_COLUMNS = ("Utterance", "Text", "text", "Transcript", "transcript", "utterance")
AUDIO_COLUMNS = ("audio", "Audio", "audio_path", "Wav_Path")
VIDEO_COLUMNS = ("video", "Video", "video_path", "Video_Path")
ID_COLUMNS = ("id", "ID", "Name", "Utterance_ID", "name", "clip")
LABEL_COLUMNS = ("Emotion", "Sentiment", "Label", "label", "annotation")


@dataclasses.dataclass
class TableInput:
    """One row of a batch: the id columns written to the output, and the inputs to score."""

    ids: dict[str, Any]
    text: Optional[str]
    audio: Optional[str]
    video: Optional[str]
    error: Optional[str] = None  # known before scoring (e.g. a malformed id)
    # Dataset layouts (MELD, IEMOCAP, CH-SIMS): the row's conversation, its position there as the
    # dataset's loader orders it, and its speaker; ``None`` for rows scored alone.
    dialogue: Optional[str] = None
    index: int = 0
    speaker: str = "speaker"
    problems: dict[str, str] = dataclasses.field(default_factory=dict)  # "A"/"V" -> why a path was not used


def read_table_inputs(source: str | os.PathLike, *, media_root: Optional[str | os.PathLike] = None,
                      split: Optional[str] = None, allow_outside_paths: bool = False) -> list[TableInput]:
    """The rows of ``source``: a CSV file or a folder of clips (see :func:`predict_table`). A
    transcript without words (only control or zero-width characters, which tokenize to nothing)
    is an empty transcript."""
    path = pathlib.Path(source)
    if path.is_dir():
        return _folder_inputs(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such CSV file or folder of clips")
    rows = _csv_inputs(path, pathlib.Path(media_root) if media_root else path.parent, split, allow_outside_paths)
    for row in rows:
        if row.text and not has_words(row.text):
            row.text = ""
    return rows


def _folder_inputs(folder: pathlib.Path) -> list[TableInput]:
    clips: dict[str, dict[str, pathlib.Path]] = {}
    for path in sorted(folder.iterdir()):
        suffix = path.suffix.lower()
        if not path.is_file() or suffix not in AUDIO_SUFFIXES + VIDEO_SUFFIXES:
            continue
        kind = "audio" if suffix in AUDIO_SUFFIXES else "video"
        found = clips.setdefault(path.stem, {})
        order = AUDIO_SUFFIXES if kind == "audio" else VIDEO_SUFFIXES
        if kind not in found or order.index(suffix) < order.index(found[kind].suffix.lower()):
            found[kind] = path
    if not clips:
        raise FileNotFoundError(f"{folder}: no audio ({', '.join(AUDIO_SUFFIXES)}) or video "
                                f"({', '.join(VIDEO_SUFFIXES)}) files in this folder")
    return [TableInput({"row": i, "id": stem}, None,
                       str(found["audio"]) if "audio" in found else None,
                       str(found["video"]) if "video" in found else None)
            for i, (stem, found) in enumerate(sorted(clips.items()))]


def _cell(row: dict, column: Optional[str]) -> str:
    return "" if column is None else str(row[column]).strip()


def _csv_inputs(path: pathlib.Path, root: pathlib.Path, split: Optional[str],
                allow_outside: bool = False) -> list[TableInput]:
    frame = csvutil.read_csv(path)
    pick = lambda names: csvutil.pick_column(frame, path, names, "", required=False)  # noqa: E731
    text_col, audio_col, video_col = pick(TEXT_COLUMNS), pick(AUDIO_COLUMNS), pick(VIDEO_COLUMNS)
    labels = [c for c in LABEL_COLUMNS if c in frame.columns]
    columns = set(frame.columns)
    if {"Dialogue_ID", "Utterance_ID"} <= columns:
        layout, id_cols = "meld", ["Dialogue_ID", "Utterance_ID"]
        if split is None:
            split = meld.MELD.split_of(path.name)
    elif {"video_id", "clip_id"} <= columns:
        layout, id_cols = "sims", ["video_id", "clip_id"]
    elif {"Wav_Path", "Video_Path"} <= columns:
        return _iemocap_inputs(frame, path, root, labels, allow_outside)
    else:
        layout, id_cols = "paths", [c for c in ID_COLUMNS if c in columns][:1]
    if text_col is None and audio_col is None and video_col is None and layout == "paths":
        raise ValueError(f"{path}: no input columns; give a transcript ({', '.join(TEXT_COLUMNS[:3])}), "
                         f"audio ({', '.join(AUDIO_COLUMNS[:2])}) or video ({', '.join(VIDEO_COLUMNS[:2])}) "
                         f"column, or MELD's Dialogue_ID / Utterance_ID; columns are {list(frame.columns)}")
    rows = []
    for i, row in enumerate(frame.to_dict("records")):
        ids: dict[str, Any] = {"row": i, "id": str(i)}
        ids.update({c: row[c] for c in id_cols})
        ids.update({c: row[c] for c in labels})
        item = TableInput(ids, None, None, None)
        where = f"{path}, row {csvutil.csv_row(i)}"
        for modality, column in (("A", audio_col), ("V", video_col)):
            found, problem = paths.resolve_media(root, _cell(row, column), where=where, allow_outside=allow_outside)
            setattr(item, "audio" if modality == "A" else "video", str(found) if found else None)
            if problem:
                item.problems[modality] = f"{_cell(row, column)}: {problem}"
        if layout == "meld":
            try:
                dialogue, utterance = meld.utterance_key(row, where)
            except DatasetError as err:
                ids["id"] = _cell(row, "Utterance_ID") or str(i)
                item.error = str(err)
            else:
                ids["id"] = meld.utterance_name(dialogue, utterance)
                item.dialogue, item.index = str(dialogue), utterance
                item.speaker = _cell(row, "Speaker") if "Speaker" in columns else "speaker"
                _fill_media(item, meld.MELD.media_paths(root, split, row, where=where))
        elif layout == "sims":
            try:
                media = sims.SIMS.media_paths(root, split, row, where=where, allow_outside=allow_outside)
            except DatasetError as err:
                item.error = str(err)
            else:
                if media.problems:  # the clip's folder leads outside root
                    for modality, problem in media.problems.items():
                        item.problems.setdefault(modality, problem)
                else:
                    video_id, clip = sims.clip_key(row, where)
                    ids["id"] = f"{video_id}/{clip:04d}"
                    item.dialogue, item.index, item.speaker = video_id, clip, video_id
                    _fill_media(item, media)
        elif id_cols:
            ids["id"] = _cell(row, id_cols[0])
        elif item.audio or item.video:
            ids["id"] = pathlib.Path(item.audio or item.video).stem
        item.text = csvutil.clean_text(row[text_col]) if text_col is not None else None
        rows.append(item)
    return rows


def _fill_media(item: TableInput, media: MediaPaths) -> None:
    """Take the dataset's media paths where ``item``'s own path columns gave none and named no path
    that was refused."""
    if "A" not in item.problems:
        item.audio = item.audio or str(media.audio)
    if "V" not in item.problems:
        item.video = item.video or str(media.video)


def _iemocap_inputs(frame, path: pathlib.Path, root: pathlib.Path, labels: list[str],
                    allow_outside: bool) -> list[TableInput]:
    """IEMOCAP's layout, read by its loader's own rules (actors, time order, video segments)."""
    rows = []
    for i, (row, record) in enumerate(zip(read_rows(frame, path, root, allow_outside=allow_outside),
                                          frame.to_dict("records"))):
        ids: dict[str, Any] = {"row": i, "id": row["name"]}
        ids.update({c: record[c] for c in ("Dialogue_ID",) if c in record})
        ids.update({c: record[c] for c in labels})
        audio = row["audio"] or (str(row["looked"]["A"]) if row["looked"]["A"] else None)
        video = row["video"] or (str(row["looked"]["V"]) if row["looked"]["V"] else None)
        rows.append(TableInput(ids, row["text"], audio, video, dialogue=row["dialogue"], index=row["index"],
                               speaker=row["speaker"], problems=row["problems"]))
    return rows


def predict_table(estimator: Estimator, source: str | os.PathLike, output_csv: Optional[str | os.PathLike] = None,
                  *, progress: bool = True, media_root: Optional[str | os.PathLike] = None,
                  split: Optional[str] = None, chunk_size: int = 64, allow_outside_paths: bool = False):
    """Score every row of ``source`` with ``estimator``; returns the table (a pandas DataFrame)
    and writes it to ``output_csv`` when given.

    ``source`` is either

    * a CSV with a dataset's columns. MELD (``Utterance``, ``Dialogue_ID``, ``Utterance_ID``):
      media at ``{root}/audios/{split}/dia{D}_utt{U}.flac`` and ``{root}/videos/{split}/...mp4``,
      where ``root`` is the CSV's folder (or ``media_root``) and ``split`` is taken from a file
      named ``{split}_sent_emo.csv`` (or given; with neither, ``audios/`` and ``videos/``
      directly). CH-SIMS (``video_id``, ``clip_id``, ``text``): ``{root}/Raw/{video_id}/{clip:04d}``
      ``.wav``/``.flac``/``.mp4``. IEMOCAP (``Wav_Path``, ``Video_Path``, ``Speaker``,
      ``Dialogue_ID``, ``Start_Time``, ``End_Time``): read by the IEMOCAP loader's rules (actors as
      speakers, time order, the utterance's segment of the dialogue video). Any other CSV with
      ``audio`` / ``video`` columns: paths relative to ``root``. Such path columns win over the
      naming conventions; a path leading outside ``root`` is not read (the row's error says so)
      unless ``allow_outside_paths``. The transcript comes from ``Utterance`` / ``Text`` / ``text``,
      cleaned as the loaders clean it; without a transcript column the text modality is absent.
      Rows of the three dataset layouts are scored as the run scored its own splits
      (:meth:`Estimator.predict_dialogues`: dialogue order, context turns, prompt, speakers,
      evaluation batches), so a split's own CSV reproduces the run's test predictions; other rows
      are each scored alone, as :meth:`Estimator.predict` scores them.
    * a folder of clips: ``.flac`` / ``.wav`` audio and ``.mp4`` video, paired by file stem, no text.

    Output columns: ``row`` (0-based input row), ``id`` and the input's id and label columns,
    ``audio`` and ``video`` (the files used), ``predicted``, ``prob_{class}`` for every class,
    ``estimate`` (sentiment runs: the suite's score, :meth:`Estimator.estimate_score`) and
    ``transcript`` (with an estimator that transcribes audio: the text recognised for rows given
    audio and no text), ``error`` (empty when the row was scored). A missing or undecodable media file the run needs
    fails its row only.
    """
    inputs = read_table_inputs(source, media_root=media_root, split=split, allow_outside_paths=allow_outside_paths)
    if any(item.dialogue is not None for item in inputs):
        outcomes = estimator.predict_dialogues(inputs, progress=progress)
        return _table(estimator, inputs, outcomes, output_csv)
    if estimator.dialogue_context or (estimator.context_turns != 0 and any(item.text for item in inputs)):
        log.warning("%s: this run was trained with dialogue context, but %s has no dialogue columns "
                    "(MELD's Dialogue_ID / Utterance_ID, IEMOCAP's Dialogue_ID / Start_Time, CH-SIMS's "
                    "video_id / clip_id): every row is scored as a dialogue's first utterance",
                    estimator.run_dir, source)
    for item in inputs:
        for m in estimator.modalities:
            if m in item.problems:
                item.error = item.error or item.problems[m]
    outcomes: list[tuple[Optional[dict], Optional[str]]] = []
    bar = progress_bar(total=len(inputs), desc="predicting", unit="row", enabled=progress)
    for start in range(0, len(inputs), max(1, int(chunk_size))):
        chunk = inputs[start:start + max(1, int(chunk_size))]
        triples = [(item.text, item.audio, item.video) for item in chunk]
        try:
            done = estimator.predict_many(triples)
        except Exception:  # noqa: BLE001 - isolate the row at fault, keep the others
            done = []
            for triple in triples:
                try:
                    done.extend(estimator.predict_many([triple]))
                except Exception as err:  # noqa: BLE001
                    done.append((None, f"{type(err).__name__}: {err}"))
        for item, (result, error) in zip(chunk, done):
            outcomes.append((None, item.error) if item.error else (result, error))
        bar.update(len(chunk))
        bar.set_postfix(errors=sum(error is not None for _, error in outcomes))
    bar.close()
    return _table(estimator, inputs, outcomes, output_csv)


def _table(estimator: Estimator, inputs: Sequence[TableInput], outcomes, output_csv):
    names = estimator.class_names
    records = []
    for item, (result, error) in zip(inputs, outcomes):
        record = dict(item.ids)
        record.update(audio=item.audio or "", video=item.video or "")
        record["predicted"] = result["predicted"] if result else ""
        for name in names:
            record[f"prob_{name}"] = result["probabilities"][name] if result else np.nan
        if estimator.provides_estimate:
            record["estimate"] = result["estimate"] if result else np.nan
        record["transcript"] = (result or {}).get("transcript", "")
        record["error"] = error or ""
        records.append(record)
    transcribed = estimator.transcriber is not None
    columns = ["row", "id", *[c for c in (inputs[0].ids if inputs else {}) if c not in ("row", "id")],
               "audio", "video", *(["transcript"] if transcribed else []), "predicted",
               *[f"prob_{name}" for name in names],
               *(["estimate"] if estimator.provides_estimate else []), "error"]
    table = pd.DataFrame.from_records(records, columns=columns)
    if output_csv is not None:
        write_text_atomic(output_csv, table.to_csv(index=False))
    return table
