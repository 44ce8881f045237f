"""The notebook cell of docs/notebook.md runs as written and trains a head that beats the majority class."""
import pathlib
import re

import numpy as np
import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "docs" / "notebook.md"


def notebook_snippet() -> str:
    text = README.read_text()
    found = re.search(r"<!-- notebook-snippet -->\n```python\n(.*?)```", text, re.S)
    if found is None:
        pytest.fail("docs/notebook.md has no python block after <!-- notebook-snippet -->")
    return found.group(1)


# The demo with its whole training split but fewer dev and test utterances (the cell scores dev
# only; every split's features are computed): a smaller run of the same cell.
SIZES = {"train": 420, "dev": 70, "test": 3}


@pytest.mark.slow
def test_infer_notebook_snippet_from_readme(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from emojax.data import demo

    monkeypatch.setattr(demo, "SPLIT_SIZES", SIZES)  # the size the cell's generate-on-first-use expects
    monkeypatch.chdir(tmp_path)
    demo.generate_demo(tmp_path / "datasets" / "demo", seed=0)
    namespace: dict = {}
    exec(compile(notebook_snippet(), "docs/notebook.md:notebook-snippet", "exec"), namespace)

    dev = namespace["dev_set"]
    probs, scores, fig = namespace["probs"], namespace["scores"], namespace["fig"]
    classes = len(namespace["prep"].class_names)
    assert namespace["logits"].shape == (8, classes)
    assert probs.shape == (len(dev), classes)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    majority = np.bincount(dev.labels, minlength=classes).max() / len(dev)
    assert scores["accuracy"] > majority + 0.2
    assert isinstance(fig, Figure)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert sum(int(t) for t in texts) == len(dev)  # the matrix counts every dev sample once
    assert (tmp_path / "runs" / "notebook" / "cache" / "features").is_dir()
