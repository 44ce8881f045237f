"""Fusion layers: a mapping modality -> ``(B, D_m)`` features in, ``(B, F)`` fused features out.

Every fusion module is called as ``module(features, deterministic=..., batch_mask=None)`` and
returns ``(fused (B, F), aux_loss)``; ``aux_loss`` is a float32 scalar, zero for layers without
one and, for the disentanglement fusion, nonzero only in training. Build one by name with
:func:`build_fusion`; :func:`fusion_output_dim` gives ``F`` for the same arguments.

Registry (``name`` -> the PyTorch suite's layer):

=====================  ===========================================  =============================
``concat``             ``VallinaFusionLayer`` (concat)              ``out_features``/``output_dim``
``mean``               ``VallinaFusionLayer(method="mean")``        ``out_features``/``output_dim``
``self-attention``     ``SelfAttentionFusionLayer``                 ``out_features``/``output_dim``
``cross-attention``    ``CrossAttentionFusionLayer``                sum of the input sizes
``concat-projector``   ``ConcatFusionLayer`` (deep projector)       sum of the input sizes
``tensor``             ``TensorFusionLayer`` (TFN)                  see :class:`TensorFusion`
``low-rank``           ``LowRankFusionLayer`` (LMF)                 ``out_features``/``output_dim``
``moe``                ``ConcatFusionMoE``                          ``out_features``/``output_dim``
``multihead-moe``      ``MultiHeadFusionMoE``                       ``out_features``/``output_dim``
``disentanglement``    ``DisentanglementFusion`` ("MDN"), and with  ``shared (M-1) + private``
                       ``parts="private"``/``"shared"`` its halves
=====================  ===========================================  =============================

``out_features`` (an option) fixes a layer's output size regardless of the ``output_dim`` the
caller passes; the suite's ``vallina`` presets use it for their size 128.

RNG streams in training (``deterministic=False``): ``dropout`` (dropout of projectors and
attention blocks) and ``router`` (noise of the noisy routers of the disentanglement fusion and of
``noisy=True`` mixtures). Evaluation needs no RNG.

Attention layers take ``batch_as_sequence`` (default ``True``, the suite's attention across the
batch; see :mod:`emojax.model.layers`) and an optional ``batch_mask (B,) bool`` that keeps padding rows
out of the keys in that mode.

Missing modalities: the layers here expect every configured modality. The head
(:class:`emojax.model.model.EmotionModel`) puts its learned placeholder in place of an absent modality
and draws the training-time modality dropout before calling the fusion.
"""
from __future__ import annotations

from typing import Callable, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from emojax.model.layers import CrossAttention, MultiheadAttention, NoisyRouter, Projector, SelfAttentionProjector


def _zero():
    return jnp.zeros((), jnp.float32)


def _concat(features: Mapping, names) -> jax.Array:
    return jnp.concatenate([features[m] for m in names], axis=-1)


def _check_features(features: Mapping, modalities, layer: str) -> None:
    missing = [m for m in modalities if m not in features]
    if missing:
        raise KeyError(f"fusion {layer}: no features for modality {', '.join(missing)} (got {', '.join(features)}); "
                       "give every configured modality, with a placeholder for absent ones "
                       "(as emojax.model.model.EmotionModel does)")


