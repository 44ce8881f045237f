"""What a run leaves on disk, and how it is read back.

    checkpoint.py   Orbax checkpoints of a run (last state for resuming, best parameters), the
                    run lock
    records.py      a run's config read back and checked against the hash it was made with
    format.py       the run format version, and the migration of runs of earlier formats
    store.py        the content-addressed store of the frozen encoders runs were trained with

Self-contained copies of a finished run live with inference (:mod:`emojax.inference.standalone`).
"""
