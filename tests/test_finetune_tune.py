"""``finetune.tune`` has one reading (``emojax.config.tuned_modalities``): the modalities it
accepts are the ones fine-tuning trains, and what it refuses, config validation refuses with the
same message, before any work."""
import re

import pytest

from configs.compose import compose
from emojax import config as config_lib


def _config(tune, mode="lora"):
    cfg = compose(f"dataset=MELD--E,encoders=T+A+V,mode={mode}")  # BERT text, classic audio and video
    cfg.encoders.A.update(family="whisper", model="openai/whisper-base", pooling="default")
    cfg.finetune.tune = tune
    return cfg


@pytest.mark.parametrize("tune, tuned", [
    ("all", ("T", "A")),  # every encoder with weights: not the classic video features
    ("T", ("T",)),
    ("A", ("A",)),
    ("T+A", ("T", "A")),
    ("A+T", ("T", "A")),  # in the run's order
    ("T,A", ("T", "A")),
    (" T + A ", ("T", "A")),
    ("T++A", ("T", "A")),
    ("  all ", ("T", "A")),
])
def test_accepted_values_are_the_tuned_modalities(tune, tuned):
    cfg = _config(tune)
    config_lib.validate(cfg)
    assert config_lib.tuned_modalities(cfg) == tuned


@pytest.mark.parametrize("tune, message", [
    ("V", "finetune.tune: encoders.V.family 'classic-video' has no weights to fine-tune; choose from "
          + ", ".join(config_lib.TUNABLE_FAMILIES)),
    ("T+X", "finetune.tune: 'T+X': 'X' is not a modality of this run (T+A+V); use all or e.g. T+A+V"),
    ("X", "finetune.tune: 'X': 'X' is not a modality of this run (T+A+V); use all or e.g. T+A+V"),
    ("", "finetune.tune: '': '' is not a modality of this run (T+A+V); use all or e.g. T+A+V"),
    (" + ", "finetune.tune: '+': '' is not a modality of this run (T+A+V); use all or e.g. T+A+V"),
    ("ALL", "finetune.tune: 'ALL': 'ALL' is not a modality of this run (T+A+V); use all or e.g. T+A+V"),
    ("t", "finetune.tune: 't': 't' is not a modality of this run (T+A+V); use all or e.g. T+A+V"),
])
def test_refused_values_are_refused_by_validation_with_the_same_message(tune, message):
    cfg = _config(tune)
    with pytest.raises(config_lib.ConfigError, match=re.escape(message)):
        config_lib.tuned_modalities(cfg)
    with pytest.raises(config_lib.ConfigError, match=re.escape(message)):
        config_lib.validate(cfg)


def test_frozen_runs_tune_nothing_whatever_the_value():
    for tune in ("all", "T", "X", ""):
        cfg = _config(tune, mode="frozen")
        config_lib.validate(cfg)
        assert config_lib.tuned_modalities(cfg) == ()


def test_all_without_an_encoder_with_weights_is_a_mode_error():
    cfg = compose("dataset=MELD--E,encoders=A+V,mode=trainable")
    assert config_lib.tuned_modalities(cfg) == ()
    with pytest.raises(config_lib.ConfigError, match=r"mode: .trainable. fine-tunes encoders with weights"):
        config_lib.validate(cfg)
