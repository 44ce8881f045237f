"""Features of frozen encoders, computed once per split and kept.

    featurizer.py   Featurizer (per-modality encoders -> standardised features), FeatureSet
    cache.py        FeatureCache: SafeTensors shards keyed by sample content and encoder hash

Fine-tuning's stored inputs and hidden states live with the tuner (:mod:`emojax.training.finetune`)
and follow the cache's integrity rules.
"""
