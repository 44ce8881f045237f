"""One process of a multi-host run of the tiny text config; prints its history and parameters' sums.

    python multihost_run.py DATA BERT WORKDIR PROCESS_ID NUM_PROCESSES PORT LOSS
"""
import json
import sys

from emojax.training import distributed


def main(data, bert, workdir, process_id, num_processes, port, loss):
    distributed.initialize(f"127.0.0.1:{port}", int(num_processes), int(process_id))
    import jax

    from configs.compose import compose
    from emojax.runs import checkpoint as ckpt_lib
    from emojax.training.loop import fit

    cfg = compose(f"dataset=MELD--E,encoders=T,loss={loss}")
    cfg.dataset.path, cfg.encoders.T.model = data, bert
    cfg.train.update(epochs=3, batch_size=16, lr=1e-2, patience=100, eval_batch_size=40)
    cfg.progress = False
    run_dir = fit(cfg, workdir)
    # Every process restores the selected parameters (replicated); read them on this host.
    checkpoints = ckpt_lib.RunCheckpoints(run_dir, primary=False)
    progress = checkpoints.progress()
    history = progress["history"]
    print(json.dumps({"process": jax.process_index(), "global_devices": jax.device_count(),
                      "train_loss": [row["train_loss"] for row in history],
                      "dev_wf1": [row["dev"]["weighted_f1"] for row in history],
                      "best_epoch": progress["best_epoch"]}))


if __name__ == "__main__":
    main(*sys.argv[1:])
