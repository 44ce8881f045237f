"""Whisper speech recognition as pure functions: the text decoder on top of
:mod:`emojax.encoders.whisper`'s encoder, and jit-compiled greedy decoding with a fixed-size
key/value cache.

    model = load_whisper_asr("openai/whisper-small")                  # or a local folder
    prompt = model.prompt(language="zh", task="transcribe")           # start, language, task, no timestamps
    mel, _ = whisper_preprocess(waves, model.extractor)               # (B, n_mels, 3000)
    tokens = greedy_decode(model.params, mel, encoder_config=model.encoder_config,
                           decoder_config=model.decoder_config, prompt=prompt, max_new_tokens=64,
                           eos_token_id=model.eos_token_id, pad_token_id=model.pad_token_id,
                           suppress_tokens=model.suppress_tokens, begin_suppress_tokens=model.begin_suppress_tokens)
    texts = model.tokenizer.batch_decode(tokens, skip_special_tokens=True)

or simply ``Transcriber("openai/whisper-small", language="zh").transcribe(["a.wav", "b.flac"])``.

The decoder follows transformers' ``WhisperDecoder``: token embedding plus the learned position
table; pre-LN layers ``x + self_attn(LN(x))`` (causal), ``x + cross_attn(LN(x), encoder)``,
``x + fc2(act(fc1(LN(x))))``; a final LayerNorm; logits against the token embedding (tied output
projection, or ``proj_out`` when a checkpoint has its own). The query projections carry the
``head_dim ** -0.5`` scale; the key projections have no bias.

Greedy decoding runs the forced prompt tokens (start, language, task, ``<|notimestamps|>``) and
then the argmax, one token per step, in one ``jax.lax.while_loop`` over a key/value cache of fixed
size (prompt + ``max_new_tokens``), so one compilation serves every batch of that shape. Cross-
attention keys and values are computed once from the encoder output. ``suppress_tokens`` are
never chosen; ``begin_suppress_tokens`` not as the first free token (as transformers' logits
processors do with a checkpoint's ``generation_config.json``). After ``eos_token_id`` a row is
padded with ``pad_token_id``; the loop ends when every row has finished. Timestamps are off.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import pathlib
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from emojax.data.media import read_audio
from emojax.encoders import core, hub
from emojax.encoders import whisper as encoder_lib
from emojax.encoders.core import dense as _dense
from emojax.encoders.whisper import (NORM_EPS, WhisperConfig, load_whisper_feature_extractor, whisper_apply,
                                     whisper_preprocess)

log = logging.getLogger(__name__)

Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class WhisperDecoderConfig:
    """Architecture of a Whisper text decoder (hashable: a static argument under jit)."""

    vocab_size: int = 51865
    hidden_size: int = 384          # d_model
    num_layers: int = 4             # decoder_layers
    num_heads: int = 6              # decoder_attention_heads
    ffn_dim: int = 1536             # decoder_ffn_dim
    max_target_positions: int = 448
    activation: str = "gelu"        # activation_function

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def from_hf(cls, raw: dict) -> "WhisperDecoderConfig":
        d = cls()
        return cls(vocab_size=int(raw.get("vocab_size", d.vocab_size)),
                   hidden_size=int(raw.get("d_model", d.hidden_size)),
                   num_layers=int(raw.get("decoder_layers", d.num_layers)),
                   num_heads=int(raw.get("decoder_attention_heads", d.num_heads)),
                   ffn_dim=int(raw.get("decoder_ffn_dim", d.ffn_dim)),
                   max_target_positions=int(raw.get("max_target_positions", d.max_target_positions)),
                   activation=str(raw.get("activation_function", d.activation)))


def decoder_params_from_state(state: hub.StateReader, c: WhisperDecoderConfig) -> Params:
    """The decoder's parameter pytree from PyTorch-named tensors (dense weights stored ``(in, out)``)."""
    h, f = c.hidden_size, c.ffn_dim

    dense = state.dense

    norm = functools.partial(state.norm, size=h)

    embed = jnp.asarray(state.take("decoder.embed_tokens.weight", (c.vocab_size, h)))
    params = {"embed": embed,
              "positions": jnp.asarray(state.take("decoder.embed_positions.weight", (c.max_target_positions, h))),
              "layers": [], "final_norm": norm("decoder.layer_norm")}
    for n in range(c.num_layers):
        p = f"decoder.layers.{n}."
        params["layers"].append({
            "self_norm": norm(p + "self_attn_layer_norm"),
            "self_q": dense(p + "self_attn.q_proj", h, h),
            "self_k": dense(p + "self_attn.k_proj", h, h, bias=False),
            "self_v": dense(p + "self_attn.v_proj", h, h),
            "self_out": dense(p + "self_attn.out_proj", h, h),
            "cross_norm": norm(p + "encoder_attn_layer_norm"),
            "cross_q": dense(p + "encoder_attn.q_proj", h, h),
            "cross_k": dense(p + "encoder_attn.k_proj", h, h, bias=False),
            "cross_v": dense(p + "encoder_attn.v_proj", h, h),
            "cross_out": dense(p + "encoder_attn.out_proj", h, h),
            "mlp_norm": norm(p + "final_layer_norm"),
            "fc1": dense(p + "fc1", h, f),
            "fc2": dense(p + "fc2", f, h),
        })
    if state.has("proj_out.weight"):
        out = state.take("proj_out.weight", (c.vocab_size, h))
        if not np.array_equal(np.asarray(out), np.asarray(embed)):
            params["output"] = jnp.asarray(out)  # untied output projection
    state.unused(ignore=("encoder.",))
    return params


