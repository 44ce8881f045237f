"""The ``meld-cpu`` recipe and the settings it was chosen from: MELD emotion, all-MiniLM-L6-v2 with
its top layers fine-tuned together with a dialogue context head, seeds 0, 1 and 2 (dev weighted
F1 mean and standard deviation per setting; MELD's public release has no test labels here).

Each setting is the recipe (``configs/recipes.py``) with one thing changed: the number of
fine-tuned layers, the context head (GRU or transformer, bidirectional or causal), the loss
(focal against cross entropy), the previous turn in the prompt, or no context head at all (the
``mode=top2`` run alone). Run it on the MELD folder under ``--data_root``::

    python -m launch.sweep --sweep=meld-cpu --workdir=runs --data_root=path/to/datasets
    python -m launch.sweep --sweep=meld-cpu --only=/recipe/ --workdir=runs --data_root=...   # one setting

The measured table, with the time per seed, is in docs/benchmarks.md ("Recipes").
"""
from emojax.sweep import spec

SEEDS = (0, 1, 2)

# setting -> (parts, dotted field overrides). Every setting starts from the recipe.
SETTINGS = {
    "recipe": ("recipe=meld-cpu", {}),
    "top3": ("recipe=meld-cpu", {"finetune.tune_layers": 3}),
    "gru-causal": ("recipe=meld-cpu,context=gru-causal", {}),
    "transformer": ("recipe=meld-cpu,context=transformer", {}),
    "transformer-causal": ("recipe=meld-cpu,context=transformer-causal", {}),
    "focal": ("recipe=meld-cpu,loss=focal", {}),
    "previous-turn": ("recipe=meld-cpu", {"encoders.T.context_turns": 1}),
    # mode=top2 alone, with its own training (head lr 1e-3, batches of 32 utterances).
    "no-context": ("recipe=meld-cpu,context=none", {"train.lr": 1e-3, "train.batch_size": 32}),
}


def get_sweep():
    return [spec(parts, seed, name=f"MELD--E/meld-cpu/{setting}/seed={seed}",
                 **{key.replace(".", "__"): value for key, value in fields.items()})
            for setting, (parts, fields) in SETTINGS.items() for seed in SEEDS]
