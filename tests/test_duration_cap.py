"""The duration cap (``dataset.max_seconds``) travels with each config: featurizers and encoders
with different caps in one process each decode with their own, in whatever order they run, and
the feature cache and the fine-tuning input store key on the cap as they always did."""
import numpy as np
import pytest
import soundfile as sf

from configs.compose import compose
from emojax.data import media
from emojax.data.types import Sample, Split
from emojax.encoders import classic
from emojax.features.cache import FeatureCache, file_identity
from emojax.features.featurizer import Featurizer
from emojax.files import digest
from test_iemocap import write_ramp_video

RATE = 16000
SECONDS = 8.0  # of each clip; the caps below cut it


@pytest.fixture(scope="module")
def long_clips(tmp_path_factory):
    """An 8 s tone and an 8 s video whose grey level tells the moment a frame shows."""
    root = tmp_path_factory.mktemp("long-clips")
    t = np.arange(int(SECONDS * RATE)) / RATE
    sf.write(root / "long.wav", (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), RATE)
    write_ramp_video(root / "ramp.avi", seconds=SECONDS)
    return str(root / "long.wav"), str(root / "ramp.avi")


def _split(audio, video):
    sample = Sample(uid="test/d0_u0", dialogue="d0", index=0, speaker="A", text="words", audio=audio, video=video,
                    label=0)
    return Split("test", [sample])


def _config(max_seconds):
    cfg = compose("dataset=MELD--E,encoders=A+V")  # classic audio and video features
    cfg.progress = False
    cfg.cache.media_workers = 1
    cfg.dataset.max_seconds = max_seconds
    return cfg


def test_featurizers_with_different_caps_each_use_their_own(long_clips):
    audio, video = long_clips
    split = _split(audio, video)
    short, long = Featurizer(_config(2.0)), Featurizer(_config(5.0))  # both built before either reads
    duration = classic.audio_index("duration_s")
    features = {}
    for featurizer, cap in ((short, 2.0), (long, 5.0), (short, 2.0), (long, 5.0)):
        data = featurizer.split_features(split)
        assert data.present["A"].all() and data.present["V"].all()
        assert data.features["A"][0, duration] == pytest.approx(cap, abs=1e-3)
        np.testing.assert_array_equal(data.features["A"][0], classic.audio_features(audio, max_seconds=cap))
        np.testing.assert_array_equal(data.features["V"][0], classic.video_features(video, max_seconds=cap))
        features.setdefault(cap, data.features["V"][0])
    assert not np.array_equal(features[2.0], features[5.0])  # the caps see different frames


def test_feature_cache_keys_hold_the_cap_as_before(long_clips, tmp_path):
    audio, video = long_clips
    split = _split(audio, video)
    cache = FeatureCache(tmp_path / "cache")
    rows = {}
    for cap in (60.0, 2.0, 0.0):  # the default, another cap, none
        featurizer = Featurizer(_config(cap), cache=cache)
        rows[cap] = featurizer.split_features(split).features["A"][0]
        # the key of a file is (its identity, the cap in seconds or None): caches written before keep serving
        key = digest(file_identity(audio), float(cap) if cap else None)
        found = cache.get_many(featurizer.encoders["A"].namespace, [key])
        np.testing.assert_array_equal(found[key], rows[cap])
    assert rows[60.0][classic.audio_index("duration_s")] == pytest.approx(SECONDS, abs=1e-3)  # shorter than 60 s
    assert rows[2.0][classic.audio_index("duration_s")] == pytest.approx(2.0, abs=1e-3)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("transformers")
    from test_neural_features import write_videomae, write_whisper

    root = tmp_path_factory.mktemp("tiny-encoders")
    return {"whisper": write_whisper(root / "whisper"), "videomae": write_videomae(root / "videomae")}


def _levels(frames):
    """The grey level of each decoded frame (the ramp video: a later moment is brighter)."""
    return np.asarray(frames, np.float32).reshape(len(frames), -1).mean(axis=1)


def test_neural_encoders_with_different_caps_each_use_their_own(tiny, long_clips, tmp_path):
    from emojax.encoders.media_encoders import media_encoder
    from emojax.training.finetune_base import INPUTS_VERSION
    from emojax.training.finetune_media import store_inputs

    audio, video = long_clips
    spec = {"model": str(tiny["whisper"]), "family": "whisper", "pooling": "default"}
    whisper = {cap: media_encoder("A", spec, max_seconds=cap) for cap in (2.0, 5.0)}
    spec = {"model": str(tiny["videomae"]), "family": "videomae", "pooling": "default"}
    videomae = {cap: media_encoder("V", spec, max_seconds=cap) for cap in (2.0, 5.0)}
    for cap in (2.0, 5.0, 2.0):
        rate = int(whisper[cap].extractor.sampling_rate)
        wave = whisper[cap].decode_group([audio])[0]
        np.testing.assert_array_equal(wave, media.read_audio(audio, rate, max_seconds=cap))
        assert len(wave) == int(cap * rate)
        frames = videomae[cap].decode_group([video])[0]
        full = media.read_video_frames(video, videomae[cap].config.num_frames, max_seconds=cap)
        np.testing.assert_allclose(_levels(frames), _levels(full), atol=2.0)  # the same moments, resized
        assert _levels(frames).max() <= 255 * cap / SECONDS + 4  # nothing after the cap
    # the store of fine-tuning inputs is keyed by the encoder's cap, as it always was
    stores = {cap: store_inputs(tmp_path / "inputs", encoder, [audio], desc="A inputs", progress=False)
              for cap, encoder in whisper.items()}
    assert stores[2.0].folder != stores[5.0].folder
    for cap, rows in stores.items():
        encoder = whisper[cap]
        assert rows.folder.name == digest("inputs", INPUTS_VERSION, encoder.family, encoder.preprocessing(),
                                          [file_identity(audio)], cap)[:32]
        np.testing.assert_array_equal(rows.item(0)["mel"], encoder.tuning_item(audio)["mel"])


def test_no_process_wide_cap_remains():
    assert not hasattr(media, "set_duration_cap")
    settings = [name for name, value in vars(media).items() if "cap" in name.lower() and not callable(value)]
    assert settings == []
    assert media.duration_cap(None) is None and media.duration_cap(0) is None and media.duration_cap(3) == 3.0
