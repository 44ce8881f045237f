"""Config composition (configs/), validation, hashing and run directories (emojax.config)."""
import json
import pathlib
import subprocess
import sys

import ml_collections
import pytest

from configs import compose as compose_lib
from configs import default
from configs.compose import compose, presets
from emojax import config as config_lib
from emojax.runs import format as format_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_config_compose_parts():
    cfg = compose("dataset=MELD--E,encoders=T+A+V,loss=focal")
    assert cfg.dataset.kind == "meld" and cfg.dataset.target == "emotion"
    assert config_lib.modalities(cfg) == ("T", "A", "V")
    assert cfg.loss.classification == "focal"
    assert set(cfg.encoders) == {"T", "A", "V"}
    assert cfg.mode == "frozen"
    cfg = compose("dataset=IEMOCAP--E,encoders=A+V,mode=frozen,dropout=MD-0.2")
    assert cfg.dataset.kind == "iemocap" and cfg.modalities == "A+V" and cfg.modality_dropout == 0.2


def test_config_unknown_part_and_preset_named():
    with pytest.raises(config_lib.ConfigError, match="datset"):
        compose("datset=MELD--E")
    with pytest.raises(config_lib.ConfigError, match="MELD--X"):
        compose("dataset=MELD--X")
    with pytest.raises(config_lib.ConfigError, match="key=value"):
        compose("dataset")


def test_config_fusion_needs_several_modalities():
    multi = [name for name, p in presets("fusion").items() if p.get("min_modalities", 1) > 1]
    assert "tensor" in multi and "low-rank" in multi
    for name in multi:
        cfg = compose(f"encoders=T,fusion={name}")
        with pytest.raises(config_lib.ConfigError, match="fusion"):
            config_lib.validate(cfg)
        config_lib.validate(compose(f"encoders=T+A,fusion={name}"))


def test_config_validation_names_key():
    cfg = compose("dataset=MELD--E,encoders=T")
    cfg.encoders.T.pooling = "max"
    with pytest.raises(config_lib.ConfigError, match=r"encoders\.T\.pooling"):
        config_lib.validate(cfg)
    cfg = compose("dataset=MELD--E,encoders=T,mode=trainable")
    config_lib.validate(cfg)
    assert cfg.encoders.T.pooling == "mask" and cfg.encoders.T.prompt  # the suite's fine-tuning text path
    cfg = compose("dataset=MELD--E,encoders=A+V,mode=trainable")
    with pytest.raises(config_lib.ConfigError, match=r"mode: .trainable. fine-tunes encoders with weights"):
        config_lib.validate(cfg)
    # finetune.tune: which encoders train (all = every encoder with weights)
    cfg = compose("dataset=MELD--E,encoders=T+A+V,mode=lora")
    assert config_lib.tuned_modalities(cfg) == ("T",)  # classic audio / video have no weights
    cfg.encoders.A.update(family="whisper", model="openai/whisper-base", pooling="default")
    config_lib.validate(cfg)
    assert config_lib.tuned_modalities(cfg) == ("T", "A")
    cfg.finetune.tune = "A"
    assert config_lib.tuned_modalities(cfg) == ("A",)
    for tune, message in (("V", r"finetune\.tune: encoders\.V\.family 'classic-video' has no weights"),
                          ("T+X", r"finetune\.tune: 'T\+X': 'X' is not a modality of this run"),
                          ("", r"finetune\.tune")):
        cfg.finetune.tune = tune
        with pytest.raises(config_lib.ConfigError, match=message):
            config_lib.validate(cfg)
    assert config_lib.tuned_modalities(compose("dataset=MELD--E,encoders=T")) == ()  # frozen
    cfg = compose("dataset=MELD--E,encoders=T,mode=lora")
    cfg.finetune.lora.rank = 0
    with pytest.raises(config_lib.ConfigError, match=r"finetune\.lora\.rank"):
        config_lib.validate(cfg)
    cfg = compose("dataset=MELD--E")
    cfg.train.batch_size = 0
    with pytest.raises(config_lib.ConfigError, match=r"train\.batch_size"):
        config_lib.validate(cfg)


