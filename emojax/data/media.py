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

import atexit
import concurrent.futures
import logging
import multiprocessing
import os
import pathlib
import re
import threading
import warnings
from typing import Any, Callable, Hashable, Iterator, Optional, Sequence

import librosa
import numpy as np
import soundfile as sf

from emojax.data.types import DEFAULT_MAX_SECONDS

# OpenCV (cv2) is imported by the video readers only: audio runs on installs without it.

log = logging.getLogger(__name__)

# Containers libsndfile decodes itself; anything else goes through librosa (and audioread).
_SOUNDFILE_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif", ".au", ".mp3", ".opus", ".caf", ".w64"}


class MediaError(RuntimeError):
    """A media file is missing, empty or cannot be decoded; the message starts with its path."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # rebuilt from its two fields when it comes back from a worker process
        return type(self), (self.path, self.reason)


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


# Every reader takes ``max_seconds``: the longest stretch of one input that is decoded (the
# run's ``dataset.max_seconds``; default ``emojax.data.types.DEFAULT_MAX_SECONDS``; 0 or ``None``: no
# limit). One 30-minute file in an utterance dataset would otherwise take gigabytes and minutes;
# a longer clip is cut to its first ``max_seconds``, with one warning naming it.
_warned_long: set[str] = set()
_warned_lock = threading.Lock()  # readers run on worker threads: one warning per clip, not one per thread


def duration_cap(max_seconds: Optional[float]) -> Optional[float]:
    """The cap a reader applies for ``max_seconds``: seconds as a float, ``None`` for no cap
    (``None`` or 0). Raises ``ValueError`` for a negative or non-numeric value."""
    if max_seconds is not None and not float(max_seconds) >= 0:
        raise ValueError(f"dataset.max_seconds: {max_seconds!r} must be a non-negative number of seconds "
                         "(0: no cap)")
    return float(max_seconds) if max_seconds else None


def _warn_cut(ref: str, seconds: float) -> None:
    with _warned_lock:
        if ref in _warned_long:
            return
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


def read_audio(path: str | os.PathLike, sample_rate: int = 16000, *,
               max_seconds: Optional[float] = DEFAULT_MAX_SECONDS) -> np.ndarray:
    """Decode an audio file (or the audio track of a video) to mono float32 ``(samples,)``.

    WAV / FLAC / OGG go through soundfile; other containers (``.mp4``, ``.m4a``) through
    ``librosa.load``, which needs an audioread backend such as the ``ffmpeg`` program. Channels
    are averaged; the signal is resampled to ``sample_rate`` with librosa when it differs. Only
    the first ``max_seconds`` of the clip (or segment) are read (0 or ``None``: all of it).
    Raises ``MediaError`` for a missing, empty or undecodable file, or one without samples.
    """
    cap = duration_cap(max_seconds)
    ref = os.fspath(path)
    file, segment = split_ref(ref)
    path = pathlib.Path(file)
    _check_file(path, "audio")
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


def read_audios(refs, sample_rate: int = 16000, *, max_seconds: Optional[float] = DEFAULT_MAX_SECONDS) -> list:
    """:func:`read_audio` of each reference: its samples, or its ``MediaError`` in its place (the
    per-file readers of a pool report a bad file and go on)."""
    out: list = []
    for ref in refs:
        try:
            out.append(read_audio(ref, sample_rate, max_seconds=max_seconds))
        except MediaError as err:
            out.append(err)
    return out


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


FrameTransform = Callable[[np.ndarray], np.ndarray]


def _frame_converter(size: Optional[tuple[int, int]], transform: Optional[FrameTransform]
                     ) -> Callable[[np.ndarray], np.ndarray]:
    """BGR frame as decoded -> the RGB frame returned: ``size`` (area interpolation), then ``transform``.

    Applied to each kept frame as soon as it is decoded, so only the shrunk copies are held.
    """
    import cv2  # cv2: audio-only installs work without it

    def convert(frame: np.ndarray) -> np.ndarray:
        frame = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        if size is not None:
            height, width = int(size[0]), int(size[1])
            frame = cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)
        if transform is not None:
            frame = transform(frame)
        return frame

    return convert


def _decode(capture, wanted: set[int], stop: Optional[int], convert: Callable[[np.ndarray], np.ndarray]
            ) -> tuple[dict[int, np.ndarray], int]:
    """Read the clip through once from its start, keeping (converted) the frames whose index is in
    ``wanted``; frames from ``stop`` on are not read. Returns the kept frames and the number of
    frames decoded. Frames not kept are only grabbed: exact, where seeking in AVI/DivX is not."""
    kept, index = {}, 0
    while stop is None or index < stop:
        if index in wanted:
            ok, frame = capture.read()
            if not ok:
                break
            kept[index] = convert(frame)
        elif not capture.grab():
            break
        index += 1
    return kept, index


def _open_capture(path: pathlib.Path):
    import cv2  # cv2: audio-only installs work without it

    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        capture.release()
        raise MediaError(path, "OpenCV cannot open this video (corrupt file or unsupported codec); "
                               "re-encode it to H.264 or MPEG-4 in an .mp4 container")
    return capture


def _segment_frames(fps: float, segment: tuple[float, float], path) -> tuple[int, int]:
    """Frame range ``[first, stop)`` of a time segment, by the container's frame rate."""
    if not fps > 0:
        raise MediaError(path, "the video reports no frame rate, so the segment "
                               f"[{segment[0]}, {segment[1]}] s cannot be located; re-encode it")
    first = int(np.floor(segment[0] * fps + 1e-6))
    stop = max(first + 1, int(np.ceil(segment[1] * fps - 1e-6)))
    return first, stop


