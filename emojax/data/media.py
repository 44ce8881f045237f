"""Reading audio and video files into arrays, with errors that name the file."""
from __future__ import annotations

import os
import pathlib
from typing import Optional

import numpy as np


class MediaError(RuntimeError):
    """A media file is missing, unreadable or empty; the message names it."""


def read_audio(path: str | os.PathLike, sample_rate: int = 16000) -> np.ndarray:
    """Mono float32 samples ``(n,)`` at ``sample_rate`` (soundfile; librosa for other formats)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise MediaError(f"{path}: audio file not found")
    import librosa
    import soundfile as sf

    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
        data = data.mean(axis=1)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
        try:
            data, rate = librosa.load(str(path), sr=None, mono=True)
        except Exception as err:  # audioread raises several unrelated types
            raise MediaError(f"{path}: unreadable audio ({type(err).__name__}: {err})") from None
    if data.size == 0:
        raise MediaError(f"{path}: audio file holds no samples")
    if rate != sample_rate:
        data = librosa.resample(data, orig_sr=rate, target_sr=sample_rate)
    return np.ascontiguousarray(data, dtype=np.float32)


def frame_indices(frame_count: int, num_frames: int) -> np.ndarray:
    """``num_frames`` indices spread evenly over ``frame_count`` frames (repeats when fewer)."""
    return np.linspace(0, frame_count - 1, num_frames).round().astype(np.int64)


def read_video_frames(path: str | os.PathLike, num_frames: int = 16,
                      size: Optional[tuple[int, int]] = None) -> np.ndarray:
    """``num_frames`` RGB frames ``(F, H, W, 3)`` uint8 sampled evenly over the clip.

    ``size`` is ``(width, height)`` to resize to; ``None`` keeps the clip's size.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise MediaError(f"{path}: video file not found")
    import cv2

    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise MediaError(f"{path}: OpenCV cannot open this video")
    frames = []
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            frames.append(frame)
    finally:
        capture.release()
    if not frames:
        raise MediaError(f"{path}: video has no readable frames")
    picked = []
    for i in frame_indices(len(frames), num_frames):
        frame = cv2.cvtColor(frames[i], cv2.COLOR_BGR2RGB)
        if size is not None:
            frame = cv2.resize(frame, tuple(size), interpolation=cv2.INTER_AREA)
        picked.append(frame)
    return np.stack(picked)