def test_config_hash_stable_and_run_dir_convention(tmp_path):
    a = compose("dataset=MELD--E,encoders=T+A+V,loss=focal")
    b = compose("loss=focal,encoders=T+A+V,dataset=MELD--E")
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
    code = ("from configs.compose import compose; from emojax import config as c;"
            "x = compose('dataset=MELD--E,encoders=T+A+V,loss=focal'); print(c.config_hash(x))")
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


def test_finetune_settings_of_format_1_runs_migrate_to_their_new_hash(tmp_path):
    """``cfg.finetune`` was ``cfg.encoder`` in runs of format 1: the migration finds those runs by
    the hashes computed under the old name, and a config.json written with ``encoder`` becomes one
    with ``finetune`` and today's hash (so the run directory today's fit uses)."""
    # Hashes of these configs as computed before the rename.
    before = {"dataset=MELD--E,encoders=T": "fe33a7a7", "dataset=MELD--E,encoders=T,mode=lora": "b707fc7f",
              "dataset=IEMOCAP--E,encoders=T+A+V,mode=trainable": "c57b6f16"}
    for arg, digest in before.items():
        assert format_lib.format_1_hashes(compose(arg)) == {digest}
    cfg = compose("dataset=MELD--E,encoders=T,mode=lora")
    old = cfg.to_dict()
    old["encoder"] = old.pop("finetune")
    path = tmp_path / "config.json"
    path.write_text(json.dumps(old))
    assert format_lib.format_1_hash(config_lib.load_config(path)) == before["dataset=MELD--E,encoders=T,mode=lora"]
    migrated, changes = format_lib.config_of_format_2(old)
    loaded = ml_collections.ConfigDict(migrated)
    assert "encoder" not in loaded and loaded.finetune.lora.rank == cfg.finetune.lora.rank
    assert changes == ["encoder -> finetune"]
    assert config_lib.config_hash(loaded) == config_lib.config_hash(cfg)
    assert format_lib.format_2_hash(loaded) == "9e29a0d9"


# Hashes (so run directories) of these configs: as runs of format 1 were placed (while the
# defaults and presets were read inside emojax/config.py; the migration finds them there), as runs
# of format 2 were (before the training options of format 3), and as today's runs are. configs/
# must rebuild every one of them; changing one is a new run format.
HASHES_OF_EXISTING_RUNS = {
    "": ("e7903ec2", "9d6cb6b4", "794cd140"),
    "dataset=demo,encoders=T+A+V,fusion=vallina,loss=ce": ("e7903ec2", "9d6cb6b4", "794cd140"),
    "dataset=MELD--E,encoders=T": ("fe33a7a7", "9051dbcb", "cacf2fa6"),
    "dataset=MELD--E,encoders=T,mode=lora": ("b707fc7f", "9e29a0d9", "e2d0b807"),
    "dataset=MELD--E,encoders=T,mode=trainable": ("75d258e6", "d3beb7af", "81c9e204"),
    "dataset=IEMOCAP--E,encoders=T+A+V,mode=trainable": ("c57b6f16", "9ce8ddbc", "7e8e28ac"),
    "dataset=MELD--S,encoders=T+A,fusion=DF-1.0+attn,loss=focal+dist": ("d5cc6641", "943249f5", "af1b7b35"),
    "dataset=IEMOCAP--E,encoders=T+A+V,fusion=DF-2.0+concat,loss=weight+frl-iemocap":
        ("b4e14dbf", "76902e5c", "03fd98ba"),
    "dataset=SIMS--S,encoders=T+V,fusion=self-attention+per-sample,mode=lora": ("69f018dd", "384004fd", "ebc06ce4"),
    "dataset=MELD--E,encoders=A+V,fusion=low-rank,experts=8xE-top2,dropout=MD-0.2":
        ("7ab783cc", "59ce9357", "8005e3e9"),
    "dataset=MELD--E,encoders=T+A+V,fusion=tensor,loss=focal+spcl+uncertainty,experts=64xE":
        ("bdc102f6", "4767cae5", "802578d9"),
    "dataset=demo,encoders=V,dropout=MD-0.1,loss=focal+cmcl": ("7ea43cb2", "02e8a502", "2878fe6c"),
    "dataset=SIMS--S,encoders=A,fusion=private,loss=apcl,experts=4xE": ("6a0e5394", "051bf40f", "ae7298ce"),
    "dataset=MELD--E,encoders=T+A,fusion=cross-attention+residual,mode=lora,dropout=MD-0.3":
        ("f516dde3", "ad077f1c", "53eb919b"),
}


