"""Class probabilities from a trained run: one utterance, or a whole table of them.

    python -m launch.infer --run_dir=RUN --text="I can't believe it!" --audio=clip.flac --video=clip.mp4

Any of --text, --audio, --video may be left out; the model uses its learned placeholder for it.
A run trained with dialogue context takes the previous turns:

    python -m launch.infer --run_dir=RUN --text="You did it!" --speaker=Monica \
        --context="Ross: I passed the exam." --context="Monica: No way."

Sentiment runs also print the suite's ``estimate`` score (last line). With ``--asr_model`` (a
Whisper checkpoint), audio given without text is transcribed in JAX and the transcript is the
text input of runs with a text modality.

    python -m launch.infer --run_dir=RUN --input_csv=datasets/MELD/test_sent_emo.csv --output=preds.csv
    python -m launch.infer --run_dir=RUN --input_dir=clips/ --output=preds.csv

Batch prediction (``emojax.inference.predict_table``): a dataset-style CSV (media found where the
dataset loader looks for them; each row built as training built it, dialogue context included)
or a folder of .flac/.wav/.mp4 clips paired by file stem. The
output CSV has one row per input row; a row whose media file is missing or unreadable carries the
message in its ``error`` column and the other rows are still scored.
"""
import pathlib
import sys
from typing import Optional

from absl import app, flags

from emojax.runs.checkpoint import finished_run
from emojax.files import folder_problem
from emojax.inference import Estimator, predict_table
from emojax.inference.estimator import check_text
from emojax.training.preparation import recorded_file_change
from launch import _errors

_RUN_DIR = flags.DEFINE_string("run_dir", None, "A run directory written by launch/train.py.", required=True)
_TEXT = flags.DEFINE_string("text", None, "The utterance's transcript.")
_AUDIO = flags.DEFINE_string("audio", None, "An audio file (flac / wav).")
_VIDEO = flags.DEFINE_string("video", None, "A video file (mp4).")
_INPUT_CSV = flags.DEFINE_string("input_csv", None, "Batch: a CSV with a dataset's columns (MELD: Utterance, "
                                 "Dialogue_ID, Utterance_ID; CH-SIMS; IEMOCAP; or audio/video/text columns).")
_INPUT_DIR = flags.DEFINE_string("input_dir", None, "Batch: a folder of clips (.flac/.wav audio, .mp4 video, "
                                 "paired by file stem; no text).")
_OUTPUT = flags.DEFINE_string("output", None, "Batch: the CSV to write (one row per input row).")
_MEDIA_ROOT = flags.DEFINE_string("media_root", None, "Batch CSV: folder the media paths are relative to "
                                  "(default: the CSV's folder).")
_SPLIT = flags.DEFINE_string("split", None, "Batch MELD CSV: the media subfolder (audios/{split}); default from "
                             "a file named {split}_sent_emo.csv.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Batch: show a progress bar.")
_ASR_MODEL = flags.DEFINE_string("asr_model", None, "A Whisper checkpoint (hub id or folder, e.g. "
                                 "openai/whisper-small) that transcribes audio given without text, for runs "
                                 "with a text modality.")
_ASR_LANGUAGE = flags.DEFINE_string("asr_language", None, "Language of the speech (en, zh, ...); detected "
                                    "when left out.")
_CONTEXT = flags.DEFINE_multi_string(
    "context", None, "Single input on a run trained with dialogue context: the previous turns, oldest first, "
    "as 'Speaker: text' (repeat the flag), or a file holding one turn per line. --context= (empty) says the "
    "utterance opens its dialogue.")
_SPEAKER = flags.DEFINE_string("speaker", None, "Single input: the utterance's speaker, as named in --context "
                               "(default: a speaker of its own).")
_ALLOW_OUTSIDE = flags.DEFINE_bool("allow_outside_paths", False, "Batch CSV: read media paths that lead outside "
                                   "the CSV's folder (or --media_root); by default such a row's file counts as "
                                   "missing.")
_ASR_TASK = flags.DEFINE_enum("asr_task", "transcribe", ["transcribe", "translate"],
                              "Whisper's task token: transcribe, or translate into English.")


