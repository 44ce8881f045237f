"""Writing (fine-tuned) encoder parameters back as their checkpoint's PyTorch-named tensors:
``emojax.encoders.export`` inverts each family's loader exactly, and ``export_encoder`` writes a
Hugging Face folder that loads back to the tuned weights."""
import dataclasses

import jax
import numpy as np
import pytest

from emojax.encoders import bert, clip_vision, export, hub, modernbert, videomae, wav2vec2, whisper

pytest.importorskip("transformers")

from test_neural_features import (write_clip, write_data2vec_audio, write_modernbert,  # noqa: E402
                                  write_videomae, write_wav2vec2, write_whisper)

LOADERS = {"whisper": (write_whisper, whisper), "wav2vec2": (write_wav2vec2, wav2vec2),
           "data2vec-audio": (write_data2vec_audio, wav2vec2), "videomae": (write_videomae, videomae),
           "clip": (write_clip, clip_vision), "modernbert": (write_modernbert, modernbert), "bert": (None, bert)}
LOAD = {whisper: whisper.load_whisper, wav2vec2: wav2vec2.load_wav2vec2, videomae: videomae.load_videomae,
        clip_vision: clip_vision.load_clip_vision, modernbert: modernbert.load_modernbert, bert: bert.load_bert}


def _perturbed(params, seed=0):
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda x: np.asarray(x) + rng.normal(size=np.shape(x)).astype(np.float32), params)


def _reload(module, state, config):
    return module.params_from_state(hub.StateReader(state, "written", prefixes=module.STATE_PREFIXES), config)