class _Plan:
    """One segment's frame range, duration-cap limit and frames to keep (absolute indices)."""

    __slots__ = ("first", "stop", "limit", "wanted")

    def __init__(self, first: int, stop: Optional[int], limit: Optional[int], wanted: np.ndarray):
        self.first, self.stop, self.limit, self.wanted = first, stop, limit, wanted

    def decoded(self, total: int) -> int:
        """Frames of this segment among the ``total`` decoded from the file's start."""
        end = total if self.stop is None else min(self.stop, total)
        return max(0, end - self.first)


def _pass(capture, plans: Sequence[_Plan], wanted: set[int], convert) -> tuple[dict[int, np.ndarray], int]:
    """One decoding pass from the start of a freshly opened ``capture`` up to the last frame any
    plan covers."""
    stops = [p.stop for p in plans]
    return _decode(capture, wanted, None if any(s is None for s in stops) else max(stops), convert)


def _read_segments(path: pathlib.Path, segments: Sequence[Optional[tuple[float, float]]], names: Sequence[str],
                   num_frames: int, size: Optional[tuple[int, int]], transform: Optional[FrameTransform],
                   cap: Optional[float]) -> list:
    """:func:`read_video_segments`, with ``names`` (the references as given) in messages and the
    :func:`duration_cap` ``cap``."""
    import cv2  # cv2: audio-only installs work without it

    results: list = [None] * len(segments)
    try:
        _check_file(path, "video")
        capture = _open_capture(path)
    except MediaError as err:
        return [err] * len(segments)
    try:
        reported_total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        plans: dict[int, _Plan] = {}
        for k, segment in enumerate(segments):
            try:
                first, stop = _segment_frames(fps, segment, path) if segment is not None else (0, None)
            except MediaError as err:
                results[k] = err
                continue
            limit = None
            if cap is not None and fps > 0:
                limit = first + max(1, int(round(cap * fps)))
                if stop is None or stop > limit:
                    stop = limit
                else:
                    limit = None
            reported = reported_total
            if stop is not None and reported > 0:
                reported = max(0, min(stop, reported) - first)
            # The container's frame count is a first guess at which frames to keep.
            wanted = first + frame_indices(reported, num_frames) if reported > 0 else np.zeros(0, np.int64)
            plans[k] = _Plan(first, stop, limit, wanted)
        if not plans:
            return results
        convert = _frame_converter(size, transform)
        kept, total = _pass(capture, list(plans.values()),
                            set(np.concatenate([p.wanted for p in plans.values()]).tolist()), convert)
    finally:
        capture.release()
    retry: dict[int, np.ndarray] = {}
    for k, plan in plans.items():
        decoded = plan.decoded(total)
        if plan.limit is not None and plan.first + decoded >= plan.limit:
            _warn_cut(names[k], cap)
        if decoded == 0:
            segment = segments[k]
            results[k] = (MediaError(names[k], f"no decodable frames in the segment [{segment[0]}, {segment[1]}] s "
                                               "(does the recording end before it?)") if segment is not None else
                          MediaError(path, "video has no decodable frames; re-encode it"))
            continue
        indices = plan.first + frame_indices(decoded, num_frames)
        if set(indices.tolist()) <= kept.keys():
            results[k] = np.stack([kept[int(i)] for i in indices])
        else:
            retry[k] = indices
    if retry:
        # The container's frame count was wrong: read again, now that the true counts are known.
        try:
            capture = _open_capture(path)
            try:
                kept, _ = _pass(capture, [plans[k] for k in retry],
                                set(np.concatenate(list(retry.values())).tolist()), convert)
            finally:
                capture.release()
        except MediaError:
            kept = {}
        for k, indices in retry.items():
            if set(indices.tolist()) <= kept.keys():
                results[k] = np.stack([kept[int(i)] for i in indices])
            else:
                results[k] = MediaError(path, "video decodes differently on a second read; re-encode it")
    return results


