"""wav2vec 2.0 and data2vec-audio encoders as pure functions over a parameter pytree.

    params, config = load_wav2vec2("facebook/wav2vec2-base")     # or data2vec-audio, or a folder
    extractor = load_wav2vec2_feature_extractor("facebook/wav2vec2-base")
    audio, mask = wav2vec2_preprocess([wave_a, wave_b], extractor)  # (B, samples), (B, samples)
    frames = wav2vec2_apply(params, audio, mask, config=config)     # (B, frames, hidden)
    clip = wav2vec2_pool(frames, mask, config=config)               # (B, hidden): mean of valid frames

The computation follows transformers' ``Wav2Vec2Model`` and ``Data2VecAudioModel``:

* **feature encoder**: strided ``Conv1d`` layers over the raw waveform (no padding), each
  followed by GELU. ``feat_extract_norm="group"`` (wav2vec2-base): the first layer has a
  per-channel GroupNorm over time (statistics of the whole padded row), the others no norm;
  ``"layer"`` (large / "lv60" checkpoints and every data2vec-audio one): a LayerNorm over channels
  after each convolution. These norms have PyTorch's default eps ``1e-5``;
* **feature projection**: LayerNorm (``extract_features``), then a Linear to ``hidden_size``;
* **positional convolution**, added to the (padding-zeroed) frames. wav2vec2: one grouped
  ``Conv1d`` of width ``num_conv_pos_embeddings`` with weight normalisation over the window axis
  (``weight = g * v / ||v||``, the norm over output and input channels per window position; the
  newer ``parametrizations.weight.original0/1`` names, the older ``weight_g`` / ``weight_v`` and a
  plain ``weight`` are all read), last output dropped when the width is even, GELU. data2vec-audio:
  ``num_conv_pos_embeddings`` such convolutions of width ``conv_pos_kernel_size`` (no weight
  norm), each followed by a LayerNorm without parameters and GELU;
* **transformer**: ``do_stable_layer_norm=False`` (wav2vec2-base, data2vec-audio): LayerNorm of
  the input, then post-LN layers ``LN(x + attn(x))``, ``LN(x + ffn(x))``; ``True`` (large):
  pre-LN layers ``x + attn(LN(x))``, ``x + ffn(LN(x))`` and a final LayerNorm.

``attention_mask`` marks the real audio samples; frames past each row's
:func:`feature_lengths` are zeroed before the positional convolution and masked out as attention
keys, exactly as transformers does. So, with the layer-norm feature encoder and the single
positional convolution (wav2vec2 large), a padded row's valid frames equal those of the row run
alone; with the group-norm feature encoder the padding enters the GroupNorm statistics, and with
data2vec-audio's stacked positional convolutions it leaks into the last frames (both also in the
reference). SpecAugment masking and LayerDrop (training-time tricks) are not applied.

**Preprocessing** is transformers' ``Wav2Vec2FeatureExtractor`` (``load_wav2vec2_feature_extractor``
reads the checkpoint's ``preprocessor_config.json`` when there is one): 16 kHz mono audio,
normalised per utterance to zero mean and unit variance (``do_normalize``), zero-padded to the
longest in the batch, with the sample mask.

``config`` is a frozen dataclass: a static argument under jit. Parameters stay float32;
``dtype=jnp.bfloat16`` runs the convolutions and matrix products in bfloat16 while softmax, norms
and the residual stream stay float32.
"""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from emojax.encoders import core, hub

Params = dict[str, Any]

FAMILIES = ("wav2vec2", "data2vec-audio")
CONV_NORM_EPS = 1e-5  # feature-encoder Group/LayerNorms and data2vec's positional LayerNorms: PyTorch defaults
SAMPLING_RATE = 16000
POOLINGS = ("mean", "first")


