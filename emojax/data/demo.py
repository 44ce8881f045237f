"""A small MELD-format demo dataset with real audio and video files, generated deterministically.

``generate_demo("datasets/demo")`` writes ``{train,dev,test}_sent_emo.csv`` with MELD's columns,
``audios/{split}/dia{D}_utt{U}.flac`` (16 kHz mono) and ``videos/{split}/dia{D}_utt{U}.mp4``
(64x64, MPEG-4 part 2), 420 / 140 / 140 utterances in dialogues of 3 to 8 turns between 2 or 3
speakers. ``load_dataset("meld", root, target=...)`` reads it like MELD.

Labels are MELD's seven emotions (neutral twice as frequent as each other class). Sentiment
follows MELD's mapping: neutral -> neutral; joy -> positive; anger, sadness, disgust, fear ->
negative; surprise, which MELD labels positive or negative about equally often, is always
positive here.

Each modality carries part of the label through a grouping of the classes (``TEXT_GROUP``,
``AUDIO_GROUP``, ``VIDEO_GROUP``)::

    emotion    text (cue words)           audio (voice)               video (scene)
    neutral    0 plain: fine, usual       0 low, quiet, slow          0 grey, still
    joy        1 amazing, incredible      1 mid, loud, fast           2 warm, shaking
    surprise   1 amazing, incredible      1 mid, loud, fast           0 grey, still
    anger      2 outrageous, revolting    1 mid, loud, fast           2 warm, shaking
    disgust    2 outrageous, revolting    0 low, quiet, slow          0 grey, still
    sadness    3 terrible, frightening    0 low, quiet, slow          1 blue, drifting down
    fear       3 terrible, frightening    2 high, trembling           1 blue, drifting down

Every pair of modalities leaves two classes confused (text + audio: joy / surprise; text + video:
sadness / fear; audio + video: joy / anger and neutral / disgust); the three together tell all
seven apart. Cues are also unreliable: text carries its cue words in ``CUE_RATE["T"]`` of the
utterances (the rest are emotionless small talk), and audio / video follow the label's group in
``CUE_RATE["A"]`` / ``CUE_RATE["V"]`` of the clips, a random group otherwise. Cue words are real
English emotion words, so a pretrained sentence encoder sees them.
"""
from __future__ import annotations

import json
import logging
import os
import pathlib
import shutil
import time
from typing import Mapping, Optional

import numpy as np
import pandas as pd
import soundfile as sf

from emojax.files import building_folder, publish_folder
from emojax.progress import progress_bar

# OpenCV (cv2) is imported where the videos are drawn: emojax.training imports this module, and
# audio-only installs run without OpenCV.

log = logging.getLogger(__name__)

VERSION = 2
MARKER = "demo.json"
SPLIT_SIZES = {"train": 420, "dev": 140, "test": 140}
EMOTIONS = ("neutral", "joy", "surprise", "anger", "sadness", "disgust", "fear")
LABEL_WEIGHTS = {"neutral": 2, "joy": 1, "surprise": 1, "anger": 1, "sadness": 1, "disgust": 1, "fear": 1}
SENTIMENT = {"neutral": "neutral", "joy": "positive", "surprise": "positive", "anger": "negative",
             "sadness": "negative", "disgust": "negative", "fear": "negative"}
TEXT_GROUP = {"neutral": 0, "joy": 1, "surprise": 1, "anger": 2, "disgust": 2, "sadness": 3, "fear": 3}
AUDIO_GROUP = {"neutral": 0, "joy": 1, "surprise": 1, "anger": 1, "disgust": 0, "sadness": 0, "fear": 2}
VIDEO_GROUP = {"neutral": 0, "joy": 2, "surprise": 0, "anger": 2, "disgust": 0, "sadness": 1, "fear": 1}
CUE_RATE = {"T": 0.65, "A": 0.75, "V": 0.75}
COLUMNS = ("Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID", "Season",
           "Episode", "StartTime", "EndTime")

SAMPLE_RATE = 16000
VIDEO_SIZE = 64
VIDEO_FPS = 16.0

