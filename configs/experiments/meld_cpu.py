"""The ``meld-cpu`` recipe and the settings it was chosen from: MELD emotion, all-MiniLM-L6-v2 with
its top layers fine-tuned together with a dialogue context head, seeds 0, 1 and 2 (dev weighted
F1 mean and standard deviation per setting; MELD's public release has no test labels here).

Each setting is the recipe (``configs/recipes.py``) with one thing changed: the number of
fine-tuned layers, the context head (GRU or transformer, bidirectional or causal), the loss
(focal against cross entropy), the previous turn in the prompt, or no context head at all (the
``mode=top2`` run alone, and with its top 3 layers). Run it on the MELD folder under ``--data_root``::

    python -m launch.sweep --sweep=meld-cpu --workdir=runs --data_root=path/to/datasets
    python -m launch.sweep --sweep=meld-cpu --only=/recipe/ --workdir=runs --data_root=...   # one setting

The measured table, with the time per seed, is in docs/benchmarks.md ("Recipes").
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
    "transformer": (JOINT.replace("context=gru", "context=transformer"), JOINT_TRAINING),
    "focal": (JOINT + ",loss=focal", JOINT_TRAINING),
    "gru-causal": (JOINT.replace("context=gru", "context=gru-causal"), JOINT_TRAINING),
    "transformer-causal": (JOINT.replace("context=gru", "context=transformer-causal"), JOINT_TRAINING),
}


def get_sweep():
    return [spec(parts, seed, name=f"MELD--E/meld-cpu/{setting}/seed={seed}",
                 **{key.replace(".", "__"): value for key, value in fields.items()})
            for setting, (parts, fields) in SETTINGS.items() for seed in SEEDS]
