"""Composable experiment configuration parts (``ml_collections``).

Each module holds a ``PRESETS`` mapping from a part name to a plain dict; ``configs/train.py``
composes them from a ``key=value,...`` string (see ``emojax.config.compose``).
"""
