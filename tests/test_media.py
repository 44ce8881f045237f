"""Media reading: decoded samples and frames against the arrays written, frame choice, errors."""
import numpy as np
import pytest
import soundfile as sf

from emojax.data.types import DEFAULT_MAX_SECONDS
from emojax.data.media import MediaError, frame_indices, read_audio, read_video_frames


def _write_video(path, frames_rgb, fps=10.0):
    import cv2

    height, width = frames_rgb.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    assert writer.isOpened(), "this OpenCV build cannot write mp4v"
    for frame in frames_rgb:
        writer.write(np.ascontiguousarray(frame[..., ::-1]))
    writer.release()


def _level_frames(count, height=32, width=48):
    """Frame ``i`` is a flat grey of level ``8 + 8 * i``: identifiable after lossy coding."""
    levels = 8 + 8 * np.arange(count)
    return np.stack([np.full((height, width, 3), v, np.uint8) for v in levels]), levels


def _suite_indices(length, target):
    """The PyTorch suite's frame choice, transcribed: floor of a stepped range, or pad with the last."""
    if length <= target:
        return np.pad(np.arange(length), (0, target - length), mode="edge")
    return np.floor(np.arange(0, length, step=length / target)).astype(int)


def test_read_audio_returns_the_written_samples(tmp_path):
    pcm = np.random.default_rng(0).integers(-20000, 20000, 8000).astype(np.int16)
    sf.write(tmp_path / "a.flac", pcm, 16000, subtype="PCM_16")
    out = read_audio(tmp_path / "a.flac")
    assert out.dtype == np.float32 and out.shape == (8000,)
    np.testing.assert_array_equal(out, pcm.astype(np.float32) / 32768.0)


def test_read_audio_mixes_channels_to_mono(tmp_path):
    rng = np.random.default_rng(1)
    stereo = rng.uniform(-0.5, 0.5, (4000, 2)).astype(np.float32)
    sf.write(tmp_path / "s.wav", stereo, 16000, subtype="FLOAT")
    np.testing.assert_allclose(read_audio(tmp_path / "s.wav"), stereo.mean(axis=1), atol=1e-7)


def test_read_audio_resamples_to_the_requested_rate(tmp_path):
    tone = lambda rate: np.sin(2 * np.pi * 440.0 * np.arange(rate) / rate).astype(np.float32)  # noqa: E731
    sf.write(tmp_path / "low.wav", tone(8000), 8000, subtype="FLOAT")
    out = read_audio(tmp_path / "low.wav", sample_rate=16000)
    assert out.shape == (16000,)
    # Away from the edges the resampled tone is the tone sampled at 16 kHz.
    np.testing.assert_allclose(out[1000:-1000], tone(16000)[1000:-1000], atol=0.02)


def test_frame_indices_follow_an_even_floor_spacing():
    for count, wanted in ((30, 16), (16, 16), (100, 16), (17, 16), (5, 16), (1, 4)):
        np.testing.assert_array_equal(frame_indices(count, wanted), _suite_indices(count, wanted))
    np.testing.assert_array_equal(frame_indices(48, 16), np.floor(np.linspace(0, 48, 16, endpoint=False)))
    with pytest.raises(ValueError, match="frame_count"):
        frame_indices(0, 16)


def test_read_video_frames_samples_evenly_and_keeps_rgb(tmp_path):
    frames, levels = _level_frames(30)
    _write_video(tmp_path / "v.mp4", frames)
    out = read_video_frames(tmp_path / "v.mp4", num_frames=16)
    assert out.shape == (16, 32, 48, 3) and out.dtype == np.uint8
    picked = np.abs(out.reshape(16, -1).mean(1)[:, None] - levels[None, :]).argmin(1)
    np.testing.assert_array_equal(picked, np.floor(np.linspace(0, 30, 16, endpoint=False)).astype(int))

    red = np.zeros((3, 32, 32, 3), np.uint8)
    red[..., 0] = 220
    _write_video(tmp_path / "red.mp4", red)
    mean = read_video_frames(tmp_path / "red.mp4", num_frames=3).reshape(-1, 3).mean(0)
    assert mean[0] > 180 and mean[1] < 40 and mean[2] < 40  # channel 0 is red


def test_read_video_frames_repeats_the_last_frame_of_a_short_clip(tmp_path):
    frames, levels = _level_frames(5)
    _write_video(tmp_path / "short.mp4", frames)
    out = read_video_frames(tmp_path / "short.mp4", num_frames=8)
    picked = np.abs(out.reshape(8, -1).mean(1)[:, None] - levels[None, :]).argmin(1)
    np.testing.assert_array_equal(picked, [0, 1, 2, 3, 4, 4, 4, 4])