# ---------------------------------------------------------------------------------------------
# Concatenation and mean (the suite's VallinaFusionLayer), deep concat projector
# ---------------------------------------------------------------------------------------------
class ConcatFusion(nn.Module):
    """``Projector(depth)`` over the concatenation of the modalities (``modalities`` order), or
    with ``method="mean"`` over their mean (equal sizes needed): ``(B, output_dim)``."""

    modalities: tuple[str, ...]
    output_dim: int
    depth: int = 1
    dropout: float = 0.1
    method: str = "concat"

    @nn.compact
    def __call__(self, features: Mapping, *, deterministic: bool = True, batch_mask=None):
        _check_features(features, self.modalities, self.method)
        if self.method == "mean":
            sizes = {m: features[m].shape[-1] for m in self.modalities}
            if len(set(sizes.values())) > 1:
                raise ValueError(f"fusion mean: the modalities must have one size, got {sizes}; "
                                 "use project_inputs or the concat fusion")
            x = jnp.mean(jnp.stack([features[m] for m in self.modalities]), axis=0)
        elif self.method == "concat":
            x = _concat(features, self.modalities)
        else:
            raise ValueError(f"fusion concat: method {self.method!r} is not 'concat' or 'mean'")
        fused = Projector(self.output_dim, self.depth, self.dropout, name="projector")(x, deterministic=deterministic)
        return fused, _zero()


class ConcatProjectorFusion(nn.Module):
    """The suite's ``ConcatFusionLayer``: ``Projector(sum D, sum D, depth)`` over the
    concatenation: ``(B, sum D_m)``."""

    modalities: tuple[str, ...]
    depth: int = 2
    dropout: float = 0.1

    @nn.compact
    def __call__(self, features: Mapping, *, deterministic: bool = True, batch_mask=None):
        _check_features(features, self.modalities, "concat-projector")
        x = _concat(features, self.modalities)
        return (Projector(x.shape[-1], self.depth, self.dropout, name="projector")(x, deterministic=deterministic),
                _zero())


# ---------------------------------------------------------------------------------------------
# Attention fusions
# ---------------------------------------------------------------------------------------------
class SelfAttentionFusion(nn.Module):
    """Self-attention over the concatenation (``num_heads`` heads, no residual), then a linear
    ``pooler``: ``(B, sum D_m) -> (B, output_dim)``."""

    modalities: tuple[str, ...]
    output_dim: int
    num_heads: int = 8
    batch_as_sequence: bool = True

    @nn.compact
    def __call__(self, features: Mapping, *, deterministic: bool = True, batch_mask=None):
        _check_features(features, self.modalities, "self-attention")
        x = _concat(features, self.modalities)
        attended = MultiheadAttention(x.shape[-1], self.num_heads, batch_as_sequence=self.batch_as_sequence,
                                      name="multihead_attn")(x, x, x, deterministic=deterministic,
                                                             batch_mask=batch_mask)
        return nn.Dense(self.output_dim, name="pooler")(attended), _zero()


class CrossAttentionFusion(nn.Module):
    """Each modality queries the concatenation of the others (``CrossAttention``, named
    ``attn_{m}``); the outputs (plus their inputs with ``residual``) are concatenated in
    ``modalities`` order: ``(B, sum D_m)``."""

    modalities: tuple[str, ...]
    residual: bool = False
    num_heads: int = 8
    dropout: float = 0.1
    batch_as_sequence: bool = True

    @nn.compact
    def __call__(self, features: Mapping, *, deterministic: bool = True, batch_mask=None):
        _check_features(features, self.modalities, "cross-attention")
        if len(self.modalities) < 2:
            raise ValueError("fusion cross-attention: needs at least two modalities")
        outputs = []
        for m in self.modalities:
            others = _concat(features, [n for n in self.modalities if n != m])
            out = CrossAttention(self.num_heads, self.dropout, self.batch_as_sequence, name=f"attn_{m}")(
                features[m], others, deterministic=deterministic, batch_mask=batch_mask)
            outputs.append(out + features[m] if self.residual else out)
        return jnp.concatenate(outputs, axis=-1), _zero()