def read_video_segments(path: str | os.PathLike, segments: Sequence[Optional[tuple[float, float]]],
                        num_frames: int = 16, size: Optional[tuple[int, int]] = None, *,
                        transform: Optional[FrameTransform] = None,
                        max_seconds: Optional[float] = DEFAULT_MAX_SECONDS) -> list:
    """The frames of every segment ``(start, end)`` (seconds; ``None``: the whole file) of one
    video, read in one pass: a list with, per segment, what :func:`read_video_frames` returns for
    its reference, or the ``MediaError`` it raises.

    The file is opened once and decoded from its start up to the last frame any segment needs,
    keeping only the frames the segments take, where one read per segment would decode the
    recording's start again for every utterance. ``transform`` maps each kept RGB frame (after
    ``size``) to what the caller needs, as soon as it is decoded: a shrinking transform bounds the
    memory of many segments of a large video. Each segment is cut to its first ``max_seconds``
    (0 or ``None``: no cut).
    """
    cap = duration_cap(max_seconds)
    file = os.fspath(path)
    names = [file if s is None else segment_ref(file, *s) for s in segments]
    return _read_segments(pathlib.Path(file), list(segments), names, num_frames, size, transform, cap)


def read_video_references(refs: Sequence[str | os.PathLike], num_frames: int = 16,
                          size: Optional[tuple[int, int]] = None, *,
                          transform: Optional[FrameTransform] = None,
                          max_seconds: Optional[float] = DEFAULT_MAX_SECONDS) -> list:
    """:func:`read_video_segments` for references (:func:`segment_ref` or plain paths): one pass per
    file, results in the order of ``refs``, messages naming each reference as given."""
    cap = duration_cap(max_seconds)
    refs = [os.fspath(r) for r in refs]
    by_file: dict[str, list[int]] = {}
    for k, ref in enumerate(refs):
        by_file.setdefault(media_file(ref), []).append(k)
    results: list = [None] * len(refs)
    for file, members in by_file.items():
        parts = _read_segments(pathlib.Path(file), [split_ref(refs[k])[1] for k in members],
                               [refs[k] for k in members], num_frames, size, transform, cap)
        for k, part in zip(members, parts):
            results[k] = part
    return results


