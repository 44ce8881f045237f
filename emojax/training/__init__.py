"""Training: one job per file.

    state.py         TrainState, the optimizer and learning-rate schedule, the initial state
    steps.py         the jit-compiled pure steps: make_train_step, make_eval_step
    batches.py       epoch order and batches (a pure function of seed and epoch)
    parallel.py      data parallelism over devices with jax.sharding (DataParallel)
    plan.py          a run's plan, decided before any work: validated config, directory, folders
    preparation.py   data, features and model of a run (Prepared, prepare); the record of its data
    distillation.py  a finished run as a frozen teacher
    loop.py          fit: resume, epochs, dev selection, the selected epoch scored once
    dialogue_batches.py  batches of whole dialogues for the dialogue-context head
    finetune.py      a run's encoders trained with the head (trainable, LoRA, top layers): Tuning
    finetune_base.py what every tuner shares: the Tuner base, input rows, the checked input store
    finetune_media.py the media encoders' tuner and their stored inputs
    finetune_text.py the text encoders' tuner (top layers from stored hidden states)
    events.py        TensorBoard event files of a run
    distributed.py   multi-host runs on jax.distributed
    evaluation.py    scoring and results: predict_proba, score, write_results, a finished run
                     rebuilt (load_run); never imports the epoch loop
"""
