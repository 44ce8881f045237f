"""Loss parts (``loss=...``): the classification loss and extra losses with their weights.

Combine them with ``+``: ``loss=focal+spcl``. ``classification`` is ``ce``, ``weighted``
(cross entropy weighted by 1 / class frequency; ``weight``, the suite's name, is another spelling
of it: :data:`ALIASES`) or ``focal`` (gamma 2).
``extras`` maps an ``emojax.model.losses`` extra-loss name to its options, ``weight`` being the factor
in the total. ``combine`` is ``sum`` (default) or ``uncertainty`` (learned sigma per loss,
``emojax.model.losses.combine_losses``).

The suite's configs: ``focal``, ``weight``, ``spcl``, ``apcl``, ``cmcl``, ``scl``, ``frl-meld``,
``frl-iemocap``; ``dist`` is the suite's distillation from a unimodal teacher (weight 2).
``cmcl``, ``scl`` and ``frl-*`` need two or more modalities and are skipped (with a logged note)
on unimodal runs, as in the suite.
"""

PRESETS = {
    "ce": {"classification": "ce"},
    "weighted": {"classification": "weighted"},
    "focal": {"classification": "focal"},
    # [loss.sample_contrastive] temperature 0.08, pool_size 512, support_set_size 64
    "spcl": {"extras": {"spcl": {"weight": 1.0, "temperature": 0.08, "pool_size": 512, "support_set_size": 64,
                                 "decoupled": False}}},
    # [loss.sample_contrastive] temperature 0.08, gamma 0.99 (alpha 0.5)
    "apcl": {"extras": {"apcl": {"weight": 1.0, "temperature": 0.08, "alpha": 0.5, "gamma": 0.99}}},
    # [loss.modal_contrastive] main_modal "T": KL contrast against the (stop-gradient) text features
    "cmcl": {"extras": {"cmcl": {"weight": 1.0, "main_modal": "T", "temperature": 1.0}}},
    # [loss.modal_contrastive] hidden_dim 512: the suite's SelfContrastiveLoss, the same KL contrast
    # without the stop-gradient; hidden_dim is kept for the record (the suite's layer ignores it).
    "scl": {"extras": {"scl": {"weight": 1.0, "main_modal": "T", "temperature": 1.0, "hidden_dim": 512}}},
    # [loss.reconstruction] alpha 1 / 1.2; sign "simsiam" minimises -cos (SimSiam), "suite" keeps +cos.
    "frl-meld": {"extras": {"frl": {"weight": 1.0, "alpha": 1.0, "sign": "simsiam"}}},
    "frl-iemocap": {"extras": {"frl": {"weight": 1.0, "alpha": 1.2, "sign": "simsiam"}}},
    # DistillationLoss: DIST (T = 4, beta = gamma = 1) times 2, from a frozen teacher's logits.
    "dist": {"extras": {"dist": {"weight": 2.0, "temperature": 4.0, "beta": 1.0, "gamma": 1.0}}},
    "uncertainty": {"combine": "uncertainty"},
}

# Other spellings of a preset, replaced by the preset's own name when a config is composed: a
# run's config (and so its directory) follows from what it trains, never from how it was spelled.
ALIASES = {"weight": "weighted"}
