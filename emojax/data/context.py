"""Dialogue context for the text encoder, as the suite feeds it.

Speakers are renamed ``<s0>``, ``<s1>``... per split, by first appearance, and those tokens are
added to the tokenizer as special tokens. The text of an utterance is the dialogue so far (its
previous ``turns`` utterances and itself) as ``"<sK>: utterance"`` lines joined by spaces, then,
with the prompt, ``" {sep} Now <sK> feels {mask}"``; the encoder's feature is its hidden state at
that final mask token. Over-long texts are truncated from the left by the tokenizer, so the
current utterance and the prompt always survive.
"""
from __future__ import annotations

from typing import Optional

from emojax.data.types import DatasetSplits, Split


def speaker_map(split: Split) -> dict[str, str]:
    """Speaker name -> ``<sK>`` in order of first appearance within ``split``."""
    mapping: dict[str, str] = {}
    for sample in split.samples:
        mapping.setdefault(sample.speaker, f"<s{len(mapping)}>")
    return mapping


def all_speaker_tokens(dataset: DatasetSplits) -> list[str]:
    """``<s0>``... ``<sN>``: enough speaker tokens for the split with the most speakers."""
    count = max((len(speaker_map(split)) for split in dataset.splits.values()), default=0)
    return [f"<s{i}>" for i in range(count)]


def build_texts(split: Split, *, turns: Optional[int], prompt: bool, sep_token: str, mask_token: str) -> list[str]:
    """One encoder input per sample (see the module docstring); ``turns=None`` keeps the whole dialogue."""
    speakers = speaker_map(split)
    texts, history, dialogue = [], [], None
    for sample in split.samples:
        if sample.dialogue != dialogue:
            dialogue, history = sample.dialogue, []
        token = speakers[sample.speaker]
        history.append(f"{token}: {sample.text}")
        window = history if turns is None else history[max(0, len(history) - 1 - turns):]
        text = " ".join(window)
        if prompt:
            text = f"{text} {sep_token} Now {token} feels {mask_token}"
        texts.append(text)
    return texts
