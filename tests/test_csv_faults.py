"""Damaged dataset CSVs: each fault stops the run naming file and row(s), or is reported once."""
import logging
import pathlib

import pandas as pd
import pytest

from conftest import write_text_meld
from emojax.data import DatasetError, load_dataset
from emojax.data import csvutil

HEADER = "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime"


def _meld(tmp_path: pathlib.Path) -> pathlib.Path:
    return write_text_meld(tmp_path / "meld", per_split=(14, 6, 7))


def _lines(path: pathlib.Path) -> list[str]:
    """The file's lines without line breaks; line 0 is the header (spreadsheet row 1)."""
    return path.read_text(encoding="utf-8").splitlines()


def _set_utterance(line: str, text: str) -> str:
    """``line`` with its Utterance field (the second; the generated ones hold no comma) replaced."""
    number, _, rest = line.split(",", 2)
    return f"{number},{text},{rest}"


def _write_rows(path: pathlib.Path, lines: list[bytes]) -> None:
    path.write_bytes(b"\n".join(lines) + b"\n")


def _sims(root: pathlib.Path, rows: list[tuple[str, int, str]]) -> pathlib.Path:
    root.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame([{"video_id": v, "clip_id": c, "text": f"clip {c}", "annotation": "Positive", "mode": m}
                          for v, c, m in rows], columns=["video_id", "clip_id", "text", "annotation", "mode"])
    frame.to_csv(root / "label.csv", index=False)
    return root


def test_unclosed_quote_names_file_and_rows(tmp_path):
    root = _meld(tmp_path)
    path = root / "dev_sent_emo.csv"
    # Times written without a comma carry no quotes, so nothing closes the quote that row 3 opens
    # until the stray one in row 7: pandas reads rows 3-7 as one utterance (six rows, two samples)
    # without complaint.
    lines = [line.replace('"00:00:01,000","00:00:02,000"', "00:00:01.000,00:00:02.000") for line in _lines(path)]
    lines[2] = _set_utterance(lines[2], '"so is wow whoa')
    lines[6] = _set_utterance(lines[6], 'five" tall')
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError) as err:
        load_dataset("meld", str(root), target="emotion")
    message = str(err.value)
    assert message.startswith(f"{path}, rows 3-7: malformed CSV")
    assert "rows 4, 5, 6, 7 look like rows of their own" in message
    assert "Close the quote in row 3" in message


def test_unclosed_quote_across_two_rows_names_both(tmp_path):
    root = _meld(tmp_path)
    path = root / "dev_sent_emo.csv"
    lines = _lines(path)
    lines[3] = lines[3].removesuffix('"')  # row 4's EndTime loses its closing quote and swallows row 5
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=rf"^{path}, rows 4-5: malformed CSV: .*row 5 looks like a row of its own"):
        load_dataset("meld", str(root), target="emotion")


def test_unclosed_quote_running_to_end_of_file_names_rows(tmp_path):
    path = tmp_path / "dev.csv"
    path.write_text(HEADER + "\n" + '1,"never closed,Ross,joy,positive,0,0,1,1,x,y\n'
                    + "2,okay,Ross,joy,positive,0,1,1,1,x,y\n")
    with pytest.raises(DatasetError, match=rf"^{path}, rows 2-3: malformed CSV"):
        csvutil.read_csv(path)


def test_quoted_multiline_field_still_loads_and_rows_stay_numbered(tmp_path):
    root = _meld(tmp_path)
    path = root / "dev_sent_emo.csv"
    lines = _lines(path)
    lines[2] = _set_utterance(lines[2], '"Well,\nI said so, twice"')
    path.write_text("\n".join(lines) + "\n")
    data = load_dataset("meld", str(root), target="emotion")
    assert len(data.splits["dev"]) == 6
    assert data.splits["dev"].samples[1].text == "Well, I said so, twice"
    # The multi-line record is one spreadsheet row, so the row after it is still row 4.
    frame = pd.read_csv(path, dtype=str)
    frame.loc[2, "Emotion"] = "bored"
    frame.to_csv(path, index=False)
    with pytest.raises(DatasetError, match=rf"^{path}, row 4: unknown label 'bored'"):
        load_dataset("meld", str(root), target="emotion")


