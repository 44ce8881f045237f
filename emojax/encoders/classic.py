"""Classic audio (librosa) and video (OpenCV) features: no download, real signal.

Every value has a name (``AUDIO_FEATURE_NAMES`` / ``VIDEO_FEATURE_NAMES``); ``audio_index`` and
``video_index`` find one by name, ``AUDIO_BLOCKS`` / ``VIDEO_BLOCKS`` give each group's slice.

Audio, at 16 kHz (frames of 32 ms every 10 ms), ``AUDIO_DIM`` values:

- ``logmel``: mean and standard deviation over time of 40 log-mel bands (dB);
- ``mfcc``: mean and deviation of 20 MFCCs and of their deltas;
- ``pitch``: YIN fundamental frequency over voiced frames, as log2(Hz): mean, deviation, min,
  max, and the voiced fraction. A frame is voiced when it is loud enough and its normalised
  autocorrelation at the YIN period exceeds 0.5;
- ``energy``: RMS in dB: mean, deviation, max, 10th percentile;
- ``zcr`` and ``spectral`` (centroid, bandwidth, roll-off as fractions of the sample rate,
  flatness): mean and deviation;
- ``rhythm``: onsets per second and mean onset strength (a speech-rate cue);
- ``duration`` in seconds.

Video, over 16 frames sampled evenly (``read_video_frames``) and scaled to at most 192 pixels
(:func:`shrink_frame`, applied as each frame is decoded, so a long or large clip never holds
full-size frames; the values are those of scaling the full frames afterwards), ``VIDEO_DIM`` values:

- ``face``: OpenCV's bundled frontal-face Haar cascade, run on every other sampled frame: share
  of those frames with a face, mean count, size of the largest face (fraction of the frame, mean
  and deviation), its centre (mean and deviation of x and y, fractions of the frame);
- ``colour`` and ``face_colour``: HSV histograms (hue 12, saturation 4, value 4 bins) and RGB
  channel means and deviations (0..1), over the whole frame and over the largest face (zeros
  where no face is found);
- ``texture``: log Laplacian variance, Sobel gradient magnitude, Canny edge density, and a
  10-bin rotation-invariant uniform local-binary-pattern histogram;
- ``motion``: mean absolute difference of consecutive frames (mean, deviation), Farneback optical
  flow magnitude (mean, deviation, max; fractions of the frame width per sampled step), the mean
  flow vector (x, y), its coherence (length of the mean vector over the mean length), and a
  magnitude-weighted histogram of the flow direction (right, down, left, up).

All outputs are finite (silence, flat frames and still clips give zeros where a statistic has
nothing to measure). ``FEATURE_VERSION`` changes whenever a value changes meaning; caches key on it.
"""
from __future__ import annotations

import functools
import itertools
import os
import pathlib
import threading
from typing import Optional, Sequence

import librosa
import numpy as np

from emojax.data.types import DEFAULT_MAX_SECONDS
from emojax.data.media import (MediaError, read_audio, read_audios, read_video_frames,
                               read_video_references)

# OpenCV (cv2) is imported by the video functions only: audio features run on installs without it.

FEATURE_VERSION = "classic-v2"

SAMPLE_RATE = 16000
N_FFT, HOP = 512, 160
N_MELS, N_MFCC = 40, 20
PITCH_RANGE = (60.0, 800.0)
_YIN_FRAME = 1024

VIDEO_FRAMES = 16
MAX_SIDE = 192
FLOW_SIDE = 96
HSV_BINS = (12, 4, 4)
LBP_BINS = 10
FACE_STRIDE = 2


def _named(prefix: str, names) -> list[str]:
    return [f"{prefix}_{n}" for n in names]


def _layout(blocks: list[tuple[str, list[str]]]) -> tuple[tuple[str, ...], dict[str, slice]]:
    names, slices, start = [], {}, 0
    for block, block_names in blocks:
        names += block_names
        slices[block] = slice(start, start + len(block_names))
        start += len(block_names)
    if len(set(names)) != len(names):
        raise AssertionError("duplicate feature names")
    return tuple(names), slices


