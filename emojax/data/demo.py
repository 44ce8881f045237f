"""A small MELD-format demo dataset, generated deterministically, with real audio and video files.

Each modality carries part of the label, so that each alone confuses some classes and their
combination separates them:

- text: a cue sentence names the emotion's family (positive: joy/surprise; hostile:
  anger/disgust; distressed: sadness/fear; or plain neutral talk); some utterances carry no cue;
- audio: a voiced tone whose pitch, loudness and vibrato depend on the arousal group
  (calm: neutral/sadness/disgust; lively: joy/anger; startled: surprise/fear);
- video: a face-like drawing whose background colour and motion depend on the valence group
  (neutral/sadness: grey-blue and still; joy/surprise: warm and bouncing; anger/disgust/fear:
  red and shaking).

Text tells joy from anger but not from surprise; audio tells joy from surprise but not from
anger; video resolves what the other two leave. Every cue is missing or replaced by noise in a
share of the samples, so no single modality is enough.

Sentiment follows MELD's convention: neutral -> neutral; joy, surprise -> positive (MELD also
labels some surprise negative; the demo keeps it positive); anger, sadness, disgust, fear ->
negative.
"""
from __future__ import annotations

import json
import logging
import pathlib
import shutil
import time

import numpy as np
import pandas as pd

from emojax.data.meld import EMOTIONS

log = logging.getLogger(__name__)

VERSION = 1
SPLIT_SIZES = {"train": 420, "dev": 140, "test": 140}
SENTIMENT = {"neutral": "neutral", "joy": "positive", "surprise": "positive", "anger": "negative",
             "sadness": "negative", "disgust": "negative", "fear": "negative"}
TEXT_GROUP = {"neutral": 0, "joy": 1, "surprise": 1, "anger": 2, "disgust": 2, "sadness": 3, "fear": 3}
AUDIO_GROUP = {"neutral": 0, "sadness": 0, "disgust": 0, "joy": 1, "anger": 1, "surprise": 2, "fear": 2}
VIDEO_GROUP = {"neutral": 0, "sadness": 0, "joy": 1, "surprise": 1, "anger": 2, "disgust": 2, "fear": 2}
CUE_RATE = {"T": 0.7, "A": 0.75, "V": 0.75}

_TEXT_CUES = {
    0: ["I'll pick up the groceries after work.", "The meeting got moved to Thursday.",
        "I think the bus leaves at seven.", "We need to return the library books.",
        "My shift ends at five today.", "The report is on your desk."],
    1: ["This is wonderful, I love it so much!", "Oh wow, that's amazing news!", "I'm so happy for you!",
        "What a fantastic surprise, I can't believe it!", "That's the best thing ever!",
        "Yay, we did it, this is great!"],
    2: ["That's disgusting, I hate this!", "You make me so angry right now!", "Ugh, that is revolting.",
        "Get out, I'm furious with you!", "That's gross and I'm sick of it!", "How dare you do that to me!"],
    3: ["I'm so scared, please help me.", "I miss her so much, I feel terrible.",
        "I'm terrified something bad will happen.", "I just want to cry, I'm so lonely.",
        "I'm afraid I'm losing everything.", "It hurts so much, I'm heartbroken."],
}
_FILLERS = ["Okay.", "So, what do you think?", "Hey, where's Joey?", "Uh, I guess so.", "Yeah, right.",
            "Well, here we are.", "Hmm, let me see.", "Is that the new one?", "Sure, whatever you say.",
            "Wait, what time is it?"]
_SPEAKERS = ["Rachel", "Ross", "Monica", "Chandler", "Joey", "Phoebe"]
_COLUMNS = ["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID", "Season",
            "Episode", "StartTime", "EndTime"]

SAMPLE_RATE = 16000
_PITCH = {0: 130.0, 1: 230.0, 2: 380.0}
_LOUDNESS = {0: 0.12, 1: 0.35, 2: 0.25}
_VIBRATO = {0: 0.0, 1: 4.0, 2: 9.0}
_HUE = {0: (150, 140, 130), 1: (60, 170, 235), 2: (40, 40, 200)}  # BGR backgrounds
_MOTION = {0: 0.0, 1: 3.0, 2: 1.5}


def _group(rng, mapping, label, modality, n_groups):
    """The label's group for a modality, or a random group when the cue is absent."""
    return mapping[label] if rng.random() < CUE_RATE[modality] else int(rng.integers(n_groups))


