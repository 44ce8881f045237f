"""Reading dataset CSV files with errors that name the file, the column and the row."""
from __future__ import annotations

import logging
import pathlib
from typing import Iterable, Mapping, Optional, Sequence

import pandas as pd

from emojax.data.types import DatasetError, Sample, Split

log = logging.getLogger(__name__)

# Windows-1252 punctuation that MELD's transcripts carry as stray control characters.
_PUNCTUATION = str.maketrans({"\x91": "'", "\x92": "'", "\x93": '"', "\x94": '"', "\x85": "...",
                              "\x96": "-", "\x97": "-", "\xa0": " "})


def clean_text(text) -> str:
    if not isinstance(text, str):
        return "" if pd.isna(text) else str(text)
    text = text.translate(_PUNCTUATION)
    if "\u00e2\u0080" in text:  # UTF-8 read as Latin-1 ("â\x80\x99" for a right quote)
        try:
            text = text.encode("latin-1").decode("utf-8").translate(_PUNCTUATION)
        except (UnicodeEncodeError, UnicodeDecodeError):
            pass
    return " ".join(text.replace("\u2019", "'").replace("\u2018", "'").split())


def read_csv(path: pathlib.Path) -> pd.DataFrame:
    try:
        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
        except UnicodeDecodeError:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="cp1252")
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise DatasetError(f"{path}: malformed CSV ({str(err).strip()})") from err
    frame.columns = [c.strip() for c in frame.columns]
    return frame


def pick_column(frame: pd.DataFrame, path: pathlib.Path, candidates: Sequence[str], what: str,
                required: bool = True) -> Optional[str]:
    for name in candidates:
        if name in frame.columns:
            return name
    if required:
        raise DatasetError(f"{path}: missing column {candidates[0]!r} ({what}); columns are {list(frame.columns)}")
    return None


def label_index(value: str, labels: Mapping[str, int], path: pathlib.Path, row: int, column: str) -> int:
    key = str(value).strip().lower()
    if key not in labels:
        raise DatasetError(f"{path}, row {row}: unknown label {value!r} in column {column!r}; "
                           f"expected one of {sorted(labels)}")
    return labels[key]


def csv_row(index: int) -> int:
    """The row number a spreadsheet shows for a data frame's ``index`` (header is row 1)."""
    return index + 2


def finish_split(name: str, samples: Iterable[Sample], dataset: str) -> Split:
    ordered = sorted(samples, key=lambda s: (_natural(s.dialogue), s.index))
    missing = {"A": sum(s.audio is None for s in ordered), "V": sum(s.video is None for s in ordered)}
    if any(missing.values()):
        log.warning("%s %s: %d of %d samples without audio, %d without video (those modalities are "
                    "treated as missing)", dataset, name, missing["A"], len(ordered), missing["V"])
    return Split(name, ordered, missing)


def existing(path: pathlib.Path) -> Optional[str]:
    return str(path) if path.is_file() else None


def _natural(key: str):
    try:
        return (0, int(key), "")
    except ValueError:
        return (1, 0, key)
