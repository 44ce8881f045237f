"""Training modes: how the encoders take part in training.

- ``frozen``: encoders outside the gradient; their features are computed once and cached.
- ``trainable``: full fine-tuning of the encoders with the head (own learning rate).
- ``lora``: low-rank adapters on attention and MLP projections; only adapters and head train.
"""

PRESETS = {
    "frozen": {"mode": "frozen"},
    "trainable": {"mode": "trainable", "encoder_lr": 1e-5},
    "lora": {"mode": "lora", "encoder_lr": 1e-4,
             "lora": {"rank": 64, "alpha": 128.0, "dropout": 0.1,
                      "targets": "query,key,value,dense"}},
}
