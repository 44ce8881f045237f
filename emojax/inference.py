"""Class probabilities for new inputs from a finished run directory.

``Estimator(run_dir).predict(text=..., audio=..., video=...)`` rebuilds the run's frozen
encoders (with the speaker tokens and text format it trained with) and its best parameters;
any modality left out uses the model's learned placeholder for it.

``predict_table(estimator, source, output_csv)`` scores many inputs at once: a dataset-style CSV
(MELD, IEMOCAP or CH-SIMS columns, media found where the dataset loader looks for them) or a
folder of clips paired by file stem. It writes one output row per input row; a row whose media
file is missing or unreadable gets its error message in the ``error`` column and the others are
still scored. Every row is scored on its own, exactly as :meth:`Estimator.predict` scores it
(batch size 1, no dialogue context from neighbouring rows).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import re
import tempfile
from typing import Any, Optional, Sequence

import jax
import numpy as np

from emojax import checkpoint as ckpt_lib
from emojax import config as config_lib
from emojax.data.types import Sample
from emojax.features import FeatureSet, Featurizer, standardize
from emojax.model import build_model
from emojax.train import make_eval_step, predict_proba

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
        self.featurizer = Featurizer(self.cfg, meta.get("speaker_tokens", []), cache=None)
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
            from emojax.encoders.whisper_decoder import Transcriber

            self.transcriber = Transcriber(asr_model, language=asr_language, task=asr_task)
        elif asr_model is not None:
            log.info("%s has no text modality; the speech recognizer %s is not loaded", self.run_dir, asr_model)

    def _restore_tuned(self, checkpoints, params, epoch: int, meta: dict):
        """A run that fine-tuned encoders: the head and the encoders of the selected epoch; the
        featurizer's encoders then compute with the tuned weights (LoRA adapters merged)."""
        from emojax.finetune import Tuning

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
        from emojax.data.media import MediaError, read_audio

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
                 video: Optional[str] = None) -> float:
        """The suite's ``estimate`` score of one utterance (sentiment runs only)."""
        if not self.provides_estimate:
            raise ValueError(f"{self.run_dir}: estimate is defined for sentiment runs; this run's target is "
                             f"{self.cfg.dataset.get('target')!r}")
        return self.predict(text=text, audio=audio, video=video)["estimate"]

    def _result(self, probs: np.ndarray) -> dict:
        out = {"probabilities": {name: float(p) for name, p in zip(self.class_names, probs)},
               "predicted": self.class_names[int(np.argmax(probs))]}
        if self.provides_estimate:
            out["estimate"] = self.estimate_score(probs)
        return out

    def predict(self, text: Optional[str] = None, audio: Optional[str] = None,
                video: Optional[str] = None) -> dict:
        """``{"probabilities": {class: p}, "predicted": class}`` for one utterance (and, on a
        sentiment run, ``"estimate"``: :meth:`estimate_score`)."""
        for name, path in (("audio", audio), ("video", video)):
            if path is not None and not pathlib.Path(path).is_file():
                raise FileNotFoundError(f"--{name}: {path} does not exist")
        filled, transcripts, failures = self._transcribe([(text, audio, video)])
        if failures[0]:
            raise ValueError(failures[0])
        (text, audio, video), transcript = filled[0], transcripts[0]
        given = {"T": text is not None, "A": audio is not None, "V": video is not None}
        if not any(given[m] for m in self.modalities):
            raise ValueError(f"give at least one of the run's modalities ({'+'.join(self.modalities)})")
        sample = Sample(uid="infer/0", dialogue="infer", index=0, speaker="speaker", text=text or "",
                        audio=audio, video=video, label=0)
        data = self.featurizer.sample_features([sample])
        for m in self.modalities:
            data.present[m] = data.present[m] & given[m]
        data = standardize(data, self.feature_stats)
        probs = predict_proba(self._eval_step, self.params, data, batch_size=1)[0]
        result = self._result(probs)
        if transcript is not None:
            result["transcript"] = transcript
        return result

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


