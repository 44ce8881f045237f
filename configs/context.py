"""Dialogue context parts (``context=...``): a small sequence model over the fused utterance
vectors of each dialogue, between the fusion and the classifier (``emojax.dialogue``).

Each preset is ``cfg.model.context``: ``kind`` (``transformer``: pre-LN blocks with sinusoidal
positions; ``gru``), ``causal`` (each utterance sees only itself and earlier ones, as a live
system would; otherwise the whole dialogue), ``layers``, ``heads`` (transformer; must divide
``dim``), ``dim``, ``dropout`` and ``speakers`` (speaker embeddings, speakers numbered per dialogue
by first appearance; 0 = none). ``none`` (the default) adds no key, so a run without context
keeps its config hash and run directory.

Such a run trains on dialogue batches of ``train.batch_size`` padded utterance slots and takes
the per-utterance losses only (ce, weighted, focal).
"""

_TRANSFORMER = {"kind": "transformer", "causal": False, "layers": 2, "heads": 4, "dim": 256, "dropout": 0.1,
                "speakers": 16}
_GRU = {"kind": "gru", "causal": False, "layers": 1, "heads": 1, "dim": 256, "dropout": 0.1, "speakers": 16}

PRESETS = {
    "none": {},
    "transformer": dict(_TRANSFORMER),
    "transformer-causal": dict(_TRANSFORMER, causal=True),
    "gru": dict(_GRU),
    "gru-causal": dict(_GRU, causal=True),
}
