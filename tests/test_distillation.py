"""Distillation in one run: a frozen teacher's logits inside the student's jitted step (DIST)."""
import json

import jax
import numpy as np
import pytest

from configs.compose import compose
from emojax import config as config_lib
from emojax.model import losses as losses_lib
from emojax.training.distillation import transfer_matching
from emojax.training.loop import fit
from emojax.training.state import TrainState, make_optimizer
from emojax.training.steps import make_train_step
from emojax.model.model import build_model


def test_distillation_step_uses_frozen_teacher_logits():
    rng = np.random.default_rng(0)
    teacher_cfg = compose("encoders=T,fusion=vallina")
    student_cfg = compose("encoders=T+A,fusion=vallina,loss=focal+dist")
    student_cfg.model.dropout = 0.0  # the training forward then equals the evaluation one
    teacher = build_model(teacher_cfg, {"T": 6}, 5)
    student = build_model(student_cfg, {"T": 6, "A": 4}, 5)
    feats = {"T": rng.normal(size=(8, 6)).astype(np.float32), "A": rng.normal(size=(8, 4)).astype(np.float32)}
    present = {m: np.ones(8, bool) for m in feats}
    batch = {"features": feats, "present": present, "labels": rng.integers(0, 5, 8).astype(np.int32),
             "teacher_features": {"T": feats["T"]}, "teacher_present": {"T": present["T"]}}
    t_params = teacher.init(jax.random.PRNGKey(1), {"T": feats["T"]}, {"T": present["T"]})["params"]
    s_params = student.init(jax.random.PRNGKey(2), feats, present)["params"]
    # The student starts from the teacher where path and shape agree: the text placeholder, the
    # projector's bias and the classifier (128 -> 5); not the projector's kernel (inputs 6 vs 10).
    from flax.traverse_util import flatten_dict

    before = flatten_dict(s_params)
    s_params, copied = transfer_matching(s_params, t_params)
    flat_s, flat_t = flatten_dict(s_params), flatten_dict(t_params)
    same = sorted("/".join(p) for p in flat_s if p in flat_t and np.array_equal(flat_s[p], flat_t[p]))
    assert copied == len(same) == 4 and "placeholder_T" in same and any(p.endswith("kernel") for p in same)
    assert [p for p in flat_s if "/".join(p) not in same and not np.array_equal(flat_s[p], before[p])] == []
    optimizer = make_optimizer(student_cfg, 10)
    extras = student_cfg.loss.extras.to_dict()
    state = TrainState(step=np.zeros((), np.int32), params=s_params,
                                 opt_state=optimizer.init({"model": s_params, "losses": {}}),
                                 rng=jax.random.PRNGKey(3), loss_state={})
    step = jax.jit(make_train_step(student, optimizer, loss_kind="focal", class_weights=None,
                                             extras=extras, teacher=teacher))
    new_state, logs = step(state, batch, t_params)
    teacher_logits = teacher.apply({"params": t_params}, {"T": feats["T"]}, {"T": present["T"]})[0]
    student_logits = student.apply({"params": s_params}, feats, present)[0]
    expected = losses_lib.dist_loss(student_logits, teacher_logits, temperature=4.0)
    np.testing.assert_allclose(float(logs["dist"]), float(expected), rtol=1e-5)
    focal = losses_lib.focal_loss(student_logits, batch["labels"])
    np.testing.assert_allclose(float(logs["loss"]), float(focal + 2.0 * expected), rtol=1e-5)
    # The teacher receives no gradient: its parameters are an input, not part of the state.
    grads = jax.grad(lambda tp: step(state, batch, tp)[1]["loss"])(t_params)
    assert max(float(np.abs(g).max()) for g in jax.tree_util.tree_leaves(grads)) == 0.0


def _text_cfg(parts, data, bert, epochs):
    cfg = compose(parts)
    cfg.dataset.path = str(data)
    cfg.encoders.T.model = str(bert)
    cfg.train.update(epochs=epochs, batch_size=16, lr=1e-2, patience=100)
    cfg.progress = False
    return cfg


@pytest.mark.slow
def test_distillation_run_end_to_end(tmp_path, text_meld, tiny_bert, capsys):
    teacher_dir = fit(_text_cfg("dataset=MELD--E,encoders=T,loss=focal", text_meld, tiny_bert, 4), tmp_path)
    teacher_results = json.loads((teacher_dir / "results.json").read_text())
    student_cfg = _text_cfg("dataset=MELD--E,encoders=T,fusion=deep-vallina,loss=focal+dist", text_meld, tiny_bert, 3)
    with pytest.raises(config_lib.ConfigError, match="teacher"):
        fit(student_cfg, tmp_path)  # dist without a teacher
    with pytest.raises(config_lib.ConfigError, match="dist"):
        fit(_text_cfg("dataset=MELD--E,encoders=T,loss=focal", text_meld, tiny_bert, 1), tmp_path,
                      teacher=teacher_dir)
    run_dir = fit(student_cfg, tmp_path, teacher=teacher_dir)
    assert "/checkpoints/distillation/MELD--E/" in str(run_dir)
    assert run_dir == config_lib.run_dir(student_cfg, tmp_path, "distillation")
    record = json.loads((run_dir / "teacher.json").read_text())
    # The teacher is re-scored before the student trains: the same test accuracy as its own run.
    assert record["scores"]["test"]["accuracy"] == pytest.approx(teacher_results["test"]["accuracy"])
    history = json.loads((run_dir / "history.json").read_text())
    assert len(history) == 3 and all(np.isfinite(row["train_loss"]) for row in history)
    assert json.loads((run_dir / "results.json").read_text())["test"]["scored"]