@dataclasses.dataclass(frozen=True)
class Wav2Vec2Config:
    """Architecture of a wav2vec2 / data2vec-audio encoder (hashable: a static argument under jit).

    Built from a Hugging Face ``config.json`` by :meth:`from_hf` (missing keys take transformers'
    defaults). ``dropout`` is the config's ``hidden_dropout``.
    """

    model_type: str = "wav2vec2"
    conv_dim: tuple[int, ...] = (512,) * 7
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    conv_bias: bool = False
    feat_extract_norm: str = "group"
    feat_extract_activation: str = "gelu"
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    do_stable_layer_norm: bool = False
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    conv_pos_kernel_size: int = 19  # data2vec-audio only
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.1
    feat_proj_dropout: float = 0.0
    remat: bool = False  # recompute each layer's activations in the backward pass (saves memory)

    @property
    def is_data2vec(self) -> bool:
        return self.model_type == "data2vec-audio"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def pos_conv_width(self) -> int:
        """Window of each positional convolution."""
        return self.conv_pos_kernel_size if self.is_data2vec else self.num_conv_pos_embeddings

    @property
    def pos_conv_layers(self) -> int:
        """How many positional convolutions: a stack for data2vec-audio, one for wav2vec2."""
        return self.num_conv_pos_embeddings if self.is_data2vec else 1

    @property
    def receptive_field(self) -> int:
        """Fewest samples that give one frame."""
        length = 1
        for kernel, stride in reversed(list(zip(self.conv_kernel, self.conv_stride))):
            length = (length - 1) * stride + kernel
        return length

    @classmethod
    def from_hf(cls, raw: dict) -> "Wav2Vec2Config":
        d = cls()
        model_type = str(raw.get("model_type", d.model_type))
        data2vec = model_type == "data2vec-audio"

        def ints(key, default):
            return tuple(int(v) for v in raw.get(key, default))

        return cls(
            model_type=model_type,
            conv_dim=ints("conv_dim", d.conv_dim),
            conv_kernel=ints("conv_kernel", d.conv_kernel),
            conv_stride=ints("conv_stride", d.conv_stride),
            conv_bias=bool(raw.get("conv_bias", d.conv_bias)),
            # data2vec-audio always has the layer-norm feature encoder and post-LN layers
            feat_extract_norm="layer" if data2vec else str(raw.get("feat_extract_norm", d.feat_extract_norm)),
            feat_extract_activation=str(raw.get("feat_extract_activation", d.feat_extract_activation)),
            hidden_size=int(raw.get("hidden_size", d.hidden_size)),
            num_layers=int(raw.get("num_hidden_layers", d.num_layers)),
            num_heads=int(raw.get("num_attention_heads", d.num_heads)),
            intermediate_size=int(raw.get("intermediate_size", d.intermediate_size)),
            hidden_act=str(raw.get("hidden_act", d.hidden_act)),
            layer_norm_eps=float(raw.get("layer_norm_eps", d.layer_norm_eps)),
            do_stable_layer_norm=False if data2vec else bool(raw.get("do_stable_layer_norm", d.do_stable_layer_norm)),
            num_conv_pos_embeddings=int(raw.get("num_conv_pos_embeddings",
                                                5 if data2vec else d.num_conv_pos_embeddings)),
            num_conv_pos_embedding_groups=int(raw.get("num_conv_pos_embedding_groups",
                                                      d.num_conv_pos_embedding_groups)),
            conv_pos_kernel_size=int(raw.get("conv_pos_kernel_size", d.conv_pos_kernel_size)),
            dropout=float(raw.get("hidden_dropout", d.dropout) or 0.0),
            attention_dropout=float(raw.get("attention_dropout", d.attention_dropout) or 0.0),
            activation_dropout=float(raw.get("activation_dropout", d.activation_dropout) or 0.0),
            feat_proj_dropout=float(raw.get("feat_proj_dropout", d.feat_proj_dropout) or 0.0),
        )


# -- loading -----------------------------------------------------------------------------------

# Where the encoder's tensors may sit in a checkpoint (the prefixes, in the order tried).
STATE_PREFIXES = ("", "wav2vec2.", "data2vec_audio.")


