"""One description per dataset: the registry, the three datasets' descriptions, and a new dataset
added with nothing but its description and its preset (docs/datasets.md, "Adding a dataset")."""
import pathlib
import subprocess
import sys

import pandas as pd
import pytest

from configs import datasets as dataset_presets
from configs.compose import compose
from emojax import config as config_lib
from emojax.data import (DATASETS, DatasetError, DatasetKind, DatasetSplits, MediaPaths, Sample, csvutil, dataset_kind,
                         load_dataset, register_dataset)
from emojax.data import iemocap, meld, sims
from emojax.data.types import SPLITS
from emojax.inference.tables import read_table_inputs
from emojax.training.preparation import check_dev_split, data_record, dataset_files

# ---------------------------------------------------------------------------------------------
# A toy dataset, written the way docs/datasets.md says: one CSV per split ({split}.csv: id, text,
# mood), media at clips/{id}.wav and clips/{id}.mp4.
# ---------------------------------------------------------------------------------------------
TOY_CSV = "{split}.csv"
MOODS = ("calm", "tense")


def toy_media_paths(root, split, row, *, where="", allow_outside=False) -> MediaPaths:
    clip = str(row["id"]).strip()
    if not clip:
        raise DatasetError(f"{where}: empty id")
    return MediaPaths(pathlib.Path(root) / "clips" / f"{clip}.wav", pathlib.Path(root) / "clips" / f"{clip}.mp4")


def load_toy(root, *, target="mood", allow_outside_paths=False) -> DatasetSplits:
    root = pathlib.Path(root)
    class_names = TOY.class_names(target)
    labels = {name: i for i, name in enumerate(class_names)}
    splits, not_scored = {}, []
    for split, path, frame in csvutil.split_frames(root, TOY_CSV, "Toy", columns=("id", "text", "mood")):
        if frame is None:
            not_scored.append(split)
            continue
        samples = []
        for i, row in enumerate(frame.to_dict("records")):
            where = f"{path}, row {csvutil.csv_row(i)}"
            media = toy_media_paths(root, split, row, where=where, allow_outside=allow_outside_paths)
            samples.append(Sample(
                uid=f"{split}/{row['id']}", dialogue=str(row["id"]), index=0, speaker="speaker",
                text=csvutil.clean_text(row["text"]), audio=csvutil.existing(media.audio),
                video=csvutil.existing(media.video),
                label=csvutil.label_index(row[target], labels, path, csvutil.csv_row(i), target)))
        splits[split] = csvutil.finish_split(split, samples, "Toy")
    return DatasetSplits("Toy", str(root), class_names, splits, tuple(not_scored))


TOY = DatasetKind(kind="toy", name="Toy", csv_files={split: TOY_CSV.format(split=split) for split in SPLITS},
                  targets={"mood": MOODS}, load=load_toy, media_paths=toy_media_paths)


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """The toy dataset registered, its preset ``TOY--M`` added, and a folder of it (a wav for
    ``a1``, a video for ``b1``)."""
    register_dataset(TOY)
    monkeypatch.setitem(dataset_presets.PRESETS, "TOY--M", dataset_presets.preset("toy", "mood", "datasets/toy"))
    root = tmp_path / "toy"
    (root / "clips").mkdir(parents=True)
    for split, clips in {"train": ["a1", "a2", "a3"], "dev": ["b1", "b2"], "test": ["c1"]}.items():
        pd.DataFrame({"id": clips, "text": [f"words of {c}" for c in clips],
                      "mood": [MOODS[i % 2] for i in range(len(clips))]}).to_csv(root / f"{split}.csv", index=False)
    (root / "clips" / "a1.wav").write_bytes(b"x")
    (root / "clips" / "b1.mp4").write_bytes(b"x")
    yield root
    del DATASETS["toy"]  # registered for this test only


def _toy_config(root):
    cfg = compose("dataset=TOY--M")
    cfg.dataset.path = str(root)
    return cfg


def test_a_registered_dataset_loads_by_its_kind(toy):
    assert dataset_kind("toy") is TOY
    data = load_dataset("toy", str(toy), target="mood")
    assert data.class_names == MOODS and set(data.splits) == {"train", "dev", "test"}
    first = data.splits["train"].samples[0]
    assert (first.uid, first.text, first.label) == ("train/a1", "words of a1", 0)
    assert first.audio == str(toy / "clips" / "a1.wav") and first.video is None
    assert data.splits["dev"].samples[0].video == str(toy / "clips" / "b1.mp4")
    assert data.splits["train"].missing == {"A": 2, "V": 3}
    with pytest.raises(DatasetError, match="Toy has mood labels only; target 'emotion' is not available"):
        load_dataset("toy", str(toy), target="emotion")