def read_video_frames(path: str | os.PathLike, num_frames: int = 16,
                      size: Optional[tuple[int, int]] = None, *,
                      transform: Optional[FrameTransform] = None,
                      max_seconds: Optional[float] = DEFAULT_MAX_SECONDS) -> np.ndarray:
    """``num_frames`` RGB frames of a video, spread over the clip: ``(num_frames, H, W, 3)`` uint8.

    ``path`` may be a segment reference (:func:`segment_ref`): the frames are then taken from the
    frames inside ``[start, end]`` seconds only (frame ``floor(start * fps)`` up to, not including,
    ``ceil(end * fps)``). ``size`` is ``(height, width)`` to resize every frame to (area
    interpolation), or ``None`` to keep the clip's size; ``transform`` is then applied to each
    kept frame as it is decoded (see :func:`read_video_segments`). Frames are chosen by
    :func:`frame_indices` over the frames actually decoded (the container's frame count is only
    a first guess). Only the first ``max_seconds`` of the clip (or segment) are read (0 or
    ``None``: all of it). Raises ``MediaError`` for a missing, empty or undecodable file, one
    without frames, or a segment that starts after the recording ends.
    """
    result = read_video_references([path], num_frames, size, transform=transform, max_seconds=max_seconds)[0]
    if isinstance(result, MediaError):
        raise result
    return result


# -- many references on a pool of workers------------------------------------------------------

def media_workers(workers: Optional[int] = 0) -> int:
    """Workers (threads, or processes: :func:`map_references`) that decode media: ``workers``, or
    every core (``os.cpu_count()``) for 0 / ``None``."""
    if workers is None or int(workers) == 0:
        return max(1, os.cpu_count() or 1)
    if int(workers) < 0:
        raise ValueError(f"cache.media_workers: {workers!r} must be 0 (every core) or a positive number of workers")
    return int(workers)


def _opencv_threads(threads: Optional[int]) -> Optional[int]:
    """Set OpenCV's thread count (a process-wide setting) and return the previous one; ``None``
    (nothing set) without OpenCV or when ``threads`` is ``None``."""
    if threads is None:
        return None
    try:
        import cv2  # cv2: audio-only installs work without it
    except ImportError:  # audio-only installs
        return None
    previous = cv2.getNumThreads()
    cv2.setNumThreads(int(threads))
    return previous


def _decode_group(decode: Callable[[list[str]], list], refs: list[str]) -> list:
    try:
        out = list(decode(refs))
    except MediaError as err:  # a file-level failure: every reference into it
        return [err] * len(refs)
    if len(out) != len(refs):
        raise AssertionError(f"{refs[0]}: the reader returned {len(out)} results for {len(refs)} references")
    return out


def _finish_one(finish: Optional[Callable[[Any], Any]], value: Any) -> Any:
    if finish is None or isinstance(value, MediaError):
        return value
    try:
        return finish(value)
    except MediaError as err:
        return err


