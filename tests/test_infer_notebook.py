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


def test_infer_notebook_snippet_from_readme(tmp_path, monkeypatch, demo_dataset):
    from matplotlib.figure import Figure

    monkeypatch.chdir(tmp_path)
    (tmp_path / "datasets").mkdir()
    (tmp_path / "datasets" / "demo").symlink_to(demo_dataset)  # the demo the session generated
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
