"""Class probabilities for new inputs from a finished run directory.

``Estimator(run_dir).predict(text=..., audio=..., video=...)`` rebuilds the run's frozen
encoders (with the speaker tokens and text format it trained with) and its best parameters;
any modality left out uses the model's learned placeholder for it.

``predict_table(estimator, source, output_csv)`` scores many inputs at once: a dataset-style CSV
(MELD, IEMOCAP or CH-SIMS columns, media found where the dataset loader looks for them) or a
folder of clips paired by file stem. It writes one output row per input row; a row whose media
file is missing or unreadable gets its error message in the ``error`` column and the others are
still scored. Rows of a dataset's CSV (MELD, IEMOCAP, CH-SIMS) are built and scored as the run
built and scored its own splits (dialogue order, context turns, prompt, speaker tokens, evaluation
batches, and for a run with a dialogue context head whole dialogues); rows of any other table, and
single inputs, are scored alone (batch size 1), a run with dialogue context taking the previous
turns from ``context=``.

    estimator.py   Estimator: the run's encoders, tuned weights and best parameters, rebuilt
    tables.py      predict_table / read_table_inputs: many rows at once, asking each loader
    standalone.py  self-contained copies of a finished run (create_standalone, load_standalone),
                   and its encoders on their own (extract_encoders)
"""
from __future__ import annotations

from emojax.inference.estimator import Estimator
from emojax.inference.tables import TableInput, predict_table, read_table_inputs

__all__ = ["Estimator", "TableInput", "predict_table", "read_table_inputs"]
