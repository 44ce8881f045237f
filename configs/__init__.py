"""Experiment configuration as code, on top of the ``emojax`` library (which never imports it).

``default.py`` holds every default of a run; each part module (``datasets.py``, ``fusion.py``, ...)
a ``PRESETS`` mapping from a part name to a plain dict; ``compose.py`` builds a run config from a
``key=value,...`` string of parts and ``train.py`` is the ``--config=configs/train.py:...`` entry of
the launchers. ``experiments/`` holds the sweeps.

``pip install .`` installs this folder as the package ``configs`` (the name it has in a checkout,
which ``train.py`` and the sweeps import it by): the installed commands read
``--config=configs/train.py:...`` from here when the working folder has no ``configs/train.py``.
"""
