"""The training config: ``--config=configs/train.py:dataset=MELD--E,encoders=T+A+V,loss=focal``.

The string after the colon names config parts as ``key=value`` pairs; the keys are
``dataset``, ``encoders``, ``fusion``, ``loss``, ``experts``, ``mode`` and ``dropout`` (``PARTS``
in ``configs/compose.py``) and the values are the names in the ``PRESETS`` of the matching module
in this folder. Parts not named take their defaults, and every other field its value in
``configs/default.py``. Any field can then be set with ``--config.<field>=<value>``.
"""
from configs.compose import compose


def get_config(arg: str | None = None):
    return compose(arg)
