"""Config composition, validation, hashing and run directories."""
import json
import pathlib
import subprocess
import sys

import pytest

from emojax import config as config_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_config_compose_parts():
    cfg = config_lib.compose("dataset=MELD--E,encoders=T+A+V,loss=focal")
    assert cfg.dataset.kind == "meld" and cfg.dataset.target == "emotion"
    assert config_lib.modalities(cfg) == ("T", "A", "V")
    assert cfg.loss.classification == "focal"
    assert set(cfg.encoders) == {"T", "A", "V"}
    assert cfg.mode == "frozen"
    cfg = config_lib.compose("dataset=IEMOCAP--E,encoders=A+V,mode=frozen,dropout=MD-0.2")
    assert cfg.dataset.kind == "iemocap" and cfg.modalities == "A+V" and cfg.modality_dropout == 0.2


def test_config_unknown_part_and_preset_named():
    with pytest.raises(config_lib.ConfigError, match="datset"):
        config_lib.compose("datset=MELD--E")
    with pytest.raises(config_lib.ConfigError, match="MELD--X"):
        config_lib.compose("dataset=MELD--X")
    with pytest.raises(config_lib.ConfigError, match="key=value"):
        config_lib.compose("dataset")


def test_config_fusion_needs_several_modalities():
    multi = [name for name, p in config_lib.presets("fusion").items() if p.get("min_modalities", 1) > 1]
    assert "tensor" in multi and "low-rank" in multi
    for name in multi:
        cfg = config_lib.compose(f"encoders=T,fusion={name}")
        with pytest.raises(config_lib.ConfigError, match="fusion"):
            config_lib.validate(cfg)
        config_lib.validate(config_lib.compose(f"encoders=T+A,fusion={name}"))


def test_config_validation_names_key():
    cfg = config_lib.compose("dataset=MELD--E,encoders=T")
    cfg.encoders.T.pooling = "max"
    with pytest.raises(config_lib.ConfigError, match=r"encoders\.T\.pooling"):
        config_lib.validate(cfg)
    cfg = config_lib.compose("dataset=MELD--E,encoders=T,mode=trainable")
    config_lib.validate(cfg)
    assert cfg.encoders.T.pooling == "mask" and cfg.encoders.T.prompt  # the suite's fine-tuning text path
    cfg = config_lib.compose("dataset=MELD--E,encoders=A+V,mode=trainable")
    with pytest.raises(config_lib.ConfigError, match=r"mode: .trainable. fine-tunes encoders with weights"):
        config_lib.validate(cfg)
    # finetune.tune: which encoders train (all = every encoder with weights)
    cfg = config_lib.compose("dataset=MELD--E,encoders=T+A+V,mode=lora")
    assert config_lib.tuned_modalities(cfg) == ("T",)  # classic audio / video have no weights
    cfg.encoders.A.update(family="whisper", model="openai/whisper-base", pooling="default")
    config_lib.validate(cfg)
    assert config_lib.tuned_modalities(cfg) == ("T", "A")
    cfg.finetune.tune = "A"
    assert config_lib.tuned_modalities(cfg) == ("A",)
    for tune, message in (("V", r"finetune\.tune: encoders\.V\.family 'classic-video' has no weights"),
                          ("T+X", r"finetune\.tune: 'T\+X': 'X' is not a modality of this run"), ("", "finetune\.tune")):
        cfg.finetune.tune = tune
        with pytest.raises(config_lib.ConfigError, match=message):
            config_lib.validate(cfg)
    assert config_lib.tuned_modalities(config_lib.compose("dataset=MELD--E,encoders=T")) == ()  # frozen
    cfg = config_lib.compose("dataset=MELD--E,encoders=T,mode=lora")
    cfg.finetune.lora.rank = 0
    with pytest.raises(config_lib.ConfigError, match=r"finetune\.lora\.rank"):
        config_lib.validate(cfg)
    cfg = config_lib.compose("dataset=MELD--E")
    cfg.train.batch_size = 0
    with pytest.raises(config_lib.ConfigError, match=r"train\.batch_size"):
        config_lib.validate(cfg)