def _assert_same(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _checkpoint(name, tmp_path, tiny_bert):
    write, module = LOADERS[name]
    if name == "bert":
        return tiny_bert, module
    folder = write(tmp_path / name, tiny_bert) if name == "modernbert" else write(tmp_path / name)
    return folder, module


@pytest.mark.parametrize("name", list(LOADERS))
def test_export_state_dict_inverts_each_family_loader(tmp_path, tiny_bert, name):
    folder, module = _checkpoint(name, tmp_path, tiny_bert)
    params, config = LOAD[module](str(folder))
    tuned = _perturbed(params)
    state = hub.load_state_dict(folder)
    written = export.state_dict_from_params(tuned, config, state, source=str(folder))
    assert set(written) <= set(state)  # the checkpoint's own names
    _assert_same(_reload(module, {**state, **written}, config), tuned)


def test_export_computed_parameters_written_under_accepted_names(tmp_path, tiny_bert):
    """Whisper without a position table (sinusoids) and wav2vec2 with its weight norm folded into
    one ``weight``: both are written back under names the loaders read."""
    folder, _ = _checkpoint("whisper", tmp_path, tiny_bert)
    params, config = whisper.load_whisper(str(folder))
    state = {k: v for k, v in hub.load_state_dict(folder).items() if k != "encoder.embed_positions.weight"}
    base = whisper.params_from_state(hub.StateReader(state, "x", prefixes=whisper.STATE_PREFIXES), config)
    tuned = _perturbed(base, 1)
    written = export.state_dict_from_params(tuned, config, state)
    assert "encoder.embed_positions.weight" in written
    _assert_same(_reload(whisper, {**state, **written}, config), tuned)

    folder, _ = _checkpoint("wav2vec2", tmp_path, tiny_bert)
    params, config = wav2vec2.load_wav2vec2(str(folder))
    state = hub.load_state_dict(folder)
    g_name = next(k for k in state if k.endswith("pos_conv_embed.conv.weight_g"))
    stem = g_name[: -len("_g")]
    g, v = state.pop(g_name), state.pop(stem + "_v")
    norm = np.sqrt(np.square(v.astype(np.float64)).sum(axis=(0, 1), keepdims=True))
    state[stem] = (v * (g / norm)).astype(np.float32)  # what a checkpoint with weight norm folded in holds
    base = wav2vec2.params_from_state(hub.StateReader(state, "x", prefixes=wav2vec2.STATE_PREFIXES), config)
    tuned = _perturbed(base, 2)
    written = export.state_dict_from_params(tuned, config, state)
    assert stem + "_g" in written and stem + "_v" in written and stem not in written
    assert export.replaced_names(state, written) == [stem]
    kept = {k: v for k, v in state.items() if k != stem}
    _assert_same(_reload(wav2vec2, {**kept, **written}, config), tuned)


def test_export_errors_name_the_parameter(tmp_path, tiny_bert):
    folder, _ = _checkpoint("clip", tmp_path, tiny_bert)
    params, config = clip_vision.load_clip_vision(str(folder))
    state = hub.load_state_dict(folder)
    wrong = jax.tree_util.tree_map(np.asarray, params)
    wrong["layers"][0]["fc1"]["w"] = wrong["layers"][0]["fc1"]["w"][:, :3]
    with pytest.raises(export.ExportError, match=r"\['layers'\]\[0\]\['fc1'\]\['w'\] has shape"):
        export.state_dict_from_params(wrong, config, state)


def test_export_encoder_writes_tuned_modernbert_with_speaker_tokens(tmp_path, tiny_bert):
    from emojax.encoders.text import TextEncoder
    from emojax.runs.store import export_encoder

    folder, _ = _checkpoint("modernbert", tmp_path, tiny_bert)
    encoder = TextEncoder.from_pretrained(str(folder), pooling="mean", max_length=32)
    encoder.add_special_tokens(["<s0>", "<s1>"])
    encoder.params = _perturbed(encoder.params, 3)
    export_encoder(encoder, tmp_path / "out", model=str(folder), from_params=True)  # verifies the reload
    back = TextEncoder.from_pretrained(str(tmp_path / "out"), pooling="mean", max_length=32)
    _assert_same(back.params, encoder.params)
    assert back.tokenizer.convert_tokens_to_ids("<s1>") == back.params["embeddings"]["word"].shape[0] - 1


def test_export_encoder_rebuilds_bert_whose_source_folder_is_gone(tmp_path, tiny_bert):
    """Without its source folder a BERT encoder (speaker tokens added) is written from its
    parameters alone, under the tensor names its checkpoint had, and loads back to them."""
    import shutil

    from emojax.encoders.text import TextEncoder
    from emojax.runs.store import export_encoder

    source = tmp_path / "source"
    shutil.copytree(tiny_bert, source)
    encoder = TextEncoder.from_pretrained(str(source), pooling="mean", max_length=32)
    encoder.add_special_tokens(["<s0>", "<s1>"])
    encoder.params = _perturbed(encoder.params, 4)
    original = {k.removeprefix("bert."): np.shape(v) for k, v in hub.load_state_dict(source).items()}
    shutil.rmtree(source)
    export_encoder(encoder, tmp_path / "out", model=str(source))  # verifies the reload
    written = hub.load_state_dict(tmp_path / "out")
    assert set(written) <= set(original) and "embeddings.word_embeddings.weight" in written
    back = TextEncoder.from_pretrained(str(tmp_path / "out"), pooling="mean", max_length=32)
    _assert_same(back.params, encoder.params)
    assert back.tokenizer.convert_tokens_to_ids("<s1>") == back.params["embeddings"]["word"].shape[0] - 1

    # the same tensors as written back into the source checkpoint's names
    config = encoder.config
    rows = encoder.params["embeddings"]["word"].shape[0]
    grown = dataclasses.replace(config, vocab_size=rows)
    shapes = {name: np.zeros(shape, np.float32) for name, shape in original.items()}
    shapes["embeddings.word_embeddings.weight"] = np.zeros((rows, config.hidden_size), np.float32)
    with_source = export.state_dict_from_params(encoder.params, grown, shapes)
    without = export.state_dict_from_params(encoder.params, grown, None)
    assert sorted(with_source) == sorted(without)
    for name in without:
        np.testing.assert_array_equal(with_source[name], without[name])
