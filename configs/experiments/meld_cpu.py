"""The settings the ``meld-cpu`` recipe was chosen from: MELD emotion with all-MiniLM-L6-v2's top
layers fine-tuned from stored hidden states of the others (``mode=top2``), seeds 0, 1 and 2 (dev
weighted F1 mean and standard deviation per setting, with the minutes of training per seed).

Two families: the joint setting (the top 2 layers and the GRU dialogue context head trained
together on whole dialogues) and one change of it per setting (the top 3 layers, a transformer
context head, causal heads, focal loss, the previous turn in the prompt); and ``mode=top2``
without a context head, with its top 2 or 3 layers (and 6 epochs instead of 4), then one change
of its top 3 each (the top 5, focal loss, the previous turn, SPCL, mean pooling without the
prompt, label smoothing). ``top3-mean-no-context`` did best and is the recipe
(``recipe=meld-cpu`` composes the same config and run directory). Run it on the MELD folder
under ``--data_root``::

    python -m launch.sweep --sweep=meld-cpu --workdir=runs --data_root=path/to/datasets
    python -m launch.sweep --sweep=meld-cpu --only=/no-context/ --workdir=runs --data_root=...   # one setting

The measured table is in docs/benchmarks.md ("Recipes").
"""
from emojax.sweep import spec

SEEDS = (0, 1, 2)

# The joint setting the others change one thing of: the top 2 layers and the GRU context head
# trained together, with the context head's training (head lr 5e-4, 64 utterance slots a batch).
JOINT = "dataset=MELD--E,encoders=T,mode=top2,context=gru"
JOINT_TRAINING = {"train.epochs": 4, "train.lr": 5e-4, "train.batch_size": 64}
# mode=top2 alone, with its own training (head lr 1e-3, batches of 32 utterances).
ALONE = "dataset=MELD--E,encoders=T,mode=top2"
ALONE_TRAINING = {"train.epochs": 4, "train.lr": 1e-3, "train.batch_size": 32}

# setting -> (parts, dotted field overrides)
SETTINGS = {
    "joint": (JOINT, JOINT_TRAINING),
    "previous-turn": (JOINT, {**JOINT_TRAINING, "encoders.T.context_turns": 1}),
    "top3": (JOINT, {**JOINT_TRAINING, "finetune.tune_layers": 3}),
    "no-context": (ALONE, ALONE_TRAINING),
    "top3-no-context": (ALONE, {**ALONE_TRAINING, "finetune.tune_layers": 3}),
    "top3-6-epochs": (ALONE, {**ALONE_TRAINING, "finetune.tune_layers": 3, "train.epochs": 6}),
    # One change of top3-no-context each: more tuned layers, focal loss, the previous turn, ...
    "top5-no-context": (ALONE, {**ALONE_TRAINING, "finetune.tune_layers": 5}),
    "top3-focal-no-context": (ALONE + ",loss=focal", {**ALONE_TRAINING, "finetune.tune_layers": 3}),
    "top3-previous-turn-no-context": (ALONE, {**ALONE_TRAINING, "finetune.tune_layers": 3,
                                              "encoders.T.context_turns": 1}),
    # ... SPCL beside CE (the suite's prototype loss), and mean pooling of the utterance without the
    # prompt (all-MiniLM-L6-v2 was trained to be read by its mean).
    "top3-spcl-no-context": (ALONE + ",loss=spcl", {**ALONE_TRAINING, "finetune.tune_layers": 3}),
    "top3-mean-no-context": (ALONE, {**ALONE_TRAINING, "finetune.tune_layers": 3, "encoders.T.pooling": "mean",
                                     "encoders.T.prompt": False}),
    "top3-smoothing-no-context": (ALONE, {**ALONE_TRAINING, "finetune.tune_layers": 3, "loss.label_smoothing": 0.1}),
    "transformer": (JOINT.replace("context=gru", "context=transformer"), JOINT_TRAINING),
    "focal": (JOINT + ",loss=focal", JOINT_TRAINING),
    "gru-causal": (JOINT.replace("context=gru", "context=gru-causal"), JOINT_TRAINING),
    "transformer-causal": (JOINT.replace("context=gru", "context=transformer-causal"), JOINT_TRAINING),
}


def get_sweep():
    return [spec(parts, seed, name=f"MELD--E/meld-cpu/{setting}/seed={seed}",
                 **{key.replace(".", "__"): value for key, value in fields.items()})
            for setting, (parts, fields) in SETTINGS.items() for seed in SEEDS]
