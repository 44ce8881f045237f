"""Class probabilities from a trained run: one utterance, or a whole table of them.

    python -m launch.infer --run_dir=RUN --text="I can't believe it!" --audio=clip.flac --video=clip.mp4

Any of --text, --audio, --video may be left out; the model uses its learned placeholder for it.
Sentiment runs also print the suite's ``estimate`` score (last line). With ``--asr_model`` (a
Whisper checkpoint), audio given without text is transcribed in JAX and the transcript is the
text input of runs with a text modality.

    python -m launch.infer --run_dir=RUN --input_csv=datasets/MELD/test_sent_emo.csv --output=preds.csv
    python -m launch.infer --run_dir=RUN --input_dir=clips/ --output=preds.csv

Batch prediction (``emojax.inference.predict_table``): a dataset-style CSV (media found where the
dataset loader looks for them) or a folder of .flac/.wav/.mp4 clips paired by file stem. The
output CSV has one row per input row; a row whose media file is missing or unreadable carries the
message in its ``error`` column and the other rows are still scored.
"""
import sys

from absl import app, flags

from emojax.inference import Estimator, predict_table

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
_ASR_TASK = flags.DEFINE_enum("asr_task", "transcribe", ["transcribe", "translate"],
                              "Whisper's task token: transcribe, or translate into English.")


def _batch(estimator: Estimator, source: str) -> None:
    try:
        table = predict_table(estimator, source, _OUTPUT.value, progress=_PROGRESS.value,
                              media_root=_MEDIA_ROOT.value, split=_SPLIT.value)
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
    estimator = Estimator(_RUN_DIR.value, asr_model=_ASR_MODEL.value, asr_language=_ASR_LANGUAGE.value,
                          asr_task=_ASR_TASK.value)
    if source:
        _batch(estimator, source)
        return
    try:
        result = estimator.predict(text=_TEXT.value, audio=_AUDIO.value, video=_VIDEO.value)
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
    app.run(main)
