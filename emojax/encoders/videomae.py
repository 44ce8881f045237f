"""VideoMAE video encoder as a pure function over a parameter pytree.

    params, config = load_videomae("MCG-NJU/videomae-base")     # or a local folder
    tokens = videomae_apply(params, pixel_values, config=config)  # (batch, tokens, hidden)
    clip = videomae_pool(params, tokens, config=config)           # (batch, hidden)

The computation follows transformers' ``VideoMAEModel``:

* tubelets of ``tubelet_size`` frames x ``patch_size`` x ``patch_size`` pixels are projected to
  ``hidden_size`` (the strided ``Conv3d``, done as a reshape and one matrix product); tokens are
  ordered (time, row, column);
* plus a fixed sinusoidal position table (not a parameter);
* pre-LN ViT layers; the query and value projections have biases, the key projection none;
* ``last_hidden_state``: with ``use_mean_pooling`` (the fine-tuned checkpoints) the raw output of
  the last layer, otherwise after a final LayerNorm.

:func:`videomae_pool` is the clip vector the video classifier of transformers uses: with
``use_mean_pooling`` the token mean followed by ``fc_norm`` (present in classification
checkpoints; a plain mean when the checkpoint has none), otherwise the first token.

``config`` is a frozen dataclass: a static argument under jit. Parameters stay float32;
``dtype=jnp.bfloat16`` runs the matrix products in bfloat16 while softmax, layer norms and the
residual stream stay float32.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from emojax.encoders import core, hub

Params = dict[str, Any]

FC_NORM_EPS = 1e-5  # the classifier's fc_norm is a default nn.LayerNorm, not the config's eps


def _pair(value) -> tuple[int, int]:
    if isinstance(value, (list, tuple)):
        return int(value[0]), int(value[1])
    return int(value), int(value)


@dataclasses.dataclass(frozen=True)
class VideoMAEConfig:
    """Architecture of a VideoMAE encoder (hashable: a static argument under jit).

    Built from a Hugging Face ``config.json`` by :meth:`from_hf` (missing keys take transformers'
    defaults). ``image_size`` and ``patch_size`` are ``(height, width)``.
    """

    image_size: tuple[int, int] = (224, 224)
    patch_size: tuple[int, int] = (16, 16)
    num_channels: int = 3
    num_frames: int = 16
    tubelet_size: int = 2
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    qkv_bias: bool = True
    use_mean_pooling: bool = True
    dropout: float = 0.0
    attention_dropout: float = 0.0
    remat: bool = False  # recompute each layer's activations in the backward pass (saves memory)

    @property
    def grid(self) -> tuple[int, int, int]:
        """Tokens along (time, height, width)."""
        return (self.num_frames // self.tubelet_size, self.image_size[0] // self.patch_size[0],
                self.image_size[1] // self.patch_size[1])

    @property
    def num_tokens(self) -> int:
        t, h, w = self.grid
        return t * h * w

    @property
    def tubelet_dim(self) -> int:
        return self.num_channels * self.tubelet_size * self.patch_size[0] * self.patch_size[1]

    @classmethod
    def from_hf(cls, raw: dict) -> "VideoMAEConfig":
        d = cls()
        return cls(
            image_size=_pair(raw.get("image_size", d.image_size)),
            patch_size=_pair(raw.get("patch_size", d.patch_size)),
            num_channels=int(raw.get("num_channels", d.num_channels)),
            num_frames=int(raw.get("num_frames", d.num_frames)),
            tubelet_size=int(raw.get("tubelet_size", d.tubelet_size)),
            hidden_size=int(raw.get("hidden_size", d.hidden_size)),
            num_layers=int(raw.get("num_hidden_layers", d.num_layers)),
            num_heads=int(raw.get("num_attention_heads", d.num_heads)),
            intermediate_size=int(raw.get("intermediate_size", d.intermediate_size)),
            hidden_act=str(raw.get("hidden_act", d.hidden_act)),
            layer_norm_eps=float(raw.get("layer_norm_eps", d.layer_norm_eps)),
            qkv_bias=bool(raw.get("qkv_bias", d.qkv_bias)),
            use_mean_pooling=bool(raw.get("use_mean_pooling", d.use_mean_pooling)),
            dropout=float(raw.get("hidden_dropout_prob", d.dropout)),
            attention_dropout=float(raw.get("attention_probs_dropout_prob", d.attention_dropout)),
        )


# -- loading -----------------------------------------------------------------------------------

# Where the encoder's tensors may sit in a checkpoint (the prefixes, in the order tried).
STATE_PREFIXES = ("", "videomae.")


def load_videomae(name_or_path: str, **overrides) -> tuple[Params, VideoMAEConfig]:
    """Parameters (float32 pytree) and config of a VideoMAE checkpoint (folder or hub id).

    Reads ``VideoMAEModel`` checkpoints and those of task models (encoder under ``videomae.``;
    a classification checkpoint's ``fc_norm`` is kept for :func:`videomae_pool`, the pre-training
    decoder and classifier are ignored). ``overrides`` replace :class:`VideoMAEConfig` fields.
    """
    return core.load(FAMILY, name_or_path, **overrides)


def params_from_state(state: hub.StateReader, c: VideoMAEConfig) -> Params:
    """The parameter pytree from PyTorch-named tensors; dense weights stored ``(in, out)``.

    The ``Conv3d`` kernel ``(hidden, channels, tubelet, patch_h, patch_w)`` becomes a dense
    ``(channels * tubelet * patch_h * patch_w, hidden)`` matrix over flattened tubelets.
    """
    h = c.hidden_size
    norm = functools.partial(state.norm, size=h)

    kernel = state.take("embeddings.patch_embeddings.projection.weight",
                        (h, c.num_channels, c.tubelet_size) + tuple(c.patch_size))
    params = {
        "patch": {"w": jnp.asarray(kernel.reshape(h, -1).T),
                  "b": jnp.asarray(state.take("embeddings.patch_embeddings.projection.bias", (h,)))},
        "layers": [],
    }
    for n in range(c.num_layers):
        p = f"encoder.layer.{n}."
        layer = core.block_params(state, p, LAYER_TENSORS, h, c.intermediate_size, no_bias=("query", "key", "value"))
        if c.qkv_bias:  # query and value biases are tensors of their own; the key projection has none
            layer["query"]["b"] = jnp.asarray(state.take(p + "attention.attention.q_bias", (h,)))
            layer["value"]["b"] = jnp.asarray(state.take(p + "attention.attention.v_bias", (h,)))
        params["layers"].append(layer)
    if not c.use_mean_pooling:
        params["final_norm"] = norm("layernorm")
    elif state.has("fc_norm.weight"):
        params["fc_norm"] = norm("fc_norm")
    state.unused(ignore=("classifier.", "decoder.", "encoder_to_decoder.", "mask_token", "position_embeddings"))
    return params


# core.transformer_block parameter -> checkpoint tensor (under encoder.layer.{n}.)
LAYER_TENSORS = {"attn_norm": "layernorm_before", "query": "attention.attention.query",
                 "key": "attention.attention.key", "value": "attention.attention.value",
                 "attn_out": "attention.output.dense", "mlp_norm": "layernorm_after", "fc1": "intermediate.dense",
                 "fc2": "output.dense"}
FAMILY = core.register(core.Family(
    VideoMAEConfig, model_types=("videomae",), default_type="videomae", params_from_state=params_from_state,
    prefixes=STATE_PREFIXES, activations=(("hidden_act", "hidden_act"),)))


# -- computation -------------------------------------------------------------------------------

def sinusoid_table(num_positions: int, dim: int) -> np.ndarray:
    """``(num_positions, dim)`` float32: ``sin`` on even, ``cos`` on odd channels of
    ``pos / 10000 ** (2 * (j // 2) / dim)`` (computed in float64, as the reference does)."""
    pos = np.arange(num_positions, dtype=np.float64)[:, None]
    j = np.arange(dim)
    angles = pos / np.power(10000.0, 2 * (j // 2) / dim)
    table = np.where(j % 2 == 0, np.sin(angles), np.cos(angles))
    return table.astype(np.float32)


def tubelets(pixel_values, config: VideoMAEConfig):
    """``(batch, frames, channels, height, width)`` -> ``(batch, tokens, tubelet_dim)``, each row a
    tubelet flattened as (channel, frame, row, column), tokens in (time, row, column) order."""
    b = pixel_values.shape[0]
    t, gh, gw = config.grid
    ts, (ph, pw) = config.tubelet_size, config.patch_size
    x = pixel_values.reshape(b, t, ts, config.num_channels, gh, ph, gw, pw)
    x = x.transpose(0, 1, 4, 6, 3, 2, 5, 7)  # b, t, gh, gw | c, ts, ph, pw
    return x.reshape(b, t * gh * gw, config.tubelet_dim)


def _block(c: VideoMAEConfig) -> core.Block:
    return core.Block(num_heads=c.num_heads, eps=c.layer_norm_eps, activation=c.hidden_act, dropout=c.dropout,
                      attention_dropout=c.attention_dropout)


def _rngs(rng) -> tuple:
    """A layer's dropout keys for :func:`core.transformer_block`: three drawn (probabilities,
    attention output, MLP output; VideoMAE has no activation dropout), so that a seed drops what
    it dropped before the families shared one block."""
    if rng is None:
        return core.no_rngs()
    probs, attended, out = jax.random.split(rng, 3)
    return probs, attended, None, out


def videomae_apply(params: Params, pixel_values, *, config: VideoMAEConfig, dtype=jnp.float32,
                   deterministic: bool = True, rng: Optional[jax.Array] = None):
    """Token features ``(batch, tokens, hidden)`` float32, ``tokens`` =
    ``(frames // tubelet) * (height // patch) * (width // patch)``.

    ``pixel_values`` ``(batch, frames, channels, height, width)`` float, normalised as the
    checkpoint's image processor does; frames and size must match the config (the position table
    is fixed). ``dtype`` is the matmul dtype. Dropout (rates from the config) applies when
    ``deterministic`` is False and then needs ``rng``.
    """
    c = config
    expected = (c.num_frames, c.num_channels) + tuple(c.image_size)
    if pixel_values.ndim != 5 or tuple(pixel_values.shape[1:]) != expected:
        raise ValueError(f"pixel_values must be (batch, frames, channels, height, width) = (batch, "
                         f"{', '.join(map(str, expected))}) for this VideoMAE config, got {tuple(pixel_values.shape)}; "
                         "sample num_frames frames and resize to image_size")
    if not deterministic and rng is None and max(c.dropout, c.attention_dropout) > 0:
        raise ValueError("videomae_apply(deterministic=False) applies dropout and needs rng=jax.random.PRNGKey(...)")
    use_rng = rng is not None and not deterministic
    rngs = jax.random.split(rng, c.num_layers) if use_rng else [None] * c.num_layers
    x = core.dense(tubelets(pixel_values, c), params["patch"], dtype).astype(jnp.float32)
    x = x + jnp.asarray(sinusoid_table(c.num_tokens, c.hidden_size))[None]
    step, block = core.block_step(c.remat), _block(c)
    for n, layer in enumerate(params["layers"]):
        x = step(layer, x, block, dtype, _rngs(rngs[n]), deterministic)
    if "final_norm" in params:
        x = core.layer_norm(x, params["final_norm"], c.layer_norm_eps)
    return x


def videomae_pool(params: Params, hidden, *, config: VideoMAEConfig):
    """One vector per clip ``(batch, hidden)`` float32 from :func:`videomae_apply`'s output.

    With ``use_mean_pooling``: mean over tokens, then ``fc_norm`` when the checkpoint has it
    (as transformers' video classifier); otherwise the first token.
    """
    hidden = hidden.astype(jnp.float32)
    if not config.use_mean_pooling:
        return hidden[:, 0]
    pooled = hidden.mean(axis=1)
    if "fc_norm" in params:
        pooled = core.layer_norm(pooled, params["fc_norm"], FC_NORM_EPS)
    return pooled