# ---------------------------------------------------------------------------------------------
# Tensor fusion (TFN) and low-rank fusion (LMF)
# ---------------------------------------------------------------------------------------------
class TensorFusion(nn.Module):
    """TFN: the flattened outer product of ``[z_m; 1]`` over the modalities (``modalities``
    order): ``(B, prod_m (d_m + 1))``.

    ``hidden > 0`` first maps every modality to ``z_m = Dense(hidden)(x_m)`` (768-dim inputs
    would otherwise give 769^3 features); ``hidden = 0`` uses the features themselves, as the
    suite does. ``depth > 0`` then applies ``Projector(output_dim, depth)``; ``depth = 0`` returns
    the product itself.
    """

    modalities: tuple[str, ...]
    output_dim: int
    hidden: int = 16
    depth: int = 2
    dropout: float = 0.1

    @nn.compact
    def __call__(self, features: Mapping, *, deterministic: bool = True, batch_mask=None):
        _check_features(features, self.modalities, "tensor")
        batch = features[self.modalities[0]].shape[0]
        product = jnp.ones((batch, 1), jnp.float32)
        for m in self.modalities:
            z = features[m]
            if self.hidden:
                z = nn.Dense(self.hidden, name=f"reduce_{m}")(z)
            z = jnp.concatenate([z.astype(jnp.float32), jnp.ones((batch, 1), jnp.float32)], axis=-1)
            product = (product[:, :, None] * z[:, None, :]).reshape(batch, -1)
        if not self.depth:
            return product, _zero()
        fused = Projector(self.output_dim, self.depth, self.dropout, name="projector")(
            product, deterministic=deterministic)
        return fused, _zero()


class LowRankFusion(nn.Module):
    """LMF: per modality ``rank`` factors ``W_m (rank, d_m, out)`` (parameter ``factor_{m}``);
    ``h = prod_m (x_m W_m)`` ``(B, rank, out)``; ``output_layer``, a ``Linear(rank -> 1)``, combines
    the rank: ``(B, out)``.

    ``append_one=True`` uses ``[x_m; 1]`` (the LMF paper's form, factors ``(rank, d_m + 1, out)``);
    the suite's layer (default) multiplies the features alone.
    """

    modalities: tuple[str, ...]
    output_dim: int
    rank: int = 4
    append_one: bool = False

    @nn.compact
    def __call__(self, features: Mapping, *, deterministic: bool = True, batch_mask=None):
        _check_features(features, self.modalities, "low-rank")
        product = None
        for m in self.modalities:
            x = jnp.asarray(features[m], jnp.float32)
            if self.append_one:
                x = jnp.concatenate([x, jnp.ones((x.shape[0], 1), x.dtype)], axis=-1)
            factor = self.param(f"factor_{m}", nn.initializers.variance_scaling(1.0, "fan_in", "normal",
                                                                                in_axis=1, out_axis=2),
                                (self.rank, x.shape[-1], self.output_dim))
            out = jnp.einsum("bd,rdo->bro", x, factor)
            product = out if product is None else product * out
        fused = nn.Dense(1, name="output_layer")(product.transpose(0, 2, 1))[..., 0]
        return fused, _zero()


# ---------------------------------------------------------------------------------------------
# Mixture-of-experts fusions
# ---------------------------------------------------------------------------------------------
class _ModalityExperts(nn.Module):
    """One ``Linear(d_m -> out)`` expert per modality (``expert_{m}``) and one over the
    concatenation (``expert_concat``): ``(B, M + 1, out)``, experts in ``modalities`` order, the
    concatenation expert last."""

    modalities: tuple[str, ...]
    output_dim: int

    @nn.compact
    def __call__(self, features: Mapping):
        outs = [nn.Dense(self.output_dim, name=f"expert_{m}")(features[m]) for m in self.modalities]
        outs.append(nn.Dense(self.output_dim, name="expert_concat")(_concat(features, self.modalities)))
        return jnp.stack(outs, axis=1)