def load_wav2vec2(name_or_path: str, **overrides) -> tuple[Params, Wav2Vec2Config]:
    """Parameters (float32 pytree) and config of a wav2vec2 or data2vec-audio checkpoint.

    ``config.json``'s ``model_type`` picks the family. Reads base-model checkpoints and task
    checkpoints (encoder under ``wav2vec2.`` / ``data2vec_audio.``; CTC, classification and
    pre-training heads are ignored), from ``model.safetensors`` (PyTorch names, sharded too) or
    ``flax_model.msgpack``. ``overrides`` replace :class:`Wav2Vec2Config` fields.
    """
    return core.load(FAMILY, name_or_path, **overrides)


def _check(raw: dict, config: Wav2Vec2Config, where) -> None:
    """Settings this reader does not implement, or inconsistent ones, named (beyond the checks of
    :func:`emojax.encoders.core.open_checkpoint`)."""
    if raw.get("add_adapter"):
        raise hub.WeightError(f"{where}: add_adapter=true (the convolutional adapter after the encoder) is not "
                              "supported")
    if raw.get("adapter_attn_dim") is not None:
        raise hub.WeightError(f"{where}: adapter_attn_dim is set (per-layer attention adapters, as in MMS) and "
                              "they are not supported")
    if config.feat_extract_norm not in ("group", "layer"):
        raise hub.WeightError(f"{where}: feat_extract_norm {config.feat_extract_norm!r} is not 'group' or 'layer'")
    if not len(config.conv_dim) == len(config.conv_kernel) == len(config.conv_stride):
        raise hub.WeightError(f"{where}: conv_dim, conv_kernel and conv_stride differ in length")
    if config.hidden_size % config.num_conv_pos_embedding_groups:
        raise hub.WeightError(f"{where}: hidden_size {config.hidden_size} is not a multiple of "
                              f"num_conv_pos_embedding_groups {config.num_conv_pos_embedding_groups}")


def _weight_norm_params(state: hub.StateReader, name: str, shape: tuple[int, int, int]) -> dict:
    """``{"g": (window,), "v": (window, in, out)}`` of a weight-normalised (``dim=2``) convolution,
    from whichever naming the checkpoint uses."""
    out_dim, in_dim, width = shape
    for g_name, v_name in ((f"{name}.parametrizations.weight.original0", f"{name}.parametrizations.weight.original1"),
                           (f"{name}.weight_g", f"{name}.weight_v")):
        if state.has(g_name):
            g = state.take(g_name, (1, 1, width)).reshape(width)
            v = state.take(v_name, shape)
            break
    else:
        if not state.has(f"{name}.weight"):  # report the current PyTorch name as the missing one
            state.take(f"{name}.parametrizations.weight.original0", (1, 1, width))
        v = state.take(f"{name}.weight", shape)  # weight norm already folded in: g = ||v||
        g = np.sqrt(np.square(v.astype(np.float64)).sum(axis=(0, 1))).astype(np.float32)
    return {"g": jnp.asarray(g), "v": jnp.asarray(v.transpose(2, 1, 0))}