_STAT2 = ("mean", "std")
AUDIO_FEATURE_NAMES, AUDIO_BLOCKS = _layout([
    ("logmel", _named("logmel_mean", range(N_MELS)) + _named("logmel_std", range(N_MELS))),
    ("mfcc", _named("mfcc_mean", range(N_MFCC)) + _named("mfcc_std", range(N_MFCC))
     + _named("mfcc_delta_mean", range(N_MFCC)) + _named("mfcc_delta_std", range(N_MFCC))),
    ("pitch", _named("pitch_log2hz", ("mean", "std", "min", "max")) + ["voiced_fraction"]),
    ("energy", _named("rms_db", ("mean", "std", "max", "p10"))),
    ("zcr", _named("zcr", _STAT2)),
    ("spectral", [f"{f}_{s}" for f in ("centroid", "bandwidth", "rolloff", "flatness") for s in _STAT2]),
    ("rhythm", ["onset_rate", "onset_strength_mean"]),
    ("duration", ["duration_s"]),
])
AUDIO_DIM = len(AUDIO_FEATURE_NAMES)


def _colour_names(prefix: str) -> list[str]:
    return (_named(f"{prefix}_hue_hist", range(HSV_BINS[0])) + _named(f"{prefix}_sat_hist", range(HSV_BINS[1]))
            + _named(f"{prefix}_val_hist", range(HSV_BINS[2]))
            + [f"{prefix}_{c}_{s}" for s in _STAT2 for c in ("red", "green", "blue")])


VIDEO_FEATURE_NAMES, VIDEO_BLOCKS = _layout([
    ("face", ["face_rate", "face_count", "face_area_mean", "face_area_std", "face_x_mean", "face_y_mean",
              "face_x_std", "face_y_std"]),
    ("colour", _colour_names("frame")),
    ("face_colour", _colour_names("face")),
    ("texture", ["laplacian_log_var", "gradient_mean", "edge_density"] + _named("lbp_hist", range(LBP_BINS))),
    ("motion", ["frame_diff_mean", "frame_diff_std", "flow_mag_mean", "flow_mag_std", "flow_mag_max",
                "flow_dx_mean", "flow_dy_mean", "flow_coherence"]
     + _named("flow_dir_hist", ("right", "down", "left", "up"))),
])
VIDEO_DIM = len(VIDEO_FEATURE_NAMES)


def audio_index(name: str) -> int:
    """Position of the audio feature called ``name`` (see ``AUDIO_FEATURE_NAMES``)."""
    return AUDIO_FEATURE_NAMES.index(name)


def video_index(name: str) -> int:
    """Position of the video feature called ``name`` (see ``VIDEO_FEATURE_NAMES``)."""
    return VIDEO_FEATURE_NAMES.index(name)


def _mean_std(values: np.ndarray) -> list[float]:
    values = np.asarray(values, np.float64)
    if values.size == 0:
        return [0.0, 0.0]
    return [float(values.mean()), float(values.std())]


def _finish(parts, dim: int) -> np.ndarray:
    out = np.concatenate([np.ravel(np.asarray(p, np.float64)) for p in parts])
    if out.shape != (dim,):
        raise AssertionError(f"feature layout mismatch: {out.shape} != ({dim},)")
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)


# -- audio ---------------------------------------------------------------------------------------