class MixtureFusion(nn.Module):
    """Mixture-of-experts fusion (the suite's ``ConcatFusionMoE``): a router over the
    concatenation weighs one linear expert per modality plus one over the concatenation:
    ``sum_e w_e(x) expert_e(x)``: ``(B, output_dim)``.

    The router is ``softmax(W x + b)`` (``router``); ``noisy=True`` adds the noisy router's
    training noise. (The suite's forward leaves its concatenation expert unused and pairs expert
    ``i`` with the ``i``-th modality in sorted order; here every expert takes part.)
    """

    modalities: tuple[str, ...]
    output_dim: int
    noisy: bool = False

    @nn.compact
    def __call__(self, features: Mapping, *, deterministic: bool = True, batch_mask=None):
        _check_features(features, self.modalities, "moe")
        weights = NoisyRouter(len(self.modalities) + 1, noisy=self.noisy, use_bias=True, name="router")(
            _concat(features, self.modalities), deterministic=deterministic)
        experts = _ModalityExperts(self.modalities, self.output_dim, name="experts")(features)
        return jnp.einsum("be,beo->bo", weights.astype(experts.dtype), experts), _zero()


class MultiHeadMixtureFusion(nn.Module):
    """Multi-head mixture (the suite's ``MultiHeadFusionMoE``): every modality has its own router
    head ``Linear(d_m -> E)`` (``router_{m}``); the routing logits are summed over modalities and
    softmax-normalised; the experts are those of :class:`MixtureFusion`: ``(B, output_dim)``."""

    modalities: tuple[str, ...]
    output_dim: int
    noisy: bool = False

    @nn.compact
    def __call__(self, features: Mapping, *, deterministic: bool = True, batch_mask=None):
        _check_features(features, self.modalities, "multihead-moe")
        count = len(self.modalities) + 1
        logits = sum(NoisyRouter(count, noisy=self.noisy, use_bias=True, name=f"router_{m}")(
            features[m], deterministic=deterministic, return_logits=True) for m in self.modalities)
        weights = jax.nn.softmax(logits, axis=-1)
        experts = _ModalityExperts(self.modalities, self.output_dim, name="experts")(features)
        return jnp.einsum("be,beo->bo", weights.astype(experts.dtype), experts), _zero()


# ---------------------------------------------------------------------------------------------
# Disentanglement fusion (the suite's main model, "MDN")
# ---------------------------------------------------------------------------------------------
def smooth_l1(a, b):
    """PyTorch's ``smooth_l1_loss`` (beta 1, mean over all elements), float32."""
    return optax.huber_loss(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), delta=1.0).mean()