# -- the decoder -------------------------------------------------------------------------------

def _heads(x, c: WhisperDecoderConfig):
    return x.reshape(*x.shape[:-1], c.num_heads, c.head_dim)


def _layer_norm(x, p):
    return core.layer_norm(x, p, NORM_EPS)


def _attend(q, k, v, mask, dtype):
    """``q`` (B, Q, H, D) already scaled; ``k``, ``v`` (B, K, H, D); ``mask`` a :class:`core.Mask`
    or None -> (B, Q, H * D). Decoding has no dropout: ``jax.nn.dot_product_attention``."""
    return core.attention(q.astype(dtype), k.astype(dtype), v.astype(dtype), mask=mask, scale=1.0)


def cross_keys_values(params: Params, encoder_hidden, *, config: WhisperDecoderConfig, dtype=jnp.float32):
    """Per layer, the cross-attention keys and values ``(layers, B, S, H, D)`` of the encoder output."""
    ks = [_heads(_dense(encoder_hidden, layer["cross_k"], dtype), config) for layer in params["layers"]]
    vs = [_heads(_dense(encoder_hidden, layer["cross_v"], dtype), config) for layer in params["layers"]]
    return jnp.stack(ks), jnp.stack(vs)


def _mlp(layer, x, c, dtype):
    inner = core.ACTIVATIONS[c.activation](_dense(_layer_norm(x, layer["mlp_norm"]), layer["fc1"], dtype))
    return x + _dense(inner, layer["fc2"], dtype).astype(jnp.float32)


def _logits(params: Params, x):
    x = _layer_norm(x, params["final_norm"])
    return jnp.einsum("bth,vh->btv", x, params.get("output", params["embed"]), preferred_element_type=jnp.float32)


