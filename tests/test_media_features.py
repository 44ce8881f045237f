"""Media reading, classic librosa / OpenCV features and the generated demo dataset."""
import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from emojax.data.media import MediaError, frame_indices, read_audio, read_video_frames
from emojax.encoders import classic


def _tone(freq, seconds=1.0, sr=16000, amp=0.3):
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _write_video(path, frames, fps=8.0):
    import cv2

    h, w = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()


def test_read_audio_round_trip_and_resample(tmp_path):
    y = _tone(220.0, 0.5)
    sf.write(tmp_path / "a.flac", y, 16000)
    np.testing.assert_allclose(read_audio(tmp_path / "a.flac"), y, atol=1e-4)  # 16-bit FLAC quantisation
    sf.write(tmp_path / "b.wav", _tone(220.0, 0.5, sr=8000), 8000)
    assert len(read_audio(tmp_path / "b.wav", 16000)) == 8000


def test_read_video_samples_frames_evenly(tmp_path):
    levels = np.arange(30) * 8
    frames = np.stack([np.full((32, 48, 3), v, np.uint8) for v in levels])
    _write_video(tmp_path / "v.mp4", frames)
    out = read_video_frames(tmp_path / "v.mp4", num_frames=16)
    assert out.shape == (16, 32, 48, 3) and out.dtype == np.uint8
    expected = levels[frame_indices(30, 16)]
    np.testing.assert_array_equal(frame_indices(30, 16), np.linspace(0, 29, 16).round().astype(int))
    np.testing.assert_allclose(out.reshape(16, -1).mean(1), expected, atol=6)  # lossy codec
    assert read_video_frames(tmp_path / "v.mp4", num_frames=4, size=(24, 16)).shape == (4, 16, 24, 3)


def test_media_errors_name_the_file(tmp_path):
    with pytest.raises(MediaError, match="missing.flac: audio file not found"):
        read_audio(tmp_path / "missing.flac")
    (tmp_path / "corrupt.flac").write_bytes(b"not audio at all" * 10)
    with pytest.raises(MediaError, match="corrupt.flac"):
        read_audio(tmp_path / "corrupt.flac")
    (tmp_path / "corrupt.mp4").write_bytes(b"\x00" * 100)
    with pytest.raises(MediaError, match="corrupt.mp4"):
        read_video_frames(tmp_path / "corrupt.mp4")


def test_classic_audio_features_follow_pitch_and_loudness(tmp_path):
    import librosa

    low, high = _tone(140.0), _tone(360.0, amp=0.05)
    f_low, f_high = classic.audio_features_from_samples(low), classic.audio_features_from_samples(high)
    assert f_low.shape == (classic.AUDIO_DIM,) and np.isfinite(f_low).all()
    pitch = 2 * classic.N_MELS + 4 * classic.N_MFCC  # index of mean log-f0
    for y, f in ((low, f_low), (high, f_high)):
        reference = np.median(librosa.yin(y, fmin=60, fmax=800, sr=16000, frame_length=1024, hop_length=160))
        assert np.exp(f[pitch]) == pytest.approx(reference, rel=0.03)
    energy = pitch + 5  # mean RMS in dB
    assert f_low[energy] > f_high[energy] + 10  # 0.3 vs 0.05 amplitude: ~15.6 dB
    silence = classic.audio_features_from_samples(np.zeros(8000, np.float32))
    assert np.isfinite(silence).all()
    sf.write(tmp_path / "t.flac", low, 16000)
    np.testing.assert_allclose(classic.audio_features(tmp_path / "t.flac"), f_low, rtol=0.02, atol=1.0)  # 16-bit FLAC


def test_classic_video_features_colour_motion_face(tmp_path):
    rng = np.random.default_rng(0)
    dark = np.full((16, 64, 64, 3), 30, np.uint8)
    bright = np.full((16, 64, 64, 3), 220, np.uint8)
    moving = np.zeros((16, 64, 64, 3), np.uint8)
    for i in range(16):
        moving[i, 20:40, 2 + 3 * i:14 + 3 * i] = 255
    f_dark, f_bright, f_moving = (classic.video_features_from_frames(v) for v in (dark, bright, moving))
    assert f_dark.shape == (classic.VIDEO_DIM,) and np.isfinite(f_dark).all()
    rgb_mean = 5 + sum(classic._HSV_BINS)
    assert f_bright[rgb_mean] == pytest.approx(220 / 255, abs=1e-3) and f_dark[rgb_mean] == pytest.approx(30 / 255, abs=1e-3)
    motion = classic.VIDEO_DIM - 4
    assert f_moving[motion] > 0.01 and f_dark[motion] == 0.0
    cos_direction = classic.VIDEO_DIM - 6
    assert f_moving[cos_direction] > 0.5  # the block moves right
    assert f_dark[0] == 0.0  # no face in a flat frame
    assert classic.face_detector() is not None
    del rng


def test_demo_dataset_is_deterministic_and_carries_signal(tmp_path):
    from sklearn.linear_model import LogisticRegression

    from emojax.data import load_dataset
    from emojax.data.demo import generate_demo

    root = generate_demo(tmp_path / "a", seed=0)
    again = generate_demo(tmp_path / "b", seed=0)
    for split in ("train", "dev", "test"):
        a, b = pd.read_csv(root / f"{split}_sent_emo.csv"), pd.read_csv(again / f"{split}_sent_emo.csv")
        pd.testing.assert_frame_equal(a, b)
        assert list(a.columns) == ["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID",
                                   "Utterance_ID", "Season", "Episode", "StartTime", "EndTime"]
    np.testing.assert_array_equal(sf.read(root / "audios/dev/dia0_utt0.flac")[0],
                                  sf.read(again / "audios/dev/dia0_utt0.flac")[0])
    data = load_dataset("meld", str(root), target="emotion")
    for split in data.splits.values():
        assert split.missing == {"A": 0, "V": 0}
        assert set(split.labels.tolist()) == set(range(7))
    # Audio encodes the arousal group of the emotion, video its valence group: a probe on the
    # classic features recovers each group well above the majority rate.
    from emojax.data import demo

    features = {}
    for name, count in (("train", 240), ("dev", 140)):
        samples = data.splits[name].samples[:count]
        labels = [data.class_names[s.label] for s in samples]
        features[name] = {
            "A": (np.stack([classic.audio_features(s.audio) for s in samples]),
                  np.array([demo.AUDIO_GROUP[l] for l in labels])),
            "V": (np.stack([classic.video_features(s.video) for s in samples]),
                  np.array([demo.VIDEO_GROUP[l] for l in labels])),
        }
    for modality in ("A", "V"):
        (x_train, y_train), (x_dev, y_dev) = features["train"][modality], features["dev"][modality]
        mean, std = x_train.mean(0), x_train.std(0) + 1e-6
        probe = LogisticRegression(max_iter=3000, C=0.1).fit((x_train - mean) / std, y_train)
        majority = np.bincount(y_dev).max() / len(y_dev)
        assert probe.score((x_dev - mean) / std, y_dev) > majority + 0.15, modality
    assert generate_demo(tmp_path / "a", seed=0) == root  # reused, not regenerated