class DisentanglementFusion(nn.Module):
    """Private + shared features, fused. Modalities are taken in sorted order (``A, T, V``) where
    the suite sorts them (routers, stacking).

    Private: per modality a self-attention projector (``d -> private_dim``, 4 heads, depth 2,
    ``private_projector_{m}``), mixed by a noisy router (``private_router``) over the
    stop-gradient concatenation of the inputs.

    Shared: one self-attention projector (``d -> shared_dim (M-1)``, 4M heads, depth 2M,
    ``shared_projector``) applied to every modality, mixed by ``shared_router``. Needs every
    modality at one size.

    Auxiliary loss (training, or ``compute_aux=True``): per modality ``m`` a cross projector
    (``d -> shared_dim``, 4(M-1) heads, depth 2^(M-1), ``cross_projector_{m}``);
    ``cross_m = concat_{n != m} cross_projector_m(x_n)``;
    ``feature = sum_m SmoothL1(shared_m, sg(cross_m))``,
    ``reconstruction = sum_m SmoothL1(predictor_m(cross_m), sg(x_m))`` with ``predictor_m`` a
    depth-4 ``Projector`` back to ``d_m``; ``aux = alpha (feature + reconstruction) / 2``.

    Output (``fusion_layer``): cross-attention fusion of ``{shared, private}``
    (``use_cross_attn``) or a depth-4 concat projector; ``(B, shared_dim (M-1) + private_dim)``.
    ``parts="private"`` / ``"shared"`` return only the routed private ``(B, private_dim)`` /
    shared ``(B, shared_dim (M-1))`` mix (the suite's ``PrivateFeatureFusion`` /
    ``SharedFeatureFusion``; the shared one keeps the auxiliary loss).
    """

    modalities: tuple[str, ...]
    input_dims: tuple[tuple[str, int], ...]
    private_dim: int = 256
    shared_dim: int = 128
    alpha: float = 1.0
    use_cross_attn: bool = True
    dropout: float = 0.1
    batch_as_sequence: bool = True
    parts: str = "both"

    def _check(self, features):
        _check_features(features, self.modalities, "disentanglement")
        if self.parts not in ("both", "private", "shared"):
            raise ValueError(f"fusion disentanglement: parts {self.parts!r} is not 'both', 'private' or 'shared'")
        if len(self.modalities) < 2 and self.parts != "private":
            raise ValueError("fusion disentanglement: the shared part needs at least two modalities "
                             f"(got {'+'.join(self.modalities)}); use parts='private' or another fusion")
        sizes = {m: features[m].shape[-1] for m in self.modalities}
        if self.parts != "private" and len(set(sizes.values())) > 1:
            raise ValueError(f"fusion disentanglement: the shared projector needs every modality at one size, got "
                             f"{sizes}; set the fusion option project_inputs")

    @nn.compact
    def __call__(self, features: Mapping, *, deterministic: bool = True, batch_mask=None,
                 compute_aux: Optional[bool] = None):
        """``compute_aux`` (default: in training) also computes the auxiliary loss in evaluation."""
        self._check(features)
        names = sorted(self.modalities)
        dims = {m: features[m].shape[-1] for m in names}
        count = len(names)
        stopped = jax.lax.stop_gradient(_concat(features, names))
        attention = dict(dropout=self.dropout, batch_as_sequence=self.batch_as_sequence)
        call = dict(deterministic=deterministic, batch_mask=batch_mask)

        private_mix = None
        if self.parts != "shared":
            private = [SelfAttentionProjector(self.private_dim, 4, 2, name=f"private_projector_{m}", **attention)(
                features[m], **call) for m in names]
            weights = NoisyRouter(count, name="private_router")(stopped, deterministic=deterministic)
            stacked = jnp.stack(private, 1)
            private_mix = jnp.einsum("bn,bnk->bk", weights.astype(stacked.dtype), stacked)
            if self.parts == "private":
                return private_mix, _zero()

        # The shared projector runs once over the modalities stacked ``(M, B, d)``: each modality
        # still attends within itself, and its products get M times the rows.
        shared_stack = SelfAttentionProjector(self.shared_dim * (count - 1), 4 * count, 2 * count,
                                              name="shared_projector", **attention)(
            jnp.stack([features[m] for m in names]), **call)
        shared = {m: shared_stack[i] for i, m in enumerate(names)}
        weights = NoisyRouter(count, name="shared_router")(stopped, deterministic=deterministic)
        shared_mix = jnp.einsum("bn,nbk->bk", weights.astype(shared_stack.dtype), shared_stack)

        aux = _zero()
        if compute_aux or (compute_aux is None and not deterministic) or self.is_initializing():
            cross_projectors = {m: SelfAttentionProjector(self.shared_dim, 4 * (count - 1), 2 ** (count - 1),
                                                          name=f"cross_projector_{m}", **attention) for m in names}
            predictors = {m: Projector(dims[m], 4, self.dropout, name=f"predictor_{m}") for m in names}
            # cross_m: cross_projector_m over the other modalities stacked ``(M-1, B, d)``, then
            # laid side by side ``(B, (M-1) shared_dim)``.
            cross = {}
            for m in names:
                out = cross_projectors[m](jnp.stack([features[n] for n in names if n != m]), **call)
                cross[m] = jnp.moveaxis(out, 0, 1).reshape(out.shape[1], -1)
            feature_loss = sum(smooth_l1(shared[m], jax.lax.stop_gradient(cross[m])) for m in names)
            reconstruction = sum(smooth_l1(predictors[m](cross[m], deterministic=deterministic),
                                           jax.lax.stop_gradient(features[m])) for m in names)
            aux = jnp.asarray(self.alpha * (feature_loss + reconstruction) / 2, jnp.float32)
        if self.parts == "shared":
            return shared_mix, aux

        parts = {"shared": shared_mix, "private": private_mix}
        if self.use_cross_attn:
            fused, _ = CrossAttentionFusion(("shared", "private"), dropout=self.dropout,
                                            batch_as_sequence=self.batch_as_sequence, name="fusion_layer")(
                parts, deterministic=deterministic, batch_mask=batch_mask)
        else:
            fused, _ = ConcatProjectorFusion(("shared", "private"), depth=4, dropout=self.dropout,
                                             name="fusion_layer")(parts, deterministic=deterministic)
        return fused, aux


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------
FUSIONS: dict[str, Callable[..., nn.Module]] = {
    "concat": ConcatFusion,
    "mean": ConcatFusion,
    "self-attention": SelfAttentionFusion,
    "cross-attention": CrossAttentionFusion,
    "concat-projector": ConcatProjectorFusion,
    "tensor": TensorFusion,
    "low-rank": LowRankFusion,
    "moe": MixtureFusion,
    "multihead-moe": MultiHeadMixtureFusion,
    "disentanglement": DisentanglementFusion,
}
# Layers whose output size is fixed by their inputs, not by ``output_dim``.
_NO_OUTPUT_DIM = ("cross-attention", "concat-projector", "disentanglement")