def test_config_hashes_of_existing_runs_unchanged():
    for arg, (format_1, format_2, digest) in HASHES_OF_EXISTING_RUNS.items():
        assert format_1 in format_lib.format_1_hashes(compose(arg)), arg
        assert format_lib.format_2_hash(compose(arg)) == format_2, arg
        assert config_lib.config_hash(compose(arg)) == digest, arg


def test_loss_weight_and_weighted_are_one_run():
    """``weight`` (the suite's name) and ``weighted`` compose to one config: one hash, one run
    directory, whichever spelling a command line or a sweep uses."""
    for extra in ("", "+spcl", "+frl-iemocap+uncertainty"):
        suite, ours = compose(f"encoders=T,loss=weight{extra}"), compose(f"encoders=T,loss=weighted{extra}")
        assert suite.to_dict() == ours.to_dict() and ours.loss.preset == ours.parts.loss == f"weighted{extra}"
        assert config_lib.config_hash(suite) == config_lib.config_hash(ours)
        assert config_lib.run_dir(suite, "runs") == config_lib.run_dir(ours, "runs")
    assert "weight" not in presets("loss")


def test_tune_layers_default_of_format_1_runs_and_every_mode_takes_it(tmp_path):
    """``finetune.tune_layers`` is a default key (0: every layer); runs of format 1 hashed it only
    when set, so a run from before it existed shares its format-1 hash with one that has it, and
    the migration writes the 0 out (today's hash); a launch line sets it on any mode."""
    cfg = compose("dataset=MELD--E,encoders=T,mode=trainable")
    assert cfg.finetune.tune_layers == 0
    plain = cfg.to_dict()
    del plain["finetune"]["tune_layers"]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(plain))
    assert format_lib.format_1_hash(config_lib.load_config(path)) == format_lib.format_1_hash(cfg) == "75d258e6"
    migrated, changes = format_lib.config_of_format_2(plain)
    assert changes == ["finetune.tune_layers=0 written"]
    assert config_lib.config_hash(ml_collections.ConfigDict(migrated)) == config_lib.config_hash(cfg)
    assert format_lib.format_2_hash(cfg) == "d3beb7af"
    cfg.finetune.tune_layers = 2
    assert format_lib.format_1_hash(cfg) != "75d258e6" and config_lib.config_hash(cfg) != "d3beb7af"
    code = ("import sys; from absl import flags; from ml_collections import config_flags;"
            "C = config_flags.DEFINE_config_file('config', lock_config=True); flags.FLAGS(sys.argv);"
            "print(C.value.finetune.tune_layers)")
    for mode in ("trainable", "lora"):
        out = subprocess.run([sys.executable, "-c", code, f"--config=configs/train.py:encoders=T,mode={mode}",
                              "--config.finetune.tune_layers=3"], cwd=ROOT, capture_output=True, text=True)
        assert out.returncode == 0 and out.stdout.strip() == "3", out.stderr


