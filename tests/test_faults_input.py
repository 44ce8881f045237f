"""Users' input checked at the boundary: every config value and every transcript is refused before
any work, with one line naming the key (or input) and what it may hold; long CSV fields are read."""
import csv

import ml_collections
import pytest

from configs.compose import compose
from conftest import write_text_meld
from emojax import config as config_lib
from emojax.data import DatasetError, csvutil, load_dataset
from emojax.inference import Estimator, read_table_inputs
from emojax.inference.estimator import EMPTY_TEXT, check_text, has_words
from test_faults import one_error_line

MB = 1 << 20


def _set(cfg, key: str, value):
    *path, last = key.split(".")
    node = cfg
    for name in path:
        node = node[name]
    node[last] = value
    return cfg


# ---------------------------------------------------------------------------------------------
# Config values
# ---------------------------------------------------------------------------------------------
FAULTS = {
    # key, value, the whole message
    "max_seconds inf": ("dataset.max_seconds", float("inf"),
                        "dataset.max_seconds: must be a finite number of at least 0 (0: no cap), got inf"),
    "max_seconds nan": ("dataset.max_seconds", float("nan"),
                        "dataset.max_seconds: must be a finite number of at least 0 (0: no cap), got nan"),
    "dropout 1": ("model.dropout", 1.0, "model.dropout: must be a number in [0, 1), got 1.0"),
    "dropout negative": ("model.dropout", -0.5, "model.dropout: must be a number in [0, 1), got -0.5"),
    "seed negative": ("seed", -1, "seed: must be a whole number in [0, 4294967295], got -1"),
    "seed past 32 bits": ("seed", 2**32, "seed: must be a whole number in [0, 4294967295], got 4294967296"),
    "media workers negative": ("cache.media_workers", -1,
                               "cache.media_workers: must be a whole number of at least 0 (0: one thread per core), "
                               "got -1"),
    "epochs zero": ("train.epochs", 0, "train.epochs: must be a whole number of at least 1, got 0"),
    "lr inf": ("train.lr", float("inf"), "train.lr: must be a positive number, got inf"),
    "warmup above 1": ("train.warmup_ratio", 1.5, "train.warmup_ratio: must be a number in [0, 1], got 1.5"),
    "patience zero": ("train.patience", 0, "train.patience: must be a whole number of at least 1, got 0"),
    "devices negative": ("train.devices", -2,
                         "train.devices: must be a whole number of at least 0 (0: every local device), got -2"),
    "host bytes negative": ("cache.host_bytes", -1, "cache.host_bytes: must be a whole number of at least 0, got -1"),
    "hidden zero": ("model.hidden_dim", 0, "model.hidden_dim: must be a whole number of at least 1, got 0"),
    "modality dropout 0.5": ("modality_dropout", 0.5, "modality_dropout: must be a number in [0, 0.5), got 0.5"),
    "fusion depth zero": ("fusion.depth", 0, "fusion.depth: must be a whole number of at least 1, got 0"),
    "context turns -2": ("encoders.T.context_turns", -2,
                         "encoders.T.context_turns: must be a whole number of at least -1 "
                         "(-1: the whole dialogue so far), got -2"),
    "max length 1": ("encoders.T.max_length", 1, "encoders.T.max_length: must be a whole number of at least 2 "
                                                 "(tokens, the start and end tokens included), got 1"),
    "epochs a bool": ("train.epochs", True, "train.epochs: must be a whole number of at least 1, got True"),
}


@pytest.mark.parametrize("case", list(FAULTS))
def test_config_value_out_of_range_names_key_and_range(case):
    key, value, message = FAULTS[case]
    cfg = _set(compose("dataset=MELD--E,encoders=T"), key, value)
    with pytest.raises(config_lib.ConfigError) as err:
        config_lib.validate(cfg)
    assert str(err.value) == message