def _audio(rng, group: int) -> np.ndarray:
    seconds = rng.uniform(0.8, 1.2)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    f0 = _PITCH[group] * rng.uniform(0.88, 1.12)
    vibrato = _VIBRATO[group] * np.sin(2 * np.pi * rng.uniform(4, 7) * t)
    phase = 2 * np.pi * np.cumsum(f0 + vibrato) / SAMPLE_RATE
    voice = sum(np.sin(k * phase) / k for k in (1, 2, 3))
    envelope = np.minimum(1.0, np.minimum(t, t[-1] - t) * 20)
    amplitude = _LOUDNESS[group] * rng.uniform(0.8, 1.25)
    y = amplitude * envelope * voice / 1.8 + rng.normal(0, 0.01, t.shape)
    return np.clip(y, -1, 1).astype(np.float32)


def _video(rng, group: int, path: pathlib.Path, size: int = 64, frames: int = 16) -> None:
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 8.0, (size, size))
    if not writer.isOpened():
        raise RuntimeError(f"{path}: OpenCV cannot write mp4v video")
    base = np.array(_HUE[group], np.float64) + rng.normal(0, 18, 3)
    x0, y0 = size / 2 + rng.normal(0, 3), size / 2 + rng.normal(0, 3)
    for i in range(frames):
        image = np.empty((size, size, 3), np.uint8)
        image[:] = np.clip(base + rng.normal(0, 4, 3), 0, 255)
        if group == 1:
            dx, dy = 0.0, _MOTION[group] * np.sin(i * 0.9)
        else:
            dx, dy = rng.normal(0, _MOTION[group], 2) if _MOTION[group] else (0.0, 0.0)
        cx, cy = int(x0 + dx), int(y0 + dy)
        cv2.ellipse(image, (cx, cy), (18, 23), 0, 0, 360, (170, 200, 235), -1)
        for ex in (-7, 7):
            cv2.circle(image, (cx + ex, cy - 6), 3, (40, 40, 40), -1)
        mouth = {0: 0, 1: 40, 2: -40}[group]
        cv2.ellipse(image, (cx, cy + 9), (8, 4), 0, 0 if mouth >= 0 else 180, 180 if mouth >= 0 else 360,
                    (50, 50, 120), 2)
        image = np.clip(image.astype(np.float64) + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
        writer.write(image)
    writer.release()


def generate_demo(root: str | pathlib.Path, *, seed: int = 0, force: bool = False) -> pathlib.Path:
    """Write the demo dataset under ``root`` (reused when already generated with this version)."""
    import soundfile as sf
    from tqdm.auto import tqdm

    root = pathlib.Path(root)
    marker = root / "demo.json"
    stamp = {"version": VERSION, "seed": seed, "sizes": SPLIT_SIZES}
    if marker.exists() and not force:
        try:
            if json.loads(marker.read_text()) == stamp:
                return root
        except json.JSONDecodeError:
            pass
    if root.exists():
        for name in ("audios", "videos"):
            shutil.rmtree(root / name, ignore_errors=True)
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    total = sum(SPLIT_SIZES.values())
    bar = tqdm(total=total, desc="generating demo dataset", leave=False)
    for split, size in SPLIT_SIZES.items():
        (root / "audios" / split).mkdir(parents=True, exist_ok=True)
        (root / "videos" / split).mkdir(parents=True, exist_ok=True)
        rows, dialogue, made = [], 0, 0
        while made < size:
            turns = min(int(rng.integers(3, 9)), size - made)
            cast = list(rng.choice(_SPEAKERS, size=int(rng.integers(2, 4)), replace=False))
            clock = float(rng.uniform(10, 1000))
            for utt in range(turns):
                label = EMOTIONS[int(rng.integers(len(EMOTIONS)))] if rng.random() < 0.8 else "neutral"
                t_group = _group(rng, TEXT_GROUP, label, "T", 4)
                text = (str(rng.choice(_TEXT_CUES[t_group])) if rng.random() < CUE_RATE["T"] + 0.1
                        else str(rng.choice(_FILLERS)))
                name = f"dia{dialogue}_utt{utt}"
                audio = _audio(rng, _group(rng, AUDIO_GROUP, label, "A", 3))
                sf.write(root / "audios" / split / f"{name}.flac", audio, SAMPLE_RATE)
                _video(rng, _group(rng, VIDEO_GROUP, label, "V", 3), root / "videos" / split / f"{name}.mp4")
                end = clock + len(audio) / SAMPLE_RATE
                rows.append([made + 1, text, cast[utt % len(cast)], label, SENTIMENT[label], dialogue, utt, 1, 1,
                             _timestamp(clock), _timestamp(end)])
                clock = end + 0.5
                made += 1
                bar.update(1)
            dialogue += 1
        pd.DataFrame(rows, columns=_COLUMNS).to_csv(root / f"{split}_sent_emo.csv", index=False)
    bar.close()
    marker.write_text(json.dumps(stamp))
    log.info("demo dataset written to %s in %.1fs", root, time.perf_counter() - start)
    return root


def _timestamp(seconds: float) -> str:
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{int(h):02d}:{int(m):02d}:{int(s):02d},{int((s % 1) * 1000):03d}"