def test_config_defaults_come_from_configs_default(monkeypatch):
    """Every field the parts do not set is configs/default.py's, and a changed default reaches
    every composed config."""
    fields = {key: value for key, value in default.get_config().to_dict().items() if key not in ("parts", "loss",
                                                                                                    "finetune")}
    assert {"seed", "train", "model", "cache", "precision", "progress"} <= set(fields)
    for arg in HASHES_OF_EXISTING_RUNS:
        cfg = compose(arg).to_dict()
        assert {key: cfg[key] for key in fields} == fields, arg
        chosen = {part: compose_lib.canonical(part, value)
                  for part, value in {**default.get_config().parts.to_dict(), **compose_lib.parse_parts(arg)}.items()}
        assert cfg["parts"] == chosen, arg
    frozen = compose("mode=frozen")
    assert frozen.finetune.to_dict() == default.get_config().finetune.to_dict()
    assert frozen.loss.combine == "sum" and frozen.loss.classification == "ce" and not frozen.loss.extras
    base = default.get_config

    def changed():
        cfg = base()
        cfg.train.epochs = 7
        cfg.parts.dataset = "MELD--S"
        return cfg

    monkeypatch.setattr(default, "get_config", changed)
    cfg = compose("encoders=T")
    assert cfg.train.epochs == 7 and cfg.dataset.name == "MELD--S" and cfg.dataset.target == "sentiment"


def test_config_optional_part_is_left_out_until_named(monkeypatch):
    """A part without a default (registered with one line in PARTS) changes neither the config
    nor its hash when it is not named or named with an empty preset; named, its preset is merged
    where it says."""
    monkeypatch.setitem(compose_lib.PARTS, "window", compose_lib.Part(
        {"none": {}, "short": {"turns": 2, "gate": True}}, into="model.context"))
    arg = "dataset=MELD--E,encoders=T"
    plain = compose(arg)
    assert "window" not in plain.parts and "context" not in plain.model
    assert config_lib.config_hash(plain) == HASHES_OF_EXISTING_RUNS[arg][2]
    assert compose(arg + ",window=none").to_dict() == plain.to_dict()  # a preset that sets nothing: not named
    named = compose(arg + ",window=short")
    assert named.parts.window == "short"
    assert named.model.to_dict() == {**plain.model.to_dict(), "context": {"turns": 2, "gate": True}}
    assert config_lib.config_hash(named) != config_lib.config_hash(plain)
    with pytest.raises(config_lib.ConfigError, match=r"unknown window 'long'; choices: none, short"):
        compose(arg + ",window=long")
    with pytest.raises(config_lib.ConfigError, match="known parts: dataset, .*, window"):
        compose("windows=short")


def _composed_presets():
    """Every preset of every part, composed (an overlay ``+name`` on a base it fits)."""
    for part, spec in compose_lib.PARTS.items():
        for name in spec.presets:
            if name.startswith("+"):
                base = "DF-1.0" if part == "fusion" else next(n for n in spec.presets if not n.startswith("+"))
                name = base + name
            yield f"{part}={name}", compose(f"{part}={name}")


def test_every_numeric_field_has_a_rule():
    """A new default or preset field that holds a number or True / False needs its entry in
    ``emojax.config.RULES`` (what it may hold), or validate would let any value through."""
    configs = [("default", default.get_config()), *_composed_presets()]
    for arg, cfg in configs:
        for key, value in config_lib.leaves(cfg):
            if key.startswith("parts.") or isinstance(value, str):
                continue
            if key == "loss.class_weights":  # a list, checked by emojax.model.losses.class_weights
                continue
            assert isinstance(value, (bool, int, float)), (arg, key, value)
            assert config_lib.rule(key) is not None, f"{arg}: {key} = {value!r} has no rule in emojax.config.RULES"
    assert config_lib.rule("loss.extras.spcl.weight") is config_lib.rule("loss.extras.dist.weight")
    assert config_lib.rule("loss.extras.spcl.nothing") is None and config_lib.rule("train") is None


def test_every_preset_passes_its_checks():
    """The ranges accept every value the project's own presets use."""
    for arg, cfg in _composed_presets():
        config_lib.validate(cfg)
    for arg in HASHES_OF_EXISTING_RUNS:
        config_lib.validate(compose(arg))


def test_every_rule_is_documented():
    page = (ROOT / "docs" / "configs.md").read_text(encoding="utf-8")
    section = page.split("## Checked values", 1)[1].split("\n## ", 1)[0]
    missing = [key for key in config_lib.RULES if f"`{key}`" not in section]
    assert not missing, f"docs/configs.md, Checked values: add {missing}"
