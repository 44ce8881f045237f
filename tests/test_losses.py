"""Losses against the PyTorch suite's outputs (suite-golden) and NumPy transcriptions."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from conftest import suite_golden
from emojax.model import losses


def _golden(name):
    folder = suite_golden(name)
    return np.load(folder / "inputs.npz"), np.load(folder / "outputs.npz")


def test_focal_loss_golden():
    inputs, outputs = _golden("loss-focal")
    out = losses.focal_loss(inputs["logits"], inputs["labels"], gamma=2.0)
    np.testing.assert_allclose(out, outputs["loss"].reshape(()), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_dist_loss_golden_and_grad():
    inputs, outputs = _golden("loss-dist")
    out = losses.dist_loss(inputs["student_logits"], inputs["teacher_logits"])
    np.testing.assert_allclose(out, outputs["loss"].reshape(()), rtol=1e-5, atol=1e-6)
    check_grads(lambda s: losses.dist_loss(s, inputs["teacher_logits"]), (jnp.asarray(inputs["student_logits"]),),
                order=1, modes=("rev",), atol=1e-2, rtol=1e-2)


def test_cmcl_feature_loss_golden():
    inputs, outputs = _golden("loss-cmcl-feature")
    out = losses.feature_kl_loss(inputs["features"], inputs["target_features"], temperature=1.0)
    np.testing.assert_allclose(out, outputs["loss"].reshape(()), rtol=1e-5, atol=1e-6)
    summed = losses.cmcl_loss({"T": inputs["target_features"], "A": inputs["features"], "V": inputs["features"]})
    np.testing.assert_allclose(summed, 2 * outputs["loss"].reshape(()), rtol=1e-5, atol=1e-6)


def test_spcl_loss_golden_three_steps():
    inputs, outputs = _golden("loss-spcl")
    num_classes, dim = inputs["default_centers"].shape
    state = losses.spcl_init(jax.random.PRNGKey(0), num_classes=num_classes, dim=dim, pool_size=4)
    state["default_centers"] = jnp.asarray(inputs["default_centers"])
    step = jax.jit(lambda s, e, y, k: losses.spcl_loss(s, e, y, k, temperature=0.08, support=4))
    got = []
    for i, embeddings in enumerate(inputs["embeddings"]):
        loss, state = step(state, jnp.asarray(embeddings), jnp.asarray(inputs["labels"]), jax.random.PRNGKey(i))
        got.append(float(loss))
    np.testing.assert_allclose(got, outputs["losses"], rtol=1e-5, atol=1e-6)


def test_apcl_loss_golden_two_steps():
    inputs, outputs = _golden("loss-apcl")
    state = {"prototypes": jnp.asarray(inputs["initial_prototypes"]),
             "momenta": jnp.zeros_like(jnp.asarray(inputs["initial_prototypes"]))}
    for i, embeddings in enumerate(inputs["embeddings"]):
        loss, state = losses.apcl_loss(state, jnp.asarray(embeddings), jnp.asarray(inputs["labels"]))
        np.testing.assert_allclose(np.asarray(state["prototypes"]), outputs["prototypes_after_each_step"][i],
                                   atol=1e-5)
        np.testing.assert_allclose(float(loss), outputs["losses"][i], rtol=1e-5, atol=1e-6)


def _numpy_prototype_loss(x, y, temperature, decoupled, eps=1e-8):
    """A plain NumPy transcription of the score and loss formulas."""
    n = len(x)
    norms = np.maximum(np.linalg.norm(x, axis=1), eps)
    cos = (x @ x.T) / np.outer(norms, norms)
    scores = ((1 + cos) / 2 + eps) * (1 - np.eye(n)) / temperature
    scores -= scores.max()
    same = (y[:, None] == y[None, :]).astype(float)
    pos_mask, neg_mask = same * (1 - np.eye(n)), 1 - same
    if decoupled:
        loss = -(scores * pos_mask).sum(1) / (pos_mask.sum(1) + eps) + np.log((np.exp(scores) * neg_mask).sum(1) + eps)
        kept = loss[loss > 0]
    else:
        e = np.exp(scores)
        p = (e * pos_mask).sum(1) / ((e * pos_mask).sum(1) + (e * neg_mask).sum(1)) / (pos_mask.sum(1) + eps)
        loss = -np.log(p + eps)
        kept = loss[loss > 0.3]
    return kept.mean() if len(kept) else 0.0


@pytest.mark.parametrize("decoupled", [False, True])
def test_prototype_loss_matches_numpy(decoupled):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 6)).astype(np.float32)
    y = rng.integers(0, 3, size=10)
    scores, pos, neg = losses.prototype_scores(jnp.asarray(x), jnp.asarray(y), temperature=0.08)
    out = losses.prototype_contrastive_loss(scores, pos, neg, decoupled=decoupled)
    np.testing.assert_allclose(float(out), _numpy_prototype_loss(x, y, 0.08, decoupled), rtol=1e-4)


def test_spcl_loss_ring_buffer_keeps_most_recent():
    state = losses.spcl_init(jax.random.PRNGKey(0), num_classes=2, dim=3, pool_size=2)
    e = jnp.arange(12, dtype=jnp.float32).reshape(4, 3)
    state = losses.spcl_update(state, e, jnp.asarray([0, 0, 0, 1]))
    assert state["counts"].tolist() == [3, 1]
    # class 0 saw rows 0, 1, 2 in a pool of 2: row 2 overwrote row 0
    np.testing.assert_array_equal(np.asarray(state["pools"][0]), np.asarray(e[jnp.asarray([2, 1])]))


def test_uncertainty_weighted_loss_matches_formula_and_jit():
    values, sigmas = jnp.asarray([0.5, 2.0, 1.5]), jnp.asarray([0.7, 1.3, 2.0])
    expected = (0.5 / np.asarray(sigmas)) @ np.asarray(values) + np.log(np.asarray(sigmas)).sum()
    np.testing.assert_allclose(losses.uncertainty_weighted(values, sigmas), expected, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(losses.uncertainty_weighted)(values, sigmas), expected, rtol=1e-6)
    check_grads(lambda s: losses.uncertainty_weighted(values, s), (sigmas,), order=2, atol=1e-2, rtol=1e-2)


def test_weighted_cross_entropy_loss_matches_numpy():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(8, 4)).astype(np.float32)
    labels = rng.integers(0, 4, size=8)
    weights = np.asarray([0.5, 1.0, 2.0, 4.0], np.float32)
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    nll = -log_p[np.arange(8), labels]
    expected = (nll * weights[labels]).sum() / weights[labels].sum()
    np.testing.assert_allclose(losses.cross_entropy(logits, labels, weights), expected, rtol=1e-5)
    np.testing.assert_allclose(losses.cross_entropy(logits, labels), nll.mean(), rtol=1e-5)
    p_t = np.exp(-nll)
    np.testing.assert_allclose(losses.focal_loss(logits, labels), ((1 - p_t) ** 2 * nll).mean(), rtol=1e-5)


def test_frl_simsiam_loss_golden_and_sign():
    folder = suite_golden("loss-frl-simsiam")
    from safetensors.numpy import load_file

    inputs, outputs, state = np.load(folder / "inputs.npz"), np.load(folder / "outputs.npz"), load_file(
        str(folder / "params.safetensors"))
    names = {"projectors.0": "projector_a", "projectors.1": "projector_b", "predictors.0": "predictor_a",
             "predictors.1": "predictor_b"}
    params = {ours: {"linear_0": {"kernel": jnp.asarray(state[f"loss_fn.{theirs}.proj.0.weight"].T),
                                  "bias": jnp.asarray(state[f"loss_fn.{theirs}.proj.0.bias"])}}
              for theirs, ours in names.items()}
    concat = jnp.concatenate([jnp.asarray(inputs["T"]), jnp.asarray(inputs["A"])], axis=1)
    fused = jnp.asarray(inputs["fused_features"])
    suite = losses.reconstruction_loss(params, fused, concat, alpha=1.0, sign="suite")
    np.testing.assert_allclose(float(suite), float(outputs["loss"].reshape(())), rtol=1e-5, atol=1e-6)
    simsiam = losses.reconstruction_loss(params, fused, concat, alpha=1.0)
    assert float(simsiam) == pytest.approx(-float(suite), rel=1e-6)
    assert float(losses.reconstruction_loss(params, fused, concat, alpha=1.2)) == pytest.approx(1.2 * float(simsiam))
    with pytest.raises(ValueError, match="sign"):
        losses.reconstruction_loss(params, fused, concat, sign="minus")
    # Gradients reach the fused features but never the (stop-gradient) modality features.
    assert float(jnp.abs(jax.grad(lambda a: losses.reconstruction_loss(params, a, concat))(fused)).max()) > 0
    grad_b = jax.grad(lambda b: losses.reconstruction_loss(params, fused, b))(concat)
    assert float(jnp.abs(grad_b).max()) == 0.0
