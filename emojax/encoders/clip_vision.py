"""CLIP vision tower as a pure function over a parameter pytree, per image and per video.

    params, config = load_clip_vision("openai/clip-vit-base-patch32")   # or a local folder
    tokens, pooled = clip_vision_apply(params, images, config=config)   # (B, 1 + patches, D), (B, D)
    clip = clip_video_features(params, frames, config=config)           # (B, D): mean over frames

The computation follows transformers' ``CLIPVisionModel``:

* non-overlapping patches projected by a bias-free strided convolution (done as a reshape and
  one matrix product), a learned class token in front, learned position embeddings;
* ``pre_layrnorm``, then pre-LN layers (``layer_norm1`` -> attention, ``layer_norm2`` -> MLP with
  ``quick_gelu`` by default);
* ``last_hidden_state`` is the output of the last layer (no final norm); ``pooler_output`` is
  ``post_layernorm`` of the class token.

Full ``CLIPModel`` checkpoints work too (``config.json`` with ``vision_config``); the text tower and
projections are ignored. ``config`` is a frozen dataclass: a static argument under jit.
Parameters stay float32; ``dtype=jnp.bfloat16`` runs the matrix products in bfloat16 while
softmax, layer norms and the residual stream stay float32.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp

from emojax.encoders import core, hub

Params = dict[str, Any]

VISION_TYPES = ("clip_vision_model", "clip")


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig:
    """Architecture of a CLIP vision tower (hashable: a static argument under jit).

    Built from a Hugging Face ``config.json`` (a ``clip_vision_model`` config, or the
    ``vision_config`` of a ``clip`` one) by :meth:`from_hf`; missing keys take transformers'
    defaults.
    """

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_layers: int = 12
    num_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 32
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    attention_dropout: float = 0.0
    remat: bool = False  # recompute each layer's activations in the backward pass (saves memory)

    @property
    def grid(self) -> int:
        """Patches along each side."""
        return self.image_size // self.patch_size

    @property
    def num_positions(self) -> int:
        """Tokens: the class token and the patches."""
        return self.grid ** 2 + 1

    @property
    def patch_dim(self) -> int:
        return self.num_channels * self.patch_size ** 2

    @classmethod
    def from_hf(cls, raw: dict) -> "CLIPVisionConfig":
        if raw.get("model_type") == "clip":
            raw = raw.get("vision_config") or {}
        d = cls()
        return cls(
            hidden_size=int(raw.get("hidden_size", d.hidden_size)),
            intermediate_size=int(raw.get("intermediate_size", d.intermediate_size)),
            num_layers=int(raw.get("num_hidden_layers", d.num_layers)),
            num_heads=int(raw.get("num_attention_heads", d.num_heads)),
            num_channels=int(raw.get("num_channels", d.num_channels)),
            image_size=int(raw.get("image_size", d.image_size)),
            patch_size=int(raw.get("patch_size", d.patch_size)),
            hidden_act=str(raw.get("hidden_act", d.hidden_act)),
            layer_norm_eps=float(raw.get("layer_norm_eps", d.layer_norm_eps)),
            attention_dropout=float(raw.get("attention_dropout", d.attention_dropout)),
        )


# -- loading -----------------------------------------------------------------------------------

# Where the encoder's tensors may sit in a checkpoint (the prefixes, in the order tried).
STATE_PREFIXES = ("vision_model.", "")


def load_clip_vision(name_or_path: str, **overrides) -> tuple[Params, CLIPVisionConfig]:
    """Parameters (float32 pytree) and config of a CLIP vision tower (folder or hub id).

    Reads ``CLIPVisionModel`` / ``CLIPModel`` checkpoints (tower under ``vision_model.``) in any
    format :func:`emojax.encoders.hub.load_state_dict` reads, Flax ``flax_model.msgpack``
    included. ``overrides`` replace :class:`CLIPVisionConfig` fields (e.g. ``remat=True``).
    """
    return core.load(FAMILY, name_or_path, **overrides)


def params_from_state(state: hub.StateReader, c: CLIPVisionConfig) -> Params:
    """The parameter pytree from PyTorch-named tensors; dense weights stored ``(in, out)``.

    The patch convolution ``(hidden, channels, patch, patch)`` becomes a dense
    ``(channels * patch * patch, hidden)`` matrix over flattened patches.
    """
    h = c.hidden_size
    norm = functools.partial(state.norm, size=h)

    kernel = state.take("embeddings.patch_embedding.weight", (h, c.num_channels, c.patch_size, c.patch_size))
    params = {
        "patch": jnp.asarray(kernel.reshape(h, -1).T),
        "class_token": jnp.asarray(state.take("embeddings.class_embedding", (h,))),
        "position": jnp.asarray(state.take("embeddings.position_embedding.weight", (c.num_positions, h))),
        "pre_norm": norm("pre_layrnorm"),
        "layers": [],
        "post_norm": norm("post_layernorm"),
    }
    for n in range(c.num_layers):
        params["layers"].append(core.block_params(state, f"encoder.layers.{n}.", LAYER_TENSORS, h,
                                                  c.intermediate_size))
    state.unused(ignore=("text_model.", "text_projection", "visual_projection", "logit_scale", "position_ids"))
    return params


# core.transformer_block parameter -> checkpoint tensor (under encoder.layers.{n}.)
LAYER_TENSORS = {"attn_norm": "layer_norm1", "query": "self_attn.q_proj", "key": "self_attn.k_proj",
                 "value": "self_attn.v_proj", "attn_out": "self_attn.out_proj", "mlp_norm": "layer_norm2",
                 "fc1": "mlp.fc1", "fc2": "mlp.fc2"}
FAMILY = core.register(core.Family(
    CLIPVisionConfig, model_types=VISION_TYPES, default_type="clip_vision_model", params_from_state=params_from_state,
    prefixes=STATE_PREFIXES, activations=(("hidden_act", "hidden_act"),)))


# -- computation -------------------------------------------------------------------------------

def patches(pixel_values, config: CLIPVisionConfig):
    """``(batch, channels, height, width)`` -> ``(batch, patches, patch_dim)``, each row a patch
    flattened as (channel, row, column), patches in row-major order."""
    b, g, p = pixel_values.shape[0], config.grid, config.patch_size
    x = pixel_values.reshape(b, config.num_channels, g, p, g, p)
    return x.transpose(0, 2, 4, 1, 3, 5).reshape(b, g * g, config.patch_dim)


def _block(c: CLIPVisionConfig) -> core.Block:
    return core.Block(num_heads=c.num_heads, eps=c.layer_norm_eps, activation=c.hidden_act,
                      attention_dropout=c.attention_dropout)


def clip_vision_apply(params: Params, pixel_values, *, config: CLIPVisionConfig, dtype=jnp.float32,
                      deterministic: bool = True, rng: Optional[jax.Array] = None):
    """``(last_hidden_state (batch, 1 + patches, hidden), pooler_output (batch, hidden))``, float32.

    ``pixel_values`` ``(batch, channels, image_size, image_size)`` float, normalised as the
    checkpoint's image processor does. ``dtype`` is the matmul dtype. Attention dropout (the
    config's only dropout) applies when ``deterministic`` is False and then needs ``rng``.
    """
    c = config
    expected = (c.num_channels, c.image_size, c.image_size)
    if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != expected:
        raise ValueError(f"pixel_values must be (batch, channels, height, width) = (batch, "
                         f"{', '.join(map(str, expected))}) for this CLIP config, got {tuple(pixel_values.shape)}; "
                         "resize and crop to image_size")
    if not deterministic and rng is None and c.attention_dropout > 0:
        raise ValueError("clip_vision_apply(deterministic=False) applies dropout and needs rng=jax.random.PRNGKey(...)")
    use_rng = rng is not None and not deterministic
    rngs = jax.random.split(rng, c.num_layers) if use_rng else [None] * c.num_layers
    batch = pixel_values.shape[0]
    x = jnp.dot(patches(pixel_values, c).astype(dtype), params["patch"].astype(dtype)).astype(jnp.float32)
    cls = jnp.broadcast_to(params["class_token"].astype(jnp.float32), (batch, 1, c.hidden_size))
    x = jnp.concatenate([cls, x], axis=1) + params["position"][None]
    x = core.layer_norm(x, params["pre_norm"], c.layer_norm_eps)
    step, block = core.block_step(c.remat), _block(c)
    for n, layer in enumerate(params["layers"]):  # CLIP's only dropout: on the attention probabilities
        x = step(layer, x, block, dtype, (rngs[n], None, None, None), deterministic)
    return x, core.layer_norm(x[:, 0], params["post_norm"], c.layer_norm_eps)


def clip_video_features(params: Params, frames, *, config: CLIPVisionConfig, pooling: str = "mean",
                        dtype=jnp.float32, deterministic: bool = True, rng: Optional[jax.Array] = None):
    """One vector per video ``(batch, hidden)`` float32: the pooled output of every frame, pooled
    over time.

    ``frames`` ``(batch, frames, channels, image_size, image_size)``; the frames run through
    :func:`clip_vision_apply` as one batch of ``batch * frames`` images. ``pooling``: ``"mean"``
    (temporal mean) or ``"max"`` (temporal max).
    """
    if pooling not in ("mean", "max"):
        raise ValueError(f"pooling must be 'mean' or 'max', got {pooling!r}")
    if frames.ndim != 5:
        raise ValueError(f"frames must be (batch, frames, channels, height, width), got {tuple(frames.shape)}")
    batch, count = frames.shape[:2]
    _, pooled = clip_vision_apply(params, frames.reshape((batch * count,) + frames.shape[2:]), config=config,
                                  dtype=dtype, deterministic=deterministic, rng=rng)
    pooled = pooled.reshape(batch, count, -1)
    return pooled.mean(axis=1) if pooling == "mean" else pooled.max(axis=1)
