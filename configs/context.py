"""Dialogue context parts (``context=...``): a small sequence model over the fused utterance
vectors of each dialogue, between the fusion and the classifier (``emojax.model.dialogue``).

Each preset is ``cfg.model.context``: ``kind`` (``transformer``: pre-LN blocks with sinusoidal
positions; ``gru``), ``causal`` (each utterance sees only itself and earlier ones, as a live
system would; otherwise the whole dialogue), ``layers``, ``heads`` (transformer; must divide
``dim``), ``dim``, ``dropout`` and ``speakers`` (speaker embeddings, speakers numbered per dialogue
by first appearance; 0 = none). ``none`` (the default) adds no key, so a run without context
keeps its config hash and run directory.

Such a run trains on dialogue batches of ``train.batch_size`` padded utterance slots and takes
the per-utterance losses only (ce, weighted, focal).

The sizes are those that did best on MELD dev with frozen all-MiniLM-L6-v2 utterance features
(``benchmarks/meld_context.py``; a two-layer, 256-wide transformer overfits there), trained with
``--config.train.lr=5e-4 --config.train.batch_size=64 --config.train.epochs=15``; ``gru`` scored
best (docs/benchmarks.md).
"""

_TRANSFORMER = {"kind": "transformer", "causal": False, "layers": 1, "heads": 4, "dim": 128, "dropout": 0.3,
                "speakers": 16}
_GRU = {"kind": "gru", "causal": False, "layers": 1, "heads": 1, "dim": 128, "dropout": 0.5, "speakers": 16}

PRESETS = {
    "none": {},
    "transformer": dict(_TRANSFORMER),
    "transformer-causal": dict(_TRANSFORMER, causal=True),
    "gru": dict(_GRU),
    "gru-causal": dict(_GRU, causal=True),
}
