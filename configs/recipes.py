"""Recipes (``recipe=...``): the best known way to train each dataset on each class of machine.

A recipe is a composition of the other parts (``parts``: ``dataset``, ``encoders``, ``mode``,
``context``, ``loss``, ...) and field settings (``fields``: dotted config keys), read here in
full. ``--config=configs/train.py:recipe=meld-cpu`` plus ``--config.dataset.path=...`` is a whole
command. Parts named beside it replace the recipe's (``recipe=meld-cpu,loss=focal``); the
recipe's fields are set after every part, and ``--config.<field>=<value>`` overrides after them
(``--config.train.epochs=6``). A field whose section the composed config lacks (``model.context``
after ``context=none``, ``encoders.T`` after ``encoders=A``) is left out. The recipe's name is not
recorded: ``recipe=meld-cpu`` composes the very config (and run directory) its parts and fields
spelled out give.

Where each number below comes from, with its command: docs/benchmarks.md ("Recipes").

- ``meld-cpu``: MELD emotion on a few CPU cores: all-MiniLM-L6-v2 with its top 3 layers fine-tuned
  from stored hidden states of the bottom 3 (``mode=top2`` with ``finetune.tune_layers=3``), read
  as the sentence encoder it was trained to be: the mean of the utterance's tokens, no prompt
  (``encoders.T.pooling=mean``, ``encoders.T.prompt=False``; up to 128 tokens, length-bucketed
  batches of 32), head lr 1e-3, encoder lr 3e-4, 4 epochs. The best of the one-command settings
  measured on MELD dev with seeds 0, 1 and 2 (the ``meld-cpu`` sweep,
  ``configs/experiments/meld_cpu.py``, setting ``top3-mean-no-context``): dev weighted F1
  58.83 +- 0.79 (the suite's prompt + mask pooling on the same layers: 57.82 +- 1.06; top 2 layers:
  57.38 +- 0.94; with the GRU context head trained jointly: 55.97 +- 0.36 for top 2), about 6
  minutes of training per seed on 2 CPU cores. A context head trained afterwards on the tuned
  encoders (two stages, ``benchmarks/meld_two_stage.py``) measured up to 59.25 +- 0.55, in about
  1.5 minutes more.
- ``iemocap-cpu``: IEMOCAP's six emotions: all-MiniLM-L6-v2's top 2 layers fine-tuned (``mode=top2``)
  together with the bidirectional GRU dialogue context head (``context=gru``), head lr 5e-4, 4
  epochs. IEMOCAP's dialogues are long two-speaker sessions (up to about 110 turns), where the
  turns around an utterance carry much of its emotion, so its recipe keeps the context head that
  MELD's short multi-party scenes did not reward (not measured on IEMOCAP: its transcripts are not
  at hand). A batch takes whole dialogues, its turns rounded up to a power of two, so it holds
  128 utterance slots: four dialogues of up to 32 turns, two of up to 64 or one of up to 128, one
  shape of 128 rows for every step.
- ``meld-gpu`` / ``iemocap-gpu``: the PyTorch suite's SPCL setting (its README: MELD emotion
  accuracy 68.31, weighted F1 67.31 with seed 42, selected on test; no IEMOCAP figure):
  roberta-large fully fine-tuned on the whole dialogue so far with the prompt, mask pooling and
  up to 512 tokens (truncated from the left), cross entropy + SPCL (temperature 0.08, pool 512,
  support set 64), AdamW at 1e-6 for encoder and head alike, weight decay 0.01, one epoch of
  warm-up then linear decay over 200 epochs, patience 20, gradient norm clipped at 10, batches of
  2 (MELD) / 4 (IEMOCAP) utterances, float32. Needs a GPU and the hub (or a local copy: override
  ``encoders.T.model``); ``--config.precision=bfloat16`` halves the activations' memory.
"""

# mode=top2's training (encoder lr 3e-4 from the mode; head lr 1e-3, 32 utterances a batch), 4 epochs.
_TOP_LAYERS = {"train.epochs": 4, "train.lr": 1e-3, "train.batch_size": 32}
# With the context head: head lr 5e-4 (it overfits at 1e-3), batches of whole dialogues.
_TOP2_WITH_CONTEXT = {"train.epochs": 4, "train.lr": 5e-4, "train.batch_size": 128}

# The suite's trainer: AdamW (lr 1e-6 for every parameter, weight decay 0.01), linear warm-up
# over the first epoch then linear decay to 0 over 200 epochs (warm-up ratio 1/200), gradient
# norm clipped at 10, early stopping after 20 epochs without improvement.
_SUITE_SPCL = {
    "encoders.T.model": "FacebookAI/roberta-large",
    "encoders.T.max_length": 512,
    "finetune.lr": 1e-6,
    "train.lr": 1e-6,
    "train.weight_decay": 0.01,
    "train.epochs": 200,
    "train.warmup_ratio": 1 / 200,
    "train.patience": 20,
    "train.clip_norm": 10.0,
}

PRESETS = {
    "meld-cpu": {
        "parts": {"dataset": "MELD--E", "encoders": "T", "mode": "top2"},
        "fields": dict(_TOP_LAYERS, **{"finetune.tune_layers": 3, "encoders.T.pooling": "mean",
                                       "encoders.T.prompt": False}),
    },
    "iemocap-cpu": {
        "parts": {"dataset": "IEMOCAP--E", "encoders": "T", "mode": "top2", "context": "gru"},
        "fields": dict(_TOP2_WITH_CONTEXT),
    },
    "meld-gpu": {
        "parts": {"dataset": "MELD--E", "encoders": "T", "mode": "trainable", "loss": "spcl"},
        "fields": dict(_SUITE_SPCL, **{"train.batch_size": 2}),
    },
    "iemocap-gpu": {
        "parts": {"dataset": "IEMOCAP--E", "encoders": "T", "mode": "trainable", "loss": "spcl"},
        "fields": dict(_SUITE_SPCL, **{"train.batch_size": 4}),
    },
}
