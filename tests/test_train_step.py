"""The train step against a plain transcription of it (``value_and_grad`` of the loss over every
parameter, placeholders included, then the optimizer), on the same weights and RNG keys; the
optimizer's clipping against optax's; attention over stacked groups against each group alone."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs.compose import compose
from emojax.model import losses as losses_lib
from emojax.model.layers import SelfAttentionProjector
from emojax.model.model import build_model
from emojax.training.state import TrainState, clip_by_global_norm, make_optimizer
from emojax.training.steps import make_train_step

DIMS = {"T": 24, "A": 24, "V": 24}


def _plain_step(model, optimizer, state, batch):
    """One step written plainly: the gradient of every parameter, then the optimizer."""
    _, dropout_rng, router_rng, modality_rng, _ = jax.random.split(state.rng, 5)
    rngs = {"dropout": dropout_rng, "router": router_rng, "modality": modality_rng}

    def loss_fn(trainable):
        logits, aux, _ = model.apply({"params": trainable["model"]}, batch["features"], batch["present"],
                                     deterministic=False, rngs=rngs)
        return losses_lib.classification_loss("focal", logits, batch["labels"], None) + aux

    trainable = {"model": state.params, "losses": {}}
    loss, grads = jax.value_and_grad(loss_fn)(trainable)
    updates, opt_state = optimizer.update(grads, state.opt_state, trainable)
    return optax.apply_updates(trainable, updates)["model"], opt_state, loss, grads


def test_train_step_matches_plain_gradient():
    """A complete batch takes the step's path that holds the placeholders fixed, a batch with an
    absent modality the full one: both give the plain step's loss, moments and parameters. (The
    path does not depend on the fusion: the concat head keeps the compilation short.)"""
    cfg = compose("encoders=T+A+V,fusion=vallina,loss=focal")
    model = build_model(cfg, DIMS, 7)
    rng = np.random.default_rng(0)
    complete = {"features": {m: rng.normal(size=(6, d)).astype(np.float32) for m, d in DIMS.items()},
                "present": {m: np.ones(6, bool) for m in DIMS},
                "labels": rng.integers(0, 7, 6).astype(np.int32)}
    partial = {**complete, "present": {**complete["present"], "A": np.arange(6) != 2}}
    optimizer = make_optimizer(cfg, 10)

    @jax.jit  # one compiled initialisation, not a kernel per eager initialiser
    def init(features, present):
        params = model.init({"params": jax.random.PRNGKey(0)}, features, present)["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=optimizer.init({"model": params, "losses": {}}), rng=jax.random.PRNGKey(1),
                          loss_state={})

    step = jax.jit(make_train_step(model, optimizer, loss_kind="focal", class_weights=None, extras={}))
    plain = jax.jit(lambda state, batch: _plain_step(model, optimizer, state, batch))
    for batch in (complete, partial):
        state = init(batch["features"], batch["present"])
        # Two steps: the first one's learning rate is 0 (warm-up), the second one moves the parameters.
        for _ in range(2):
            params, opt_state, loss, grads = plain(state, batch)
            state, logs = step(state, batch)
            np.testing.assert_allclose(float(logs["loss"]), float(loss), rtol=1e-5)
            np.testing.assert_allclose(float(logs["grad_norm"]), float(optax.global_norm(grads)), rtol=1e-5)
            for got, want in zip(jax.tree_util.tree_leaves(state.opt_state), jax.tree_util.tree_leaves(opt_state)):
                np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-9)
            for got, want in zip(jax.tree_util.tree_leaves(state.params), jax.tree_util.tree_leaves(params)):
                np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-7)
        # The placeholder of the absent modality is trained; with every modality there, none is.
        assert bool(np.any(np.asarray(grads["model"]["placeholder_A"]) != 0)) is (batch is partial)
        assert not np.any(np.asarray(grads["model"]["placeholder_T"]))


@pytest.mark.parametrize("max_norm", [1e3, 0.5])
def test_clip_by_global_norm_matches_optax(max_norm):
    rng = np.random.default_rng(3)
    tree = {"a": jnp.asarray(rng.normal(size=(5, 4)), jnp.float32),
            "b": {"c": jnp.asarray(rng.normal(size=7), jnp.float32)}}
    ours, reference = clip_by_global_norm(max_norm), optax.clip_by_global_norm(max_norm)
    assert ours.init(tree) == reference.init(tree)  # one state layout: checkpoints interchange
    got, _ = ours.update(tree, ours.init(tree))
    want, _ = reference.update(tree, reference.init(tree))
    for g, w, t in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want),
                       jax.tree_util.tree_leaves(tree)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-6)
        if max_norm > 100:  # below the threshold the gradient passes untouched
            np.testing.assert_array_equal(np.asarray(g), np.asarray(t))
    assert float(optax.global_norm(got)) == pytest.approx(min(max_norm, float(optax.global_norm(tree))), rel=1e-6)


def test_self_attention_projector_on_stacked_groups_matches_each_group():
    """Leading axes are independent groups: each attends within itself, padding rows masked."""
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(3, 5, 12)), jnp.float32)
    mask = jnp.asarray([True, True, False, True, True])
    module = SelfAttentionProjector(8, 4, depth=2)
    params = jax.jit(module.init)(jax.random.PRNGKey(0), x[0])
    apply = jax.jit(lambda x: module.apply(params, x, batch_mask=mask))
    stacked = apply(x)
    assert stacked.shape == (3, 5, 8)
    for g in range(3):
        np.testing.assert_allclose(np.asarray(stacked[g]), np.asarray(apply(x[g])), rtol=1e-5, atol=1e-6)
