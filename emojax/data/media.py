"""Reading audio and video files into arrays, with errors that name the file.

A media *reference* is a file path, or a file path with a time segment in the W3C Media
Fragments form ``"recording.avi#t=6.29,8.24"`` (:func:`segment_ref`): the segment
``[start, end]`` seconds of that file. IEMOCAP's ``Video_Path`` is a whole dialogue's recording,
and each utterance's video is such a segment of it. Every reader here takes references.

``read_audio`` returns mono float32 samples at the requested rate; ``read_video_frames`` returns a
fixed number of RGB frames spread over the clip, chosen the way the PyTorch suite chooses them
(``sample_frame_indices``): ``floor(i * n / F)`` for ``i < F`` when the clip has at least ``F``
frames, otherwise every frame with the last one repeated up to ``F``.
"""
from __future__ import annotations

import logging
import os
import pathlib
import re
import warnings
from typing import Optional

import numpy as np

log = logging.getLogger(__name__)

# Containers libsndfile decodes itself; anything else goes through librosa (and audioread).
_SOUNDFILE_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif", ".au", ".mp3", ".opus", ".caf", ".w64"}


class MediaError(RuntimeError):
    """A media file is missing, empty or cannot be decoded; the message starts with its path."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


_SEGMENT = re.compile(r"^(?P<file>.+)#t=(?P<start>\d+(?:\.\d*)?),(?P<end>\d+(?:\.\d*)?)$")


def segment_ref(path: str | os.PathLike, start: float, end: float) -> str:
    """The reference to seconds ``[start, end]`` of ``path``: ``"path#t=start,end"``."""
    start, end = float(start), float(end)
    if not (0.0 <= start < end):
        raise ValueError(f"{path}: segment [{start}, {end}] s must satisfy 0 <= start < end")
    return f"{os.fspath(path)}#t={start:.4f},{end:.4f}"


def split_ref(ref: str | os.PathLike) -> tuple[str, Optional[tuple[float, float]]]:
    """``(file, (start, end))`` of a segment reference, ``(file, None)`` of a plain path."""
    ref = os.fspath(ref)
    match = _SEGMENT.match(ref)
    if match is None:
        return ref, None
    return match["file"], (float(match["start"]), float(match["end"]))


def media_file(ref: str | os.PathLike) -> str:
    """The file a reference points into."""
    return split_ref(ref)[0]


# Longest stretch of one input that is decoded, in seconds (``None``: no limit). One 30-minute
# file in an utterance dataset would otherwise take gigabytes and minutes; a longer clip is cut
# to its first ``DURATION_CAP`` seconds, with one warning naming it. Set from the run's
# ``dataset.max_seconds`` by :func:`set_duration_cap`.
DEFAULT_DURATION_CAP = 60.0
_duration_cap: Optional[float] = DEFAULT_DURATION_CAP
_warned_long: set[str] = set()


def set_duration_cap(seconds: Optional[float]) -> None:
    """Cut every clip (or segment) read from now on to its first ``seconds`` (``None`` or 0: no cap)."""
    global _duration_cap
    if seconds is not None and not float(seconds) >= 0:
        raise ValueError(f"dataset.max_seconds: {seconds!r} must be a non-negative number of seconds (0: no cap)")
    _duration_cap = float(seconds) if seconds else None


def duration_cap() -> Optional[float]:
    """The cap :func:`read_audio` and :func:`read_video_frames` apply now (``None``: none)."""
    return _duration_cap


def _warn_cut(ref: str, seconds: float) -> None:
    if ref not in _warned_long:
        _warned_long.add(ref)
        log.warning("%s: longer than %.0f s; only its first %.0f s are used (dataset.max_seconds)",
                    ref, seconds, seconds)


def _check_file(path: pathlib.Path, kind: str) -> None:
    if not path.exists():
        raise MediaError(path, f"{kind} file not found; check the dataset folder or drop this sample")
    if not path.is_file():
        raise MediaError(path, f"expected a {kind} file, found a directory or special file")
    if path.stat().st_size == 0:
        raise MediaError(path, f"{kind} file is empty (0 bytes); re-extract or re-download it")


def read_audio(path: str | os.PathLike, sample_rate: int = 16000) -> np.ndarray:
    """Decode an audio file (or the audio track of a video) to mono float32 ``(samples,)``.

    WAV / FLAC / OGG go through soundfile; other containers (``.mp4``, ``.m4a``) through
    ``librosa.load``, which needs an audioread backend such as the ``ffmpeg`` program. Channels
    are averaged; the signal is resampled to ``sample_rate`` with librosa when it differs.
    Raises ``MediaError`` for a missing, empty or undecodable file, or one without samples.
    """
    ref = os.fspath(path)
    file, segment = split_ref(ref)
    path = pathlib.Path(file)
    _check_file(path, "audio")
    import librosa
    import soundfile as sf

    cap = _duration_cap
    offset = segment[0] if segment is not None else 0.0
    length = segment[1] - segment[0] if segment is not None else None  # seconds; None: to the end
    data, rate, failures, cut = None, None, [], False
    if path.suffix.lower() in _SOUNDFILE_SUFFIXES:
        try:
            with sf.SoundFile(str(path)) as handle:  # read only the stretch that is used
                rate = handle.samplerate
                start = int(round(offset * rate))
                stop = handle.frames if length is None else min(handle.frames, int(round((offset + length) * rate)))
                if cap is not None and stop - start > int(round(cap * rate)):
                    stop, cut = start + int(round(cap * rate)), True
                handle.seek(min(start, handle.frames))
                stereo = handle.read(max(0, stop - start), dtype="float32", always_2d=True)
            data = stereo.mean(axis=1)
        except Exception as err:  # libsndfile reports format problems as several types
            failures.append(f"soundfile: {err}")
    if data is None:
        duration = length if cap is None else (cap + 1.0 if length is None else min(length, cap + 1.0))
        try:
            with warnings.catch_warnings():  # librosa warns before falling back to audioread; we report
                warnings.simplefilter("ignore", UserWarning)
                warnings.simplefilter("ignore", FutureWarning)
                warnings.simplefilter("ignore", DeprecationWarning)
                data, rate = librosa.load(str(path), sr=None, mono=True, offset=offset, duration=duration)
        except Exception as err:  # soundfile and audioread raise unrelated exception types
            failures.append(f"librosa/audioread: {type(err).__name__}: {err}".rstrip(": "))
            hint = ("install the ffmpeg program so audioread can decode it, or extract the audio to WAV/FLAC"
                    if path.suffix.lower() not in _SOUNDFILE_SUFFIXES else "the file is corrupt or not audio")
            raise MediaError(path, f"cannot decode audio ({'; '.join(failures)}); {hint}") from None
        if cap is not None and len(data) > int(round(cap * rate)):
            data, cut = data[:int(round(cap * rate))], True
    if cut:
        _warn_cut(ref, cap)
    data = np.asarray(data, dtype=np.float32)
    if data.size == 0:
        raise MediaError(path, "audio file holds no samples")
    if not np.isfinite(data).all():
        raise MediaError(path, "audio holds NaN or infinite samples; re-encode the file")
    if int(rate) != int(sample_rate):
        data = librosa.resample(data, orig_sr=int(rate), target_sr=int(sample_rate))
    return np.ascontiguousarray(data, dtype=np.float32)


def frame_indices(frame_count: int, num_frames: int) -> np.ndarray:
    """Indices of the ``num_frames`` frames taken from a clip of ``frame_count`` frames: ``(num_frames,)``.

    ``floor(linspace(0, frame_count, num_frames, endpoint=False))`` when the clip is long enough;
    a shorter clip gives every frame once and then its last frame again.
    """
    if frame_count <= 0 or num_frames <= 0:
        raise ValueError(f"frame_count ({frame_count}) and num_frames ({num_frames}) must be positive")
    if frame_count <= num_frames:
        return np.concatenate([np.arange(frame_count), np.full(num_frames - frame_count, frame_count - 1)]
                              ).astype(np.int64)
    return np.floor(np.linspace(0, frame_count, num_frames, endpoint=False)).astype(np.int64)


def _decode(capture, wanted: set[int], first: int = 0, stop: Optional[int] = None
            ) -> tuple[dict[int, np.ndarray], int]:
    """Read the clip through once from its start, keeping the BGR frames whose index (counted from
    frame ``first``) is in ``wanted``; frames from ``stop`` on are not read. Returns the kept
    frames and the number of frames decoded from ``first`` on."""
    for _ in range(first):  # grab() without retrieving: exact, where seeking in AVI/DivX is not
        if not capture.grab():
            return {}, 0
    kept, index = {}, 0
    while stop is None or first + index < stop:
        if index in wanted:
            ok, frame = capture.read()
            if not ok:
                break
            kept[index] = frame
        elif not capture.grab():
            break
        index += 1
    return kept, index


def _segment_frames(capture, segment: tuple[float, float], path) -> tuple[int, int]:
    """Frame range ``[first, stop)`` of a time segment, by the container's frame rate."""
    import cv2

    fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
    if not fps > 0:
        raise MediaError(path, "the video reports no frame rate, so the segment "
                               f"[{segment[0]}, {segment[1]}] s cannot be located; re-encode it")
    first = int(np.floor(segment[0] * fps + 1e-6))
    stop = max(first + 1, int(np.ceil(segment[1] * fps - 1e-6)))
    return first, stop