# -- text ----------------------------------------------------------------------------------------
_CUE_WORDS = {
    0: ["fine", "normal", "ordinary", "usual", "okay", "routine"],
    1: ["amazing", "incredible", "unbelievable", "extraordinary", "mind-blowing", "astonishing"],
    2: ["outrageous", "revolting", "disgusting", "infuriating", "nasty", "appalling"],
    3: ["terrible", "frightening", "heartbreaking", "dreadful", "upsetting", "scary"],
}
_INTERJECTIONS = {0: ["Well", "So", "Alright", "Okay"], 1: ["Wow", "Oh my God", "Whoa", "Oh wow"],
                  2: ["Ugh", "Oh come on", "Seriously", "Ew"], 3: ["Oh no", "Oh God", "Please", "Oh dear"]}
_CUE_TEMPLATES = [
    "{ij}, {topic} was {word}.",
    "{ij}! Honestly, {topic} was {word}.",
    "I have to say {topic} was just {word}.",
    "{ij}... {topic}? That's {word}.",
    "You know what? {Topic} was really {word}.",
    "{ij}, it's {word}, {topic} was so {word2}.",
]
_TOPICS = ["the new apartment", "your brother's wedding", "this coffee", "the job interview", "the thing at work",
           "the call from Mom", "that movie", "the test results", "dinner last night", "our trip to the coast",
           "the neighbour's dog", "the landlord's letter", "the party on Friday", "my first day"]
_SMALL_TALK = [
    "Where did you put the keys?", "I'll be there around eight.", "Can you pass me the remote?",
    "Did you talk to {name} about {topic}?", "So, about {topic}...", "Let's talk about {topic} later.",
    "Hold on, I'm getting my coat.", "What time does it start?", "I was just at the store.",
    "Hey. Is {name} here yet?", "We should probably get going.", "Wait, say that again?",
    "Uh, I think it's in the kitchen.", "Okay, so then what?", "{name}, is that you?",
]
SPEAKERS = ("Maya", "Daniel", "Priya", "Lucas", "Hannah", "Omar", "Sofia", "Ben", "Grace", "Mateo")

# -- audio: low/quiet/slow, mid/loud/fast, high/trembling ------------------------------------------
_PITCH_HZ = {0: 120.0, 1: 210.0, 2: 330.0}
_LOUDNESS = {0: 0.08, 1: 0.32, 2: 0.16}
_SYLLABLES_PER_S = {0: 2.5, 1: 5.5, 2: 4.0}
_VIBRATO = {0: 0.0, 1: 0.01, 2: 0.06}  # relative depth, at 7-9 Hz
_CONTOUR = {0: -0.05, 1: 0.15, 2: 0.05}  # relative pitch change over the clip

# -- video: RGB background and motion per group -------------------------------------------------
_BACKGROUND = {0: (150, 150, 140), 1: (70, 100, 175), 2: (205, 95, 60)}
_SHAKE_PX = {0: 0.3, 1: 0.5, 2: 3.0}
_DRIFT_PX = {0: 0.0, 1: 0.45, 2: 0.0}  # downward, per frame
_MOUTH = {0: 0, 1: -1, 2: 1}  # flat, frown, open smile


class DemoError(RuntimeError):
    """The demo folder cannot be written; the message names the folder or file."""


def _split_labels(rng: np.random.Generator, size: int) -> list[str]:
    """``size`` labels in ``LABEL_WEIGHTS`` proportion (largest remainders), shuffled."""
    total = sum(LABEL_WEIGHTS.values())
    exact = np.array([size * LABEL_WEIGHTS[e] / total for e in EMOTIONS])
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: size - counts.sum()]:
        counts[i] += 1
    labels = [e for e, n in zip(EMOTIONS, counts) for _ in range(n)]
    return [labels[i] for i in rng.permutation(len(labels))]


def _cue_group(rng: np.random.Generator, mapping: dict, label: str, modality: str) -> int:
    """The label's group for ``modality``, or a random group when this sample's cue is absent."""
    if rng.random() < CUE_RATE[modality]:
        return mapping[label]
    return int(rng.integers(max(mapping.values()) + 1))


