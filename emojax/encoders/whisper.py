"""Whisper audio encoder as a pure function over a parameter pytree.

    params, config = load_whisper("openai/whisper-base")          # or a local folder
    extractor = load_whisper_feature_extractor("openai/whisper-base", config=config)
    mel, mel_mask = whisper_preprocess([wave_a, wave_b], extractor)   # (B, n_mels, 3000), (B, 3000)
    frames = whisper_apply(params, mel, config=config)            # (B, 1500, d_model)
    clip = whisper_pool(frames, mel_mask)                         # (B, d_model)

The computation follows the encoder of transformers' ``WhisperModel``:

* log-mel features ``(batch, n_mels, T)`` -> ``Conv1d(k=3, pad=1)`` -> GELU ->
  ``Conv1d(k=3, stride=2, pad=1)`` -> GELU, giving ``ceil(T / 2)`` frames;
* plus the checkpoint's position table ``embed_positions`` (sinusoids in the released models,
  frozen: no gradient flows into it; computed when a checkpoint lacks it);
* pre-LN layers: ``x + attn(self_attn_layer_norm(x))`` (the key projection has no bias), then
  ``x + fc2(act(fc1(final_layer_norm(x))))``;
* a final LayerNorm. Every LayerNorm has PyTorch's default eps ``1e-5``.

transformers insists on exactly ``2 * max_source_positions`` mel frames (3000: 30 s of audio);
here any ``T <= 3000`` works and uses the first ``ceil(T / 2)`` positions, which matches the
reference only at ``T = 3000``. Whisper has no attention mask: the padding of the 30 s window
(log-mel of silence) is attended to, as the model was trained. :func:`whisper_pool` averages the
frames that cover the real audio only.

**Preprocessing** is transformers' ``WhisperFeatureExtractor`` (``load_whisper_feature_extractor``
reads the checkpoint's ``preprocessor_config.json`` when there is one): 16 kHz mono audio, an
``n_fft=400`` / ``hop_length=160`` STFT, ``n_mels`` Slaney mel bins, ``log10`` clipped to 8 below
the maximum and rescaled as ``(x + 4) / 4``, padded (or cut) to 30 s. Its
``return_attention_mask=True`` output marks the mel frames of real audio.

``config`` is a frozen dataclass: a static argument under jit. Parameters stay float32;
``dtype=jnp.bfloat16`` runs the convolutions and matrix products in bfloat16 while softmax, layer
norms and the residual stream stay float32.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import math
import pathlib
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from emojax.encoders import core, hub

log = logging.getLogger(__name__)

Params = dict[str, Any]

NORM_EPS = 1e-5  # Whisper's LayerNorms are PyTorch defaults
SAMPLING_RATE = 16000


@dataclasses.dataclass(frozen=True)
class WhisperConfig:
    """Architecture of a Whisper encoder (hashable: a static argument under jit).

    Built from a Hugging Face ``config.json`` by :meth:`from_hf` (the ``encoder_*`` keys; missing
    keys take transformers' defaults). The decoder's settings are not kept.
    """

    num_mel_bins: int = 80
    hidden_size: int = 384          # d_model
    num_layers: int = 4             # encoder_layers
    num_heads: int = 6              # encoder_attention_heads
    ffn_dim: int = 1536             # encoder_ffn_dim
    max_source_positions: int = 1500
    activation: str = "gelu"        # activation_function
    dropout: float = 0.0
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    remat: bool = False  # recompute each layer's activations in the backward pass (saves memory)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def max_mel_frames(self) -> int:
        """Longest input (mel frames): two per position (the second convolution has stride 2)."""
        return 2 * self.max_source_positions

    @classmethod
    def from_hf(cls, raw: dict) -> "WhisperConfig":
        d = cls()
        return cls(
            num_mel_bins=int(raw.get("num_mel_bins", d.num_mel_bins)),
            hidden_size=int(raw.get("d_model", d.hidden_size)),
            num_layers=int(raw.get("encoder_layers", d.num_layers)),
            num_heads=int(raw.get("encoder_attention_heads", d.num_heads)),
            ffn_dim=int(raw.get("encoder_ffn_dim", d.ffn_dim)),
            max_source_positions=int(raw.get("max_source_positions", d.max_source_positions)),
            activation=str(raw.get("activation_function", d.activation)),
            dropout=float(raw.get("dropout", d.dropout) or 0.0),
            attention_dropout=float(raw.get("attention_dropout", d.attention_dropout) or 0.0),
            activation_dropout=float(raw.get("activation_dropout", d.activation_dropout) or 0.0),
        )


# -- loading -----------------------------------------------------------------------------------

# Where the encoder's tensors may sit in a checkpoint (the prefixes, in the order tried).
STATE_PREFIXES = ("", "model.")


def load_whisper(name_or_path: str, **overrides) -> tuple[Params, WhisperConfig]:
    """Parameters (float32 pytree) and config of a Whisper checkpoint's encoder (folder or hub id).

    Reads ``WhisperModel`` / ``WhisperForAudioClassification`` checkpoints (encoder under
    ``encoder.``) and ``WhisperForConditionalGeneration`` ones (under ``model.encoder.``), from
    ``model.safetensors`` (PyTorch names, sharded too) or ``flax_model.msgpack``; the decoder and
    heads are ignored. ``overrides`` replace :class:`WhisperConfig` fields (e.g. ``remat=True``).
    """
    return core.load(FAMILY, name_or_path, **overrides)


def params_from_state(state: hub.StateReader, c: WhisperConfig) -> Params:
    """The parameter pytree from PyTorch-named tensors.

    Dense weights are stored ``(in, out)``; convolution weights ``(out, in, window)`` become
    ``(window, in, out)``.
    """
    h = c.hidden_size

    def conv(name, n_in):
        kernel = state.take(f"{name}.weight", (h, n_in, 3))
        return {"w": jnp.asarray(kernel.transpose(2, 1, 0)), "b": jnp.asarray(state.take(f"{name}.bias", (h,)))}

    norm = functools.partial(state.norm, size=h)

    if state.has("encoder.embed_positions.weight"):
        positions = state.take("encoder.embed_positions.weight", (c.max_source_positions, h))
    else:
        log.info("%s: no encoder.embed_positions.weight; using Whisper's sinusoid table", state.source)
        positions = sinusoids(c.max_source_positions, h)
    params = {
        "conv1": conv("encoder.conv1", c.num_mel_bins),
        "conv2": conv("encoder.conv2", h),
        "positions": jnp.asarray(positions),
        "layers": [],
        "final_norm": norm("encoder.layer_norm"),
    }
    for n in range(c.num_layers):
        params["layers"].append(core.block_params(state, f"encoder.layers.{n}.", LAYER_TENSORS, h, c.ffn_dim,
                                                  no_bias=("key",)))
    state.unused(ignore=("decoder.", "proj_out.", "projector.", "classifier.", "layer_weights"))
    return params


# core.transformer_block parameter -> checkpoint tensor (under encoder.layers.{n}.)
LAYER_TENSORS = {"attn_norm": "self_attn_layer_norm", "query": "self_attn.q_proj", "key": "self_attn.k_proj",
                 "value": "self_attn.v_proj", "attn_out": "self_attn.out_proj", "mlp_norm": "final_layer_norm",
                 "fc1": "fc1", "fc2": "fc2"}
FAMILY = core.register(core.Family(
    WhisperConfig, model_types=("whisper",), default_type="whisper", params_from_state=params_from_state,
    prefixes=STATE_PREFIXES, activations=(("activation", "activation_function"),),
    head_keys=("d_model", "encoder_attention_heads")))


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> np.ndarray:
    """Whisper's ``(length, channels)`` float32 position table: ``sin`` in the first half of the
    channels, ``cos`` in the second, timescales geometric from 1 to ``max_timescale``."""
    if channels % 2:
        raise ValueError(f"sinusoid positions need an even number of channels, got {channels}")
    half = channels // 2
    inv_timescales = np.exp(-math.log(max_timescale) / (half - 1) * np.arange(half))
    angles = np.arange(length)[:, None] * inv_timescales[None, :]
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1).astype(np.float32)


# -- preprocessing -----------------------------------------------------------------------------

def load_whisper_feature_extractor(name_or_path: Optional[str] = None, *, config: Optional[WhisperConfig] = None):
    """transformers' ``WhisperFeatureExtractor`` for a checkpoint.

    The folder's ``preprocessor_config.json`` when it has one; otherwise the defaults (16 kHz,
    30 s window) with ``feature_size = config.num_mel_bins`` (80 unless given).
    """
    from transformers import WhisperFeatureExtractor  # transformers takes seconds to import

    if name_or_path is not None:
        folder = hub.resolve_model(name_or_path)
        if (pathlib.Path(folder) / "preprocessor_config.json").exists():
            return WhisperFeatureExtractor.from_pretrained(str(folder))
    return WhisperFeatureExtractor(feature_size=(config or WhisperConfig()).num_mel_bins)


def whisper_preprocess(waveforms: Sequence[np.ndarray], extractor, *,
                       sampling_rate: int = SAMPLING_RATE) -> tuple[np.ndarray, np.ndarray]:
    """``(input_features, mel_mask)``: log-mel ``(batch, n_mels, frames)`` float32 and the
    ``(batch, frames)`` int mask of the frames holding real audio, for 1-D mono waveforms at
    ``sampling_rate`` (the extractor's, 16 kHz for Whisper; resample before)."""
    waves = [np.asarray(w, dtype=np.float32).reshape(-1) for w in waveforms]
    out = extractor(waves, sampling_rate=sampling_rate, return_tensors="np", return_attention_mask=True)
    return np.asarray(out["input_features"], np.float32), np.asarray(out["attention_mask"])


# -- computation -------------------------------------------------------------------------------

def _conv(x, p, stride, dtype):
    """``(batch, time, in)`` -> ``(batch, ceil(time / stride), out)``: window 3, padding 1."""
    y = jax.lax.conv_general_dilated(x.astype(dtype), p["w"].astype(dtype), window_strides=(stride,),
                                     padding=[(1, 1)], dimension_numbers=("NWC", "WIO", "NWC"))
    return y + p["b"].astype(dtype)


def _block(c: WhisperConfig) -> core.Block:
    return core.Block(num_heads=c.num_heads, eps=NORM_EPS, activation=c.activation, dropout=c.dropout,
                      attention_dropout=c.attention_dropout, activation_dropout=c.activation_dropout)


def whisper_apply(params: Params, input_features, *, config: WhisperConfig, dtype=jnp.float32,
                  deterministic: bool = True, rng: Optional[jax.Array] = None):
    """Encoder frames ``(batch, ceil(T / 2), d_model)`` float32 (after the final LayerNorm).

    ``input_features`` ``(batch, n_mels, T)`` float log-mel features as
    ``WhisperFeatureExtractor`` makes them, ``T <= 2 * max_source_positions`` (3000). ``dtype`` is
    the convolution / matmul dtype (float32 or bfloat16). Dropout (rates from the config) applies
    when ``deterministic`` is False and then needs ``rng``.
    """
    c = config
    if input_features.ndim != 3 or input_features.shape[1] != c.num_mel_bins:
        raise ValueError(f"input_features must be (batch, n_mels, frames) with n_mels = {c.num_mel_bins} for "
                         f"this Whisper config, got shape {tuple(input_features.shape)}; make them with "
                         "WhisperFeatureExtractor (feature_size = num_mel_bins)")
    frames = input_features.shape[2]
    if not 1 <= frames <= c.max_mel_frames:
        raise ValueError(f"input of {frames} mel frames: this Whisper encoder takes 1 to {c.max_mel_frames} "
                         f"(2 * max_source_positions = {2 * c.max_source_positions}); cut the audio to 30 s windows")
    rates = (c.dropout, c.attention_dropout, c.activation_dropout)
    if not deterministic and rng is None and max(rates) > 0:
        raise ValueError("whisper_apply(deterministic=False) applies dropout and needs rng=jax.random.PRNGKey(...)")
    use_rng = rng is not None and not deterministic
    rngs = jax.random.split(rng, c.num_layers + 1) if use_rng else [None] * (c.num_layers + 1)

    act = core.ACTIVATIONS["gelu"]  # the stem's activation is GELU whatever activation_function says
    x = act(_conv(jnp.swapaxes(input_features, 1, 2), params["conv1"], 1, dtype))
    x = act(_conv(x, params["conv2"], 2, dtype)).astype(jnp.float32)
    positions = jax.lax.stop_gradient(params["positions"])  # frozen, as in transformers
    x = x + positions[: x.shape[1]].astype(jnp.float32)[None]
    x = core.dropout(x, c.dropout, rngs[0], deterministic)
    step, block = core.block_step(c.remat), _block(c)
    for n, layer in enumerate(params["layers"]):
        x = step(layer, x, block, dtype, core.split_rngs(rngs[n + 1]), deterministic)
    return core.layer_norm(x, params["final_norm"], NORM_EPS)


def whisper_frame_lengths(mel_lengths):
    """Encoder frames covering ``mel_lengths`` mel frames of real audio: ``ceil(n / 2)`` (the
    stride-2 convolution halves the frame count; at least 1)."""
    return jnp.maximum((jnp.asarray(mel_lengths) + 1) // 2, 1)


def whisper_frame_mask(mel_mask, num_frames: int):
    """``(batch, num_frames)`` bool: the encoder frames of real audio, from the extractor's
    ``(batch, mel_frames)`` attention mask."""
    lengths = whisper_frame_lengths(jnp.asarray(mel_mask).astype(jnp.int32).sum(-1))
    return jnp.arange(num_frames)[None, :] < lengths[:, None]


def whisper_pool(hidden, mel_mask=None):
    """One vector per clip ``(batch, d_model)`` float32: the mean of :func:`whisper_apply`'s frames
    over those covering the real audio (``mel_mask``: the feature extractor's ``(batch, mel
    frames)`` attention mask; None averages all frames, the 30 s padding included)."""
    hidden = hidden.astype(jnp.float32)
    if mel_mask is None:
        return hidden.mean(axis=1)
    weights = whisper_frame_mask(mel_mask, hidden.shape[1]).astype(jnp.float32)
    return (hidden * weights[..., None]).sum(axis=1) / weights.sum(axis=1, keepdims=True)