def decoder_apply(params: Params, input_ids, encoder_hidden, *, config: WhisperDecoderConfig, dtype=jnp.float32):
    """Logits ``(B, T, vocab)`` float32 of a whole token sequence ``(B, T)`` (causal; no cache):
    teacher forcing, scoring, and the reference the cached decoder is tested against."""
    c = config
    length = input_ids.shape[1]
    if length > c.max_target_positions:
        raise ValueError(f"{length} tokens: this Whisper decoder has {c.max_target_positions} positions")
    scale = c.head_dim ** -0.5
    x = params["embed"][input_ids] + params["positions"][:length][None]
    causal = core.Mask(causal=True)
    cross_k, cross_v = cross_keys_values(params, encoder_hidden, config=c, dtype=dtype)
    for n, layer in enumerate(params["layers"]):
        h = _layer_norm(x, layer["self_norm"])
        q = _heads(_dense(h, layer["self_q"], dtype) * scale, c)
        k, v = _heads(_dense(h, layer["self_k"], dtype), c), _heads(_dense(h, layer["self_v"], dtype), c)
        x = x + _dense(_attend(q, k, v, causal, dtype), layer["self_out"], dtype).astype(jnp.float32)
        h = _layer_norm(x, layer["cross_norm"])
        q = _heads(_dense(h, layer["cross_q"], dtype) * scale, c)
        x = x + _dense(_attend(q, cross_k[n], cross_v[n], None, dtype), layer["cross_out"], dtype).astype(jnp.float32)
        x = _mlp(layer, x, c, dtype)
    return _logits(params, x)


def init_cache(config: WhisperDecoderConfig, batch: int, length: int, dtype=jnp.float32) -> dict:
    """An empty self-attention key/value cache ``(layers, B, length, H, D)``."""
    shape = (config.num_layers, batch, length, config.num_heads, config.head_dim)
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


def decode_step(params: Params, tokens, position, cache: dict, cross: tuple, *, config: WhisperDecoderConfig,
                dtype=jnp.float32):
    """One decoder step: ``tokens`` (B,) at ``position`` (a traced scalar) -> ``(logits (B, vocab),
    cache)``; the keys and values of the new token are written into ``cache`` at ``position`` and
    attention sees the positions ``<= position``."""
    c = config
    scale = c.head_dim ** -0.5
    length = cache["k"].shape[2]
    x = (params["embed"][tokens] + jax.lax.dynamic_index_in_dim(params["positions"], position, keepdims=False))[:, None]
    visible = core.Mask(keys=(jnp.arange(length) <= position)[None, :])
    keys, values = cache["k"], cache["v"]
    cross_k, cross_v = cross
    for n, layer in enumerate(params["layers"]):
        h = _layer_norm(x, layer["self_norm"])
        q = _heads(_dense(h, layer["self_q"], dtype) * scale, c)
        k_new = _heads(_dense(h, layer["self_k"], dtype), c).astype(keys.dtype)
        v_new = _heads(_dense(h, layer["self_v"], dtype), c).astype(values.dtype)
        keys = jax.lax.dynamic_update_slice(keys, k_new[None], (n, 0, position, 0, 0))
        values = jax.lax.dynamic_update_slice(values, v_new[None], (n, 0, position, 0, 0))
        x = x + _dense(_attend(q, keys[n], values[n], visible, dtype), layer["self_out"], dtype).astype(jnp.float32)
        h = _layer_norm(x, layer["cross_norm"])
        q = _heads(_dense(h, layer["cross_q"], dtype) * scale, c)
        x = x + _dense(_attend(q, cross_k[n], cross_v[n], None, dtype), layer["cross_out"], dtype).astype(jnp.float32)
        x = _mlp(layer, x, c, dtype)
    return _logits(params, x)[:, 0], {"k": keys, "v": values}


@functools.partial(jax.jit, static_argnames=("encoder_config", "decoder_config", "prompt", "max_new_tokens",
                                             "eos_token_id", "pad_token_id", "suppress_tokens",
                                             "begin_suppress_tokens", "language_tokens", "dtype"))