def map_references(refs: Sequence[str | os.PathLike], decode: Callable[[list[str]], list],
                   finish: Optional[Callable[[Any], Any]] = None, *, workers: Optional[int] = 0,
                   by_file: bool = True, ahead: Optional[int] = None, processes: bool = False) -> Iterator[Any]:
    """``finish(decoded)`` of every reference, or its ``MediaError``, in the order of ``refs``,
    computed on a pool of :func:`media_workers` threads (``processes``: worker processes).

    ``decode(group)`` gets a list of references into one file (``by_file``; otherwise one
    reference at a time) and returns one decoded value or ``MediaError`` per reference, e.g.
    :func:`read_video_references`: a recording's segments then cost one pass over it. ``finish``
    (the per-input preprocessing or feature) runs as its own task per reference, so one large
    recording's segments still spread over the cores. Work is submitted at most ``ahead``
    references (default: twice the threads plus 8) beyond the one the caller waits for, which
    bounds the memory held, and results come back strictly in order, so whatever the caller does
    with them (batches, logs, progress) is the same as a serial loop's. A ``MediaError`` is
    returned in the reference's place; any other exception is raised when its reference is reached.

    ``processes``: for work that holds the GIL (librosa's features, transformers' numpy log-mel),
    each group is decoded and finished in one task on :func:`process_pool` (when there are several
    workers and several groups; otherwise all in this thread); ``decode`` and ``finish`` must be
    picklable (module-level functions, ``functools.partial`` of them), and only the references go
    out and the finished values come back. Warnings the workers log come back with the values
    and are logged here, in order.
    """
    refs = [os.fspath(r) for r in refs]
    n = len(refs)
    if n == 0:
        return
    threads = media_workers(workers)
    ahead = max(1, int(ahead) if ahead is not None else 2 * threads + 8)
    members: dict[Hashable, list[int]] = {}
    for i, ref in enumerate(refs):
        members.setdefault(media_file(ref) if by_file else i, []).append(i)
    groups = list(members.values())  # by first reference
    group_of, position = [0] * n, [0] * n
    for g, indices in enumerate(groups):
        for p, i in enumerate(indices):
            group_of[i], position[i] = g, p
    if processes:
        yield from _map_on_processes(refs, groups, group_of, position, decode, finish, threads, ahead)
        return
    decoded: list[Optional[concurrent.futures.Future]] = [None] * len(groups)
    left = [len(indices) for indices in groups]  # references of each group not yet handed out
    finished: dict[int, concurrent.futures.Future] = {}
    pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="media")
    # While several workers run, OpenCV's own threads (resizing, colour conversion) would only
    # contend with them for the cores: one each, restored when the pool is done.
    previous_cv_threads = _opencv_threads(1 if threads > 1 else None)
    submitted = 0

    def start_finish(j: int) -> None:
        values = decoded[group_of[j]].result()
        if finish is None or isinstance(values[position[j]], MediaError):
            finished[j] = concurrent.futures.Future()
            finished[j].set_result(values[position[j]])
        else:
            finished[j] = pool.submit(_finish_one, finish, values[position[j]])
        values[position[j]] = None  # held by the task now; dropped once it is done

    def ready(j: int) -> bool:
        future = decoded[group_of[j]]
        return future is not None and future.done() and future.exception() is None

    try:
        for i in range(n):
            while submitted < len(groups) and groups[submitted][0] < i + ahead:
                decoded[submitted] = pool.submit(_decode_group, decode, [refs[j] for j in groups[submitted]])
                submitted += 1
            if i not in finished:
                start_finish(i)
            for j in range(i + 1, min(n, i + ahead)):
                if j not in finished and ready(j):
                    start_finish(j)
            yield finished.pop(i).result()
            g = group_of[i]
            left[g] -= 1
            if left[g] == 0:
                decoded[g] = None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        _opencv_threads(previous_cv_threads)


# -- work that holds the GIL on worker processes ------------------------------------------------

_process_pools: dict[int, concurrent.futures.ProcessPoolExecutor] = {}
_process_pools_lock = threading.Lock()

# Imported once in the fork server, so that each worker starts with them: librosa imports these
# parts (scipy.signal, numba-compiled functions) on first use, seconds of work per process.
FORK_SERVER_PRELOAD = ("librosa.core.audio", "librosa.core.spectrum", "librosa.core.pitch", "librosa.feature",
                       "librosa.onset")


def _process_context():
    """Where the platform has it, ``forkserver``: workers are forked from a server process started
    once, which imports the main module and :data:`FORK_SERVER_PRELOAD` once, never from this
    process, where JAX's threads may run; elsewhere ``spawn``."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["__main__", *FORK_SERVER_PRELOAD])  # only read when the server starts
    return context


def _one_native_thread() -> None:
    """A worker process's start: its native thread pools (BLAS, OpenMP, numba) get one thread
    each. The pool already has a process per core; with every worker's libraries also starting a
    thread per core, two workers measured slower than one (0.80x on 2 cores, classic audio
    features), one thread each 1.66x (``benchmarks/media_decode.py``)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)
    try:
        import numba
    except ImportError:  # librosa's dependency; absent, nothing to limit
        return
    numba.set_num_threads(1)


