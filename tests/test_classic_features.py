"""Classic features against references: librosa computed directly, NumPy formulas, known signals."""
import numpy as np
import pytest
import soundfile as sf

from emojax.data.media import MediaError
from emojax.encoders import classic

SR = 16000


def _tone(freq, seconds=1.0, amp=0.3):
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _audio(y, name):
    return classic.audio_features_from_samples(y)[classic.audio_index(name)]


def _video(frames, name):
    return classic.video_features_from_frames(frames)[classic.video_index(name)]


def test_layout_names_every_value_once():
    assert len(classic.AUDIO_FEATURE_NAMES) == classic.AUDIO_DIM
    assert len(classic.VIDEO_FEATURE_NAMES) == classic.VIDEO_DIM
    for blocks, dim in ((classic.AUDIO_BLOCKS, classic.AUDIO_DIM), (classic.VIDEO_BLOCKS, classic.VIDEO_DIM)):
        covered = np.concatenate([np.arange(dim)[s] for s in blocks.values()])
        np.testing.assert_array_equal(np.sort(covered), np.arange(dim))
    assert isinstance(classic.FEATURE_VERSION, str) and classic.FEATURE_VERSION


@pytest.mark.parametrize("signal", ["tone", "silence", "noise", "tiny", "clipped"])
def test_audio_features_have_fixed_size_and_are_finite(signal):
    rng = np.random.default_rng(0)
    y = {"tone": _tone(200.0), "silence": np.zeros(SR // 2, np.float32),
         "noise": rng.normal(0, 0.1, SR).astype(np.float32), "tiny": _tone(200.0, seconds=0.005),
         "clipped": np.sign(_tone(150.0)).astype(np.float32)}[signal]
    out = classic.audio_features_from_samples(y)
    assert out.shape == (classic.AUDIO_DIM,) and out.dtype == np.float32 and np.isfinite(out).all()


def test_pitch_follows_librosa_yin_and_orders_low_and_high_voices():
    import librosa

    means = {}
    for freq in (140.0, 360.0):
        y = _tone(freq)
        reference = librosa.yin(y, fmin=60, fmax=800, sr=SR, frame_length=1024, hop_length=160)
        means[freq] = 2.0 ** _audio(y, "pitch_log2hz_mean")
        assert means[freq] == pytest.approx(np.median(reference), rel=0.02)
        assert _audio(y, "voiced_fraction") > 0.9
    assert means[360.0] > means[140.0]
    noise = np.random.default_rng(0).normal(0, 0.1, SR).astype(np.float32)
    assert _audio(noise, "voiced_fraction") < 0.2
    assert _audio(np.zeros(SR, np.float32), "voiced_fraction") == 0.0


def test_energy_zero_crossings_and_centroid_match_formulas():
    for amp in (0.05, 0.4):
        # RMS of a sine is amp / sqrt(2).
        assert _audio(_tone(300.0, amp=amp), "rms_db_mean") == pytest.approx(20 * np.log10(amp / np.sqrt(2)), abs=0.5)
    for freq in (250.0, 1000.0):
        y = _tone(freq)
        assert _audio(y, "zcr_mean") == pytest.approx(2 * freq / SR, rel=0.05)
        assert _audio(y, "centroid_mean") * SR == pytest.approx(freq, rel=0.08)
    assert _audio(_tone(300.0, seconds=1.7), "duration_s") == pytest.approx(1.7)


def test_log_mel_matches_librosa_melspectrogram_of_the_waveform():
    import librosa

    y = np.random.default_rng(3).normal(0, 0.2, SR).astype(np.float32)
    mel = librosa.feature.melspectrogram(y=y, sr=SR, n_fft=512, hop_length=160, n_mels=40, power=2.0)
    reference = librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None)
    out = classic.audio_features_from_samples(y)
    np.testing.assert_allclose(out[classic.AUDIO_BLOCKS["logmel"]][:40], reference.mean(1), atol=1e-3)
    np.testing.assert_allclose(out[classic.AUDIO_BLOCKS["logmel"]][40:], reference.std(1), atol=1e-3)


def test_onset_rate_counts_syllables():
    t = np.arange(2 * SR) / SR
    bursts = (np.maximum(np.sin(2 * np.pi * 4.0 * t), 0) ** 2).astype(np.float32)  # four syllables a second
    assert _audio(_tone(200.0, seconds=2.0), "onset_rate") == 0.0
    assert _audio(_tone(200.0, seconds=2.0) * bursts, "onset_rate") == pytest.approx(4.0, abs=1.0)


def test_audio_features_read_files_and_name_unreadable_ones(tmp_path):
    sf.write(tmp_path / "t.flac", _tone(220.0), SR)
    assert 2.0 ** classic.audio_features(tmp_path / "t.flac")[classic.audio_index("pitch_log2hz_mean")] == \
        pytest.approx(220.0, rel=0.02)
    with pytest.raises(MediaError, match="gone.flac"):
        classic.audio_features(tmp_path / "gone.flac")
    with pytest.raises(MediaError, match="gone.mp4"):
        classic.video_features(tmp_path / "gone.mp4")


