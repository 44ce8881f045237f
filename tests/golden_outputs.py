"""The reference outputs of transformers' PyTorch encoders on tiny random checkpoints
(``../shared/fixtures/golden``, see its README), for the parity tests."""
import pathlib

import numpy as np
import pytest

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared"
GOLDEN = SHARED / "fixtures" / "golden"


def golden(name: str) -> pathlib.Path:
    """The folder of reference ``name``; skips the test where the shared folder is absent."""
    folder = GOLDEN / name
    if not (folder / "outputs.npz").exists():
        pytest.skip(f"{folder} is absent: the reference outputs live in the 'shared' folder beside the repository")
    return folder


def arrays(folder: pathlib.Path, name: str) -> dict[str, np.ndarray]:
    """The arrays of the ``.npz`` file ``name`` in ``folder``."""
    with np.load(folder / name) as data:
        return {k: data[k] for k in data.files}
