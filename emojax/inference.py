"""Class probabilities for new inputs from a finished run directory.

``Estimator(run_dir).predict(text=..., audio=..., video=...)`` rebuilds the run's frozen
encoders (with the speaker tokens and text format it trained with) and its best parameters;
any modality left out uses the model's learned placeholder for it.

``predict_table(estimator, source, output_csv)`` scores many inputs at once: a dataset-style CSV
(MELD, IEMOCAP or CH-SIMS columns, media found where the dataset loader looks for them) or a
folder of clips paired by file stem. It writes one output row per input row; a row whose media
file is missing or unreadable gets its error message in the ``error`` column and the others are
still scored. Rows of a dataset's CSV (MELD, IEMOCAP, CH-SIMS) are built and scored as the run
built and scored its own splits (dialogue order, context turns, prompt, speaker tokens, evaluation
batches, and for a run with a dialogue context head whole dialogues); rows of any other table, and
single inputs, are scored alone (batch size 1), a run with dialogue context taking the previous
turns from ``context=``.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import pathlib
import re
from typing import Any, Optional, Sequence

import jax
import numpy as np
import pandas as pd

from emojax.runs import checkpoint as ckpt_lib
from emojax import config as config_lib
from emojax.runs import standalone as standalone_lib
from emojax.runs import store
from emojax.data import context as text_context
from emojax.data import csvutil, paths
from emojax.data.iemocap import read_rows
from emojax.data.media import MediaError, read_audio, split_ref
from emojax.data.types import Sample, Split
from emojax.encoders.whisper_decoder import Transcriber
from emojax.evaluation import predict_proba
from emojax.features.featurizer import FeatureSet, Featurizer, standardize
from emojax.files import write_text_atomic
from emojax.training.finetune import Tuning
from emojax.model.model import build_model
from emojax.progress import progress_bar
from emojax.training.dialogue_batches import with_dialogues
from emojax.training.steps import make_eval_step

log = logging.getLogger(__name__)


class Estimator:
    """A trained run, ready to score single utterances."""

    def __init__(self, run_dir: str | pathlib.Path, *, asr_model: Optional[str] = None,
                 asr_language: Optional[str] = None, asr_task: str = "transcribe"):
        """``asr_model``: a Whisper checkpoint (hub id or folder) that transcribes audio given
        without text, for runs with a text modality (:class:`emojax.encoders.whisper_decoder.Transcriber`;
        ``asr_language`` e.g. ``"en"``, ``"zh"``; detected when left out)."""
        self.run_dir = pathlib.Path(run_dir)
        meta_path = self.run_dir / "meta.json"
        if not meta_path.exists():
            raise ckpt_lib.CheckpointError(f"{meta_path}: missing; {self.run_dir} is not a finished run directory")
        self.cfg = config_lib.load_config(self.run_dir / "config.json")
        self.cfg.progress = False
        meta = json.loads(meta_path.read_text())
        self.class_names = tuple(meta["class_names"])
        self.feature_stats = meta["feature_stats"]
        self.featurizer = self._run_featurizer(meta)
        self.model = build_model(self.cfg, meta["input_dims"], len(self.class_names))
        dims = meta["input_dims"]
        dummy = {m: np.zeros((1, dims[m]), np.float32) for m in self.model.modalities}
        present = {m: np.ones((1,), bool) for m in self.model.modalities}
        params = self.model.init({"params": jax.random.PRNGKey(0)}, dummy, present, deterministic=True)["params"]
        checkpoints = ckpt_lib.RunCheckpoints(self.run_dir)
        progress = checkpoints.progress()
        if not progress or not progress.get("finished"):
            checkpoints.close()
            raise ckpt_lib.CheckpointError(f"{self.run_dir / 'progress.json'}: the run has not finished; "
                                           "resume it with launch/train.py first")
        self.tuned_modalities: tuple[str, ...] = ()
        if self.cfg.mode == "frozen":
            self.params = checkpoints.restore_best(params, progress["best_epoch"])
        else:
            self.params = self._restore_tuned(checkpoints, params, progress["best_epoch"], meta)
        checkpoints.close()
        self._eval_step = jax.jit(make_eval_step(self.model))
        self.transcriber = None
        if asr_model is not None and "T" in self.model.modalities:
            self.transcriber = Transcriber(asr_model, language=asr_language, task=asr_task)
        elif asr_model is not None:
            log.info("%s has no text modality; the speech recognizer %s is not loaded", self.run_dir, asr_model)

    def _run_featurizer(self, meta: dict) -> Featurizer:
        """The run's encoders as it trained with them: each neural encoder from the folder the run
        recorded (its store entry, or a standalone copy's own folder) rather than the config's
        model path, which may since hold other weights; each is checked against the weights hash
        the run recorded (``encoders.json`` / ``standalone.json``). An encoder the run could not
        store, and runs from before the store, load from the config's model path as before."""
        record, record_path = store.run_encoders(self.run_dir), self.run_dir / store.RUN_RECORD
        if not record and (self.run_dir / standalone_lib.MANIFEST).is_file():
            record_path = self.run_dir / standalone_lib.MANIFEST
            record = json.loads(record_path.read_text()).get("encoders", {})
        cfg = copy.deepcopy(self.cfg)
        entries: dict[str, pathlib.Path] = {}
        for modality in config_lib.modalities(cfg):
            info = record.get(modality)
            if info is None:
                continue
            if "error" in info:
                log.warning("%s: the %s encoder was not stored when the run trained (%s); loading it from %s",
                            record_path, modality, info["error"], cfg.encoders[modality].model)
                continue
            entries[modality] = store.resolve_run_encoder(self.run_dir, modality)
            cfg.encoders[modality].model = str(entries[modality])
        featurizer = Featurizer(cfg, meta.get("speaker_tokens", []), cache=None)
        loaded = store.neural_encoders(featurizer)
        if loaded and not record:
            log.warning("%s: no record of the run's encoders (trained before the encoder store); loading them "
                        "from the config's model paths, which must still hold the weights it trained with",
                        self.run_dir)
        for modality, (encoder, _) in loaded.items():
            recorded = record.get(modality, {}).get("hash")
            if modality in entries and recorded:
                store.check_loaded_encoder(encoder, entries[modality], recorded, record=record_path)
            elif recorded and encoder.weights_hash != recorded:
                raise ckpt_lib.CheckpointError(
                    f"{cfg.encoders[modality].model}: the {modality} encoder there (weights hash "
                    f"{encoder.weights_hash[:12]}) is not the one the run trained with ({recorded[:12]} in "
                    f"{record_path}); restore that model folder, or train the run again")
        return featurizer

    def _restore_tuned(self, checkpoints, params, epoch: int, meta: dict):
        """A run that fine-tuned encoders: the head and the encoders of the selected epoch; the
        featurizer's encoders then compute with the tuned weights (LoRA adapters merged)."""
        tuning = Tuning(self.cfg, self.featurizer, meta["feature_stats"])
        target = {"params": params, "encoder": tuning.init(jax.random.PRNGKey(0))}
        best = checkpoints.restore_best(target, epoch)
        tuning.install(best["encoder"])
        self.tuned_modalities = tuning.modalities
        return best["params"]

    def _transcribe(self, inputs: Sequence[tuple]) -> tuple[list[tuple], list[Optional[str]], list[Optional[str]]]:
        """Fill in the text of inputs that have audio but no text, when a recognizer is loaded:
        ``(inputs, transcripts, errors)``; a file that cannot be transcribed gets its error."""
        inputs = list(inputs)
        transcripts: list[Optional[str]] = [None] * len(inputs)
        errors: list[Optional[str]] = [None] * len(inputs)
        wanted = [i for i, (text, audio, _) in enumerate(inputs) if not (text or "").strip() and audio is not None]
        if not wanted or "T" not in self.model.modalities:
            return inputs, transcripts, errors
        if self.transcriber is None:
            log.info("audio without text: the text modality uses its placeholder (give asr_model= / "
                     "--asr_model to transcribe it)")
            return inputs, transcripts, errors
        waves, ok = [], []
        for i in wanted:
            try:
                waves.append(read_audio(inputs[i][1]))
                ok.append(i)
            except MediaError as err:
                errors[i] = f"transcription: {err}"
        for i, text in zip(ok, self.transcriber.transcribe(waves) if waves else []):
            transcripts[i] = text
            inputs[i] = (text, *inputs[i][1:])
        return inputs, transcripts, errors

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.model.modalities

    @property
    def provides_estimate(self) -> bool:
        """Sentiment runs also give the suite's ``estimate`` score (see :meth:`estimate_score`)."""
        return str(self.cfg.dataset.get("target", "")) == "sentiment"

    @staticmethod
    def estimate_score(probabilities: Sequence[float]) -> float:
        """The PyTorch suite's ``estimate``: ``(1 - E[class index] / 3) * 100``, the expected class
        index taken over the run's class order (``class_names``)."""
        probs = np.asarray(probabilities, np.float64)
        return float((1.0 - float(np.sum(probs * np.arange(len(probs)))) / 3.0) * 100.0)

    def estimate(self, text: Optional[str] = None, audio: Optional[str] = None,
                 video: Optional[str] = None, *, context: Optional[Sequence] = None,
                 speaker: Optional[str] = None) -> float:
        """The suite's ``estimate`` score of one utterance (sentiment runs only; ``context`` and
        ``speaker`` as in :meth:`predict`)."""
        if not self.provides_estimate:
            raise ValueError(f"{self.run_dir}: estimate is defined for sentiment runs; this run's target is "
                             f"{self.cfg.dataset.get('target')!r}")
        return self.predict(text=text, audio=audio, video=video, context=context, speaker=speaker)["estimate"]

    def _result(self, probs: np.ndarray) -> dict:
        out = {"probabilities": {name: float(p) for name, p in zip(self.class_names, probs)},
               "predicted": self.class_names[int(np.argmax(probs))]}
        if self.provides_estimate:
            out["estimate"] = self.estimate_score(probs)
        return out

    @property
    def context_turns(self) -> Optional[int]:
        """Previous turns the run's text input holds: 0 (none), ``N``, or ``None`` (the whole
        dialogue so far); 0 for runs without text."""
        spec = self.cfg.encoders.get("T") if "T" in self.modalities else None
        if spec is None or int(spec.get("context_turns", 0)) == 0:
            return 0
        return None if int(spec.context_turns) < 0 else int(spec.context_turns)

    @property
    def dialogue_context(self) -> bool:
        """Whether the run has a dialogue context head (:mod:`emojax.model.dialogue`): it classifies an
        utterance with the rest of its dialogue in view."""
        return self.model.context is not None

    def predict(self, text: Optional[str] = None, audio: Optional[str] = None,
                video: Optional[str] = None, *, context: Optional[Sequence] = None,
                speaker: Optional[str] = None) -> dict:
        """``{"probabilities": {class: p}, "predicted": class}`` for one utterance (and, on a
        sentiment run, ``"estimate"``: :meth:`estimate_score`).

        ``context``: on a run trained with dialogue context, the previous turns of the dialogue,
        oldest first, as ``"Speaker: text"`` strings or ``(speaker, text)`` pairs (``[]`` for a
        dialogue's first utterance); such a run refuses ``None`` rather than score the utterance
        as if it opened its dialogue. ``speaker`` names the utterance's speaker as the turns name
        them (default: a speaker of its own). The input is built as training built it (speaker
        tokens by first appearance, the same turns window and prompt).

        On a run with a dialogue context head the turns and the utterance form one dialogue (the
        turns with their text only) that the head reads whole, as scoring reads a split's
        dialogues; without ``context`` the utterance is a dialogue of its own (logged).
        """
        if text is not None and not text.strip():
            raise ValueError("--text: empty transcript; give the utterance's words, or leave --text out to use "
                             "the run's placeholder for the text modality")
        for name, path in (("audio", audio), ("video", video)):
            if path is not None and not pathlib.Path(path).is_file():
                raise FileNotFoundError(f"--{name}: {path} does not exist")
        speaker = speaker if speaker is not None else "\x00utterance"
        turns = self._context_samples(context, text, speaker)
        filled, transcripts, failures = self._transcribe([(text, audio, video)])
        if failures[0]:
            raise ValueError(failures[0])
        (text, audio, video), transcript = filled[0], transcripts[0]
        given = {"T": text is not None, "A": audio is not None, "V": video is not None}
        if not any(given[m] for m in self.modalities):
            raise ValueError(f"give at least one of the run's modalities ({'+'.join(self.modalities)})")
        sample = Sample(uid=f"infer/{len(turns)}", dialogue="infer", index=len(turns),
                        speaker=speaker, text=text or "",
                        audio=audio, video=video, label=0)
        data = self.featurizer.sample_features([*turns, sample])
        last = np.asarray([len(turns)])
        for m, kind, path in (("A", "audio", audio), ("V", "video", video)):
            if m in self.modalities and path is not None and not data.present[m][-1]:
                reasons = getattr(self.featurizer.encoders[m], "errors", {})
                message = reasons.pop(str(path), f"{path}: {kind} file could not be read")
                raise ValueError(f"--{kind}: {message}")
        if self.dialogue_context:
            # The head reads the whole dialogue; the turns bring their text, no media.
            present = {m: np.concatenate([data.present[m][:-1], data.present[m][-1:] & given[m]])
                       for m in self.modalities}
            data = with_dialogues(dataclasses.replace(data, present=present), Split("infer", [*turns, sample]))
            probs = predict_proba(self._eval_step, self.params, standardize(data, self.feature_stats),
                                  batch_size=int(self.cfg.train.eval_batch_size))[-1]
        else:
            present = {m: data.present[m][last] & given[m] for m in self.modalities}
            data = FeatureSet({m: data.features[m][last] for m in self.modalities}, present, data.labels[last],
                              [data.uids[-1]])
            data = standardize(data, self.feature_stats)
            probs = predict_proba(self._eval_step, self.params, data, batch_size=1)[0]
        result = self._result(probs)
        if transcript is not None:
            result["transcript"] = transcript
        return result

    def _context_samples(self, context: Optional[Sequence], text: Optional[str], speaker: str) -> list[Sample]:
        """The previous turns as samples of one dialogue (text only): for the run's text input when it
        holds context turns, and for a dialogue context head."""
        text_path = self.context_turns != 0 and text is not None
        head = self.dialogue_context and "T" in self.modalities
        if not text_path and not head:
            if context:
                reason = ("the turns are text and this run has no text modality" if self.dialogue_context
                          else "the run's text input holds no dialogue context")
                log.info("%s: %s; --context is not used", self.run_dir, reason)
            return []
        if context is None and not text_path:
            log.warning("%s: no previous turns given: the dialogue context head reads the utterance as a dialogue "
                        "of its own; give them with --context='Speaker: text' (context=[...] in Python)",
                        self.run_dir)
            return []
        if context is None:
            window = "the whole dialogue so far" if self.context_turns is None else \
                f"the {self.context_turns} previous turn(s)"
            raise ValueError(f"{self.run_dir}: this run was trained with dialogue context ({window}); give the "
                             "previous turns (--context='Speaker: text', repeated, or a file of one turn per line; "
                             "context=[...] in Python), or an empty --context= for a dialogue's first utterance")
        samples = []
        for i, turn in enumerate(context):
            if not isinstance(turn, str) and len(turn) != 2:
                raise ValueError(f"context turn {i}: expected 'Speaker: text' or (speaker, text), got {turn!r}")
            if isinstance(turn, str):
                who, sep, words = turn.partition(":")
                who, words = (who.strip(), words.strip()) if sep else ("\x00unnamed", turn.strip())
            else:
                who, words = str(turn[0]), str(turn[1])
            samples.append(Sample(uid=f"infer/{i}", dialogue="infer", index=i, speaker=who, text=words,
                                  audio=None, video=None, label=0))
        self._check_speakers(Split("infer", [*samples, Sample("infer/x", "infer", len(samples), speaker, text,
                                                              None, None, 0)]), "the context")
        return samples

    def _check_speakers(self, split: Split, what: str) -> None:
        """A context run names speakers ``<s0>``, ``<s1>``... by first appearance; more speakers than
        the run added tokens for would be split into word pieces, an input the run never saw."""
        encoder = self.featurizer.encoders.get("T")
        known = len(getattr(encoder, "speaker_tokens", []))
        needed = len(text_context.speaker_map(split))
        if getattr(encoder, "uses_speakers", False) and needed > known:
            raise ValueError(f"{what} has {needed} speakers, but the run was trained with {known} speaker tokens "
                             f"(<s0>..<s{known - 1}>); split it into parts with at most {known} speakers")

    def predict_many(self, inputs: Sequence[tuple[Optional[str], Optional[str], Optional[str]]]
                     ) -> list[tuple[Optional[dict], Optional[str]]]:
        """``(text, audio, video)`` triples -> ``(result, error)`` pairs, one per input.

        ``result`` is what :meth:`predict` returns for the same input; ``error`` (with ``result``
        ``None``) says why an input was not scored: none of the run's modalities given, or a media
        file the run needs that is missing or cannot be decoded. Texts are encoded together; each
        input is then scored alone (batch size 1), so results equal :meth:`predict`'s.
        """
        n = len(inputs)
        results: list[Optional[dict]] = [None] * n
        inputs, transcripts, errors = self._transcribe(inputs)
        givens, scored = [], []
        for i, (text, audio, video) in enumerate(inputs):
            given = {"T": text is not None, "A": audio is not None, "V": video is not None}
            givens.append(given)
            if errors[i] is not None:
                continue
            if not any(given[m] for m in self.modalities):
                errors[i] = f"no input for the run's modalities ({'+'.join(self.modalities)})"
                continue
            for m, kind, path in (("A", "audio", audio), ("V", "video", video)):
                if m in self.modalities and path is not None and not pathlib.Path(path).is_file():
                    errors[i] = f"{path}: {kind} file not found"
                    break
            else:
                scored.append(i)
        if not scored:
            return list(zip(results, errors))
        samples = []
        for i in scored:
            text, audio, video = inputs[i]
            # One dialogue per input: a context run sees no neighbouring rows, as in predict().
            samples.append(Sample(uid=f"infer/{i}", dialogue=f"infer/{i}", index=0, speaker="speaker",
                                  text=text or "", audio=audio if "A" in self.modalities else None,
                                  video=video if "V" in self.modalities else None, label=0))
        data = self.featurizer.sample_features(samples)
        keep = []
        for j, i in enumerate(scored):
            for m, kind, path in (("A", "audio", inputs[i][1]), ("V", "video", inputs[i][2])):
                if m in self.modalities and path is not None and not data.present[m][j]:
                    reasons = getattr(self.featurizer.encoders[m], "errors", {})
                    errors[i] = reasons.get(str(path), f"{path}: {kind} file could not be read")
                    break
            else:
                keep.append(j)
        for m in self.modalities:
            getattr(self.featurizer.encoders[m], "errors", {}).clear()
        if keep:
            index = np.asarray(keep)
            present = {m: data.present[m][index] & np.asarray([givens[scored[j]][m] for j in keep])
                       for m in self.modalities}
            subset = FeatureSet({m: data.features[m][index] for m in self.modalities}, present,
                                data.labels[index], [data.uids[j] for j in keep])
            probs = predict_proba(self._eval_step, self.params, standardize(subset, self.feature_stats),
                                  batch_size=1)
            for j, row in zip(keep, probs):
                results[scored[j]] = self._result(row)
                if transcripts[scored[j]] is not None:
                    results[scored[j]]["transcript"] = transcripts[scored[j]]
        return list(zip(results, errors))


    def predict_dialogues(self, rows: Sequence["TableInput"], *, progress: bool = False
                          ) -> list[tuple[Optional[dict], Optional[str]]]:
        """Rows of a dataset split (each with ``dialogue``, ``index``, ``speaker``) -> ``(result, error)``
        pairs, scored exactly as the run scored its own dev / test split.

        The rows are ordered as the dataset's loader orders a split (dialogue, then position), every
        text is built as training built it (speaker tokens by first appearance over the rows, the
        context window, the prompt), a missing media file leaves its modality to the placeholder
        as in training, and the head scores the rows in the run's evaluation batches (which matters
        for fusions that attend across the batch). So a split's own CSV gives the predictions behind
        the run's ``results.json``. A row whose media file the run needs is missing or unreadable
        still gets that file's error instead of a result.
        """
        n = len(rows)
        results: list[Optional[dict]] = [None] * n
        errors: list[Optional[str]] = [row.error for row in rows]
        triples, transcripts, failures = self._transcribe([(r.text, r.audio, r.video) for r in rows])
        kept = [i for i in range(n) if rows[i].dialogue is not None and errors[i] is None]
        samples, given = {}, {}
        for i in kept:
            text, audio, video = triples[i]
            errors[i] = failures[i]
            media = {}
            for m, kind, path in (("A", "audio", audio), ("V", "video", video)):
                if m in self.modalities and m in rows[i].problems:
                    errors[i] = errors[i] or rows[i].problems[m]
                    media[m] = None
                elif m not in self.modalities or path is None:
                    media[m] = None
                elif not pathlib.Path(split_ref(path)[0]).is_file():
                    errors[i] = errors[i] or f"{path}: {kind} file not found"
                    media[m] = None
                else:
                    media[m] = path
            given[i] = {"T": text is not None, "A": media["A"] is not None, "V": media["V"] is not None}
            samples[i] = Sample(uid=f"predict/{i}", dialogue=rows[i].dialogue, index=rows[i].index,
                                speaker=rows[i].speaker, text=text or "", audio=media["A"], video=media["V"], label=0)
        if not kept:
            return list(zip(results, errors))
        order = sorted(kept, key=lambda i: (csvutil.natural_key(samples[i].dialogue), samples[i].index, i))
        split = Split("predict", [samples[i] for i in order])
        self._check_speakers(split, "this table")
        self.featurizer.progress = progress
        try:
            data = with_dialogues(self.featurizer.split_features(split), split)
        finally:
            self.featurizer.progress = False
        for j, i in enumerate(order):
            for m, kind in (("A", "audio"), ("V", "video")):
                path = samples[i].audio if m == "A" else samples[i].video
                if path is not None and not data.present[m][j]:
                    reasons = getattr(self.featurizer.encoders[m], "errors", {})
                    errors[i] = errors[i] or reasons.get(str(path), f"{path}: {kind} file could not be read")
        for m in self.modalities:
            getattr(self.featurizer.encoders[m], "errors", {}).clear()
        for m in self.modalities:
            data.present[m] = data.present[m] & np.asarray([given[i][m] for i in order])
        probs = predict_proba(self._eval_step, self.params, standardize(data, self.feature_stats),
                              batch_size=int(self.cfg.train.eval_batch_size))
        for j, i in enumerate(order):
            if errors[i] is None:
                results[i] = self._result(probs[j])
                if transcripts[i] is not None:
                    results[i]["transcript"] = transcripts[i]
        return list(zip(results, errors))


# ---------------------------------------------------------------------------------------------
# Batch prediction: a CSV or a folder of clips in, a CSV out
# ---------------------------------------------------------------------------------------------
AUDIO_SUFFIXES = (".wav", ".flac")  # a stem with both: the .wav is used (as the CH-SIMS loader does)
VIDEO_SUFFIXES = (".mp4",)
TEXT_COLUMNS = ("Utterance", "Text", "text", "Transcript", "transcript", "utterance")
AUDIO_COLUMNS = ("audio", "Audio", "audio_path", "Wav_Path")
VIDEO_COLUMNS = ("video", "Video", "video_path", "Video_Path")
ID_COLUMNS = ("id", "ID", "Name", "Utterance_ID", "name", "clip")
LABEL_COLUMNS = ("Emotion", "Sentiment", "Label", "label", "annotation")
_MELD_FILE = re.compile(r"^(?P<split>train|dev|test)_sent_emo$")


@dataclasses.dataclass
class TableInput:
    """One row of a batch: the id columns written to the output, and the inputs to score."""

    ids: dict[str, Any]
    text: Optional[str]
    audio: Optional[str]
    video: Optional[str]
    error: Optional[str] = None  # known before scoring (e.g. a malformed id)
    # Dataset layouts (MELD, IEMOCAP, CH-SIMS): the row's conversation, its position there as the
    # dataset's loader orders it, and its speaker; ``None`` for rows scored alone.
    dialogue: Optional[str] = None
    index: int = 0
    speaker: str = "speaker"
    problems: dict[str, str] = dataclasses.field(default_factory=dict)  # "A"/"V" -> why a path was not used


def read_table_inputs(source: str | os.PathLike, *, media_root: Optional[str | os.PathLike] = None,
                      split: Optional[str] = None, allow_outside_paths: bool = False) -> list[TableInput]:
    """The rows of ``source``: a CSV file or a folder of clips (see :func:`predict_table`)."""
    path = pathlib.Path(source)
    if path.is_dir():
        return _folder_inputs(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such CSV file or folder of clips")
    return _csv_inputs(path, pathlib.Path(media_root) if media_root else path.parent, split, allow_outside_paths)


def _folder_inputs(folder: pathlib.Path) -> list[TableInput]:
    clips: dict[str, dict[str, pathlib.Path]] = {}
    for path in sorted(folder.iterdir()):
        suffix = path.suffix.lower()
        if not path.is_file() or suffix not in AUDIO_SUFFIXES + VIDEO_SUFFIXES:
            continue
        kind = "audio" if suffix in AUDIO_SUFFIXES else "video"
        found = clips.setdefault(path.stem, {})
        order = AUDIO_SUFFIXES if kind == "audio" else VIDEO_SUFFIXES
        if kind not in found or order.index(suffix) < order.index(found[kind].suffix.lower()):
            found[kind] = path
    if not clips:
        raise FileNotFoundError(f"{folder}: no audio ({', '.join(AUDIO_SUFFIXES)}) or video "
                                f"({', '.join(VIDEO_SUFFIXES)}) files in this folder")
    return [TableInput({"row": i, "id": stem}, None,
                       str(found["audio"]) if "audio" in found else None,
                       str(found["video"]) if "video" in found else None)
            for i, (stem, found) in enumerate(sorted(clips.items()))]


def _cell(row: dict, column: Optional[str]) -> str:
    return "" if column is None else str(row[column]).strip()


def _csv_inputs(path: pathlib.Path, root: pathlib.Path, split: Optional[str],
                allow_outside: bool = False) -> list[TableInput]:
    frame = csvutil.read_csv(path)
    pick = lambda names: csvutil.pick_column(frame, path, names, "", required=False)  # noqa: E731
    text_col, audio_col, video_col = pick(TEXT_COLUMNS), pick(AUDIO_COLUMNS), pick(VIDEO_COLUMNS)
    labels = [c for c in LABEL_COLUMNS if c in frame.columns]
    columns = set(frame.columns)
    if {"Dialogue_ID", "Utterance_ID"} <= columns:
        layout, id_cols = "meld", ["Dialogue_ID", "Utterance_ID"]
        if split is None:
            match = _MELD_FILE.match(path.stem)
            split = match["split"] if match else None
    elif {"video_id", "clip_id"} <= columns:
        layout, id_cols = "sims", ["video_id", "clip_id"]
    elif {"Wav_Path", "Video_Path"} <= columns:
        return _iemocap_inputs(frame, path, root, labels, allow_outside)
    else:
        layout, id_cols = "paths", [c for c in ID_COLUMNS if c in columns][:1]
    if text_col is None and audio_col is None and video_col is None and layout == "paths":
        raise ValueError(f"{path}: no input columns; give a transcript ({', '.join(TEXT_COLUMNS[:3])}), "
                         f"audio ({', '.join(AUDIO_COLUMNS[:2])}) or video ({', '.join(VIDEO_COLUMNS[:2])}) "
                         f"column, or MELD's Dialogue_ID / Utterance_ID; columns are {list(frame.columns)}")
    rows = []
    for i, row in enumerate(frame.to_dict("records")):
        ids: dict[str, Any] = {"row": i, "id": str(i)}
        ids.update({c: row[c] for c in id_cols})
        ids.update({c: row[c] for c in labels})
        item = TableInput(ids, None, None, None)
        where = f"{path}, row {csvutil.csv_row(i)}"
        for modality, column in (("A", audio_col), ("V", video_col)):
            found, problem = paths.resolve_media(root, _cell(row, column), where=where, allow_outside=allow_outside)
            setattr(item, "audio" if modality == "A" else "video", str(found) if found else None)
            if problem:
                item.problems[modality] = f"{_cell(row, column)}: {problem}"
        if layout == "meld":
            try:
                dialogue, utterance = int(row["Dialogue_ID"]), int(row["Utterance_ID"])
                name = f"dia{dialogue}_utt{utterance}"
            except ValueError:
                name = None
                ids["id"] = _cell(row, "Utterance_ID") or str(i)
                item.error = (f"{where}: Dialogue_ID / Utterance_ID must be integers, got "
                              f"{row['Dialogue_ID']!r} / {row['Utterance_ID']!r}")
            if name is not None:
                ids["id"] = name
                item.dialogue, item.index = str(dialogue), utterance
                item.speaker = _cell(row, "Speaker") if "Speaker" in columns else "speaker"
                if "A" not in item.problems:
                    item.audio = item.audio or str(root.joinpath("audios", *([split] if split else []),
                                                                 f"{name}.flac"))
                if "V" not in item.problems:
                    item.video = item.video or str(root.joinpath("videos", *([split] if split else []),
                                                                 f"{name}.mp4"))
        elif layout == "sims":
            video_id = str(row["video_id"]).strip()
            try:
                clip_number = int(row["clip_id"])
                clip = f"{clip_number:04d}"
            except ValueError:
                clip = None
                item.error = f"{where}: clip_id must be an integer, got {row['clip_id']!r}"
            folder, problem = paths.resolve_media(root, f"Raw/{video_id}", where=where, allow_outside=allow_outside)
            if clip is not None and folder is None:
                item.problems.setdefault("A", f"Raw/{video_id}: {problem}")
                item.problems.setdefault("V", f"Raw/{video_id}: {problem}")
            elif clip is not None:
                ids["id"] = f"{video_id}/{clip}"
                item.dialogue, item.index, item.speaker = video_id, clip_number, video_id
                wav = folder / f"{clip}.wav"
                if "A" not in item.problems:
                    item.audio = item.audio or str(wav if wav.is_file() or not (folder / f"{clip}.flac").is_file()
                                                   else folder / f"{clip}.flac")
                if "V" not in item.problems:
                    item.video = item.video or str(folder / f"{clip}.mp4")
        elif id_cols:
            ids["id"] = _cell(row, id_cols[0])
        elif item.audio or item.video:
            ids["id"] = pathlib.Path(item.audio or item.video).stem
        item.text = csvutil.clean_text(row[text_col]) if text_col is not None else None
        rows.append(item)
    return rows


def _iemocap_inputs(frame, path: pathlib.Path, root: pathlib.Path, labels: list[str],
                    allow_outside: bool) -> list[TableInput]:
    """IEMOCAP's layout, read by its loader's own rules (actors, time order, video segments)."""
    rows = []
    for i, (row, record) in enumerate(zip(read_rows(frame, path, root, allow_outside=allow_outside),
                                          frame.to_dict("records"))):
        ids: dict[str, Any] = {"row": i, "id": row["name"]}
        ids.update({c: record[c] for c in ("Dialogue_ID",) if c in record})
        ids.update({c: record[c] for c in labels})
        audio = row["audio"] or (str(row["looked"]["A"]) if row["looked"]["A"] else None)
        video = row["video"] or (str(row["looked"]["V"]) if row["looked"]["V"] else None)
        problems = {m: f"{record['Wav_Path' if m == 'A' else 'Video_Path']}: {why}"
                    for m, why in row["problems"].items()}
        rows.append(TableInput(ids, row["text"], audio, video, dialogue=row["dialogue"], index=row["index"],
                               speaker=row["speaker"], problems=problems))
    return rows


def predict_table(estimator: Estimator, source: str | os.PathLike, output_csv: Optional[str | os.PathLike] = None,
                  *, progress: bool = True, media_root: Optional[str | os.PathLike] = None,
                  split: Optional[str] = None, chunk_size: int = 64, allow_outside_paths: bool = False):
    """Score every row of ``source`` with ``estimator``; returns the table (a pandas DataFrame)
    and writes it to ``output_csv`` when given.

    ``source`` is either

    * a CSV with a dataset's columns. MELD (``Utterance``, ``Dialogue_ID``, ``Utterance_ID``):
      media at ``{root}/audios/{split}/dia{D}_utt{U}.flac`` and ``{root}/videos/{split}/...mp4``,
      where ``root`` is the CSV's folder (or ``media_root``) and ``split`` is taken from a file
      named ``{split}_sent_emo.csv`` (or given; with neither, ``audios/`` and ``videos/``
      directly). CH-SIMS (``video_id``, ``clip_id``, ``text``): ``{root}/Raw/{video_id}/{clip:04d}``
      ``.wav``/``.flac``/``.mp4``. IEMOCAP (``Wav_Path``, ``Video_Path``, ``Speaker``,
      ``Dialogue_ID``, ``Start_Time``, ``End_Time``): read by the IEMOCAP loader's rules (actors as
      speakers, time order, the utterance's segment of the dialogue video). Any other CSV with
      ``audio`` / ``video`` columns: paths relative to ``root``. Such path columns win over the
      naming conventions; a path leading outside ``root`` is not read (the row's error says so)
      unless ``allow_outside_paths``. The transcript comes from ``Utterance`` / ``Text`` / ``text``,
      cleaned as the loaders clean it; without a transcript column the text modality is absent.
      Rows of the three dataset layouts are scored as the run scored its own splits
      (:meth:`Estimator.predict_dialogues`: dialogue order, context turns, prompt, speakers,
      evaluation batches), so a split's own CSV reproduces the run's test predictions; other rows
      are each scored alone, as :meth:`Estimator.predict` scores them.
    * a folder of clips: ``.flac`` / ``.wav`` audio and ``.mp4`` video, paired by file stem, no text.

    Output columns: ``row`` (0-based input row), ``id`` and the input's id and label columns,
    ``audio`` and ``video`` (the files used), ``predicted``, ``prob_{class}`` for every class,
    ``estimate`` (sentiment runs: the suite's score, :meth:`Estimator.estimate_score`) and
    ``transcript`` (with an estimator that transcribes audio: the text recognised for rows given
    audio and no text), ``error`` (empty when the row was scored). A missing or undecodable media file the run needs
    fails its row only.
    """
    inputs = read_table_inputs(source, media_root=media_root, split=split, allow_outside_paths=allow_outside_paths)
    if any(item.dialogue is not None for item in inputs):
        outcomes = estimator.predict_dialogues(inputs, progress=progress)
        return _table(estimator, inputs, outcomes, output_csv)
    if estimator.dialogue_context or (estimator.context_turns != 0 and any(item.text for item in inputs)):
        log.warning("%s: this run was trained with dialogue context, but %s has no dialogue columns "
                    "(MELD's Dialogue_ID / Utterance_ID, IEMOCAP's Dialogue_ID / Start_Time, CH-SIMS's "
                    "video_id / clip_id): every row is scored as a dialogue's first utterance",
                    estimator.run_dir, source)
    for item in inputs:
        for m in estimator.modalities:
            if m in item.problems:
                item.error = item.error or item.problems[m]
    outcomes: list[tuple[Optional[dict], Optional[str]]] = []
    bar = progress_bar(total=len(inputs), desc="predicting", unit="row", enabled=progress)
    for start in range(0, len(inputs), max(1, int(chunk_size))):
        chunk = inputs[start:start + max(1, int(chunk_size))]
        triples = [(item.text, item.audio, item.video) for item in chunk]
        try:
            done = estimator.predict_many(triples)
        except Exception:  # noqa: BLE001 - isolate the row at fault, keep the others
            done = []
            for triple in triples:
                try:
                    done.extend(estimator.predict_many([triple]))
                except Exception as err:  # noqa: BLE001
                    done.append((None, f"{type(err).__name__}: {err}"))
        for item, (result, error) in zip(chunk, done):
            outcomes.append((None, item.error) if item.error else (result, error))
        bar.update(len(chunk))
        bar.set_postfix(errors=sum(error is not None for _, error in outcomes))
    bar.close()
    return _table(estimator, inputs, outcomes, output_csv)


def _table(estimator: Estimator, inputs: Sequence[TableInput], outcomes, output_csv):
    names = estimator.class_names
    records = []
    for item, (result, error) in zip(inputs, outcomes):
        record = dict(item.ids)
        record.update(audio=item.audio or "", video=item.video or "")
        record["predicted"] = result["predicted"] if result else ""
        for name in names:
            record[f"prob_{name}"] = result["probabilities"][name] if result else np.nan
        if estimator.provides_estimate:
            record["estimate"] = result["estimate"] if result else np.nan
        record["transcript"] = (result or {}).get("transcript", "")
        record["error"] = error or ""
        records.append(record)
    transcribed = estimator.transcriber is not None
    columns = ["row", "id", *[c for c in (inputs[0].ids if inputs else {}) if c not in ("row", "id")],
               "audio", "video", *(["transcript"] if transcribed else []), "predicted",
               *[f"prob_{name}" for name in names],
               *(["estimate"] if estimator.provides_estimate else []), "error"]
    table = pd.DataFrame.from_records(records, columns=columns)
    if output_csv is not None:
        write_text_atomic(output_csv, table.to_csv(index=False))
    return table