def _batch(estimator: Estimator, source: str) -> None:
    try:
        table = predict_table(estimator, source, _OUTPUT.value, progress=_PROGRESS.value,
                              media_root=_MEDIA_ROOT.value, split=_SPLIT.value,
                              allow_outside_paths=_ALLOW_OUTSIDE.value)
    except (FileNotFoundError, ValueError) as err:
        raise app.UsageError(str(err)) from None
    failed = table[table["error"] != ""]
    for _, row in failed.iterrows():
        print(f"row {row['row']} ({row['id']}): {row['error']}", file=sys.stderr)
    counts = table.loc[table["error"] == "", "predicted"].value_counts()
    summary = ", ".join(f"{name} {count}" for name, count in counts.items())
    print(f"{len(table) - len(failed)} of {len(table)} rows scored, {len(failed)} with errors"
          + (f" ({summary})" if summary else ""))
    print(_OUTPUT.value)


def _context_turns(values: Optional[list[str]]) -> Optional[list[str]]:
    """``--context`` values: turns, or files of one turn per line; ``None`` when not given."""
    if values is None:
        return None
    turns: list[str] = []
    for value in values:
        if value and pathlib.Path(value).is_file():
            turns += [line.strip() for line in pathlib.Path(value).read_text(encoding="utf-8").splitlines()
                      if line.strip()]
        elif value.strip():
            turns.append(value.strip())
    return turns


def _check_paths(source: Optional[str]) -> None:
    """Refuse unusable input and output paths before the run is loaded or a row is scored; above
    all an output that would replace the input CSV with predictions."""
    for flag, value in (("--audio", _AUDIO.value), ("--video", _VIDEO.value), ("--input_csv", _INPUT_CSV.value)):
        if value is not None and not pathlib.Path(value).is_file():
            what = "is a folder" if pathlib.Path(value).is_dir() else "does not exist"
            raise _errors.UserError(f"{flag}: {value} {what}; give an existing file")
    if _INPUT_DIR.value is not None and not pathlib.Path(_INPUT_DIR.value).is_dir():
        raise _errors.UserError(f"--input_dir: {_INPUT_DIR.value} is not a folder; give the folder of clips")
    if not source or not _OUTPUT.value:
        return
    output = pathlib.Path(_OUTPUT.value)
    if output.is_dir():
        raise _errors.UserError(f"--output: {output} is a folder; give the CSV file to write, "
                                f"e.g. --output={output / 'predictions.csv'}")
    if _INPUT_CSV.value is not None and output.exists() and output.samefile(_INPUT_CSV.value):
        raise _errors.UserError(f"--output: {output} is the input CSV; the predictions would replace it: "
                                "give another file")
    problem = folder_problem(output.parent)
    if problem:
        raise _errors.UserError(f"--output: {problem}; give a CSV path in a folder")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    single = [name for name, flag in (("--text", _TEXT), ("--audio", _AUDIO), ("--video", _VIDEO))
              if flag.value is not None]
    source = _INPUT_CSV.value or _INPUT_DIR.value
    if _INPUT_CSV.value and _INPUT_DIR.value:
        raise app.UsageError("give --input_csv or --input_dir, not both")
    if source and single:
        raise app.UsageError(f"{', '.join(single)} score one utterance; leave them out with "
                             f"{'--input_csv' if _INPUT_CSV.value else '--input_dir'}")
    if source and not _OUTPUT.value:
        raise app.UsageError("batch prediction needs --output=PATH.csv")
    if _OUTPUT.value and not source:
        raise app.UsageError("--output goes with --input_csv or --input_dir")
    try:
        check_text(_TEXT.value)  # an empty transcript, or one of control / zero-width characters only
    except ValueError as err:
        raise app.UsageError(str(err)) from None
    _check_paths(source)
    finished_run(_RUN_DIR.value)  # before any model is loaded
    estimator = Estimator(_RUN_DIR.value, asr_model=_ASR_MODEL.value, asr_language=_ASR_LANGUAGE.value,
                          asr_task=_ASR_TASK.value)
    if source:
        change = recorded_file_change(_RUN_DIR.value, _INPUT_CSV.value) if _INPUT_CSV.value else None
        if change:
            print(f"note: {change}", file=sys.stderr)
        _batch(estimator, source)
        return
    try:
        result = estimator.predict(text=_TEXT.value, audio=_AUDIO.value, video=_VIDEO.value,
                                   context=_context_turns(_CONTEXT.value), speaker=_SPEAKER.value)
    except (FileNotFoundError, ValueError) as err:
        raise app.UsageError(str(err)) from None
    if "transcript" in result:
        print(f"transcript: {result['transcript']}")
    width = max(len(name) for name in result["probabilities"])
    for name, p in sorted(result["probabilities"].items(), key=lambda kv: -kv[1]):
        print(f"{name:<{width}}  {p:.4f}")
    print(f"predicted: {result['predicted']}")
    if "estimate" in result:
        print(f"estimate: {result['estimate']:.2f}")


if __name__ == "__main__":
    _errors.run(main)
