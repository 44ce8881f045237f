"""Training modes: how the encoders take part in training.

- ``frozen``: encoders outside the gradient; their features are computed once and cached.
- ``trainable``: full fine-tuning of the encoders with the head (own learning rate).
- ``lora``: low-rank adapters on attention and MLP projections; only adapters and head train.

``encoder_lr`` becomes ``finetune.lr`` and ``lora`` ``finetune.lora``; ``text`` replaces the
dataset's text settings (``encoders.T``): fine-tuned encoders learn to read the suite's prompt at
the mask position, over the whole dialogue.
"""

_PROMPT_TEXT = {"pooling": "mask", "context_turns": -1, "prompt": True, "max_length": 128}

PRESETS = {
    "frozen": {"mode": "frozen"},
    "trainable": {"mode": "trainable", "encoder_lr": 1e-5, "text": dict(_PROMPT_TEXT)},
    "lora": {"mode": "lora", "encoder_lr": 1e-4,
             "lora": {"rank": 64, "alpha": 128.0, "dropout": 0.1,
                      "targets": "query,key,value,dense"},
             "text": dict(_PROMPT_TEXT)},
}