def params_from_state(state: hub.StateReader, c: Wav2Vec2Config) -> Params:
    """The parameter pytree from PyTorch-named tensors.

    Dense weights are stored ``(in, out)``; convolution weights ``(out, in / groups, window)``
    become ``(window, in / groups, out)``.
    """
    h = c.hidden_size
    norm = state.norm

    conv_layers = []
    for n, (dim, width) in enumerate(zip(c.conv_dim, c.conv_kernel)):
        p = f"feature_extractor.conv_layers.{n}."
        n_in = c.conv_dim[n - 1] if n else 1
        layer = {"w": jnp.asarray(state.take(p + "conv.weight", (dim, n_in, width)).transpose(2, 1, 0))}
        if c.conv_bias:
            layer["b"] = jnp.asarray(state.take(p + "conv.bias", (dim,)))
        if c.feat_extract_norm == "layer" or n == 0:  # group norm: first layer only
            layer["norm"] = norm(p + "layer_norm", dim)
        conv_layers.append(layer)

    groups = c.num_conv_pos_embedding_groups
    pos_shape = (h, h // groups, c.pos_conv_width)
    if c.is_data2vec:
        pos_conv = [{"w": jnp.asarray(state.take(f"encoder.pos_conv_embed.layers.{n}.conv.weight",
                                                 pos_shape).transpose(2, 1, 0)),
                     "b": jnp.asarray(state.take(f"encoder.pos_conv_embed.layers.{n}.conv.bias", (h,)))}
                    for n in range(c.pos_conv_layers)]
    else:
        pos_conv = _weight_norm_params(state, "encoder.pos_conv_embed.conv", pos_shape)
        pos_conv["b"] = jnp.asarray(state.take("encoder.pos_conv_embed.conv.bias", (h,)))

    params = {
        "conv_layers": conv_layers,
        "projection_norm": norm("feature_projection.layer_norm", c.conv_dim[-1]),
        "projection": state.dense("feature_projection.projection", c.conv_dim[-1], h),
        "pos_conv": pos_conv,
        "encoder_norm": norm("encoder.layer_norm", h),
        "layers": [],
    }
    for n in range(c.num_layers):
        params["layers"].append(core.block_params(state, f"encoder.layers.{n}.", LAYER_TENSORS, h,
                                                  c.intermediate_size))
    state.unused(ignore=("masked_spec_embed", "quantizer.", "project_hid.", "project_q.", "lm_head.", "projector.",
                         "classifier.", "layer_weights", "tdnn.", "objective.",
                         # the x-vector head's top-level Linear is also called feature_extractor
                         "feature_extractor.weight", "feature_extractor.bias"))
    return params


# core.transformer_block parameter -> checkpoint tensor (under encoder.layers.{n}.)
LAYER_TENSORS = {"attn_norm": "layer_norm", "query": "attention.q_proj", "key": "attention.k_proj",
                 "value": "attention.v_proj", "attn_out": "attention.out_proj", "mlp_norm": "final_layer_norm",
                 "fc1": "feed_forward.intermediate_dense", "fc2": "feed_forward.output_dense"}
FAMILY = core.register(core.Family(
    Wav2Vec2Config, model_types=FAMILIES, default_type=None, params_from_state=params_from_state,
    prefixes=STATE_PREFIXES, activations=(("hidden_act", "hidden_act"), ("feat_extract_activation",
                                                                         "feat_extract_activation")),
    check=_check))


# -- preprocessing -----------------------------------------------------------------------------

def load_wav2vec2_feature_extractor(name_or_path: Optional[str] = None):
    """transformers' ``Wav2Vec2FeatureExtractor`` for a checkpoint: the folder's
    ``preprocessor_config.json`` when it has one, otherwise 16 kHz with ``do_normalize``."""
    from transformers import Wav2Vec2FeatureExtractor  # transformers takes seconds to import

    if name_or_path is not None:
        folder = hub.resolve_model(name_or_path)
        if (pathlib.Path(folder) / "preprocessor_config.json").exists():
            return Wav2Vec2FeatureExtractor.from_pretrained(str(folder))
    return Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SAMPLING_RATE, padding_value=0.0,
                                    do_normalize=True, return_attention_mask=True)


def wav2vec2_preprocess(waveforms: Sequence[np.ndarray], extractor, *,
                        sampling_rate: int = SAMPLING_RATE) -> tuple[np.ndarray, np.ndarray]:
    """``(input_values, attention_mask)``: ``(batch, samples)`` float32 normalised audio,
    zero-padded to the longest, and its int sample mask, for 1-D mono waveforms at
    ``sampling_rate`` (the extractor's, 16 kHz; resample before).

    Group-norm checkpoints (wav2vec2-base) were trained on unpadded audio and transformers
    advises not to pass them the mask; the mask still tells :func:`wav2vec2_pool` the valid frames.
    """
    waves = [np.asarray(w, dtype=np.float32).reshape(-1) for w in waveforms]
    out = extractor(waves, sampling_rate=sampling_rate, padding="longest", return_tensors="np",
                    return_attention_mask=True)
    return np.asarray(out["input_values"], np.float32), np.asarray(out["attention_mask"])


# -- computation -------------------------------------------------------------------------------

