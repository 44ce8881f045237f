"""The Estimator: a finished run directory in, class probabilities for new inputs out (text, audio,
video, any left out; context turns for a run with a dialogue-context head)."""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import pathlib
import unicodedata
from typing import Optional, Sequence

import jax
import numpy as np

from emojax.runs import checkpoint as ckpt_lib
from emojax.runs.records import STANDALONE_MANIFEST, run_config
from emojax import config as config_lib
from emojax.runs import store
from emojax.data import context as text_context
from emojax.data import csvutil
from emojax.data.media import MediaError, read_audio, split_ref
from emojax.data.types import Sample, Split
from emojax.encoders.whisper_decoder import Transcriber
from emojax.training.evaluation import predict_proba
from emojax.features.featurizer import FeatureSet, Featurizer, standardize
from emojax.training.finetune import Tuning
from emojax.model.model import build_model
from emojax.training.dialogue_batches import with_dialogues
from emojax.training.steps import make_eval_step

log = logging.getLogger(__name__)

EMPTY_TEXT = ("--text: empty transcript; give the utterance's words, or leave --text out to use the run's "
              "placeholder for the text modality")


def has_words(text: Optional[str]) -> bool:
    """Whether ``text`` holds a character a tokenizer reads: not only whitespace, control
    characters (``\\x00``, ``\\x01``) and format characters (zero-width spaces and joiners,
    ``\\u200b``, ``\\u2060``, the byte-order mark ``\\ufeff``), which tokenize to nothing."""
    return any(not char.isspace() and unicodedata.category(char) not in ("Cc", "Cf") for char in text or "")


def check_text(text: Optional[str]) -> None:
    """Refuse a transcript given without words (:func:`has_words`), as an empty one: ``None`` (no
    text: the run's placeholder) is fine."""
    if text is not None and not has_words(text):
        raise ValueError(EMPTY_TEXT)


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
        self.cfg = run_config(self.run_dir)  # refuses a config edited since training
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
        self.tuned_modalities: tuple[str, ...] = ()
        with ckpt_lib.RunCheckpoints(self.run_dir) as checkpoints:
            progress = checkpoints.progress()
            if not progress or not progress.get("finished"):
                raise ckpt_lib.CheckpointError(f"{self.run_dir / 'progress.json'}: the run has not finished; "
                                               "resume it with launch/train.py first")
            if self.cfg.mode == "frozen":
                self.params = checkpoints.restore_best(params, progress["best_epoch"])
            else:
                self.params = self._restore_tuned(checkpoints, params, progress["best_epoch"], meta)
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
        if not record and (self.run_dir / STANDALONE_MANIFEST).is_file():
            record_path = self.run_dir / STANDALONE_MANIFEST
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
        wanted = [i for i, (text, audio, _) in enumerate(inputs) if not has_words(text) and audio is not None]
        if not wanted or "T" not in self.model.modalities:
            return inputs, transcripts, errors
        if self.transcriber is None:
            log.info("audio without text: the text modality uses its placeholder (give asr_model= / "
                     "--asr_model to transcribe it)")
            return inputs, transcripts, errors
        waves, ok = [], []
        for i in wanted:
            try:
                waves.append(read_audio(inputs[i][1], max_seconds=self.featurizer.max_seconds))
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
        check_text(text)
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


    def predict_dialogues(self, rows: Sequence, *, progress: bool = False
                          ) -> list[tuple[Optional[dict], Optional[str]]]:
        """Rows of a dataset split (:class:`emojax.inference.tables.TableInput`, each with ``dialogue``,
        ``index``, ``speaker``) -> ``(result, error)`` pairs, scored exactly as the run scored its own
        dev / test split.

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