def test_config_hash_stable_and_run_dir_convention(tmp_path):
    a = config_lib.compose("dataset=MELD--E,encoders=T+A+V,loss=focal")
    b = config_lib.compose("loss=focal,encoders=T+A+V,dataset=MELD--E")
    assert config_lib.config_hash(a) == config_lib.config_hash(b)
    b.seed = 114
    b.dataset.path = "elsewhere"
    assert config_lib.config_hash(a) == config_lib.config_hash(b)  # seed and paths are not hashed
    b.train.lr = 5e-4
    assert config_lib.config_hash(a) != config_lib.config_hash(b)
    a.seed = 114
    run = config_lib.run_dir(a, tmp_path)
    rel = run.relative_to(tmp_path).parts
    assert rel[:3] == ("checkpoints", "training", "MELD--E")
    assert rel[3] == "frozen--32--focal"
    assert rel[4] == "1xE--T+A+V"
    assert rel[5] == f"{config_lib.config_hash(a)}--114"
    # The hash is a pure function of the config: a fresh interpreter agrees.
    code = ("from emojax import config as c; x = c.compose('dataset=MELD--E,encoders=T+A+V,loss=focal');"
            "print(c.config_hash(x))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == config_lib.config_hash(a)


def test_config_launch_line_parses_and_rejects(tmp_path):
    """The documented launch form loads through ml_collections' config flags; bad keys fail first."""
    code = r"""
import sys
from absl import flags
from ml_collections import config_flags
_C = config_flags.DEFINE_config_file("config", lock_config=True)
flags.DEFINE_string("workdir", "runs", "")
flags.FLAGS(sys.argv)
from emojax import config as c
cfg = _C.value
c.validate(cfg)
print(cfg.seed, cfg.dataset.path, cfg.loss.classification, c.run_dir(cfg, flags.FLAGS.workdir))
"""
    args = ["--config=configs/train.py:dataset=MELD--E,encoders=T+A+V,loss=focal", "--config.seed=114",
            "--config.dataset.path=datasets/MELD", "--workdir=runs"]
    out = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    seed, path, loss, run = out.stdout.split()
    assert (seed, path, loss) == ("114", "datasets/MELD", "focal")
    assert run.startswith("runs/checkpoints/training/MELD--E/frozen--32--focal/1xE--T+A+V/") and run.endswith("--114")
    bad = subprocess.run([sys.executable, "-c", code, args[0], "--config.trian.lr=0.1"], cwd=ROOT,
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "trian" in bad.stderr
    wrong_type = subprocess.run([sys.executable, "-c", code, args[0], "--config.train.epochs=many"], cwd=ROOT,
                                capture_output=True, text=True)
    assert wrong_type.returncode != 0 and "epochs" in wrong_type.stderr


def test_finetune_settings_renamed_with_runs_kept_in_place(tmp_path):
    """``cfg.finetune`` was ``cfg.encoder``: hashes (so run directories) are those computed under
    the old name, and a config.json written with ``encoder`` loads with ``finetune``."""
    # Hashes of these configs as computed before the rename.
    before = {"dataset=MELD--E,encoders=T": "fe33a7a7", "dataset=MELD--E,encoders=T,mode=lora": "b707fc7f",
              "dataset=IEMOCAP--E,encoders=T+A+V,mode=trainable": "c57b6f16"}
    for arg, digest in before.items():
        assert config_lib.config_hash(config_lib.compose(arg)) == digest
    cfg = config_lib.compose("dataset=MELD--E,encoders=T,mode=lora")
    old = cfg.to_dict()
    old["encoder"] = old.pop("finetune")
    path = tmp_path / "config.json"
    path.write_text(json.dumps(old))
    loaded = config_lib.load_config(path)
    assert "encoder" not in loaded and loaded.finetune.lora.rank == cfg.finetune.lora.rank
    assert config_lib.config_hash(loaded) == before["dataset=MELD--E,encoders=T,mode=lora"]