def voiced_pitch(y: np.ndarray, sr: int = SAMPLE_RATE) -> tuple[np.ndarray, np.ndarray]:
    """YIN f0 per frame ``(frames,)`` in Hz and a voiced mask ``(frames,)`` bool.

    Frames are ``_YIN_FRAME`` samples every ``HOP``, centred like librosa's. Voiced: RMS above
    both 1e-3 and a tenth of the loudest frame, and normalised autocorrelation at the YIN period
    above 0.5 (noise and silence have no stable period).
    """
    y = np.asarray(y, np.float32)
    if len(y) < _YIN_FRAME:
        y = np.pad(y, (0, _YIN_FRAME - len(y)))
    fmin, fmax = PITCH_RANGE
    f0 = librosa.yin(y, fmin=fmin, fmax=fmax, sr=sr, frame_length=_YIN_FRAME, hop_length=HOP)
    padded = np.pad(y, _YIN_FRAME // 2)
    frames = librosa.util.frame(padded, frame_length=_YIN_FRAME, hop_length=HOP).T[: len(f0)].astype(np.float64)
    f0 = f0[: len(frames)]
    rms = np.sqrt((frames ** 2).mean(axis=1))
    max_lag = int(np.ceil(sr / fmin))
    window = _YIN_FRAME - max_lag
    lags = np.clip(np.round(sr / np.maximum(f0, 1e-3)).astype(np.int64), 1, max_lag)
    head = frames[:, :window]
    tail = np.take_along_axis(frames, lags[:, None] + np.arange(window)[None, :], axis=1)
    corr = (head * tail).sum(1) / np.sqrt((head ** 2).sum(1) * (tail ** 2).sum(1) + 1e-12)
    voiced = (rms > max(1e-3, 0.1 * rms.max(initial=0.0))) & (corr > 0.5) & np.isfinite(f0)
    return f0, voiced


def audio_features_from_samples(y: np.ndarray, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Features of mono samples ``y`` ``(samples,)`` at ``sr`` Hz: ``(AUDIO_DIM,)`` float32."""
    y = np.asarray(y, np.float32).ravel()
    if sr != SAMPLE_RATE:
        y = librosa.resample(y, orig_sr=sr, target_sr=SAMPLE_RATE)
    duration = len(y) / SAMPLE_RATE
    if len(y) < _YIN_FRAME:
        y = np.pad(y, (0, _YIN_FRAME - len(y)))
    magnitude = np.abs(librosa.stft(y, n_fft=N_FFT, hop_length=HOP))
    power = magnitude ** 2
    mel = librosa.feature.melspectrogram(S=power, sr=SAMPLE_RATE, n_mels=N_MELS)
    log_mel = librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None)
    log_mel = np.maximum(log_mel, -100.0)  # silence floors at -100 dB instead of -inf
    mfcc = librosa.feature.mfcc(S=log_mel, n_mfcc=N_MFCC)
    width = min(9, mfcc.shape[1] if mfcc.shape[1] % 2 else mfcc.shape[1] - 1)
    delta = librosa.feature.delta(mfcc, width=width) if width >= 3 else np.zeros_like(mfcc)

    f0, voiced = voiced_pitch(y, SAMPLE_RATE)
    if voiced.any():
        log_f0 = np.log2(f0[voiced])
        pitch = [log_f0.mean(), log_f0.std(), log_f0.min(), log_f0.max(), voiced.mean()]
    else:
        pitch = [0.0, 0.0, 0.0, 0.0, 0.0]

    rms = librosa.feature.rms(y=y, frame_length=N_FFT, hop_length=HOP)[0]  # of the unwindowed signal
    rms_db = 20.0 * np.log10(rms + 1e-5)  # -100 dB floor
    energy = [rms_db.mean(), rms_db.std(), rms_db.max(), np.percentile(rms_db, 10)]
    zcr = librosa.feature.zero_crossing_rate(y, frame_length=N_FFT, hop_length=HOP)[0]
    spectral = []
    loud = rms > 1e-4  # spectral shape of silence is undefined; measure it where there is sound
    for values in (librosa.feature.spectral_centroid(S=magnitude, sr=SAMPLE_RATE)[0] / SAMPLE_RATE,
                   librosa.feature.spectral_bandwidth(S=magnitude, sr=SAMPLE_RATE)[0] / SAMPLE_RATE,
                   librosa.feature.spectral_rolloff(S=magnitude, sr=SAMPLE_RATE)[0] / SAMPLE_RATE,
                   librosa.feature.spectral_flatness(S=magnitude)[0]):
        spectral += _mean_std(values[loud[: len(values)]])
    strength = librosa.onset.onset_strength(S=log_mel, sr=SAMPLE_RATE)
    # Unnormalised envelope with a 2 dB threshold: a steady tone has no onsets, a syllable has one.
    onsets = librosa.onset.onset_detect(onset_envelope=strength, sr=SAMPLE_RATE, hop_length=HOP,
                                        normalize=False, delta=2.0) if loud.any() else np.zeros(0)
    rhythm = [len(onsets) / max(duration, 1e-3), strength.mean() if loud.any() else 0.0]
    return _finish([log_mel.mean(1), log_mel.std(1), mfcc.mean(1), mfcc.std(1), delta.mean(1), delta.std(1),
                    pitch, energy, _mean_std(zcr), spectral, rhythm, [duration]], AUDIO_DIM)


def audio_features(path: str | os.PathLike, *, max_seconds: Optional[float] = DEFAULT_MAX_SECONDS) -> np.ndarray:
    """``(AUDIO_DIM,)`` float32 features of an audio file (its first ``max_seconds``; 0: all of
    it); ``MediaError`` when it cannot be read."""
    return audio_features_from_samples(read_audio(path, SAMPLE_RATE, max_seconds=max_seconds), SAMPLE_RATE)


def read_audio_clips(refs: Sequence[str], *, max_seconds: Optional[float] = DEFAULT_MAX_SECONDS) -> list:
    """The samples :func:`audio_features` reads, per reference (or its ``MediaError``)."""
    return read_audios(refs, SAMPLE_RATE, max_seconds=max_seconds)


# -- video ---------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _cascade_file() -> str:
    """Path of OpenCV's bundled frontal-face Haar cascade that loads."""
    import cv2  # cv2: audio-only installs work without it

    name = "haarcascade_frontalface_default.xml"
    package = pathlib.Path(cv2.__file__).resolve().parent
    bundled = getattr(getattr(cv2, "data", None), "haarcascades", None)  # absent from some builds
    candidates = itertools.chain([pathlib.Path(bundled) / name] if bundled else [], sorted(package.rglob(name)))
    for path in candidates:
        if path.is_file() and not cv2.CascadeClassifier(str(path)).empty():
            return str(path)
    raise RuntimeError(f"OpenCV's {name} was not found in the cv2 package at {package}; reinstall "
                       "opencv-python-headless 4.x from PyPI, which bundles the Haar cascades")


_detectors = threading.local()
_detector_generation = [0]  # bumped by face_detector.cache_clear(): every thread loads its cascade again


def face_detector():
    """OpenCV's bundled frontal-face Haar cascade (``cv2.CascadeClassifier``), one per thread.

    A classifier keeps the image it is scanning as internal state, so threads that compute
    features at the same time (the featurizer's media pool) must not share one.
    """
    import cv2  # cv2: audio-only installs work without it

    if getattr(_detectors, "generation", None) != _detector_generation[0]:
        _detectors.detector = cv2.CascadeClassifier(_cascade_file())
        _detectors.generation = _detector_generation[0]
    return _detectors.detector


def _clear_face_detectors() -> None:
    _cascade_file.cache_clear()
    _detector_generation[0] += 1


face_detector.cache_clear = _clear_face_detectors  # as for the lru_cache it was: locate the cascade again


def _colour(rgb: np.ndarray, hsv: np.ndarray) -> list[float]:
    """HSV histograms and RGB moments of uint8 pixels ``(..., 3)`` (no pixels: zeros)."""
    import cv2  # cv2: audio-only installs work without it

    rgb = np.ascontiguousarray(rgb.reshape(-1, 1, 3))
    hsv = hsv.reshape(-1, 3)
    if len(rgb) == 0:
        return [0.0] * (sum(HSV_BINS) + 6)
    out = []
    for channel, (bins, top) in enumerate(zip(HSV_BINS, (180, 256, 256))):
        levels = np.bincount(hsv[:, channel], minlength=top)[:top]  # OpenCV hue is 0..179
        out += list(levels.reshape(bins, top // bins).sum(1) / len(hsv))
    mean, std = cv2.meanStdDev(rgb)
    return out + list(mean.ravel() / 255.0) + list(std.ravel() / 255.0)


def _lbp_histogram(gray: np.ndarray) -> np.ndarray:
    """Rotation-invariant uniform LBP (8 neighbours, radius 1) histogram of ``(F, H, W)`` uint8 frames."""
    g = gray.astype(np.int16)
    centre = g[:, 1:-1, 1:-1]
    h, w = centre.shape[1:]
    ring = [(0, 0), (0, 1), (0, 2), (1, 2), (2, 2), (2, 1), (2, 0), (1, 0)]  # clockwise neighbours
    bits = np.stack([g[:, dy:dy + h, dx:dx + w] >= centre for dy, dx in ring]).astype(np.int8)
    ones = bits.sum(0)
    transitions = np.abs(np.diff(np.concatenate([bits, bits[:1]]), axis=0)).sum(0)
    codes = np.where(transitions <= 2, ones, LBP_BINS - 1)  # uniform: number of ones (0..8); else 9
    counts = np.bincount(codes.ravel(), minlength=LBP_BINS)
    return counts / max(codes.size, 1)


def _faces(gray: np.ndarray, rgb: np.ndarray, hsv: np.ndarray) -> tuple[list[float], list[float]]:
    import cv2  # cv2: audio-only installs work without it

    detector = face_detector()
    height, width = gray.shape[1:]
    min_side = max(20, int(0.1 * min(height, width)))
    counts, areas, xs, ys, face_rgb, face_hsv = [], [], [], [], [], []
    # Every other sampled frame: faces move little between them, and detection dominates the cost.
    for g, c, h in zip(gray[::FACE_STRIDE], rgb[::FACE_STRIDE], hsv[::FACE_STRIDE]):
        found = detector.detectMultiScale(cv2.equalizeHist(g), scaleFactor=1.15, minNeighbors=5,
                                          minSize=(min_side, min_side))
        counts.append(len(found))
        if len(found):
            x, y, w, hh = (int(v) for v in max(found, key=lambda r: r[2] * r[3]))
            areas.append(w * hh / (height * width))
            xs.append((x + w / 2) / width)
            ys.append((y + hh / 2) / height)
            face_rgb.append(c[y:y + hh, x:x + w].reshape(-1, 3))
            face_hsv.append(h[y:y + hh, x:x + w].reshape(-1, 3))
    rate = float(np.mean(np.asarray(counts) > 0))
    face = [rate, float(np.mean(counts)), *_mean_std(areas)]
    face += [np.mean(xs), np.mean(ys), np.std(xs), np.std(ys)] if xs else [0.0] * 4
    colour = _colour(np.concatenate(face_rgb), np.concatenate(face_hsv)) if face_rgb else _colour(
        np.zeros((0, 3)), np.zeros((0, 3)))
    return face, colour


def _motion(gray: np.ndarray) -> list[float]:
    import cv2  # cv2: audio-only installs work without it

    height, width = gray.shape[1:]
    scale = min(1.0, FLOW_SIDE / max(height, width))
    size = (max(8, round(width * scale)), max(8, round(height * scale)))
    small = np.stack([cv2.resize(g, size, interpolation=cv2.INTER_AREA) for g in gray])
    if len(small) < 2:
        return [0.0] * 12
    diffs = np.abs(np.diff(small.astype(np.float64), axis=0)).mean(axis=(1, 2)) / 255.0
    magnitudes, vectors, direction = [], [], np.zeros(4)
    for a, b in zip(small[:-1], small[1:]):
        flow = cv2.calcOpticalFlowFarneback(a, b, None, pyr_scale=0.5, levels=2, winsize=9, iterations=2,
                                            poly_n=5, poly_sigma=1.1, flags=0) / size[0]
        length = np.hypot(flow[..., 0], flow[..., 1])
        magnitudes.append(length.mean())
        vectors.append(flow.reshape(-1, 2).mean(0))
        angle = np.arctan2(flow[..., 1], flow[..., 0])  # image y points down
        sector = np.round(angle / (np.pi / 2)).astype(np.int64) % 4  # 0 right, 1 down, 2 left, 3 up
        direction += np.bincount(sector.ravel(), weights=length.ravel(), minlength=4)
    magnitudes, vectors = np.asarray(magnitudes), np.asarray(vectors)
    mean_vector = vectors.mean(0)
    coherence = np.hypot(*mean_vector) / magnitudes.mean() if magnitudes.mean() > 1e-6 else 0.0
    direction = direction / direction.sum() if direction.sum() > 1e-9 else direction
    return [*_mean_std(diffs), magnitudes.mean(), magnitudes.std(), magnitudes.max(), *mean_vector, coherence,
            *direction]


def _shrunk_size(height: int, width: int) -> tuple[int, int] | None:
    """``(width, height)`` of a frame scaled to at most ``MAX_SIDE`` pixels, ``None`` when it fits."""
    scale = min(1.0, MAX_SIDE / max(height, width))
    if scale >= 1.0:
        return None
    return max(1, round(width * scale)), max(1, round(height * scale))


def shrink_frame(frame: np.ndarray) -> np.ndarray:
    """An RGB frame ``(H, W, 3)`` scaled (area interpolation) to at most ``MAX_SIDE`` pixels.

    The scaling :func:`video_features_from_frames` applies, done per frame as it is decoded: the
    result is the same array, and frames already this small pass through it unchanged, so the
    features do not change while a 720p clip holds 16 small frames instead of 16 full ones.
    """
    import cv2  # cv2: audio-only installs work without it

    size = _shrunk_size(*frame.shape[:2])
    return frame if size is None else cv2.resize(frame, size, interpolation=cv2.INTER_AREA)


def read_video_clips(refs: Sequence[str], *, max_seconds: Optional[float] = DEFAULT_MAX_SECONDS) -> list:
    """The shrunk frames :func:`video_features` reads, per reference (or its ``MediaError``); the
    segments of one recording are read in one pass (``emojax.data.media.read_video_references``)."""
    return read_video_references(refs, VIDEO_FRAMES, transform=shrink_frame, max_seconds=max_seconds)


def video_features_from_frames(frames: np.ndarray) -> np.ndarray:
    """Features of RGB frames ``(F, H, W, 3)`` uint8: ``(VIDEO_DIM,)`` float32."""
    import cv2  # cv2: audio-only installs work without it

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"frames: expected (frames, height, width, 3) RGB, got shape {frames.shape}")
    frames = frames.astype(np.uint8, copy=False)
    if _shrunk_size(*frames.shape[1:3]) is not None:
        frames = np.stack([shrink_frame(f) for f in frames])
    gray = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames])
    hsv = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2HSV) for f in frames])

    face, face_colour = _faces(gray, frames, hsv)
    texture = [np.mean([np.log1p(cv2.Laplacian(g, cv2.CV_64F).var()) for g in gray]),
               np.mean([np.hypot(cv2.Sobel(g, cv2.CV_64F, 1, 0), cv2.Sobel(g, cv2.CV_64F, 0, 1)).mean() / 255.0
                        for g in gray]),
               np.mean([(cv2.Canny(g, 100, 200) > 0).mean() for g in gray]),
               *_lbp_histogram(gray)]
    return _finish([face, _colour(frames, hsv), face_colour, texture, _motion(gray)], VIDEO_DIM)


def video_features(path: str | os.PathLike, *, max_seconds: Optional[float] = DEFAULT_MAX_SECONDS) -> np.ndarray:
    """``(VIDEO_DIM,)`` float32 features of a video file (its first ``max_seconds``; 0: all of
    it); ``MediaError`` when it cannot be read."""
    return video_features_from_frames(read_video_frames(path, VIDEO_FRAMES, transform=shrink_frame,
                                                        max_seconds=max_seconds))


__all__ = ["AUDIO_DIM", "VIDEO_DIM", "FEATURE_VERSION", "AUDIO_FEATURE_NAMES", "VIDEO_FEATURE_NAMES",
           "AUDIO_BLOCKS", "VIDEO_BLOCKS", "MediaError", "audio_features", "video_features", "audio_index",
           "video_index", "audio_features_from_samples", "video_features_from_frames", "voiced_pitch",
           "face_detector", "read_audio_clips", "read_video_clips", "shrink_frame"]
