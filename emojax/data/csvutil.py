"""Reading dataset CSV files with errors that name the file, the column and the row.

A damaged CSV must never load as something plausible but wrong: an unclosed quote that swallows
the rows after it, a stray Windows-1252 byte, a duplicated utterance or an empty split each
either stop the run with the file and row named or are reported once, never silently accepted.
"""
from __future__ import annotations

import codecs
import csv
import dataclasses
import io
import logging
import pathlib
from typing import Hashable, Iterable, Iterator, Mapping, Optional, Sequence

import pandas as pd

from emojax.data.types import SPLITS, DatasetError, DatasetSplits, Sample, Split

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
    """Read ``path`` as strings, decoding each row on its own and refusing run-on quoted fields.

    Rows are UTF-8 where they decode as UTF-8 and Windows-1252 (cp1252) where they do not, since
    MELD's own files mix the two; decoding the whole file as cp1252 because of one bad byte would
    turn every correct UTF-8 character elsewhere into mojibake. The cp1252 rows are named in one
    warning. A quoted field that runs across lines which look like rows of their own is an
    unclosed quote (pandas would merge those rows into one utterance) and raises
    :class:`DatasetError` naming the rows.
    """
    path = pathlib.Path(path)
    records = _records(path.read_bytes(), path)
    _check_run_on_quotes(records, path)
    text = _decode(records, path)
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise DatasetError(f"{path}: malformed CSV ({str(err).strip()})") from err
    frame.columns = [c.strip() for c in frame.columns]
    return frame


def check_unique(path: pathlib.Path, keys: Iterable[tuple[Hashable, int]], what: str) -> None:
    """Raise :class:`DatasetError` naming both rows when a key appears twice in ``keys``.

    ``keys`` holds ``(key, row_number)`` pairs, ``row_number`` being the spreadsheet row. A
    duplicated utterance would otherwise be counted twice in training and scoring, and both
    copies would share one uid (and so one feature-cache entry).
    """
    seen: dict[Hashable, int] = {}
    for key, row in keys:
        if key in seen:
            raise DatasetError(f"{path}, rows {seen[key]} and {row}: duplicate {what} {key!r}; each row must be "
                               f"a distinct utterance: delete the repeated row or correct its {what}")
        seen[key] = row


def is_empty_split(frame: pd.DataFrame, path: pathlib.Path, split: str, dataset: str) -> bool:
    """Whether ``frame`` (read from ``path``) has a header but no rows, so ``split`` is not scored.

    An empty dev or test file is treated like an absent one (a warning, and the split goes to
    ``not_scored``) rather than scored as an empty set; an empty training file is an error, since
    there is nothing to train on.
    """
    if len(frame):
        return False
    if split == "train":
        raise DatasetError(f"{path} has a header but no rows; {dataset} needs training rows: restore the "
                           f"file's rows or point to the complete dataset")
    log.warning("%s: %s has a header but no rows; the %s split is not scored", dataset, path, split)
    return True


def split_frames(root: pathlib.Path, file_name: str, dataset: str, *, columns: Iterable[str] = ()
                 ) -> Iterator[tuple[str, pathlib.Path, Optional[pd.DataFrame]]]:
    """Each split's CSV, ``root / file_name.format(split=split)``, read in split order:
    ``(split, path, frame)``, ``frame`` ``None`` for a split that is not scored (its file absent,
    or a header without rows: a warning says which). The training file must exist and hold rows,
    else :class:`DatasetError`; every one of ``columns`` must be present (checked first)."""
    for split in SPLITS:
        path = root / file_name.format(split=split)
        if not path.exists():
            if split == "train":
                raise DatasetError(f"{path}: {dataset} training file not found")
            log.warning("%s: %s not found; the %s split is not scored", dataset, path, split)
            yield split, path, None
            continue
        frame = read_csv(path)
        for column in columns:
            pick_column(frame, path, [column], column)
        yield split, path, None if is_empty_split(frame, path, split, dataset) else frame


# The csv module refuses a field longer than its limit (131072 characters unless raised) with an
# error; a long transcript is valid CSV, so reading a file raises the limit to the file's size (no
# field is longer). The limit is the process's: it is raised, never lowered, up to the largest a
# C long holds on every platform.
_FIELD_LIMIT_CAP = 2**31 - 1


