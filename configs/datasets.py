"""Dataset parts: which loader, which target, where the files live, and training defaults.

``MELD--E`` is emotion (7 classes) on MELD, ``MELD--S`` sentiment (3), ``IEMOCAP--E`` six
emotions, ``SIMS--S`` CH-SIMS sentiment (3), ``demo`` the generated MELD-format demo set.
The text settings are those of the frozen text path that scored best on MELD dev (see the
MELD text table in docs/benchmarks.md); fine-tuned runs use the suite's prompt + mask-token pooling instead
(``mode=trainable`` / ``mode=lora`` set it).

``allow_outside_paths``: media paths that a CSV names (IEMOCAP's ``Wav_Path`` / ``Video_Path``,
CH-SIMS's ``video_id``) may lead outside ``path`` (``..``, absolute paths). Off by default: such a
path counts as a missing file, with a warning naming the row. Not part of the run's hash.

``max_seconds``: the longest stretch of one clip (or IEMOCAP segment) that is decoded; a longer
one is cut to its first ``max_seconds``, with one warning naming it, so one stray 30-minute file
cannot exhaust the machine. 0 means no cap.
"""

_TEXT_FROZEN = {"pooling": "mean", "context_turns": 0, "prompt": False, "max_length": 64}


def preset(kind: str, target: str, path: str, *, generate: bool = False) -> dict:
    """A dataset part: the dataset ``kind`` (a key of ``emojax.data.DATASETS``) read for ``target``
    (one of its description's targets) from the folder ``path``, with the settings every dataset
    part shares. ``generate``: write the demo set into ``path`` first."""
    return {"kind": kind, "target": target, "path": path, "generate": generate,
            "allow_outside_paths": False, "max_seconds": 60.0, "text": dict(_TEXT_FROZEN)}


PRESETS = {
    "MELD--E": preset("meld", "emotion", "datasets/MELD"),
    "MELD--S": preset("meld", "sentiment", "datasets/MELD"),
    "IEMOCAP--E": preset("iemocap", "emotion", "datasets/IEMOCAP"),
    "SIMS--S": preset("sims", "sentiment", "datasets/SIMS"),
    "demo": preset("meld", "emotion", "datasets/demo", generate=True),
}