def _group_norm_per_channel(x, p, eps):
    """GroupNorm with one group per channel: each channel of each row normalised over time."""
    x = x.astype(jnp.float32)
    mean = x.mean(1, keepdims=True)
    var = jnp.square(x - mean).mean(1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * p["scale"] + p["bias"]


def _conv(x, kernel, bias, *, stride=1, padding=0, groups=1, dtype=jnp.float32):
    """``(batch, time, in)`` with a ``(window, in / groups, out)`` kernel -> ``(batch, time', out)``."""
    y = jax.lax.conv_general_dilated(x.astype(dtype), kernel.astype(dtype), window_strides=(stride,),
                                     padding=[(padding, padding)], dimension_numbers=("NWC", "WIO", "NWC"),
                                     feature_group_count=groups)
    return y if bias is None else y + bias.astype(dtype)


def feature_lengths(sample_lengths, config: Wav2Vec2Config):
    """Frames the feature encoder makes from ``sample_lengths`` samples (int or int array):
    ``floor((n - kernel) / stride) + 1`` per convolution, never below 0."""
    lengths = sample_lengths
    for kernel, stride in zip(config.conv_kernel, config.conv_stride):
        lengths = (lengths - kernel) // stride + 1
    if isinstance(lengths, (int, np.integer)):
        return max(int(lengths), 0)
    return jnp.maximum(jnp.asarray(lengths), 0)


def frame_mask(attention_mask, num_frames: int, config: Wav2Vec2Config):
    """``(batch, num_frames)`` bool: frames made from real audio only, from the ``(batch,
    samples)`` sample mask (its count of ones per row, as transformers computes it)."""
    lengths = feature_lengths(jnp.asarray(attention_mask).astype(jnp.int32).sum(-1), config)
    return jnp.arange(num_frames)[None, :] < lengths[:, None]


def feature_encoder(params: Params, input_values, *, config: Wav2Vec2Config, dtype=jnp.float32):
    """The convolutional feature encoder: ``(batch, samples)`` -> ``(batch, frames, conv_dim[-1])``
    float32 (before the feature projection)."""
    c = config
    act = core.ACTIVATIONS[c.feat_extract_activation]
    x = input_values[:, :, None]
    for n, (layer, stride) in enumerate(zip(params["conv_layers"], c.conv_stride)):
        x = _conv(x, layer["w"], layer.get("b"), stride=stride, dtype=dtype)
        if c.feat_extract_norm == "layer":
            x = core.layer_norm(x, layer["norm"], CONV_NORM_EPS)
        elif n == 0:
            x = _group_norm_per_channel(x, layer["norm"], CONV_NORM_EPS)
        x = act(x.astype(dtype))
    return x.astype(jnp.float32)


def _positions(params: Params, x, c: Wav2Vec2Config, dtype):
    """The positional convolution(s) of ``x`` ``(batch, frames, hidden)`` float32."""
    act = core.ACTIVATIONS[c.feat_extract_activation]
    width, groups = c.pos_conv_width, c.num_conv_pos_embedding_groups
    trim = 1 if width % 2 == 0 else 0  # "same" length: an even window gives one frame too many
    if c.is_data2vec:
        for layer in params["pos_conv"]:
            x = _conv(x, layer["w"], layer["b"], padding=width // 2, groups=groups, dtype=dtype)
            x = x[:, : x.shape[1] - trim]
            x = act(core.layer_norm(x, None, CONV_NORM_EPS).astype(dtype))
        return x.astype(jnp.float32)
    p = params["pos_conv"]
    v = p["v"]  # (window, in / groups, out)
    kernel = v * (p["g"] / jnp.sqrt(jnp.square(v).sum(axis=(1, 2))))[:, None, None]
    x = _conv(x, kernel, p["b"], padding=width // 2, groups=groups, dtype=dtype)
    return act(x[:, : x.shape[1] - trim]).astype(jnp.float32)


def _block(c: Wav2Vec2Config) -> core.Block:
    return core.Block(num_heads=c.num_heads, eps=c.layer_norm_eps, activation=c.hidden_act,
                      pre_norm=c.do_stable_layer_norm, dropout=c.dropout, attention_dropout=c.attention_dropout,
                      activation_dropout=c.activation_dropout)


def wav2vec2_apply(params: Params, input_values, attention_mask=None, *, config: Wav2Vec2Config,
                   dtype=jnp.float32, deterministic: bool = True, rng: Optional[jax.Array] = None,
                   return_extract_features: bool = False):
    """Last hidden state ``(batch, frames, hidden)`` float32, ``frames = feature_lengths(samples)``.

    ``input_values`` ``(batch, samples)`` float: 16 kHz audio as ``Wav2Vec2FeatureExtractor``
    makes it. ``attention_mask`` ``(batch, samples)``: 1 on real audio, 0 on padding (None: all
    real). With ``return_extract_features`` also returns transformers' ``extract_features``
    ``(batch, frames, conv_dim[-1])`` (the feature projection's LayerNorm output). ``dtype`` is the
    convolution / matmul dtype. Dropout (rates from the config) applies when ``deterministic`` is
    False and then needs ``rng``.
    """
    c = config
    if input_values.ndim != 2:
        raise ValueError(f"input_values must be (batch, samples) mono audio, got shape {tuple(input_values.shape)}")
    if input_values.shape[1] < c.receptive_field:
        raise ValueError(f"input of {input_values.shape[1]} samples is shorter than the {c.receptive_field} "
                         f"samples one {c.model_type} frame needs; pad the audio")
    if attention_mask is not None and tuple(attention_mask.shape) != tuple(input_values.shape):
        raise ValueError(f"attention_mask must have the shape of input_values {tuple(input_values.shape)}, got "
                         f"{tuple(attention_mask.shape)}")
    rates = (c.dropout, c.attention_dropout, c.activation_dropout, c.feat_proj_dropout)
    if not deterministic and rng is None and max(rates) > 0:
        raise ValueError("wav2vec2_apply(deterministic=False) applies dropout and needs rng=jax.random.PRNGKey(...)")
    use_rng = rng is not None and not deterministic
    rngs = jax.random.split(rng, c.num_layers + 2) if use_rng else [None] * (c.num_layers + 2)

    features = feature_encoder(params, input_values, config=c, dtype=dtype)
    extract = core.layer_norm(features, params["projection_norm"], c.layer_norm_eps)
    x = core.dense(extract, params["projection"], dtype).astype(jnp.float32)
    x = core.dropout(x, c.feat_proj_dropout, rngs[0], deterministic)

    mask = None
    if attention_mask is not None:
        valid = frame_mask(attention_mask, x.shape[1], c)
        x = jnp.where(valid[..., None], x, 0.0)  # padding frames are zero before the positional conv
        mask = core.Mask(keys=valid)  # and are not attended to
    x = x + _positions(params, x, c, dtype)
    if not c.do_stable_layer_norm:
        x = core.layer_norm(x, params["encoder_norm"], c.layer_norm_eps)
    x = core.dropout(x, c.dropout, rngs[1], deterministic)
    step, block = core.block_step(c.remat), _block(c)
    for n, layer in enumerate(params["layers"]):
        x = step(layer, x, block, dtype, core.split_rngs(rngs[n + 2]), deterministic, mask)
    if c.do_stable_layer_norm:
        x = core.layer_norm(x, params["encoder_norm"], c.layer_norm_eps)
    return (x, extract) if return_extract_features else x


def wav2vec2_pool(hidden, attention_mask=None, *, config: Wav2Vec2Config, pooling: str = "mean"):
    """One vector per clip ``(batch, hidden)`` float32 from :func:`wav2vec2_apply`'s output.

    ``"mean"``: the mean over the frames of real audio (``attention_mask`` is the ``(batch,
    samples)`` sample mask; None: all frames), as transformers' sequence classifier pools;
    ``"first"``: the first frame.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling {pooling!r} is not one of {POOLINGS}")
    hidden = hidden.astype(jnp.float32)
    if pooling == "first":
        return hidden[:, 0]
    if attention_mask is None:
        return hidden.mean(axis=1)
    weights = frame_mask(attention_mask, hidden.shape[1], config).astype(jnp.float32)
    return (hidden * weights[..., None]).sum(axis=1) / jnp.maximum(weights.sum(axis=1, keepdims=True), 1.0)