def fusion_output_dim(name: str, *, modalities, input_dims: Mapping[str, int], output_dim: int, **options) -> int:
    """The size ``F`` of the fused features that ``build_fusion`` with the same arguments returns."""
    if name not in FUSIONS:
        raise ValueError(f"fusion.name: unknown fusion {name!r}; choose one of {', '.join(sorted(FUSIONS))}")
    output_dim = int(options.get("out_features") or output_dim)
    if name == "disentanglement":
        shared = int(options.get("shared_dim", 128)) * (len(modalities) - 1)
        private = int(options.get("private_dim", 256))
        return {"private": private, "shared": shared}.get(options.get("parts", "both"), shared + private)
    if name in ("cross-attention", "concat-projector"):
        return sum(int(input_dims[m]) for m in modalities)
    if name == "tensor" and not options.get("depth", 2):
        hidden = options.get("hidden", 16)
        size = 1
        for m in modalities:
            size *= (hidden or int(input_dims[m])) + 1
        return size
    return output_dim


def build_fusion(name: str, *, modalities: tuple[str, ...], input_dims: Mapping[str, int], output_dim: int,
                 **options) -> nn.Module:
    """The fusion layer ``name`` over ``modalities`` (see the module docstring for the names).

    ``output_dim`` is the size of the fused features for layers that choose it (overridden by the
    option ``out_features``); the other options go to the layer (e.g. ``depth``, ``rank``,
    ``alpha``, ``batch_as_sequence``). An unknown name or option is a ``ValueError`` naming it.
    """
    if name not in FUSIONS:
        raise ValueError(f"fusion.name: unknown fusion {name!r}; choose one of {', '.join(sorted(FUSIONS))}")
    options = dict(options)
    out = int(options.pop("out_features", None) or output_dim)
    modalities = tuple(modalities)
    missing = [m for m in modalities if m not in input_dims]
    if missing:
        raise ValueError(f"fusion {name}: input_dims has no size for modality {', '.join(missing)}")
    kwargs: dict = {"modalities": modalities}
    if name == "disentanglement":
        kwargs["input_dims"] = tuple((m, int(input_dims[m])) for m in modalities)
    elif name == "mean":
        kwargs.update(output_dim=out, method="mean")
    elif name not in _NO_OUTPUT_DIM:
        kwargs["output_dim"] = out
    try:
        return FUSIONS[name](**kwargs, **options)
    except TypeError as err:
        raise ValueError(f"fusion.{name}: bad option ({err}); options given: {', '.join(options) or 'none'}") from None