def test_a_registered_dataset_validates_records_and_checks_its_dev_split(toy):
    cfg = _toy_config(toy)
    assert (cfg.dataset.kind, cfg.dataset.target, cfg.dataset.name) == ("toy", "mood", "TOY--M")
    config_lib.validate(cfg)
    cfg.dataset.target = "emotion"
    with pytest.raises(config_lib.ConfigError, match=r"dataset\.target: 'emotion' is not mood"):
        config_lib.validate(cfg)
    cfg.dataset.target = "mood"

    assert dataset_files("toy", toy) == [toy / "train.csv", toy / "dev.csv", toy / "test.csv"]
    (toy / "notes.csv").write_text("not,read\n")  # a CSV the loader does not read stays out
    record = data_record(cfg, load_dataset("toy", str(toy), target="mood"))
    assert record["kind"] == "toy" and record["path"] == str(toy.resolve())
    assert set(record["files"]) == {"train.csv", "dev.csv", "test.csv"}
    assert set(record["media"]) == {"clips/a1.wav", "clips/b1.mp4"}

    check_dev_split(cfg, load_dataset("toy", str(toy), target="mood"))
    (toy / "dev.csv").unlink()
    with pytest.raises(config_lib.ConfigError, match=r"has no dev rows \(dev\.csv missing or empty\)"):
        check_dev_split(cfg, load_dataset("toy", str(toy), target="mood"))


def test_registering_is_for_new_kinds_and_unknown_kinds_are_named():
    assert register_dataset(meld.MELD) is meld.MELD  # the same description again: nothing changes
    with pytest.raises(DatasetError, match="dataset kind 'meld' is already registered"):
        register_dataset(DatasetKind(kind="meld", name="Other", csv_files={}, targets={}, load=load_toy,
                                     media_paths=toy_media_paths))
    with pytest.raises(DatasetError, match="unknown dataset kind 'toy'; choose one of meld, iemocap, sims"):
        load_dataset("toy", "datasets/toy", target="mood")
    cfg = compose("dataset=MELD--E")
    cfg.dataset.kind = "toy"
    with pytest.raises(config_lib.ConfigError, match=r"dataset\.kind: unknown dataset kind 'toy'"):
        config_lib.validate(cfg)