def read_table_inputs(source: str | os.PathLike, *, media_root: Optional[str | os.PathLike] = None,
                      split: Optional[str] = None) -> list[TableInput]:
    """The rows of ``source``: a CSV file or a folder of clips (see :func:`predict_table`)."""
    path = pathlib.Path(source)
    if path.is_dir():
        return _folder_inputs(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such CSV file or folder of clips")
    return _csv_inputs(path, pathlib.Path(media_root) if media_root else path.parent, split)


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


def _csv_inputs(path: pathlib.Path, root: pathlib.Path, split: Optional[str]) -> list[TableInput]:
    from emojax.data import csvutil

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
    else:
        layout, id_cols = "paths", [c for c in ID_COLUMNS if c in columns][:1]
    if text_col is None and audio_col is None and video_col is None and layout == "paths":
        raise ValueError(f"{path}: no input columns; give a transcript ({', '.join(TEXT_COLUMNS[:3])}), "
                         f"audio ({', '.join(AUDIO_COLUMNS[:2])}) or video ({', '.join(VIDEO_COLUMNS[:2])}) "
                         f"column, or MELD's Dialogue_ID / Utterance_ID; columns are {list(frame.columns)}")
    media = lambda value: str(root / value) if value else None  # noqa: E731
    rows = []
    for i, row in enumerate(frame.to_dict("records")):
        ids: dict[str, Any] = {"row": i, "id": str(i)}
        ids.update({c: row[c] for c in id_cols})
        ids.update({c: row[c] for c in labels})
        audio, video, error = media(_cell(row, audio_col)), media(_cell(row, video_col)), None
        if layout == "meld":
            try:
                name = f"dia{int(row['Dialogue_ID'])}_utt{int(row['Utterance_ID'])}"
            except ValueError:
                name = None
                ids["id"] = _cell(row, "Utterance_ID") or str(i)
                if audio is None or video is None:
                    error = (f"{path}, row {csvutil.csv_row(i)}: Dialogue_ID / Utterance_ID must be integers, got "
                             f"{row['Dialogue_ID']!r} / {row['Utterance_ID']!r}")
            if name is not None:
                ids["id"] = name
                audio = audio or str(root.joinpath("audios", *([split] if split else []), f"{name}.flac"))
                video = video or str(root.joinpath("videos", *([split] if split else []), f"{name}.mp4"))
        elif layout == "sims":
            try:
                clip = f"{int(row['clip_id']):04d}"
            except ValueError:
                clip = None
                if audio is None or video is None:
                    error = f"{path}, row {csvutil.csv_row(i)}: clip_id must be an integer, got {row['clip_id']!r}"
            if clip is not None:
                folder = root / "Raw" / str(row["video_id"]).strip()
                ids["id"] = f"{str(row['video_id']).strip()}/{clip}"
                wav = folder / f"{clip}.wav"
                audio = audio or str(wav if wav.is_file() or not (folder / f"{clip}.flac").is_file()
                                     else folder / f"{clip}.flac")
                video = video or str(folder / f"{clip}.mp4")
        elif id_cols:
            ids["id"] = _cell(row, id_cols[0])
        elif audio or video:
            ids["id"] = pathlib.Path(audio or video).stem
        text = csvutil.clean_text(row[text_col]) if text_col is not None else None
        rows.append(TableInput(ids, text, audio, video, error))
    return rows


def predict_table(estimator: Estimator, source: str | os.PathLike, output_csv: Optional[str | os.PathLike] = None,
                  *, progress: bool = True, media_root: Optional[str | os.PathLike] = None,
                  split: Optional[str] = None, chunk_size: int = 64):
    """Score every row of ``source`` with ``estimator``; returns the table (a pandas DataFrame)
    and writes it to ``output_csv`` when given.

    ``source`` is either

    * a CSV with a dataset's columns. MELD (``Utterance``, ``Dialogue_ID``, ``Utterance_ID``):
      media at ``{root}/audios/{split}/dia{D}_utt{U}.flac`` and ``{root}/videos/{split}/...mp4``,
      where ``root`` is the CSV's folder (or ``media_root``) and ``split`` is taken from a file
      named ``{split}_sent_emo.csv`` (or given; with neither, ``audios/`` and ``videos/``
      directly). CH-SIMS (``video_id``, ``clip_id``, ``text``): ``{root}/Raw/{video_id}/{clip:04d}``
      ``.wav``/``.flac``/``.mp4``. IEMOCAP (``Wav_Path``, ``Video_Path``) or any CSV with ``audio``
      / ``video`` columns: paths relative to ``root``. Such path columns win over the naming
      conventions. The transcript comes from ``Utterance`` / ``Text`` / ``text``, cleaned as the
      loaders clean it; without a transcript column the text modality is absent.
    * a folder of clips: ``.flac`` / ``.wav`` audio and ``.mp4`` video, paired by file stem, no text.

    Output columns: ``row`` (0-based input row), ``id`` and the input's id and label columns,
    ``audio`` and ``video`` (the files used), ``predicted``, ``prob_{class}`` for every class,
    ``estimate`` (sentiment runs: the suite's score, :meth:`Estimator.estimate_score`) and
    ``transcript`` (with an estimator that transcribes audio: the text recognised for rows given
    audio and no text), ``error`` (empty when the row was scored). A missing or undecodable media file the run needs
    fails its row only.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    inputs = read_table_inputs(source, media_root=media_root, split=split)
    outcomes: list[tuple[Optional[dict], Optional[str]]] = []
    bar = tqdm(total=len(inputs), desc="predicting", unit="row", disable=not progress)
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
        _write_csv_atomic(table, pathlib.Path(output_csv))
    return table


def _write_csv_atomic(table, path: pathlib.Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        table.to_csv(tmp, index=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