def _text(rng: np.random.Generator, label: str, cast: list[str], speaker: str) -> str:
    others = [name for name in cast if name != speaker] or list(cast)
    topic = str(rng.choice(_TOPICS))
    if rng.random() < CUE_RATE["T"]:
        group = TEXT_GROUP[label]
        words = rng.choice(_CUE_WORDS[group], size=2, replace=False)
        template = str(rng.choice(_CUE_TEMPLATES))
        return template.format(ij=str(rng.choice(_INTERJECTIONS[group])), topic=topic,
                               Topic=topic[0].upper() + topic[1:], word=words[0], word2=words[1])
    return str(rng.choice(_SMALL_TALK)).format(name=str(rng.choice(others)), topic=topic)


def _audio(rng: np.random.Generator, group: int, speaker_pitch: float) -> np.ndarray:
    """A voiced, syllabic tone ``(samples,)`` float32 whose prosody follows ``group``."""
    seconds = rng.uniform(0.8, 1.3)
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    f0 = _PITCH_HZ[group] * speaker_pitch * np.exp(rng.normal(0.0, 0.1))
    contour = 1.0 + _CONTOUR[group] * (t / seconds - 0.5) * 2
    vibrato = 1.0 + _VIBRATO[group] * np.sin(2 * np.pi * rng.uniform(7, 9) * t + rng.uniform(0, 2 * np.pi))
    phase = 2 * np.pi * np.cumsum(f0 * contour * vibrato) / SAMPLE_RATE
    voice = sum(np.sin(k * phase + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 6)) / 2.3
    # Syllables: Hann-shaped bursts at a group-dependent rate with jittered spacing.
    rate = _SYLLABLES_PER_S[group] * rng.uniform(0.8, 1.25)
    envelope = np.zeros(n)
    start = rng.uniform(0.0, 0.08)
    while start < seconds - 0.05:
        length = min(rng.uniform(0.55, 0.8) / rate, seconds - start)
        i0, i1 = int(start * SAMPLE_RATE), int((start + length) * SAMPLE_RATE)
        envelope[i0:i1] = np.maximum(envelope[i0:i1], np.hanning(i1 - i0) * rng.uniform(0.7, 1.0))
        start += rng.uniform(0.85, 1.2) / rate
    loudness = _LOUDNESS[group] * rng.uniform(0.7, 1.4)
    noise = rng.normal(0.0, rng.uniform(0.002, 0.015), n)
    return np.clip(loudness * envelope * voice + noise, -1.0, 1.0).astype(np.float32)


def _video_frames(rng: np.random.Generator, group: int) -> np.ndarray:
    """A face-like drawing over a coloured background: ``(frames, 64, 64, 3)`` uint8 BGR."""
    import cv2  # cv2: audio-only installs work without it

    count = int(rng.integers(16, 25))
    size = VIDEO_SIZE
    background = np.clip(np.array(_BACKGROUND[group][::-1], np.float64) + rng.normal(0, 22, 3), 0, 255)
    skin = np.clip(np.array((150, 180, 225), np.float64) + rng.normal(0, 15, 3), 0, 255)  # BGR
    x0, y0 = size / 2 + rng.normal(0, 2), size / 2 - 3 + rng.normal(0, 2)
    shake, drift = _SHAKE_PX[group] * rng.uniform(0.7, 1.3), _DRIFT_PX[group] * rng.uniform(0.7, 1.3)
    frames = np.empty((count, size, size, 3), np.uint8)
    fill = np.clip(background, 0, 255).astype(np.uint8)
    colour = tuple(float(v) for v in skin)
    for i in range(count):
        canvas = np.empty((size, size, 3), np.uint8)
        canvas[:] = fill
        cx = int(round(x0 + rng.normal(0, shake)))
        cy = int(round(y0 + drift * i + rng.normal(0, shake)))
        cv2.ellipse(canvas, (cx, cy), (15, 19), 0, 0, 360, colour, -1, cv2.LINE_AA)
        for ex in (-6, 6):
            cv2.circle(canvas, (cx + ex, cy - 5), 2, (40, 40, 40), -1, cv2.LINE_AA)
        mouth = _MOUTH[group]
        if mouth == 0:
            cv2.line(canvas, (cx - 6, cy + 8), (cx + 6, cy + 8), (60, 60, 130), 2, cv2.LINE_AA)
        elif mouth > 0:
            cv2.ellipse(canvas, (cx, cy + 7), (7, 4), 0, 0, 180, (60, 60, 150), -1, cv2.LINE_AA)
        else:
            cv2.ellipse(canvas, (cx, cy + 11), (7, 4), 0, 180, 360, (60, 60, 130), 2, cv2.LINE_AA)
        frames[i] = canvas
    noise = rng.standard_normal(frames.shape, dtype=np.float32) * 5.0
    return np.clip(frames + noise, 0, 255).astype(np.uint8)


