"""Training modes: how the encoders take part in training.

- ``frozen``: encoders outside the gradient; their features are computed once and cached.
- ``trainable``: full fine-tuning of the encoders with the head (own learning rate).
- ``lora``: low-rank adapters on attention and MLP projections; only adapters and head train.

``encoder_lr`` becomes ``finetune.lr`` and ``lora`` ``finetune.lora``; ``finetune`` sets further
fine-tuning fields; ``text`` replaces the dataset's text settings (``encoders.T``): fine-tuned
encoders learn to read the suite's prompt at the mask position, over the whole dialogue.

- ``top2``: the text encoder's top 2 layers fine-tuned (``finetune.tune_layers=2``) from stored
  hidden states of the frozen ones, on the current utterance with the prompt (length-bucketed
  batches of about 30 tokens on MELD). The recipe that fits two CPU cores: on MELD emotion with
  all-MiniLM-L6-v2, dev weighted F1 57.38 +- 0.94 over seeds 0, 1, 2 in 4 epochs (frozen
  features: 52.75; with ``finetune.tune_layers=3``: 57.82; the ``meld-cpu`` recipe: 58.83), about
  20x less work per epoch than fine-tuning every layer at 128 tokens
  (``benchmarks/meld_finetune.py --recipes=top2``; train it 4 epochs:
  ``--config.train.epochs=4``).
"""

_PROMPT_TEXT = {"pooling": "mask", "context_turns": -1, "prompt": True, "max_length": 128}

PRESETS = {
    "frozen": {"mode": "frozen"},
    "trainable": {"mode": "trainable", "encoder_lr": 1e-5, "text": dict(_PROMPT_TEXT)},
    "lora": {"mode": "lora", "encoder_lr": 1e-4,
             "lora": {"rank": 64, "alpha": 128.0, "dropout": 0.1,
                      "targets": "query,key,value,dense"},
             "text": dict(_PROMPT_TEXT)},
    "top2": {"mode": "trainable", "encoder_lr": 3e-4, "finetune": {"tune_layers": 2},
             "text": {**_PROMPT_TEXT, "context_turns": 0}},
}