def test_mixed_encodings_decode_per_row_with_one_warning(tmp_path, caplog):
    root = _meld(tmp_path)
    path = root / "train_sent_emo.csv"
    lines = [line.encode("utf-8") for line in _lines(path)]
    texts = {2: ("café crème", "utf-8"), 3: ("naïve résumé", "cp1252"), 5: ("it’s “fine”", "utf-8"),
             7: ("l’été", "cp1252"), 8: ("Ελλάδα 東京", "utf-8")}
    for row, (text, encoding) in texts.items():
        lines[row - 1] = _set_utterance(lines[row - 1].decode("utf-8"), text).encode(encoding)
    _write_rows(path, lines)
    with caplog.at_level(logging.WARNING, logger="emojax.data.csvutil"):
        data = load_dataset("meld", str(root), target="emotion")
    by_uid = {s.uid: s.text for s in data.splits["train"].samples}
    assert by_uid["train/dia0_utt0"] == "café crème"
    assert by_uid["train/dia0_utt1"] == "naïve résumé"
    assert by_uid["train/dia0_utt3"] == "it's “fine”"
    assert by_uid["train/dia1_utt1"] == "l'été"
    assert by_uid["train/dia1_utt2"] == "Ελλάδα 東京"
    warnings = [r.getMessage() for r in caplog.records if "UTF-8" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].startswith(f"{path}: rows 3, 7 are not valid UTF-8 and read as Windows-1252 (cp1252)")


def test_undecodable_byte_names_file_and_row(tmp_path):
    root = _meld(tmp_path)
    path = root / "train_sent_emo.csv"
    lines = [line.encode("utf-8") for line in _lines(path)]
    lines[3] = _set_utterance(lines[3].decode("utf-8"), "bad byte here").encode("utf-8").replace(b"byte", b"b\x81te")
    _write_rows(path, lines)
    with pytest.raises(DatasetError, match=rf"^{path}, row 4: byte 0x81 is neither UTF-8 nor Windows-1252"):
        load_dataset("meld", str(root), target="emotion")


def test_meld_duplicate_utterance_names_both_rows(tmp_path):
    root = _meld(tmp_path)
    path = root / "dev_sent_emo.csv"
    frame = pd.read_csv(path, dtype=str)
    frame.loc[4, ["Dialogue_ID", "Utterance_ID"]] = ["0", "1"]
    frame.to_csv(path, index=False)
    with pytest.raises(DatasetError,
                       match=rf"^{path}, rows 3 and 6: duplicate \(Dialogue_ID, Utterance_ID\) \(0, 1\)"):
        load_dataset("meld", str(root), target="emotion")


def test_sims_duplicate_clip_names_both_rows(tmp_path):
    root = _sims(tmp_path / "sims", [("video_0001", 1, "train"), ("video_0001", 2, "train"),
                                     ("video_0002", 1, "valid"), ("video_0001", 2, "test")])
    with pytest.raises(DatasetError,
                       match=rf"^{root / 'label.csv'}, rows 3 and 5: duplicate \(video_id, clip_id\) "
                             r"\('video_0001', 2\)"):
        load_dataset("sims", str(root), target="sentiment")


def test_meld_empty_dev_is_not_scored(tmp_path, caplog):
    root = _meld(tmp_path)
    (root / "dev_sent_emo.csv").write_text(HEADER + "\n")
    with caplog.at_level(logging.WARNING):
        data = load_dataset("meld", str(root), target="emotion")
    assert data.not_scored == ("dev",)
    assert set(data.splits) == {"train", "test"}
    assert any(f"{root / 'dev_sent_emo.csv'} has a header but no rows; the dev split is not scored" in r.getMessage()
               for r in caplog.records)


def test_meld_empty_train_is_an_error(tmp_path):
    root = _meld(tmp_path)
    path = root / "train_sent_emo.csv"
    path.write_text(HEADER + "\n")
    with pytest.raises(DatasetError, match=rf"^{path} has a header but no rows"):
        load_dataset("meld", str(root), target="emotion")


def test_sims_empty_label_file_is_an_error(tmp_path):
    root = _sims(tmp_path / "sims", [])
    with pytest.raises(DatasetError, match=rf"^{root / 'label.csv'} has a header but no rows"):
        load_dataset("sims", str(root), target="sentiment")


def test_check_unique():
    csvutil.check_unique(pathlib.Path("x.csv"), [((0, 0), 2), ((0, 1), 3), ((1, 0), 4)], "id")
    with pytest.raises(DatasetError, match=r"^x\.csv, rows 2 and 4: duplicate id 'a'"):
        csvutil.check_unique(pathlib.Path("x.csv"), [("a", 2), ("b", 3), ("a", 4), ("b", 5)], "id")


def test_is_empty_split(caplog):
    path = pathlib.Path("d/x.csv")
    empty = pd.DataFrame(columns=["a", "b"])
    assert csvutil.is_empty_split(pd.DataFrame({"a": ["1"], "b": ["2"]}), path, "train", "MELD") is False
    assert csvutil.is_empty_split(pd.DataFrame({"a": ["1"]}), path, "dev", "MELD") is False
    assert not caplog.records
    with caplog.at_level(logging.WARNING, logger="emojax.data.csvutil"):
        assert csvutil.is_empty_split(empty, path, "test", "MELD") is True
    assert [r.getMessage() for r in caplog.records] == [
        "MELD: d/x.csv has a header but no rows; the test split is not scored"]
    with pytest.raises(DatasetError, match=r"^d/x\.csv has a header but no rows"):
        csvutil.is_empty_split(empty, path, "train", "MELD")