def _write_video(path: pathlib.Path, frames_bgr: np.ndarray) -> None:
    import cv2  # cv2: audio-only installs work without it

    height, width = frames_bgr.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), VIDEO_FPS, (width, height))
    if not writer.isOpened():
        raise DemoError(f"{path}: OpenCV cannot write 'mp4v' video; this OpenCV build lacks an MPEG-4 encoder "
                        "(install opencv-python-headless from PyPI, which bundles FFmpeg)")
    for frame in frames_bgr:
        writer.write(frame)
    writer.release()
    capture = cv2.VideoCapture(str(path))
    decoded = 0
    while capture.grab():
        decoded += 1
    capture.release()
    if decoded != len(frames_bgr):
        raise DemoError(f"{path}: wrote {len(frames_bgr)} frames but OpenCV reads back {decoded}; "
                        "the OpenCV video backend is broken")


def _timestamp(seconds: float) -> str:
    millis = int(round(seconds * 1000))
    h, rest = divmod(millis, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d},{ms:03d}"


def _write_split(folder: pathlib.Path, split: int, name: str, size: int, seed: int, progress) -> None:
    rng = np.random.default_rng([seed, split, 0])
    labels = _split_labels(rng, size)
    (folder / "audios" / name).mkdir(parents=True, exist_ok=True)
    (folder / "videos" / name).mkdir(parents=True, exist_ok=True)
    rows, made, dialogue = [], 0, 0
    while made < size:
        turns = int(rng.integers(3, 9))
        if size - made - turns < 3:  # never leave a dialogue shorter than 3 turns at the end
            turns = size - made if size - made <= 8 else size - made - 3
        cast = [str(s) for s in rng.choice(SPEAKERS, size=int(rng.integers(2, 4)), replace=False)]
        speaker_pitch = {s: float(rng.uniform(0.9, 1.12)) for s in cast}
        season, episode = int(rng.integers(1, 11)), int(rng.integers(1, 25))
        clock = float(rng.uniform(30, 1300))
        speaker = cast[0]
        for utterance in range(turns):
            if utterance:
                speaker = str(rng.choice([s for s in cast if s != speaker]))
            label = labels[made]
            sample_rng = np.random.default_rng([seed, split, 1, dialogue, utterance])
            text = _text(sample_rng, label, cast, speaker)
            audio = _audio(sample_rng, _cue_group(sample_rng, AUDIO_GROUP, label, "A"), speaker_pitch[speaker])
            frames = _video_frames(sample_rng, _cue_group(sample_rng, VIDEO_GROUP, label, "V"))
            stem = f"dia{dialogue}_utt{utterance}"
            sf.write(str(folder / "audios" / name / f"{stem}.flac"), audio, SAMPLE_RATE, subtype="PCM_16")
            _write_video(folder / "videos" / name / f"{stem}.mp4", frames)
            end = clock + len(audio) / SAMPLE_RATE
            rows.append([made + 1, text, speaker, label, SENTIMENT[label], dialogue, utterance, season, episode,
                         _timestamp(clock), _timestamp(end)])
            clock = end + float(rng.uniform(0.2, 1.5))
            made += 1
            progress.update(1)
        dialogue += 1
    pd.DataFrame(rows, columns=list(COLUMNS)).to_csv(folder / f"{name}_sent_emo.csv", index=False)


