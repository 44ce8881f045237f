r"""Media decoding for frozen features: the thread pool over every core and one pass per recording,
against decoding one file (or one segment) at a time.

    python benchmarks/media_decode.py [--clips=200 --repeats=3 --workers=0 --recording_seconds=180
        --segments=50 --workdir=runs/bench-media --output=runs/bench-media/media_decode.json]

Generated inputs (kept in ``--workdir`` and reused while the settings match):

- ``--clips`` clips in MELD's shape: 1280 x 720, 25 fps, 3 s, MPEG-4 part 2 (``mp4v``) in .mp4,
  a moving face-like blob over a sliding texture; with each a 3 s, 16 kHz FLAC voice-like track;
- one IEMOCAP-like dialogue recording: 720 x 480, 29.97 fps DivX AVI of ``--recording_seconds``,
  with ``--segments`` utterances one after another (1.5 to 3.4 s each).

Measured, each pair alternated ``--repeats`` times (medians reported; the machine may be shared):

1. classic video features per clip (``encoders=V``, OpenCV, 16 frames): the Featurizer with its
   media pool over ``--workers`` threads (0: every core), against the PyTorch suite's way, one clip
   after another: decode and convert every frame with cv2, keep 16 (``sample_frame_indices``),
   then the same feature function. Both must give the same features (checked);
2. the IEMOCAP-like recording: the 16 shrunk frames of every utterance, all segments in one pass
   (``read_video_segments``) against decoding from the file's start for each segment
   (``read_video_frames`` per reference, as before), one thread each, same frames (checked);
3. audio per clip, one worker against the pool of ``--workers`` worker processes
   (``map_references(..., processes=True)``: librosa's features and transformers' numpy log-mel
   hold the GIL, so threads do not spread them): classic librosa features (``encoders=A``, the
   Featurizer) and Whisper's input (the 80-bin log-mel of transformers' ``WhisperFeatureExtractor``
   for a 30 s window, per clip as ``WhisperFeatures.inputs`` computes it: the same functions). The pools' processes
   are started and warmed up before the timings, as they are once per program.

``--parts`` picks rows: ``video``, ``segments``, ``audio``, ``whisper`` (default: all; the audio
rows alone need no video generated). Prints a Markdown table and the load average
(``os.getloadavg``) before and after, and writes everything to ``--output`` as JSON.
"""
import functools
import os
import pathlib
import statistics
import sys
import time

import numpy as np
import soundfile as sf
from absl import app, flags

from emojax.benchmark import machine_description, machine_line
from emojax.runs.checkpoint import write_json_atomic
from emojax.data import media
from emojax.data.types import Sample, Split
from emojax.encoders import classic
from emojax.encoders.media_encoders import whisper_clip_input
from emojax.features.featurizer import Featurizer

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # configs/ is in the checkout, not installed
from configs.compose import compose  # noqa: E402

_CLIPS = flags.DEFINE_integer("clips", 200, "MELD-shaped clips (1280 x 720, 25 fps, 3 s).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Alternated repetitions of every pair.")
_WORKERS = flags.DEFINE_integer("workers", 0, "Pool threads for the emojax side (0: every core).")
_RECORDING = flags.DEFINE_float("recording_seconds", 180.0, "Length of the IEMOCAP-like recording.")
_SEGMENTS = flags.DEFINE_integer("segments", 50, "Utterance segments in the recording.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/bench-media", "Generated media (kept and reused).")
_OUTPUT = flags.DEFINE_string("output", "", "JSON file for the results (default: WORKDIR/media_decode.json).")
_PARTS = flags.DEFINE_list("parts", ["video", "segments", "audio", "whisper"], "Rows to measure.")

CLIP_SIZE, CLIP_FPS, CLIP_SECONDS = (1280, 720), 25.0, 3.0
RECORDING_SIZE, RECORDING_FPS = (720, 480), 29.97
AUDIO_RATE = 16000


# -- generated media ---------------------------------------------------------------------------