def greedy_decode(params: Params, input_features, *, encoder_config: WhisperConfig,
                  decoder_config: WhisperDecoderConfig, prompt: tuple[int, ...], max_new_tokens: int,
                  eos_token_id: Optional[int] = None, pad_token_id: int = 0, suppress_tokens: tuple[int, ...] = (),
                  begin_suppress_tokens: tuple[int, ...] = (), language_tokens: tuple[int, ...] = (),
                  dtype=jnp.float32):
    """Token ids ``(B, len(prompt) + max_new_tokens)`` int32: the forced ``prompt`` then the argmax.

    ``params`` = ``{"encoder": ..., "decoder": ...}``; ``input_features`` the log-mel batch
    ``(B, n_mels, frames)``. With ``eos_token_id`` None every row runs ``max_new_tokens`` steps.
    A ``-1`` in ``prompt`` is a slot the model fills, per row, with the most likely of
    ``language_tokens`` (language detection).
    """
    c = decoder_config
    total = len(prompt) + max_new_tokens
    if not prompt:
        raise ValueError("greedy_decode: the prompt needs at least the decoder start token")
    if total > c.max_target_positions:
        raise ValueError(f"prompt of {len(prompt)} + {max_new_tokens} new tokens exceeds the decoder's "
                         f"{c.max_target_positions} positions; lower max_new_tokens")
    encoder_hidden = whisper_apply(params["encoder"], input_features, config=encoder_config, dtype=dtype)
    dec = params["decoder"]
    batch = input_features.shape[0]
    cross = cross_keys_values(dec, encoder_hidden, config=c, dtype=dtype)
    forced = jnp.asarray(prompt, jnp.int32)
    tokens = jnp.full((batch, total), pad_token_id, jnp.int32).at[:, :len(prompt)].set(forced)
    never = jnp.zeros((c.vocab_size,), bool)
    suppress = never.at[jnp.asarray([t for t in suppress_tokens if 0 <= t < c.vocab_size], jnp.int32)].set(True)
    begin = never.at[jnp.asarray([t for t in begin_suppress_tokens if 0 <= t < c.vocab_size], jnp.int32)].set(True)
    languages = never.at[jnp.asarray([t for t in language_tokens if 0 <= t < c.vocab_size], jnp.int32)].set(True)
    if -1 in prompt and not language_tokens:
        raise ValueError("greedy_decode: a -1 (language) slot in the prompt needs language_tokens")
    neg = jnp.finfo(jnp.float32).min

    def body(carry):
        t, tokens, cache, finished = carry
        logits, cache = decode_step(dec, tokens[:, t], t, cache, cross, config=c, dtype=dtype)
        blocked = suppress | (begin & (t + 1 == len(prompt)))
        chosen = jnp.argmax(jnp.where(blocked[None], neg, logits), axis=-1).astype(jnp.int32)
        language = jnp.argmax(jnp.where(languages[None], logits, neg), axis=-1).astype(jnp.int32)
        in_prompt = t + 1 < len(prompt)
        forced = tokens[:, jnp.minimum(t + 1, len(prompt) - 1)]
        nxt = jnp.where(in_prompt, jnp.where(forced == -1, language, forced), chosen)
        nxt = jnp.where(finished, pad_token_id, nxt)
        if eos_token_id is not None:
            finished = finished | ((nxt == eos_token_id) & ~in_prompt)
        tokens = jax.lax.dynamic_update_slice(tokens, nxt[:, None], (0, t + 1))
        return t + 1, tokens, cache, finished

    def running(carry):
        t, _, _, finished = carry
        return (t < total - 1) & ~jnp.all(finished)

    carry = (jnp.zeros((), jnp.int32), tokens, init_cache(c, batch, total, dtype), jnp.zeros((batch,), bool))
    return jax.lax.while_loop(running, body, carry)[1]


# -- checkpoints, prompts and transcription -----------------------------------------------------

