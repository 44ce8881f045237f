"""The training config: ``--config=configs/train.py:dataset=MELD--E,encoders=T+A+V,loss=focal``.

The string after the colon names config parts as ``key=value`` pairs; the keys are
``dataset``, ``encoders``, ``fusion``, ``loss``, ``experts``, ``mode``, ``dropout``, ``context``
and ``recipe`` (``PARTS`` in ``configs/compose.py``) and the values are the names in the
``PRESETS`` of the matching module in this folder. Parts not named take their defaults, and every
other field its value in ``configs/default.py``. Any field can then be set with
``--config.<field>=<value>``.

A recipe (``configs/recipes.py``: ``meld-cpu``, ``iemocap-cpu``, ``meld-gpu``, ``iemocap-gpu``)
is the best known setting of a dataset for a class of machine, its dataset included:
``--config=configs/train.py:recipe=meld-cpu --config.dataset.path=datasets/MELD`` is a whole
run. Parts named beside it replace the recipe's (``recipe=meld-cpu,loss=focal``), and
``--config.<field>=<value>`` overrides what it sets.
"""
from configs.compose import compose


def get_config(arg: str | None = None):
    return compose(arg)