def test_read_video_frames_resizes_to_height_width(tmp_path):
    frames, _ = _level_frames(6)
    _write_video(tmp_path / "v.mp4", frames)
    assert read_video_frames(tmp_path / "v.mp4", num_frames=4, size=(16, 24)).shape == (4, 16, 24, 3)


@pytest.mark.parametrize("reader", [read_audio, read_video_frames])
def test_missing_empty_and_corrupt_files_raise_media_error_naming_them(tmp_path, reader):
    missing = tmp_path / "missing.bin"
    with pytest.raises(MediaError, match="not found") as err:
        reader(missing)
    assert str(missing) in str(err.value) and err.value.path == str(missing)

    suffix = ".flac" if reader is read_audio else ".mp4"
    empty = tmp_path / f"empty{suffix}"
    empty.write_bytes(b"")
    with pytest.raises(MediaError, match="empty") as err:
        reader(empty)
    assert str(empty) in str(err.value)

    corrupt = tmp_path / f"corrupt{suffix}"
    corrupt.write_bytes(b"this is not a media file " * 40)
    with pytest.raises(MediaError) as err:
        reader(corrupt)
    assert str(corrupt) in str(err.value)


def test_read_audio_of_a_video_without_sound_is_a_media_error(tmp_path):
    frames, _ = _level_frames(4)
    _write_video(tmp_path / "silent.mp4", frames)
    with pytest.raises(MediaError) as err:
        read_audio(tmp_path / "silent.mp4")
    assert str(tmp_path / "silent.mp4") in str(err.value)


def test_duration_cap_cuts_long_clips_with_one_warning(tmp_path, caplog):
    import logging

    import ml_collections
    import soundfile as sf

    from configs.compose import compose
    from emojax import config as config_lib
    from emojax.data import media
    from emojax.runs import format as format_lib
    from test_iemocap import write_ramp_video

    rate = 8000
    signal = np.sin(np.arange(90 * rate) / 7.0).astype(np.float32)
    sf.write(tmp_path / "long.wav", signal, rate)
    assert config_lib.DEFAULT_MAX_SECONDS == DEFAULT_MAX_SECONDS == 60.0  # one default
    with caplog.at_level(logging.WARNING):
        first = media.read_audio(tmp_path / "long.wav", rate)  # the default cap
        media.read_audio(tmp_path / "long.wav", rate, max_seconds=DEFAULT_MAX_SECONDS)
    np.testing.assert_allclose(first, signal[:60 * rate], atol=1e-4)
    warnings = [r.getMessage() for r in caplog.records if "long.wav" in r.getMessage()]
    assert len(warnings) == 1 and "first 60 s" in warnings[0]
    segment = media.read_audio(media.segment_ref(tmp_path / "long.wav", 5.0, 80.0), rate, max_seconds=10)
    np.testing.assert_allclose(segment, signal[5 * rate:15 * rate], atol=1e-4)
    write_ramp_video(tmp_path / "ramp.avi", seconds=20.0)  # grey level = time
    frames = media.read_video_frames(tmp_path / "ramp.avi", num_frames=4, max_seconds=5)
    assert frames.reshape(4, -1).mean(axis=1).max() <= 50 * 255 / 199 + 3  # from the first 5 s only
    assert len(media.read_audio(tmp_path / "long.wav", rate, max_seconds=0)) == len(signal)  # no cap
    assert len(media.read_audio(tmp_path / "long.wav", rate, max_seconds=None)) == len(signal)
    for reader in (lambda: media.read_audio(tmp_path / "long.wav", rate, max_seconds=-1),
                   lambda: media.read_video_frames(tmp_path / "ramp.avi", num_frames=4, max_seconds=-1)):
        with pytest.raises(ValueError, match="max_seconds"):
            reader()
    cfg = compose("dataset=IEMOCAP--E,encoders=T")
    default_hash = config_lib.config_hash(cfg)
    earlier = cfg.to_dict()
    del earlier["dataset"]["max_seconds"]  # a run of format 1 written before the cap existed: migrated, same hash
    assert format_lib.format_1_hash(earlier) == format_lib.format_1_hash(cfg)
    assert config_lib.config_hash(ml_collections.ConfigDict(format_lib.config_of_format_2(earlier)[0])) == default_hash
    cfg.dataset.max_seconds = 30.0
    assert config_lib.config_hash(cfg) != default_hash
    cfg.dataset.max_seconds = -1.0
    with pytest.raises(config_lib.ConfigError, match="dataset.max_seconds"):
        config_lib.validate(cfg)