@dataclasses.dataclass
class WhisperASR:
    """A loaded Whisper speech-recognition checkpoint: parameters, configs, generation settings."""

    folder: pathlib.Path
    params: Params                      # {"encoder": ..., "decoder": ...}
    encoder_config: WhisperConfig
    decoder_config: WhisperDecoderConfig
    generation: dict                    # generation_config.json (or the model config's settings)
    tokenizer: Any = None
    extractor: Any = None

    @property
    def decoder_start_token_id(self) -> int:
        return int(self.generation["decoder_start_token_id"])

    @property
    def eos_token_id(self) -> Optional[int]:
        eos = self.generation.get("eos_token_id")
        return int(eos[0] if isinstance(eos, list) else eos) if eos is not None else None

    @property
    def pad_token_id(self) -> int:
        pad = self.generation.get("pad_token_id")
        return int(pad) if pad is not None else (self.eos_token_id or 0)

    @property
    def suppress_tokens(self) -> tuple[int, ...]:
        return tuple(int(t) for t in self.generation.get("suppress_tokens") or ())

    @property
    def begin_suppress_tokens(self) -> tuple[int, ...]:
        return tuple(int(t) for t in self.generation.get("begin_suppress_tokens") or ())

    @property
    def multilingual(self) -> bool:
        return bool(self.generation.get("is_multilingual", bool(self.generation.get("lang_to_id"))))

    @property
    def language_tokens(self) -> tuple[int, ...]:
        return tuple(sorted(int(i) for i in (self.generation.get("lang_to_id") or {}).values()))

    def _token_id(self, name: str, kind: str, table: dict) -> int:
        if self.tokenizer is not None:
            token = self.tokenizer.convert_tokens_to_ids(name)
            if token is not None and token != self.tokenizer.unk_token_id:
                return int(token)
        raise ValueError(f"{self.folder}: {kind} {name!r} is not known to this checkpoint "
                         f"(known: {', '.join(sorted(table)) or 'none'})")

    def prompt(self, language: Optional[str] = None, task: Optional[str] = "transcribe",
               timestamps: bool = False) -> tuple[int, ...]:
        """The forced decoder prompt: the start token, then (multilingual checkpoints) the language
        token (``-1``: detected per input, see :func:`greedy_decode`) and the task token, then
        ``<|notimestamps|>`` when the checkpoint has one."""
        if timestamps:
            raise ValueError("timestamp decoding is not supported; use timestamps=False")
        ids = [self.decoder_start_token_id]
        if language is not None or self.multilingual:
            if language is None:
                ids.append(-1)
            else:
                name = language if language.startswith("<|") else f"<|{language}|>"
                table = self.generation.get("lang_to_id") or {}
                ids.append(int(table[name]) if name in table else self._token_id(name, "language", table))
            if task is not None:
                table = self.generation.get("task_to_id") or {}
                ids.append(int(table[task]) if task in table else self._token_id(f"<|{task}|>", "task", table))
            if self.generation.get("no_timestamps_token_id") is not None:
                ids.append(int(self.generation["no_timestamps_token_id"]))
        return tuple(ids)