def test_config_values_of_the_wrong_kind_are_refused():
    """A config read from JSON or built from a dict keeps whatever types it was given."""
    cases = {
        ("progress",): (1, "progress: must be True or False, got 1"),
        ("dataset", "generate"): ("yes", "dataset.generate: must be True or False, got 'yes'"),
        ("train", "batch_size"): (16.0, "train.batch_size: must be a whole number of at least 1, got 16.0"),
        ("train", "lr"): ("1e-3", "train.lr: must be a positive number, got '1e-3'"),
        ("seed",): (None, "seed: must be a whole number in [0, 4294967295], got None"),
        ("loss", "extras", "spcl", "temperature"): (0.0, "loss.extras.spcl.temperature: must be a positive number, "
                                                         "got 0.0"),
        ("loss", "extras", "spcl", "weight"): (-1.0, "loss.extras.spcl.weight: must be a finite number of at least 0, "
                                                     "got -1.0"),
    }
    for path, (value, message) in cases.items():
        tree = compose("dataset=MELD--E,encoders=T,loss=focal+spcl").to_dict()
        node = tree
        for name in path[:-1]:
            node = node[name]
        node[path[-1]] = value
        with pytest.raises(config_lib.ConfigError) as err:
            config_lib.validate(ml_collections.ConfigDict(tree))
        assert str(err.value) == message, path


def test_config_values_that_must_agree():
    cfg = compose("dataset=MELD--E,encoders=T,experts=8xE-top2")
    cfg.classifier.top_k = 9
    with pytest.raises(config_lib.ConfigError, match=r"^classifier\.top_k: must be a whole number in \[1, 8\]"):
        config_lib.validate(cfg)
    cfg.classifier.top_k = 0
    with pytest.raises(config_lib.ConfigError, match=r"^classifier\.top_k: .* for a sparse mixture, got 0"):
        config_lib.validate(cfg)
    cfg = compose("dataset=MELD--E,encoders=T")
    cfg.classifier.experts = 4
    with pytest.raises(config_lib.ConfigError, match=r"^classifier\.experts: must be 1 for the linear classifier"):
        config_lib.validate(cfg)
    cfg = compose("dataset=MELD--E,encoders=T,loss=focal+spcl")
    cfg.loss.extras.spcl.support_set_size = 600
    with pytest.raises(config_lib.ConfigError, match=r"^loss\.extras\.spcl\.support_set_size: must be a whole "
                                                     r"number in \[1, 512\] \(loss\.extras\.spcl\.pool_size\)"):
        config_lib.validate(cfg)


def test_config_edge_values_the_code_runs_are_accepted():
    cfg = compose("dataset=MELD--E,encoders=T")
    for key, value in (("dataset.max_seconds", 0.0), ("seed", 2**32 - 1), ("cache.media_workers", 0),
                       ("model.dropout", 0.0), ("train.warmup_ratio", 1.0), ("train.weight_decay", 0.0),
                       ("encoders.T.context_turns", -1), ("cache.host_bytes", 0)):
        config_lib.validate(_set(cfg, key, value))


LAUNCH_FAULTS = {
    "seed -1": ("--config.seed=-1", "seed: must be a whole number in [0, 4294967295], got -1"),
    "max_seconds inf": ("--config.dataset.max_seconds=inf",
                        "dataset.max_seconds: must be a finite number of at least 0 (0: no cap), got inf"),
    "dropout 1": ("--config.model.dropout=1.0", "model.dropout: must be a number in [0, 1), got 1.0"),
    "media workers -3": ("--config.cache.media_workers=-3",
                         "cache.media_workers: must be a whole number of at least 0 (0: one thread per core), "
                         "got -3"),
}


@pytest.mark.parametrize("case", list(LAUNCH_FAULTS))
def test_train_launcher_refuses_a_value_in_one_line_before_work(launcher, tmp_path, text_meld, case):
    override, message = LAUNCH_FAULTS[case]
    work = tmp_path / "work"
    done = launcher.run("train", "--config=configs/train.py:dataset=MELD--E,encoders=T",
                        f"--config.dataset.path={text_meld}", "--config.progress=False", override,
                        f"--workdir={work}")
    assert one_error_line(done) == f"error: {message}"
    assert not work.exists()  # no features, no run directory (such as .../<hash>---1)