def _allow_fields_of(size: int) -> int:
    """Let the csv module read fields of up to ``size`` characters; returns the limit in force."""
    wanted = min(size + 1, _FIELD_LIMIT_CAP)
    if csv.field_size_limit() < wanted:
        csv.field_size_limit(wanted)
    return csv.field_size_limit()


@dataclasses.dataclass
class _Record:
    """One CSV record: its spreadsheet row (``None`` for a blank line) and its physical lines."""

    row: Optional[int]
    lines: list[bytes]


def _records(data: bytes, path: pathlib.Path) -> list[_Record]:
    """Split ``data`` into records before decoding it.

    Quotes, commas and line breaks are the same bytes in UTF-8 and cp1252, so the record
    boundaries are found on a byte-for-byte (Latin-1) view, and each record can then be decoded
    on its own. Blank lines get no row number, as pandas skips them too, so the numbers agree
    with :func:`csv_row`.
    """
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    lines = data.splitlines(keepends=True)
    limit = _allow_fields_of(len(data))
    reader = csv.reader(line.decode("latin-1") for line in lines)
    records: list[_Record] = []
    start, row = 0, 0
    try:
        for _ in reader:
            chunk = lines[start:reader.line_num]
            if b"".join(chunk).strip():
                row += 1
                records.append(_Record(row, chunk))
            else:
                records.append(_Record(None, chunk))
            start = reader.line_num
    except csv.Error as err:
        if "field larger than field limit" in str(err):
            raise DatasetError(f"{path}, row {row + 1}: a field is longer than {limit} characters, the most one "
                               "CSV field may hold here; shorten it or split the file") from None
        raise DatasetError(f"{path}, row {row + 1}: malformed CSV ({err}); check for an unclosed quote "
                           f"at or before that row") from None
    return records


def _fields_on_line(line: bytes) -> int:
    """The number of fields ``line`` holds when parsed as a record of its own (0 if it cannot be)."""
    try:
        return len(next(csv.reader([line.decode("latin-1")]), []))
    except csv.Error:
        return 0


def _check_run_on_quotes(records: Sequence[_Record], path: pathlib.Path) -> None:
    """Refuse a quoted field that runs on over lines which are rows of their own.

    A legitimate multi-line transcript continues with prose and closes its quote cleanly. A quote
    left open instead swallows the rows after it, and pandas reads them as one utterance, often
    with the right field count and no error. Such a record shows as a line inside it that splits
    into exactly the header's field count, or as a last line that does so while the record's
    quote never closes, closes in the middle of a field, or leaves the record the wrong width.
    """
    header = next((r for r in records if r.row is not None), None)
    if header is None or len(header.lines) != 1:
        return
    columns = _fields_on_line(header.lines[0])
    if columns < 2:
        return
    for record in records:
        if record.row is None or len(record.lines) < 2:
            continue
        rowlike = [record.row + k for k, line in enumerate(record.lines[1:-1], 1)
                   if _fields_on_line(line) == columns]
        if _fields_on_line(record.lines[-1]) == columns:
            fields, untidy = _scan(b"".join(record.lines).decode("latin-1"))
            if rowlike or untidy or fields != columns:
                rowlike.append(record.row + len(record.lines) - 1)
        if rowlike:
            first, last = record.row, record.row + len(record.lines) - 1
            start = record.lines[0].decode("utf-8", errors="replace").rstrip("\r\n")
            raise DatasetError(
                f"{path}, rows {first}-{last}: malformed CSV: a quoted field that opens in row {first} "
                f"({_clip(start)!r}) is not closed on its line, so rows {first}-{last} would be read as one "
                f"utterance ({_row_list(rowlike, 'row', 'rows')} "
                f"{'looks like a row of its own' if len(rowlike) == 1 else 'look like rows of their own'}). "
                f"Close the quote in row {first}, or "
                f"write a literal quote inside a quoted field as two quotes (\"\").")


