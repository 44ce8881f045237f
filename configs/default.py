"""Every default of a run: the config before its parts are filled in.

``configs/compose.py`` starts each run from ``get_config()`` and then sets the fields of the
parts (``parts`` below: the preset each part takes when the command line does not name it).
A field set here that a part also sets is the part's default: ``finetune.lr`` is 0 unless a
fine-tuning ``mode`` gives its own, ``loss.combine`` is ``sum`` unless a ``loss`` preset says
``uncertainty``. Any field can then be overridden (``--config.train.lr=5e-4``).

Which of these fields change what is trained (and so the run's hash and directory) is
``emojax.config``'s business: the seed, the cache and the progress bar do not.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict()
    # The preset of each part when the command line does not name it. A part left out here is
    # optional: not named, it leaves the config (and the run's hash) as it is.
    cfg.parts = {"dataset": "demo", "encoders": "T+A+V", "fusion": "vallina", "loss": "ce", "experts": "1xE",
                 "mode": "frozen", "dropout": "none"}
    cfg.seed = 0
    # The encoders' fine-tuning (mode trainable / lora): the encoders' learning rate, which
    # encoders (``all``: every one with weights, or modalities such as ``T+A``), recomputation of
    # activations in the backward pass, the LoRA adapters, and how many of the text encoder's top
    # layers train from stored hidden states of the others (``tune_layers``; 0: every layer).
    cfg.finetune = {"lr": 0.0, "tune": "all", "remat": False, "tune_layers": 0,
                    "lora": {"rank": 64, "alpha": 128.0, "dropout": 0.1, "targets": "query,key,value,dense"}}
    # label_smoothing: the cross-entropy family's target mixes in this share of the uniform
    # distribution; class_weights: one weight per class, or (one entry) a .json / .csv file of them;
    # () for none (loss=weighted takes 1 / class frequency instead).
    cfg.loss = {"classification": "ce", "extras": {}, "combine": "sum", "label_smoothing": 0.0, "class_weights": ()}
    cfg.model = {"hidden_dim": 256, "dropout": 0.2}
    cfg.train = {
        "batch_size": 32,
        "epochs": 30,
        "lr": 1e-3,
        "weight_decay": 0.01,
        "warmup_ratio": 0.1,
        "schedule": "linear",  # after the warm-up: linear decay to 0, cosine decay to 0, or constant
        "grad_accum_steps": 1,  # batches whose mean gradient makes one optimizer update
        "clip_norm": 1.0,
        "patience": 8,  # epochs without an improvement of more than min_delta before the run stops
        "min_delta": 0.0,  # on the select_metric's scale (0.001: a tenth of a percentage point)
        "select_metric": "weighted_f1",  # accuracy, weighted_f1 or macro_f1 on dev
        "keep_epochs": 2,
        # keep the training state (state/: optimizer moments, step, RNG) of a finished run, to train
        # it further; off: only its selected parameters (best/) stay
        "keep_state": False,
        "eval_batch_size": 256,
        "devices": 0,  # data parallel over this many local devices; 0 = all of them
    }
    cfg.precision = "float32"
    cfg.cache = {"dir": "", "host_bytes": 8 << 30, "device_bytes": 4 << 30,
                 "media_workers": 0}  # threads decoding media (0: one per core)
    cfg.progress = True
    # Where the run's curves go besides its files: tensorboard (events/), wandb (the optional
    # wandb package; WANDB_MODE=offline works without network) or none.
    cfg.report_to = "tensorboard"
    return cfg