def test_the_registry_costs_a_config_import_no_pandas():
    """emojax.config imports emojax.data.types, which runs the registry and the three dataset
    modules: their loaders import pandas and the media readers when called, not before."""
    code = ("import sys, emojax.config, emojax.data; "
            "print(sorted(m for m in ('pandas', 'librosa', 'jax', 'emojax.data.csvutil') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=pathlib.Path(__file__).resolve().parents[1])
    assert done.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------------
# The three datasets' descriptions: the layouts of docs/datasets.md
# ---------------------------------------------------------------------------------------------
def test_the_registry_holds_the_three_datasets():
    assert {kind: d.name for kind, d in DATASETS.items()} == {"meld": "MELD", "iemocap": "IEMOCAP", "sims": "CH-SIMS"}
    assert (meld.MELD, iemocap.IEMOCAP, sims.SIMS) == (DATASETS["meld"], DATASETS["iemocap"], DATASETS["sims"])
    assert meld.MELD.targets == {
        "emotion": ("neutral", "joy", "surprise", "anger", "sadness", "disgust", "fear"),
        "sentiment": ("neutral", "positive", "negative")}
    assert iemocap.IEMOCAP.targets == {"emotion": ("neu", "ang", "exc", "fru", "hap", "sad")}
    assert sims.SIMS.targets == {"sentiment": ("Negative", "Neutral", "Positive")}
    for name, part in dataset_presets.PRESETS.items():
        assert part["target"] in dataset_kind(part["kind"]).targets, name
        config_lib.validate(compose(f"dataset={name}"))


def test_the_csv_files_and_dev_hints_of_the_three_datasets(tmp_path):
    names = {"meld": ["train_sent_emo.csv", "dev_sent_emo.csv", "test_sent_emo.csv"],
             "iemocap": ["IEMOCAP_train.csv", "IEMOCAP_dev.csv", "IEMOCAP_test.csv"], "sims": ["label.csv"]}
    for kind, files in names.items():
        folder = tmp_path / kind
        folder.mkdir()
        for name in [*files[::-1], "other.csv"]:
            (folder / name).write_text("a\n1\n")
        assert dataset_files(kind, folder) == [folder / name for name in files]
        (folder / files[-1]).unlink()
        assert dataset_files(kind, folder) == [folder / name for name in files[:-1]]
    assert dataset_files("unregistered", tmp_path / "meld") == [tmp_path / "meld" / n
                                                               for n in ("dev_sent_emo.csv", "other.csv",
                                                                         "train_sent_emo.csv")]
    hints = {"meld": "dev_sent_emo.csv", "iemocap": "IEMOCAP_dev.csv", "sims": "label.csv rows with mode=valid"}
    assert {kind: DATASETS[kind].dev_source for kind in hints} == hints
    assert meld.MELD.split_of("dev_sent_emo.csv") == "dev" and meld.MELD.split_of("preds.csv") is None
    assert sims.SIMS.split_of("label.csv") is None  # one file for every split


def test_media_paths_of_the_three_datasets(tmp_path):
    root = tmp_path
    row = {"Dialogue_ID": "3", "Utterance_ID": "12"}
    assert meld.MELD.media_paths(root, "dev", row) == MediaPaths(root / "audios" / "dev" / "dia3_utt12.flac",
                                                                 root / "videos" / "dev" / "dia3_utt12.mp4")
    assert meld.MELD.media_paths(root, None, row).audio == root / "audios" / "dia3_utt12.flac"
    with pytest.raises(DatasetError, match="x.csv, row 2: Dialogue_ID / Utterance_ID must be integers"):
        meld.MELD.media_paths(root, "dev", {"Dialogue_ID": "3a", "Utterance_ID": "1"}, where="x.csv, row 2")

    clips = root / "Raw" / "v1"
    clips.mkdir(parents=True)
    row = {"video_id": " v1 ", "clip_id": "7"}
    assert sims.SIMS.media_paths(root, "train", row) == MediaPaths(clips / "0007.wav", clips / "0007.mp4")
    (clips / "0007.flac").write_bytes(b"x")
    assert sims.SIMS.media_paths(root, "train", row).audio == clips / "0007.flac"  # no .wav: the .flac
    (clips / "0007.wav").write_bytes(b"x")
    assert sims.SIMS.media_paths(root, "train", row).audio == clips / "0007.wav"
    outside = sims.SIMS.media_paths(root, "train", {"video_id": "../../etc", "clip_id": "1"})
    assert (outside.audio, outside.video) == (None, None)
    assert outside.problems["A"].startswith("Raw/../../etc: path leads outside the dataset folder")
    assert sims.SIMS.media_paths(root, "train", {"video_id": "../../etc", "clip_id": "1"}, allow_outside=True).video \
        == root / "Raw" / "../../etc" / "0001.mp4"
    with pytest.raises(DatasetError, match="clip_id must be an integer, got 'x'"):
        sims.SIMS.media_paths(root, "train", {"video_id": "v1", "clip_id": "x"})

    row = {"Wav_Path": "./dataset/s1/a.wav", "Video_Path": "/etc/passwd"}
    media = iemocap.IEMOCAP.media_paths(root, "train", row)
    assert media.audio == root / "dataset" / "s1" / "a.wav" and media.video is None
    assert set(media.problems) == {"V"} and media.problems["V"].startswith("/etc/passwd: path leads outside")
    assert iemocap.IEMOCAP.media_paths(root, "train", row, allow_outside=True).video == pathlib.Path("/etc/passwd")


def test_loading_and_batch_prediction_take_the_same_media_paths(tmp_path):
    """Both go through the description's ``media_paths``: a dataset's own CSV read for batch
    prediction names the files its loader found."""
    data = tmp_path / "meld"
    data.mkdir()
    pd.DataFrame({"Utterance": ["hi", "oh", "no"], "Speaker": ["A", "B", "A"], "Emotion": ["joy", "fear", "neutral"],
                  "Sentiment": ["positive", "negative", "neutral"], "Dialogue_ID": [0, 0, 1],
                  "Utterance_ID": [0, 1, 0]}).to_csv(data / "train_sent_emo.csv", index=False)
    for folder, name in (("audios", "dia0_utt0.flac"), ("videos", "dia0_utt1.mp4"), ("audios", "dia1_utt0.flac")):
        (data / folder / "train").mkdir(parents=True, exist_ok=True)
        (data / folder / "train" / name).write_bytes(b"x")
    loaded = {s.uid.split("/")[1]: s for s in load_dataset("meld", str(data), target="emotion").splits["train"].samples}
    for item in read_table_inputs(data / "train_sent_emo.csv"):
        sample = loaded[item.ids["id"]]
        assert item.audio == (sample.audio or str(data / "audios" / "train" / f"{item.ids['id']}.flac"))
        assert item.video == (sample.video or str(data / "videos" / "train" / f"{item.ids['id']}.mp4"))

    data = tmp_path / "sims"
    clips = data / "Raw" / "v1"
    clips.mkdir(parents=True)
    for name in ("0001.wav", "0001.flac", "0002.flac", "0002.mp4"):
        (clips / name).write_bytes(b"x")
    pd.DataFrame({"video_id": ["v1"] * 3, "clip_id": [1, 2, 3], "text": ["a", "b", "c"],
                  "annotation": ["Negative", "Neutral", "Positive"], "mode": ["train", "valid", "test"]}
                 ).to_csv(data / "label.csv", index=False)
    loaded = {s.uid.split("/", 1)[1]: s for split in load_dataset("sims", str(data), target="sentiment").splits.values()
              for s in split.samples}
    assert [loaded[k].audio for k in ("v1/0001", "v1/0002", "v1/0003")] == [
        str(clips / "0001.wav"), str(clips / "0002.flac"), None]
    for item in read_table_inputs(data / "label.csv"):
        sample = loaded[item.ids["id"]]
        assert item.audio == (sample.audio or str(clips / f"{item.ids['id'][3:]}.wav"))
        assert item.video == (sample.video or str(clips / f"{item.ids['id'][3:]}.mp4"))