def _write_video(path: pathlib.Path, seconds: float, fps: float, size: tuple[int, int], fourcc: str,
                 seed: int) -> None:
    """A face-like blob moving over a sliding texture (realistic decoding cost, every frame differs)."""
    import cv2

    width, height = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = (np.stack([np.sin(xx / 37 + seed), np.cos(yy / 23), np.sin((xx + yy) / 51)], -1) * 60 + 120)
    grain = cv2.resize(rng.integers(0, 30, (height // 4, width // 4, 3), dtype=np.uint8), (width, height))
    base = cv2.add(base.astype(np.uint8), grain)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"{path}: this OpenCV build cannot write {fourcc}")
    for k in range(int(round(seconds * fps))):
        frame = np.roll(base, 2 * k, axis=1)
        cx, cy = width // 2 + int(width / 16 * np.sin(k / 10)), height // 2 + int(height / 24 * np.cos(k / 13))
        cv2.ellipse(frame, (cx, cy), (width // 10, height // 6), 0, 0, 360, (90, 120, 200), -1)
        for eye in (-1, 1):
            cv2.circle(frame, (cx + eye * width // 30, cy - height // 20), height // 40, (30, 30, 30), -1)
        writer.write(frame)
    writer.release()


def _write_voice(path: pathlib.Path, seconds: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * AUDIO_RATE)) / AUDIO_RATE
    pitch = 120 + 60 * rng.random() + 20 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / AUDIO_RATE
    voice = sum(np.sin(h * phase) / h for h in range(1, 8)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3.1 * t) ** 2)
    sf.write(str(path), (0.2 * voice + 0.005 * rng.normal(size=len(t))).astype(np.float32), AUDIO_RATE)


def generate(root: pathlib.Path, clips: int, recording_seconds: float, segments: int, *, video: bool = True) -> dict:
    """The clips, their audio and the recording with its segments (reused when already made;
    ``video=False``: the audio alone)."""
    root.mkdir(parents=True, exist_ok=True)
    videos = [root / "clips" / f"clip{i:04d}.mp4" for i in range(clips)]
    audios = [root / "clips" / f"clip{i:04d}.flac" for i in range(clips)]
    (root / "clips").mkdir(exist_ok=True)
    start = time.perf_counter()
    for i, (clip, audio) in enumerate(zip(videos, audios)):
        if video and not clip.exists():
            _write_video(clip, CLIP_SECONDS, CLIP_FPS, CLIP_SIZE, "mp4v", seed=i)
        if not audio.exists():
            _write_voice(audio, CLIP_SECONDS, seed=i)
    recording = root / f"dialogue-{recording_seconds:g}s.avi"
    if video and not recording.exists():
        _write_video(recording, recording_seconds, RECORDING_FPS, RECORDING_SIZE, "DIVX", seed=12345)
    rng = np.random.default_rng(0)
    slot = recording_seconds / segments
    turns = []
    for k in range(segments):
        length = min(slot - 0.05, rng.uniform(1.5, 3.4))
        begin = k * slot + rng.uniform(0, slot - length)
        turns.append((round(begin, 3), round(begin + length, 3)))
    return {"videos": [str(v) for v in videos], "audios": [str(a) for a in audios], "recording": str(recording),
            "segments": turns, "generate_s": time.perf_counter() - start}


# -- the two sides ------------------------------------------------------------------------------

def suite_video_frames(path: str, num_frames: int = classic.VIDEO_FRAMES) -> np.ndarray:
    """The PyTorch suite's frame reading: every frame decoded and converted to RGB with cv2 into a
    list, then ``num_frames`` of them kept (``sample_frame_indices``)."""
    import cv2

    capture = cv2.VideoCapture(path)
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    capture.release()
    return np.stack([frames[i] for i in media.frame_indices(len(frames), num_frames)])


def suite_video_features(paths: list[str]) -> np.ndarray:
    return np.stack([classic.video_features_from_frames(suite_video_frames(p)) for p in paths])


def featurizer_features(modality: str, paths: list[str], workers: int) -> np.ndarray:
    """The Featurizer's classic features of ``paths`` (no cache, as a first run computes them)."""
    cfg = compose(f"dataset=MELD--E,encoders={modality}")
    cfg.progress = False
    cfg.cache.media_workers = workers
    samples = [Sample(f"bench/d{i}_u0", f"d{i}", 0, "A", "", p if modality == "A" else None,
                      p if modality == "V" else None, 0) for i, p in enumerate(paths)]
    data = Featurizer(cfg).split_features(Split("bench", samples))
    if not data.present[modality].all():
        raise RuntimeError(f"{(~data.present[modality]).sum()} generated {modality} file(s) unreadable")
    return data.features[modality]


def whisper_inputs(paths: list[str], workers: int, extractor) -> np.ndarray:
    """Whisper's log-mel of every clip on the media pool's worker processes, as
    ``WhisperFeatures.inputs`` computes them (the same functions, without loading a model)."""
    decode = functools.partial(media.read_audios, sample_rate=AUDIO_RATE)
    finish = functools.partial(whisper_clip_input, extractor=extractor)
    return np.stack([mel for mel, _ in media.map_references(paths, decode, finish, workers=workers, by_file=False,
                                                            processes=True)])


def segments_one_pass(recording: str, segments) -> list[np.ndarray]:
    return media.read_video_segments(recording, segments, classic.VIDEO_FRAMES, transform=classic.shrink_frame)


def segments_each_from_start(recording: str, segments) -> list[np.ndarray]:
    return [media.read_video_frames(media.segment_ref(recording, *s), classic.VIDEO_FRAMES,
                                    transform=classic.shrink_frame) for s in segments]


def alternate(sides: dict, repeats: int) -> tuple[dict, dict]:
    """Seconds of each side per repetition, the sides taking turns; and each side's last output."""
    seconds = {name: [] for name in sides}
    outputs = {}
    for _ in range(repeats):
        for name, run in sides.items():
            start = time.perf_counter()
            outputs[name] = run()
            seconds[name].append(time.perf_counter() - start)
    return seconds, outputs


def _same(a, b) -> bool:
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and np.array_equal(a, b)


def main(argv):
    del argv
    from transformers import WhisperFeatureExtractor

    workdir = pathlib.Path(_WORKDIR.value)
    workers = media.media_workers(_WORKERS.value)
    repeats = _REPEATS.value
    parts = set(_PARTS.value)
    unknown = parts - {"video", "segments", "audio", "whisper"}
    if unknown:
        raise app.UsageError(f"--parts: unknown {', '.join(sorted(unknown))}; choose video, segments, audio, whisper")
    data = generate(workdir, _CLIPS.value, _RECORDING.value, _SEGMENTS.value, video=bool(parts & {"video", "segments"}))
    load_before = os.getloadavg()
    machine = machine_description()
    videos, audios, n = data["videos"], data["audios"], len(data["videos"])
    extractor = WhisperFeatureExtractor()  # whisper-base's: 80 mel bins, 30 s window
    rows = []

    def row(work, items, unit, ours_name, ours_s, ref_name, ref_s, identical):
        ours, ref = statistics.median(ours_s), statistics.median(ref_s)
        paired = statistics.median(r / o for o, r in zip(ours_s, ref_s))  # each repetition's pair
        rows.append({"work": work, "items": items, "unit": unit, "emojax": ours_name, "emojax_s": ours_s,
                     "reference": ref_name, "reference_s": ref_s, "emojax_median_s": ours, "reference_median_s": ref,
                     "speedup": ref / ours, "median_paired_speedup": paired, "identical": identical})
        print(f"{work}: emojax {ours:.2f} s, reference {ref:.2f} s ({ref / ours:.2f}x; median of the pairs' "
              f"ratios {paired:.2f}x)", flush=True)

    # warm up (imports, Haar cascade, librosa's first calls; the worker processes' start, each
    # with a task or more) outside the timings
    warm = audios[:4 * workers]
    if parts & {"video", "segments"}:
        featurizer_features("V", videos[:2], workers)
    if "audio" in parts:
        featurizer_features("A", warm, workers)
        featurizer_features("A", warm[:1], 1)
    if "whisper" in parts:
        whisper_inputs(warm, workers, extractor)
        whisper_inputs(warm[:1], 1, extractor)

    if "video" in parts:
        seconds, out = alternate({"ours": lambda: featurizer_features("V", videos, workers),
                                  "suite": lambda: suite_video_features(videos)}, repeats)
        row("classic video features, MELD-shaped clips (1280x720, 25 fps, 3 s)", n, "clips",
            f"Featurizer, pool of {workers}", seconds["ours"], "decode every frame, keep 16, one clip at a time",
            seconds["suite"], _same(out["ours"], out["suite"]))

    if "segments" in parts:
        recording, segments = data["recording"], [tuple(s) for s in data["segments"]]
        seconds, out = alternate({"one pass": lambda: segments_one_pass(recording, segments),
                                  "per segment": lambda: segments_each_from_start(recording, segments)}, repeats)
        row(f"IEMOCAP-like recording ({_RECORDING.value:g} s, 720x480 DivX): 16 frames of each utterance",
            len(segments), "segments", "all segments in one pass", seconds["one pass"],
            "from the file's start per segment", seconds["per segment"], _same(out["one pass"], out["per segment"]))

    if "audio" in parts:
        seconds, out = alternate({"pool": lambda: featurizer_features("A", audios, workers),
                                  "one": lambda: featurizer_features("A", audios, 1)}, repeats)
        row("classic audio features (3 s, 16 kHz FLAC)", n, "clips", f"{workers} worker processes", seconds["pool"],
            "one worker", seconds["one"], _same(out["pool"], out["one"]))

    if "whisper" in parts:
        seconds, out = alternate({"pool": lambda: whisper_inputs(audios, workers, extractor),
                                  "one": lambda: whisper_inputs(audios, 1, extractor)}, repeats)
        row("Whisper input: 80-bin log-mel, 30 s window", n, "clips", f"{workers} worker processes", seconds["pool"],
            "one worker", seconds["one"], _same(out["pool"], out["one"]))

    load_after = os.getloadavg()
    print(f"\n{machine_line(machine)}; {repeats} alternated repetitions, medians; load average "
          f"{load_before[0]:.2f} before, {load_after[0]:.2f} after\n")
    print("| work | items | emojax | s | per item | reference | s | per item | speedup | same output |")
    print("|---|---:|---|---:|---:|---|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['work']} | {r['items']} {r['unit']} | {r['emojax']} | {r['emojax_median_s']:.2f} | "
              f"{1000 * r['emojax_median_s'] / r['items']:.0f} ms | {r['reference']} | {r['reference_median_s']:.2f} | "
              f"{1000 * r['reference_median_s'] / r['items']:.0f} ms | {r['speedup']:.2f}x | "
              f"{'yes' if r['identical'] else 'NO'} |")
    output = _OUTPUT.value or str(workdir / "media_decode.json")
    write_json_atomic(output, {"machine": machine, "load_average_before": load_before, "load_average_after": load_after,
                               "settings": {"clips": n, "repeats": repeats, "workers": workers,
                                            "recording_seconds": _RECORDING.value, "segments": _SEGMENTS.value,
                                            "parts": sorted(parts)},
                               "results": rows})
    print(f"\nwritten {output}")


if __name__ == "__main__":
    app.run(main)
