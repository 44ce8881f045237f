"""Classic audio (librosa) and video (OpenCV) features: no download, real signal.

Audio (``AUDIO_DIM`` values): log-mel band means and deviations, MFCCs and their deltas, pitch
statistics (YIN over voiced frames), energy, zero-crossing rate, spectral shape and duration.

Video (``VIDEO_DIM`` values), over 16 frames sampled evenly as the suite does: face statistics
(OpenCV's bundled frontal-face Haar cascade), colour (HSV histograms, RGB moments, the colour of
the face region), texture (Laplacian variance, gradient energy, edge density) and motion (frame
differences, Farneback optical flow).
"""
from __future__ import annotations

import functools
import os
import pathlib

import numpy as np

from emojax.data.media import MediaError, read_audio, read_video_frames

FEATURE_VERSION = "classic-v1"
SAMPLE_RATE = 16000
N_MELS = 40
N_MFCC = 20
AUDIO_DIM = 2 * N_MELS + 4 * N_MFCC + 5 + 3 + 2 + 8 + 1
VIDEO_FRAMES = 16
_HSV_BINS = (12, 4, 4)
VIDEO_DIM = 5 + sum(_HSV_BINS) + 6 + 3 + 3 + 2 + 4


def _stats(values: np.ndarray, axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    return values.mean(axis=axis), values.std(axis=axis)


def audio_features_from_samples(y: np.ndarray, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Features of mono samples ``y`` ``(n,)``: ``(AUDIO_DIM,)`` float32."""
    import librosa

    duration = len(y) / sr
    if len(y) < 2048:
        y = np.pad(y, (0, 2048 - len(y)))
    n_fft, hop = 512, 160
    power = np.abs(librosa.stft(y, n_fft=n_fft, hop_length=hop)) ** 2
    mel = librosa.feature.melspectrogram(S=power, sr=sr, n_mels=N_MELS)
    log_mel = librosa.power_to_db(mel + 1e-10, ref=1.0, top_db=100.0)
    mfcc = librosa.feature.mfcc(S=log_mel, n_mfcc=N_MFCC)
    delta = librosa.feature.delta(mfcc, width=min(9, mfcc.shape[1] - (1 - mfcc.shape[1] % 2))) \
        if mfcc.shape[1] >= 3 else np.zeros_like(mfcc)
    rms = librosa.feature.rms(S=np.sqrt(power), frame_length=n_fft)[0]
    f0 = librosa.yin(y, fmin=60.0, fmax=800.0, sr=sr, frame_length=1024, hop_length=hop)
    frames = min(len(f0), len(rms))
    voiced = rms[:frames] > max(1e-4, 0.1 * rms.max())
    log_f0 = np.log(f0[:frames][voiced]) if voiced.any() else np.zeros(1)
    pitch = [log_f0.mean(), log_f0.std(), log_f0.min(), log_f0.max(), voiced.mean()]
    rms_db = 20 * np.log10(rms + 1e-6)
    energy = [rms_db.mean(), rms_db.std(), rms_db.max()]
    zcr = librosa.feature.zero_crossing_rate(y, frame_length=n_fft, hop_length=hop)[0]
    spectral = []
    for feature in (librosa.feature.spectral_centroid(S=np.sqrt(power), sr=sr)[0] / sr,
                    librosa.feature.spectral_bandwidth(S=np.sqrt(power), sr=sr)[0] / sr,
                    librosa.feature.spectral_rolloff(S=np.sqrt(power), sr=sr)[0] / sr,
                    librosa.feature.spectral_flatness(S=np.sqrt(power))[0]):
        spectral += list(_stats(feature))
    parts = [*_stats(log_mel), *_stats(mfcc), *_stats(delta), pitch, energy, list(_stats(zcr)), spectral,
             [duration]]
    out = np.concatenate([np.ravel(np.asarray(p, np.float64)) for p in parts]).astype(np.float32)
    assert out.shape == (AUDIO_DIM,), out.shape
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


def audio_features(path: str | os.PathLike) -> np.ndarray:
    """``(AUDIO_DIM,)`` float32 features of an audio file (raises ``MediaError`` if unreadable)."""
    return audio_features_from_samples(read_audio(path, SAMPLE_RATE), SAMPLE_RATE)


@functools.lru_cache(maxsize=1)
def face_detector():
    """OpenCV's bundled frontal-face Haar cascade."""
    import cv2

    candidates = []
    if hasattr(cv2, "data"):
        candidates.append(pathlib.Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml")
    candidates += list(pathlib.Path(cv2.__file__).parent.rglob("haarcascade_frontalface_default.xml"))
    for path in candidates:
        if path.is_file():
            detector = cv2.CascadeClassifier(str(path))
            if not detector.empty():
                return detector
    raise RuntimeError("OpenCV's haarcascade_frontalface_default.xml was not found in the cv2 package; "
                       "reinstall opencv-python-headless")


def video_features_from_frames(frames: np.ndarray) -> np.ndarray:
    """Features of RGB frames ``(F, H, W, 3)`` uint8: ``(VIDEO_DIM,)`` float32."""
    import cv2

    frames = np.asarray(frames, np.uint8)
    height, width = frames.shape[1:3]
    scale = min(1.0, 160.0 / max(height, width))
    if scale < 1.0:
        frames = np.stack([cv2.resize(f, (int(width * scale), int(height * scale)), interpolation=cv2.INTER_AREA)
                           for f in frames])
        height, width = frames.shape[1:3]
    area = float(height * width)
    gray = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames])
    hsv = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2HSV) for f in frames])

    detector = face_detector()
    counts, sizes, centres, face_hsv = [], [], [], []
    min_side = max(12, int(0.12 * min(height, width)))
    for g, h in zip(gray, hsv):
        faces = detector.detectMultiScale(g, scaleFactor=1.1, minNeighbors=4, minSize=(min_side, min_side))
        counts.append(len(faces))
        if len(faces):
            x, y, w, hgt = max(faces, key=lambda r: r[2] * r[3])
            sizes.append(w * hgt / area)
            centres.append(((x + w / 2) / width, (y + hgt / 2) / height))
            face_hsv.append(h[y:y + hgt, x:x + w].reshape(-1, 3).mean(0) / 255.0)
    face = [np.mean(np.asarray(counts) > 0), np.mean(counts), np.mean(sizes) if sizes else 0.0,
            *(np.mean(centres, axis=0) if centres else (0.5, 0.5))]
    face_colour = np.mean(face_hsv, axis=0) if face_hsv else np.zeros(3)

    histograms = []
    for channel, (bins, top) in enumerate(zip(_HSV_BINS, (180, 256, 256))):
        counts_c = np.histogram(hsv[..., channel], bins=bins, range=(0, top))[0].astype(np.float64)
        histograms.append(counts_c / counts_c.sum())
    rgb = frames.reshape(-1, 3).astype(np.float64) / 255.0
    moments = np.concatenate([rgb.mean(0), rgb.std(0)])

    laplacian = np.mean([np.log1p(cv2.Laplacian(g, cv2.CV_64F).var()) for g in gray])
    gradient = np.mean([np.hypot(cv2.Sobel(g, cv2.CV_64F, 1, 0), cv2.Sobel(g, cv2.CV_64F, 0, 1)).mean() / 255.0
                        for g in gray])
    edges = np.mean([(cv2.Canny(g, 100, 200) > 0).mean() for g in gray])

    small = [cv2.resize(g, (64, 64), interpolation=cv2.INTER_AREA) for g in gray]
    diffs = np.array([np.abs(a.astype(np.float64) - b).mean() / 255.0 for a, b in zip(small[:-1], small[1:])]) \
        if len(small) > 1 else np.zeros(1)
    magnitudes, cosines, sines = [], [], []
    for a, b in zip(small[:-1], small[1:]):
        flow = cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 2, 9, 2, 5, 1.1, 0)
        dx, dy = flow[..., 0].mean(), flow[..., 1].mean()
        magnitudes.append(np.hypot(flow[..., 0], flow[..., 1]).mean())
        norm = np.hypot(dx, dy) + 1e-8
        cosines.append(dx / norm)
        sines.append(dy / norm)
    motion = [diffs.mean(), diffs.std(), np.mean(magnitudes) if magnitudes else 0.0,
              np.std(magnitudes) if magnitudes else 0.0]
    direction = [np.mean(cosines) if cosines else 0.0, np.mean(sines) if sines else 0.0]
    parts = [face, *histograms, moments, face_colour, [laplacian, gradient, edges], direction, motion]
    out = np.concatenate([np.ravel(np.asarray(p, np.float64)) for p in parts]).astype(np.float32)
    assert out.shape == (VIDEO_DIM,), out.shape
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


def video_features(path: str | os.PathLike) -> np.ndarray:
    """``(VIDEO_DIM,)`` float32 features of a video file (raises ``MediaError`` if unreadable)."""
    return video_features_from_frames(read_video_frames(path, VIDEO_FRAMES))


__all__ = ["AUDIO_DIM", "VIDEO_DIM", "FEATURE_VERSION", "MediaError", "audio_features", "video_features",
           "audio_features_from_samples", "video_features_from_frames", "face_detector"]
