r"""Train-step cost of fine-tuning an audio or video encoder (``mode=trainable`` / ``lora``) against
the frozen head, on base-shaped encoders.

    python benchmarks/finetune_step.py [--families=whisper,wav2vec2,clip] [--modes=frozen,trainable,lora]
        [--batch_size=8] [--steps=3] [--remat] [--output=runs/bench-finetune.json]

The encoders are random-weight checkpoints of the released base shapes, built with transformers'
Flax classes and saved as ``flax_model.msgpack`` with their feature extractor / image processor
(no hub access needed): Whisper base (6 layers, d_model 512, 30 s window), wav2vec2 base (12
layers, hidden 768, in the stable-layer-norm variant, the one transformers' Flax class builds; clips
of 4 s), CLIP ViT-B/32 (12 layers, 224 x 224, 8 frames per clip).
VideoMAE has no Flax class in transformers to build one from. Each configuration is the run
``configs/train.py:encoders=A|V,mode=MODE`` on the generated demo set, timed by
:func:`emojax.benchmark.measure_train_step` (random inputs of full size, the jit-compiled step
after 2 warm-up steps, to ``block_until_ready``).
"""
import pathlib
import tempfile

from absl import app, flags

from emojax import config as config_lib
from emojax.benchmark import machine_description, machine_line, measure_train_step, setup_from_config
from emojax.checkpoint import write_json_atomic

_FAMILIES = flags.DEFINE_list("families", ["whisper", "wav2vec2", "clip"], "Encoder families.")
_MODES = flags.DEFINE_list("modes", ["frozen", "trainable", "lora"], "Training modes.")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Samples per train step.")
_STEPS = flags.DEFINE_integer("steps", 3, "Timed steps per configuration.")
_REMAT = flags.DEFINE_bool("remat", False, "finetune.remat=True (per-layer rematerialisation).")
_OUTPUT = flags.DEFINE_string("output", "", "JSON file for the results (optional).")

MODALITY = {"whisper": "A", "wav2vec2": "A", "clip": "V"}
SHAPES = {"whisper": "Whisper base shape, 30 s window", "wav2vec2": "wav2vec2 base shape (stable layer norm), 4 s clips",
          "clip": "CLIP ViT-B/32 shape, 8 frames"}


def build(family: str, folder: pathlib.Path) -> pathlib.Path:
    """A random base-shaped checkpoint of ``family`` in the Hugging Face layout."""
    import transformers

    if family == "whisper":
        config = transformers.WhisperConfig(d_model=512, encoder_layers=6, encoder_attention_heads=8, decoder_layers=1,
                                            decoder_attention_heads=8, encoder_ffn_dim=2048, decoder_ffn_dim=2048,
                                            num_mel_bins=80)
        transformers.FlaxWhisperModel(config, seed=0).save_pretrained(folder)
        transformers.WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)
    elif family == "wav2vec2":
        # transformers' Flax class builds only the stable-layer-norm variant (pre-norm layers, a
        # layer norm per feature-extractor convolution); base sizes, nearly the same cost
        config = transformers.Wav2Vec2Config(do_stable_layer_norm=True, feat_extract_norm="layer")
        transformers.FlaxWav2Vec2Model(config, seed=0).save_pretrained(folder)
        transformers.Wav2Vec2FeatureExtractor().save_pretrained(folder)
    elif family == "clip":
        transformers.FlaxCLIPVisionModel(transformers.CLIPVisionConfig(patch_size=32), seed=0).save_pretrained(folder)
        transformers.CLIPImageProcessor().save_pretrained(folder)
    else:
        raise app.UsageError(f"--families: unknown {family!r}; choose from {', '.join(MODALITY)}")
    return folder


def main(argv):
    del argv
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        for family in _FAMILIES.value:
            folder = build(family, tmp / family)
            modality = MODALITY[family]
            for mode in _MODES.value:
                cfg = config_lib.compose(f"encoders={modality},mode={mode}")
                cfg.dataset.path = str(tmp / "demo")
                cfg.encoders[modality].update(family=family, model=str(folder))
                cfg.train.batch_size = _BATCH.value
                cfg.finetune.remat = _REMAT.value
                result = measure_train_step(setup_from_config(cfg, max_samples=8), _STEPS.value)
                row = {"family": family, "encoder": SHAPES[family], "mode": mode, "remat": _REMAT.value, **result}
                rows.append(row)
                print(f"{family} {mode}: {result['samples_per_s']:.2f} samples/s, "
                      f"{result['seconds'] / result['steps']:.2f} s/step, "
                      f"{result['encoder_trainable_parameters']:,} trainable encoder parameters", flush=True)
    machine = machine_description()
    print(f"\n{machine_line(machine)}; batch {_BATCH.value}, remat {_REMAT.value}\n")
    print("| encoder | mode | trainable encoder parameters | s / step | samples/s |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['encoder']} | {r['mode']} | {r['encoder_trainable_parameters']:,} | "
              f"{r['seconds'] / r['steps']:.2f} | {r['samples_per_s']:.2f} |")
    if _OUTPUT.value:
        write_json_atomic(_OUTPUT.value, {"machine": machine, "results": rows})


if __name__ == "__main__":
    app.run(main)
