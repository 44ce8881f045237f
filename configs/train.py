"""The training config: ``--config=configs/train.py:dataset=MELD--E,encoders=T+A+V,loss=focal``.

The string after the colon names config parts as ``key=value`` pairs; the keys are
``dataset``, ``encoders``, ``fusion``, ``loss``, ``experts``, ``mode`` and ``dropout`` and the
values are the names in the ``PRESETS`` of the matching module in this folder. Any field can
then be set with ``--config.<field>=<value>``.
"""
from emojax.config import compose


def get_config(arg: str | None = None):
    return compose(arg)
