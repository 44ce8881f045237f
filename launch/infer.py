"""Class probabilities for one utterance from a trained run.

    python -m launch.infer --run_dir=RUN --text="I can't believe it!" --audio=clip.flac --video=clip.mp4

Any of --text, --audio, --video may be left out; the model uses its learned placeholder for it.
"""
from absl import app, flags

from emojax.inference import Estimator

_RUN_DIR = flags.DEFINE_string("run_dir", None, "A run directory written by launch/train.py.", required=True)
_TEXT = flags.DEFINE_string("text", None, "The utterance's transcript.")
_AUDIO = flags.DEFINE_string("audio", None, "An audio file (flac / wav).")
_VIDEO = flags.DEFINE_string("video", None, "A video file (mp4).")


def main(argv):
    del argv
    estimator = Estimator(_RUN_DIR.value)
    try:
        result = estimator.predict(text=_TEXT.value, audio=_AUDIO.value, video=_VIDEO.value)
    except (FileNotFoundError, ValueError) as err:
        raise app.UsageError(str(err)) from None
    width = max(len(name) for name in result["probabilities"])
    for name, p in sorted(result["probabilities"].items(), key=lambda kv: -kv[1]):
        print(f"{name:<{width}}  {p:.4f}")
    print(f"predicted: {result['predicted']}")


if __name__ == "__main__":
    app.run(main)