def read_video_frames(path: str | os.PathLike, num_frames: int = 16,
                      size: Optional[tuple[int, int]] = None) -> np.ndarray:
    """``num_frames`` RGB frames of a video, spread over the clip: ``(num_frames, H, W, 3)`` uint8.

    ``path`` may be a segment reference (:func:`segment_ref`): the frames are then taken from the
    frames inside ``[start, end]`` seconds only (frame ``floor(start * fps)`` up to, not including,
    ``ceil(end * fps)``). ``size`` is ``(height, width)`` to resize every frame to (area
    interpolation), or ``None`` to keep the clip's size. Frames are chosen by
    :func:`frame_indices` over the frames actually decoded (the container's frame count is only
    a first guess). Raises ``MediaError`` for a missing, empty or undecodable file, one without
    frames, or a segment that starts after the recording ends.
    """
    ref = os.fspath(path)
    file, segment = split_ref(ref)
    path = pathlib.Path(file)
    _check_file(path, "video")
    import cv2

    def open_capture():
        capture = cv2.VideoCapture(str(path))
        if not capture.isOpened():
            capture.release()
            raise MediaError(path, "OpenCV cannot open this video (corrupt file or unsupported codec); "
                                   "re-encode it to H.264 or MPEG-4 in an .mp4 container")
        return capture

    capture = open_capture()
    try:
        reported = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        first, stop = _segment_frames(capture, segment, path) if segment is not None else (0, None)
        fps, limit = float(capture.get(cv2.CAP_PROP_FPS) or 0.0), None
        if _duration_cap is not None and fps > 0:
            limit = first + max(1, int(round(_duration_cap * fps)))
            if stop is None or stop > limit:
                stop = limit
            else:
                limit = None
        if stop is not None and reported > 0:
            reported = max(0, min(stop, reported) - first)
        wanted = frame_indices(reported, num_frames) if reported > 0 else np.arange(0)
        kept, decoded = _decode(capture, set(wanted.tolist()) if reported > 0 else set(), first, stop)
    finally:
        capture.release()
    if limit is not None and first + decoded >= limit:
        _warn_cut(ref, _duration_cap)
    if decoded == 0:
        if segment is not None:
            raise MediaError(ref, f"no decodable frames in the segment [{segment[0]}, {segment[1]}] s "
                                  "(does the recording end before it?)")
        raise MediaError(path, "video has no decodable frames; re-encode it")
    indices = frame_indices(decoded, num_frames)
    if not set(indices.tolist()) <= kept.keys():
        # The container's frame count was wrong: read again, now that the true count is known.
        capture = open_capture()
        try:
            kept, _ = _decode(capture, set(indices.tolist()), first, stop)
        finally:
            capture.release()
        if not set(indices.tolist()) <= kept.keys():
            raise MediaError(path, "video decodes differently on a second read; re-encode it")
    frames = []
    for i in indices:
        frame = cv2.cvtColor(kept[int(i)], cv2.COLOR_BGR2RGB)
        if size is not None:
            height, width = int(size[0]), int(size[1])
            frame = cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)
        frames.append(frame)
    return np.stack(frames).astype(np.uint8, copy=False)


__all__ = ["DEFAULT_DURATION_CAP", "MediaError", "duration_cap", "frame_indices", "set_duration_cap", "media_file", "read_audio", "read_video_frames", "segment_ref",
           "split_ref"]