def load_whisper_asr(name_or_path: str | os.PathLike, *, with_processors: bool = True) -> WhisperASR:
    """Encoder + decoder parameters of a ``WhisperForConditionalGeneration`` checkpoint (folder or
    hub id; ``model.safetensors`` with PyTorch names or ``flax_model.msgpack``), its generation
    settings, and (``with_processors``) transformers' tokenizer and feature extractor for it."""
    folder, raw, encoder_config = core.open_checkpoint(encoder_lib.FAMILY, name_or_path)
    decoder_config = WhisperDecoderConfig.from_hf(raw)
    if decoder_config.activation not in core.ACTIVATIONS:
        raise hub.WeightError(f"{folder / 'config.json'}: activation_function {decoder_config.activation!r} "
                              "is not supported")
    state = hub.load_state_dict(folder)
    prefixes = encoder_lib.STATE_PREFIXES
    encoder = encoder_lib.params_from_state(hub.StateReader(state, str(folder), prefixes=prefixes), encoder_config)
    decoder = decoder_params_from_state(hub.StateReader(state, str(folder), prefixes=prefixes), decoder_config)
    generation = {k: raw.get(k) for k in ("decoder_start_token_id", "eos_token_id", "pad_token_id",
                                          "suppress_tokens", "begin_suppress_tokens")}
    path = folder / "generation_config.json"
    if path.exists():
        try:
            generation.update(json.loads(path.read_text()))
        except json.JSONDecodeError as err:
            raise hub.WeightError(f"{path}: not valid JSON ({err})") from err
    if generation.get("decoder_start_token_id") is None:
        raise hub.WeightError(f"{folder}: no decoder_start_token_id in config.json or generation_config.json")
    model = WhisperASR(folder, {"encoder": encoder, "decoder": decoder}, encoder_config, decoder_config, generation)
    if with_processors:
        # transformers takes seconds to import, so it is imported on use.
        from transformers import AutoTokenizer

        try:
            model.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        except (OSError, ValueError) as err:
            raise hub.WeightError(f"{folder}: no usable Whisper tokenizer (vocab.json, merges.txt or tokenizer.json) "
                                  f"to turn tokens into text ({err})") from err
        model.extractor = load_whisper_feature_extractor(str(folder), config=encoder_config)
    return model


class Transcriber:
    """Speech to text with a Whisper checkpoint, in JAX: audio files (or 16 kHz waveforms) in,
    transcripts out, greedy decoding in batches of ``batch_size``.

    ``language`` (``"en"``, ``"zh"``, ... or ``"<|zh|>"``) and ``task`` (``"transcribe"`` or
    ``"translate"``) become forced prompt tokens on multilingual checkpoints; without a language
    the model picks it. The PyTorch suite used a Chinese model for CH-SIMS (``language="zh"``).
    """

    def __init__(self, name_or_path: str | os.PathLike, *, language: Optional[str] = None,
                 task: Optional[str] = "transcribe", max_new_tokens: int = 128, batch_size: int = 8,
                 dtype=jnp.float32):
        self.model = load_whisper_asr(name_or_path)
        self.name = str(name_or_path)
        self.prompt = self.model.prompt(language=language, task=task)
        room = self.model.decoder_config.max_target_positions - len(self.prompt)
        self.max_new_tokens = min(int(max_new_tokens), room)
        self.batch_size = int(batch_size)
        self.dtype = dtype

    def tokens(self, input_features) -> np.ndarray:
        m = self.model
        return np.asarray(greedy_decode(
            m.params, jnp.asarray(input_features), encoder_config=m.encoder_config, decoder_config=m.decoder_config,
            prompt=self.prompt, max_new_tokens=self.max_new_tokens, eos_token_id=m.eos_token_id,
            pad_token_id=m.pad_token_id, suppress_tokens=m.suppress_tokens,
            begin_suppress_tokens=m.begin_suppress_tokens, language_tokens=m.language_tokens, dtype=self.dtype))

    def transcribe(self, audio: Sequence[str | os.PathLike | np.ndarray]) -> list[str]:
        """One transcript per input (a path read at 16 kHz mono, or a 16 kHz waveform). An
        unreadable file raises :class:`emojax.data.media.MediaError` naming it."""
        rate = int(getattr(self.model.extractor, "sampling_rate", 16000))
        waves = [np.asarray(a, np.float32) if isinstance(a, np.ndarray) else read_audio(a, rate) for a in audio]
        out: list[str] = []
        for start in range(0, len(waves), self.batch_size):
            chunk = waves[start:start + self.batch_size]
            pad = self.batch_size - len(chunk) if len(waves) > self.batch_size else 0
            mel, _ = whisper_preprocess(chunk + [chunk[-1]] * pad, self.model.extractor)
            ids = self.tokens(mel)[:len(chunk), len(self.prompt):]
            out.extend(t.strip() for t in self.model.tokenizer.batch_decode(ids.tolist(), skip_special_tokens=True))
        return out