def _stamp(seed: int, sizes: dict) -> dict:
    return {"format": "emojax-demo", "version": VERSION, "seed": int(seed), "sizes": sizes}


def _read_marker(root: pathlib.Path):
    """The demo marker's content, or ``None`` when absent or not a demo marker."""
    try:
        marker = json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and "version" in marker else None


def _owned_entries(root: pathlib.Path) -> list[pathlib.Path]:
    return [root / "audios", root / "videos", *(root / f"{s}_sent_emo.csv" for s in SPLIT_SIZES), root / MARKER]


def generate_demo(root: str | os.PathLike, *, seed: int = 0, force: bool = False,
                  sizes: Optional[Mapping[str, int]] = None) -> pathlib.Path:
    """Write the demo dataset to ``root`` and return ``root`` as a ``Path``.

    A folder already holding this version's demo for ``seed`` (its ``demo.json`` marker says so)
    is reused unless ``force``. ``sizes`` maps each split to its number of utterances (default
    ``SPLIT_SIZES``; at least 3 each). The set is built in a temporary sibling folder and moved into
    place when complete, so an interrupted run never leaves a half-written dataset behind. A
    non-empty ``root`` without the marker is refused (``DemoError``): only a folder the demo made
    is ever replaced.
    """
    root = pathlib.Path(root)
    sizes = dict(SPLIT_SIZES if sizes is None else sizes)
    if set(sizes) != set(SPLIT_SIZES) or any(int(n) < 3 for n in sizes.values()):
        raise ValueError(f"sizes: expected at least 3 utterances for each of {tuple(SPLIT_SIZES)}, got {sizes}")
    sizes = {name: int(sizes[name]) for name in SPLIT_SIZES}
    stamp = _stamp(seed, sizes)
    marker = _read_marker(root) if root.is_dir() else None
    if marker == stamp and not force:
        return root
    if root.exists() and not root.is_dir():
        raise DemoError(f"{root}: exists and is not a folder; choose another dataset.path for the demo")
    if root.is_dir() and marker is None and any(root.iterdir()):
        raise DemoError(f"{root}: folder is not empty and has no {MARKER}, so it is not a generated demo; "
                        "choose an empty or new folder for the demo dataset")
    start = time.perf_counter()
    with building_folder(root) as work:
        with progress_bar(total=sum(sizes.values()), desc="generating demo dataset", leave=False) as progress:
            for index, (name, size) in enumerate(sizes.items()):
                _write_split(work, index, name, size, seed, progress)
        (work / MARKER).write_text(json.dumps(stamp, indent=1) + "\n")
        _install(work, root, stamp, force)
    log.info("demo dataset (seed %d) written to %s in %.1fs", seed, root, time.perf_counter() - start)
    return root


def _install(work: pathlib.Path, root: pathlib.Path, stamp: dict, force: bool) -> None:
    """Move a finished demo from ``work`` into ``root``, replacing only what a demo owns."""
    if publish_folder(work, root):  # atomic when root is absent or an empty folder
        return
    if _read_marker(root) == stamp and not force:
        return  # another process finished the same demo meanwhile
    for entry in _owned_entries(root):
        if entry.is_dir():
            shutil.rmtree(entry)
        elif entry.exists():
            entry.unlink()
    for entry in _owned_entries(work):
        if entry.name != MARKER:
            os.replace(entry, root / entry.name)
    os.replace(work / MARKER, root / MARKER)  # the marker last: the folder counts as complete only with it


__all__ = ["generate_demo", "DemoError", "EMOTIONS", "SENTIMENT", "TEXT_GROUP", "AUDIO_GROUP", "VIDEO_GROUP",
           "CUE_RATE", "COLUMNS", "SPLIT_SIZES", "VERSION"]