def _scan(text: str) -> tuple[int, bool]:
    """The field count of the one record ``text``, and whether a quoted field in it that spans a
    line break is left open or closed in the middle of a field (``"a\nb" c``).

    The states follow pandas' C tokenizer: a quote opens a quoted field only at the start of a
    field, ``""`` inside one is a literal quote, and text after a closing quote joins the field.
    """
    fields, state, spans, untidy = 1, "start", False, False
    for char in text:
        if state == "start":
            if char == '"':
                state, spans = "quoted", False
            elif char == ",":
                fields += 1
            elif char not in "\r\n":
                state = "field"
        elif state == "field":
            if char == ",":
                fields, state = fields + 1, "start"
        elif state == "quoted":
            if char == '"':
                state = "closing"
            elif char in "\r\n":
                spans = True
        elif char == '"':  # state "closing": a doubled quote is a literal one
            state = "quoted"
        elif char == ",":
            fields, state = fields + 1, "start"
        elif char in "\r\n":
            state = "start"
        else:
            untidy = untidy or spans
            state = "field"
    return fields, untidy or (state == "quoted" and spans)


def _decode(records: Sequence[_Record], path: pathlib.Path) -> str:
    """Decode each record as UTF-8, else cp1252, and warn once naming the cp1252 rows."""
    pieces, legacy = [], []
    for record in records:
        raw = b"".join(record.lines)
        try:
            pieces.append(raw.decode("utf-8"))
            continue
        except UnicodeDecodeError:
            pass
        try:
            pieces.append(raw.decode("cp1252"))
        except UnicodeDecodeError as err:
            byte = raw[err.start]
            raise DatasetError(f"{path}, row {record.row}: byte 0x{byte:02X} is neither UTF-8 nor Windows-1252 "
                               f"(cp1252) text; re-save the file as UTF-8 or fix that row") from None
        legacy.append(record.row)
    if legacy:
        log.warning("%s: %s not valid UTF-8 and read as Windows-1252 (cp1252); the other rows as UTF-8. "
                    "Re-save the file as UTF-8 to silence this.", path,
                    _row_list(legacy, "row", "rows") + (" is" if len(legacy) == 1 else " are"))
    return "".join(pieces)


def _row_list(rows: Sequence[int], one: str, many: str, limit: int = 20) -> str:
    """``"row 3"`` or ``"rows 3, 5, 9"``, the list cut after ``limit`` rows with a count of the rest."""
    if len(rows) == 1:
        return f"{one} {rows[0]}"
    shown = ", ".join(str(r) for r in rows[:limit])
    more = f" and {len(rows) - limit} more" if len(rows) > limit else ""
    return f"{many} {shown}{more}"


def _clip(text: str, width: int = 40) -> str:
    return text if len(text) <= width else text[:width] + "..."


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
    """The split's samples in dialogue order, with the count of samples without audio (``A``) and
    without video (``V``); :func:`warn_missing_media` reports those of the modalities a run uses."""
    ordered = sorted(samples, key=lambda s: (natural_key(s.dialogue), s.index))
    missing = {"A": sum(s.audio is None for s in ordered), "V": sum(s.video is None for s in ordered)}
    return Split(name, ordered, missing)


_MEDIA_NAMES = {"A": "audio", "V": "video"}


def warn_missing_media(dataset: DatasetSplits, modalities: Sequence[str]) -> None:
    """One warning per split that lacks media files of ``modalities`` (``A``, ``V``; text is in the
    CSV): ``MELD dev: of 140 samples, 3 without audio (treated as missing)``. Media a run does not
    read (a text-only run's) is not its concern and goes unmentioned."""
    wanted = [m for m in _MEDIA_NAMES if m in modalities]
    for split in dataset.splits.values():
        parts = [f"{split.missing[m]} without {_MEDIA_NAMES[m]}" for m in wanted if split.missing.get(m)]
        if parts:
            log.warning("%s %s: of %d samples, %s (treated as missing)", dataset.name, split.name, len(split),
                        ", ".join(parts))


def existing(path: pathlib.Path) -> Optional[str]:
    return str(path) if path.is_file() else None


def natural_key(key: str):
    """Sort key of a dialogue id: numbers by value (MELD's ``2`` before ``10``), then names."""
    try:
        return (0, int(key), "")
    except ValueError:
        return (1, 0, key)