# ---------------------------------------------------------------------------------------------
# Transcripts without words
# ---------------------------------------------------------------------------------------------
BLANK = ["", " ", "\u200b\u200b", "\x00\x01", "\u2060\ufeff", " \u200b\t\u200d ", "\x1f\u180e"]


@pytest.mark.parametrize("text", BLANK)
def test_text_without_words_is_refused_as_empty(text):
    assert not has_words(text)
    with pytest.raises(ValueError) as err:
        check_text(text)
    assert str(err.value) == EMPTY_TEXT
    # the estimator refuses it first, before anything of the run is used
    with pytest.raises(ValueError) as err:
        Estimator.predict(object.__new__(Estimator), text=text)
    assert str(err.value) == EMPTY_TEXT


def test_text_with_words_is_kept():
    for text in ("hi", "\u200bhi\u200b", "\u4f60\u597d", "!", "\U0001f600", "\u0301"):
        assert has_words(text), repr(text)
        check_text(text)
    check_text(None)  # no text: the run's placeholder


def test_infer_launcher_refuses_text_without_words_as_empty_text(launcher, tmp_path):
    """Refused before the run is read: the run directory here does not even exist."""
    lines = {text: one_error_line(launcher.run("infer", f"--run_dir={tmp_path / 'nowhere'}", f"--text={text}"))
             for text in ("", "\u200b\u200b", "\u2060\ufeff")}
    assert set(lines.values()) == {f"error: {EMPTY_TEXT}"}, lines


def test_batch_rows_with_text_without_words_read_as_empty_text(tmp_path):
    source = tmp_path / "rows.csv"
    with open(source, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text"])
        for i, text in enumerate(["hello there", "", "\u200b\u200b", "\x01\x02", "\u2060\ufeff", "\u200bhi"]):
            writer.writerow([f"r{i}", text])
    rows = read_table_inputs(source)
    assert [row.text for row in rows] == ["hello there", "", "", "", "", "\u200bhi"]


# ---------------------------------------------------------------------------------------------
# Long CSV fields
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def default_field_limit():
    """The csv module's limit as a fresh interpreter has it (it is the process's)."""
    before = csv.field_size_limit(131072)
    yield
    csv.field_size_limit(before)


def _long_words(size: int) -> str:
    return ("word " * (size // 5 + 1))[:size].strip()


def test_batch_csv_with_a_megabyte_transcript_is_read(tmp_path, default_field_limit):
    long = _long_words(MB)
    source = tmp_path / "long.csv"
    with open(source, "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([["id", "text"], ["a", "short one"], ["b", long], ["c", "x" * MB]])
    rows = read_table_inputs(source)
    assert [row.ids["id"] for row in rows] == ["a", "b", "c"]
    assert rows[1].text == long and rows[2].text == "x" * MB


def test_dataset_csv_with_a_megabyte_utterance_is_read(tmp_path, default_field_limit):
    root = write_text_meld(tmp_path / "meld", per_split=(14, 6, 7))
    path = root / "train_sent_emo.csv"
    lines = path.read_text(encoding="utf-8").splitlines()
    number, _, rest = lines[3].split(",", 2)
    long = _long_words(MB)
    lines[3] = f'{number},"{long}",{rest}'
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    data = load_dataset("meld", str(root), target="emotion")
    assert sorted(len(s.text) for s in data.splits["train"].samples)[-1] == len(long)


def test_a_field_past_the_limit_is_named_as_such(tmp_path, default_field_limit, monkeypatch):
    """Where a bound stays (a field longer than any limit the platform takes), the error says so."""
    monkeypatch.setattr(csvutil, "_FIELD_LIMIT_CAP", 1000)
    source = tmp_path / "long.csv"
    source.write_text(f"id,text\na,short\nb,{'y' * 200_000}\n", encoding="utf-8")
    with pytest.raises(DatasetError) as err:
        csvutil.read_csv(source)
    assert str(err.value) == (f"{source}, row 3: a field is longer than 131072 characters, the most one CSV field "
                              "may hold here; shorten it or split the file")
    assert "quote" not in str(err.value)

