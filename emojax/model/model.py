"""The recognition head: per-modality features -> placeholders -> fusion -> [dialogue context] ->
classifier -> logits.

``EmotionModel`` is a Flax module, so ``model.init(rngs, ...)`` gives its parameter pytree and
``model.apply(params, ...)`` is a pure function of parameters, inputs and RNG keys.

RNG streams used in training (``deterministic=False``): ``dropout`` (feature and fusion
dropout), ``router`` (noise of noisy routers) and ``modality`` (modality dropout).

With a dialogue context head (``context``, :mod:`emojax.model.dialogue`) the rows of a batch are padded
dialogues, ``speakers (dialogues, turns)`` giving their shape: the fusion still works per
utterance on the flattened rows (``batch_mask`` keeps padding out of attention across the batch),
then the head runs over each dialogue's fused vectors before the classifier.
"""
from __future__ import annotations

from typing import Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from emojax.model import classifier as classifier_lib
from emojax import config as config_lib
from emojax.model import dialogue as dialogue_lib
from emojax.model import fusion as fusion_lib


def _options(config: Mapping) -> dict:
    return {k: v for k, v in dict(config).items() if k not in ("name", "preset", "min_modalities", "project_inputs")}


class EmotionModel(nn.Module):
    """Fusion + classifier over ``features[m]: (batch, input_dims[m])`` for ``m`` in ``modalities``.

    A sample whose modality is absent (``present[m] == False``) gets the learned placeholder
    vector of that modality in place of its features. In training, modality dropout replaces,
    for the whole batch, audio with probability ``p``, else video with probability ``p``.
    """

    modalities: tuple[str, ...]
    input_dims: tuple[tuple[str, int], ...]
    num_classes: int
    fusion: Mapping
    classifier: Mapping
    hidden_dim: int = 256
    dropout: float = 0.1
    modality_dropout: float = 0.0
    dtype: jnp.dtype = jnp.float32
    # The dialogue context head's settings (emojax.model.dialogue.context_spec); None: no head.
    context: Optional[Mapping] = None

    @nn.compact
    def __call__(self, features: Mapping[str, jax.Array], present: Mapping[str, jax.Array], *,
                 deterministic: bool = True, batch_mask=None, speakers=None):
        """Returns ``(logits (batch, classes) float32, aux_loss scalar, fused (batch, F))``.

        ``batch_mask (batch,) bool`` marks real rows of a padded batch: with attention across the
        batch (the suite's mode) padding rows are kept out of the keys, so they change nothing.

        ``speakers (dialogues, turns) int`` (context head only): the batch's rows are
        ``dialogues * turns`` padded dialogue slots, row ``d * turns + t`` being turn ``t`` of
        dialogue ``d``, with its speaker number; ``batch_mask`` then marks the real turns. Without
        it every row is a dialogue of one utterance.
        """
        dims = dict(self.input_dims)
        keep = {m: present[m].astype(bool) for m in self.modalities}
        if not deterministic and self.modality_dropout > 0:
            u = jax.random.uniform(self.make_rng("modality"))
            p = self.modality_dropout
            if "A" in keep:
                keep["A"] = keep["A"] & (u >= p)
            if "V" in keep:
                drop_v = (u >= p) & (u < p + (1 - p) * p)
                keep["V"] = keep["V"] & ~drop_v
        inputs = {}
        project = int(self.fusion.get("project_inputs", 0) or 0)
        for m in self.modalities:
            placeholder = self.param(f"placeholder_{m}", nn.initializers.normal(0.02), (dims[m],))
            x = jnp.asarray(features[m], jnp.float32)
            x = jnp.where(keep[m][:, None], x, placeholder[None, :]).astype(self.dtype)
            if project:
                # Attention fusions need every modality at one size divisible by their heads.
                x = nn.Dense(project, dtype=self.dtype, name=f"input_projection_{m}")(x)
            inputs[m] = x
        if project:
            dims = {m: project for m in self.modalities}
        fusion = fusion_lib.build_fusion(self.fusion["name"], modalities=self.modalities, input_dims=dims,
                                         output_dim=self.hidden_dim, **_options(self.fusion))
        # The fusion's inputs (after placeholders and projection), for losses that compare the
        # modalities (CMCL, SCL, FRL): ``apply(..., mutable=["intermediates"])`` returns them.
        self.sow("intermediates", "fusion_inputs", inputs)
        fused, aux = fusion(inputs, deterministic=deterministic, batch_mask=batch_mask)
        hidden = fused
        if self.context is not None:
            hidden = self._dialogue_context(fused, speakers, batch_mask, deterministic)
        hidden = nn.Dropout(self.dropout)(hidden, deterministic=deterministic)
        classifier = classifier_lib.build_classifier(self.classifier["name"], num_classes=self.num_classes,
                                                     **_options(self.classifier))
        logits, aux_classifier = classifier(hidden, deterministic=deterministic)
        return logits.astype(jnp.float32), (aux + aux_classifier).astype(jnp.float32), fused

    def _dialogue_context(self, fused, speakers, batch_mask, deterministic: bool):
        """``fused (dialogues * turns, F)`` -> the context head's ``(dialogues * turns, dim)``."""
        rows = fused.shape[0]
        if speakers is None:
            speakers = jnp.zeros((rows, 1), jnp.int32)
        dialogues, turns = speakers.shape
        if dialogues * turns != rows:
            raise ValueError(f"context head: speakers of shape {speakers.shape} do not describe the batch's "
                             f"{rows} rows (dialogues x turns)")
        mask = jnp.ones((rows,), bool) if batch_mask is None else jnp.asarray(batch_mask, bool)
        head = dialogue_lib.DialogueContext(**self.context, dtype=self.dtype, name="context")
        out = head(fused.reshape(dialogues, turns, -1), speakers, mask.reshape(dialogues, turns),
                   deterministic=deterministic)
        return out.reshape(rows, -1)


def build_model(cfg, input_dims: Mapping[str, int], num_classes: int) -> EmotionModel:
    """The ``EmotionModel`` a run config describes."""
    mods = config_lib.modalities(cfg)
    return EmotionModel(
        modalities=mods,
        input_dims=tuple((m, int(input_dims[m])) for m in mods),
        num_classes=int(num_classes),
        fusion=cfg.fusion.to_dict(),
        classifier=cfg.classifier.to_dict(),
        hidden_dim=int(cfg.model.hidden_dim),
        dropout=float(cfg.model.dropout),
        modality_dropout=float(cfg.modality_dropout),
        dtype=jnp.bfloat16 if cfg.precision == "bfloat16" else jnp.float32,
        context=dialogue_lib.context_spec(cfg),
    )