def process_pool(workers: int) -> concurrent.futures.ProcessPoolExecutor:
    """The pool of ``workers`` processes that :func:`map_references` uses with ``processes``.

    Started on first use and kept until :func:`close_process_pools` (or the program's exit), so
    a worker's start (its imports, librosa's first-call compilation: seconds) is paid once per
    program, not once per batch of features. Each worker's native thread pools run one thread
    (:func:`_one_native_thread`): the processes are the parallelism.
    """
    with _process_pools_lock:
        pool = _process_pools.get(int(workers))
        if pool is None:
            pool = concurrent.futures.ProcessPoolExecutor(int(workers), mp_context=_process_context(),
                                                          initializer=_one_native_thread)
            _process_pools[int(workers)] = pool
        return pool


def close_process_pools() -> None:
    """Stop the worker processes of :func:`process_pool` (a later call starts new ones)."""
    with _process_pools_lock:
        pools = list(_process_pools.values())
        _process_pools.clear()
    for pool in pools:
        pool.shutdown(wait=True, cancel_futures=True)


atexit.register(close_process_pools)  # before the interpreter tears down what the pools' threads use


class _Records(logging.Handler):
    """Collects the warnings of one task in a worker process, to be logged by the caller."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(logging.makeLogRecord(  # a copy that pickles: the message as text
            dict(vars(record), msg=record.getMessage(), args=None, exc_info=None, exc_text=None)))


def _decode_and_finish(decode: Callable[[list[str]], list], finish: Optional[Callable[[Any], Any]],
                       refs: list[str]) -> tuple[list, list[logging.LogRecord]]:
    """One group's finished values (or ``MediaError``) and the warnings logged meanwhile, in a
    worker process."""
    handler, root = _Records(), logging.getLogger()
    root.addHandler(handler)
    try:
        return [_finish_one(finish, value) for value in _decode_group(decode, refs)], handler.records
    finally:
        root.removeHandler(handler)


def _map_on_processes(refs: list[str], groups: list[list[int]], group_of: list[int], position: list[int],
                      decode, finish, workers: int, ahead: int) -> Iterator[Any]:
    """:func:`map_references` with ``processes``: each group decoded and finished in one task."""
    if workers == 1 or len(groups) == 1:  # nothing to spread: no process to start, the same values, here
        for indices in groups:
            for value in _decode_group(decode, [refs[j] for j in indices]):
                yield _finish_one(finish, value)
        return
    pool = process_pool(workers)
    futures: dict[int, concurrent.futures.Future] = {}
    values: dict[int, list] = {}
    submitted = 0
    try:
        for i in range(len(refs)):
            while submitted < len(groups) and groups[submitted][0] < i + ahead:
                futures[submitted] = pool.submit(_decode_and_finish, decode, finish,
                                                 [refs[j] for j in groups[submitted]])
                submitted += 1
            g = group_of[i]
            if g not in values:
                try:
                    values[g], records = futures.pop(g).result()
                except concurrent.futures.process.BrokenProcessPool:
                    with _process_pools_lock:
                        if _process_pools.get(workers) is pool:
                            del _process_pools[workers]
                    raise RuntimeError(f"{refs[i]}: a media worker process ended abruptly (out of memory, or "
                                       "killed) while reading it; lower cache.media_workers or check the file"
                                       ) from None
                for record in records:
                    logging.getLogger(record.name).handle(record)
            yield values[g][position[i]]
            values[g][position[i]] = None
            if position[i] == len(groups[g]) - 1:
                del values[g]
    finally:
        for future in futures.values():
            future.cancel()


__all__ = ["MediaError", "close_process_pools", "duration_cap", "frame_indices", "map_references", "media_file",
           "media_workers", "process_pool", "read_audio", "read_audios", "read_video_frames", "read_video_references",
           "read_video_segments", "segment_ref", "split_ref"]