@pytest.mark.parametrize("kind", ["flat", "noise", "single", "large"])
def test_video_features_have_fixed_size_and_are_finite(kind):
    rng = np.random.default_rng(0)
    frames = {"flat": np.zeros((16, 64, 64, 3), np.uint8),
              "noise": rng.integers(0, 256, (16, 48, 80, 3)).astype(np.uint8),
              "single": rng.integers(0, 256, (1, 40, 40, 3)).astype(np.uint8),
              "large": rng.integers(0, 256, (3, 360, 640, 3)).astype(np.uint8)}[kind]
    out = classic.video_features_from_frames(frames)
    assert out.shape == (classic.VIDEO_DIM,) and out.dtype == np.float32 and np.isfinite(out).all()


def test_colour_features_follow_brightness_and_hue():
    dark = np.full((16, 64, 64, 3), 30, np.uint8)
    bright = np.full((16, 64, 64, 3), 220, np.uint8)
    for frames, level in ((dark, 30), (bright, 220)):
        assert _video(frames, "frame_green_mean") == pytest.approx(level / 255, abs=1e-6)
        assert _video(frames, "frame_green_std") == pytest.approx(0.0, abs=1e-6)
    assert _video(bright, "frame_val_hist_3") == 1.0 and _video(dark, "frame_val_hist_0") == 1.0
    red, blue = np.zeros((4, 32, 32, 3), np.uint8), np.zeros((4, 32, 32, 3), np.uint8)
    red[..., 0], blue[..., 2] = 200, 200
    # OpenCV hue: red 0, blue 120 (of 180) -> bins 0 and 8 of 12.
    assert _video(red, "frame_hue_hist_0") == 1.0 and _video(blue, "frame_hue_hist_8") == 1.0
    assert _video(dark, "face_rate") == 0.0 and _video(dark, "face_red_mean") == 0.0
    assert not classic.face_detector().empty()


def test_motion_features_separate_still_and_moving_clips():
    still = np.zeros((16, 64, 64, 3), np.uint8)
    still[:, 20:40, 20:40] = 255
    right, down = np.zeros_like(still), np.zeros_like(still)
    for i in range(16):
        right[i, 20:40, 2 + 3 * i:14 + 3 * i] = 255
        down[i, 2 + 3 * i:14 + 3 * i, 20:40] = 255
    gray = right[..., 0].astype(np.float64)  # R = G = B, so grey is any channel
    reference = np.abs(np.diff(gray, axis=0)).mean(axis=(1, 2)) / 255.0
    assert _video(right, "frame_diff_mean") == pytest.approx(reference.mean(), rel=1e-6)
    assert _video(still, "frame_diff_mean") == 0.0 and _video(still, "flow_mag_mean") < 1e-4
    assert _video(right, "flow_mag_mean") > 0.002
    assert _video(right, "flow_dx_mean") > 0 and _video(right, "flow_dir_hist_right") > 0.6
    assert _video(down, "flow_dy_mean") > 0 and _video(down, "flow_dir_hist_down") > 0.6


def _lbp_reference(image):
    """Rotation-invariant uniform LBP histogram by the definition, pixel by pixel."""
    ring = [(-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1)]
    counts = np.zeros(10)
    for y in range(1, image.shape[0] - 1):
        for x in range(1, image.shape[1] - 1):
            bits = [int(image[y + dy, x + dx] >= image[y, x]) for dy, dx in ring]
            changes = sum(bits[k] != bits[(k + 1) % 8] for k in range(8))
            counts[sum(bits) if changes <= 2 else 9] += 1
    return counts / counts.sum()


def test_texture_features_match_definitions():
    import cv2

    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (12, 14)).astype(np.uint8)
    frames = np.repeat(np.repeat(image[None, :, :, None], 3, axis=3), 2, axis=0)
    out = classic.video_features_from_frames(frames)
    lbp = out[classic.video_index("lbp_hist_0"):classic.video_index("lbp_hist_9") + 1]
    np.testing.assert_allclose(lbp, _lbp_reference(image), atol=1e-6)
    flat = np.full((2, 16, 16, 3), 90, np.uint8)
    assert _video(flat, "lbp_hist_8") == 1.0  # every neighbour equals the centre
    checker = np.kron((np.indices((8, 8)).sum(0) % 2) * 255, np.ones((4, 4))).astype(np.uint8)
    checker_frames = np.repeat(checker[None, :, :, None], 3, axis=3)
    reference = np.log1p(cv2.Laplacian(checker, cv2.CV_64F).var())
    assert _video(checker_frames, "laplacian_log_var") == pytest.approx(reference, rel=1e-5)
    assert _video(checker_frames, "edge_density") > _video(flat, "edge_density") == 0.0


def test_video_features_read_a_written_clip(tmp_path):
    import cv2

    frames = np.zeros((20, 64, 64, 3), np.uint8)
    for i in range(20):
        frames[i, 20:40, 2 + 2 * i:14 + 2 * i] = (40, 200, 40)
    writer = cv2.VideoWriter(str(tmp_path / "v.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (64, 64))
    for frame in frames:
        writer.write(frame[..., ::-1].copy())
    writer.release()
    out = classic.video_features(tmp_path / "v.mp4")
    assert out.shape == (classic.VIDEO_DIM,) and np.isfinite(out).all()
    assert out[classic.video_index("flow_dx_mean")] > 0
    assert out[classic.video_index("frame_green_mean")] > out[classic.video_index("frame_red_mean")]


def test_face_detector_is_found_without_cv2_data(monkeypatch):
    import cv2

    monkeypatch.delattr(cv2, "data", raising=False)
    classic.face_detector.cache_clear()
    try:
        assert not classic.face_detector().empty()  # located inside the cv2 package instead
    finally:
        classic.face_detector.cache_clear()
