"""Mixture, attention and projector fusions, the classifiers and the suite import of a head,
against NumPy transcriptions of their formulas (computed from the parameters, never by calling the
module again).

Parameters have the layout ``module.init`` creates (``jax.eval_shape``) and fixed-seed random
values, or (``_init(..., real=True)``) the initialised values plus fixed-seed noise: either way the
biases that ``init`` sets to zero (attention, LayerNorm, experts) take part in every comparison.
Drawing the values in NumPy keeps the file fast: eager random initialisers compile a kernel per
shape.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from emojax.model import classifier as classifier_lib
from emojax.model import fusion as fusion_lib
from emojax.encoders.hub import WeightError
from emojax.model.suite_import import import_suite_classifier, import_suite_head

MODS = ("T", "A", "V")
TOL = dict(rtol=1e-4, atol=1e-5)
GRAD_TOL = dict(order=1, modes=("rev",), atol=1e-2, rtol=1e-2)


# ---------------------------------------------------------------------------------------------
# Helpers: inputs, perturbed parameters and NumPy transcriptions
# ---------------------------------------------------------------------------------------------
def _features(dims, batch, seed):
    rng = np.random.default_rng(seed)
    return {m: jnp.asarray(rng.normal(size=(batch, d)).astype(np.float32)) for m, d in dims.items()}


def _perturb(params, seed, scale=0.3):
    """Every leaf plus fixed-seed N(0, scale) noise, float32."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(
        lambda a: jnp.asarray(np.asarray(a) + scale * rng.normal(size=np.shape(a)), jnp.float32), params)


def _init(module, inputs, seed=0, real=False):
    """Parameters in the layout ``module.init`` creates. ``real``: the initialised values plus noise;
    otherwise (faster: no random-init kernels to compile) fixed-seed N(0, 0.4) draws."""
    if real:
        return _perturb(module.init(jax.random.PRNGKey(seed), inputs)["params"], seed + 100)
    shapes = jax.eval_shape(lambda x: module.init(jax.random.PRNGKey(seed), x), inputs)["params"]
    return _perturb(jax.tree_util.tree_map(lambda s: np.zeros(s.shape, np.float32), shapes), seed + 100, 0.4)


def _np(tree):
    """A NumPy float64 copy of a parameter tree."""
    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), jax.device_get(tree))


def _x64(features, names):
    return {m: np.asarray(features[m], np.float64) for m in names}


def _softmax(z, axis=-1):
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def _dense(p, x):
    return x @ p["kernel"] + p["bias"]


_erf = np.vectorize(math.erf)


def _gelu(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def _layer_norm(p, x, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def _np_mha(p, query, key, value, num_heads):
    """PyTorch's ``nn.MultiheadAttention`` on one unbatched sequence: query ``(L, D)``, key/value
    ``(S, Dk)``, weights ``(out, in)``."""
    d = query.shape[-1]
    if "in_proj_weight" in p:
        wq, wk, wv = np.split(p["in_proj_weight"], 3)
    else:
        wq, wk, wv = p["q_proj_weight"], p["k_proj_weight"], p["v_proj_weight"]
    bq, bk, bv = np.split(p["in_proj_bias"], 3)
    q, k, v = query @ wq.T + bq, key @ wk.T + bk, value @ wv.T + bv
    size = d // num_heads
    heads = lambda t: t.reshape(len(t), num_heads, size).transpose(1, 0, 2)  # noqa: E731
    probs = _softmax(heads(q) @ heads(k).transpose(0, 2, 1) / math.sqrt(size))
    out = (probs @ heads(v)).transpose(1, 0, 2).reshape(len(query), d)
    return out @ p["out_proj_weight"].T + p["out_proj_bias"]


def _np_attention(p, query, key, value, num_heads, batch_as_sequence):
    """Batch as one sequence, or every sample a sequence of its own."""
    if batch_as_sequence:
        return _np_mha(p, query, key, value, num_heads)
    return np.concatenate([_np_mha(p, query[i:i + 1], key[i:i + 1], value[i:i + 1], num_heads)
                           for i in range(len(query))])


def _np_experts(p, x, names):
    """``(B, M + 1, out)``: one linear expert per modality, then one over the concatenation."""
    outs = [_dense(p[f"expert_{m}"], x[m]) for m in names]
    outs.append(_dense(p["expert_concat"], np.concatenate([x[m] for m in names], -1)))
    return np.stack(outs, 1)


def _np_top_k(w, k):
    """Keep the ``k`` largest per row (ties: lowest index first), renormalised."""
    out = np.zeros_like(w)
    for b, row in enumerate(w):
        keep = np.argsort(-row, kind="stable")[:k]
        out[b, keep] = row[keep] / row[keep].sum()
    return out


def _np_classifier(p, x, top_k=0):
    """The suite's ``MoE`` / ``SparseMoE`` over linear experts, eval mode (no router noise)."""
    w = _softmax(x @ p["router"]["router"]["kernel"])
    if top_k:
        w = _np_top_k(w, top_k)
    per_expert = np.einsum("bf,efc->bec", x, p["expert_kernels"]) + p["expert_biases"][None]
    return np.einsum("be,bec->bc", w, per_expert), w


# ---------------------------------------------------------------------------------------------
# Mixture-of-experts fusions
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("noisy", [False, True])
def test_moe_fusion_matches_numpy(noisy):
    dims = {"T": 6, "A": 4, "V": 5}
    x = _features(dims, 5, seed=0)
    module = fusion_lib.build_fusion("moe", modalities=MODS, input_dims=dims, output_dim=7, noisy=noisy)
    params = _init(module, x)
    out, aux = module.apply({"params": params}, x)
    p, xn = _np(params), _x64(x, MODS)
    assert set(p["router"]) == ({"router", "noise"} if noisy else {"router"})
    concat = np.concatenate([xn[m] for m in MODS], -1)
    weights = _softmax(_dense(p["router"]["router"], concat))  # eval: no noise even when noisy
    expected = np.einsum("be,beo->bo", weights, _np_experts(p["experts"], xn, MODS))
    assert out.shape == (5, 7) and out.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out), expected, **TOL)
    assert float(aux) == 0.0


def test_multihead_moe_fusion_matches_numpy():
    dims = {"T": 6, "A": 4, "V": 5}
    x = _features(dims, 5, seed=1)
    module = fusion_lib.build_fusion("multihead-moe", modalities=MODS, input_dims=dims, output_dim=3)
    params = _init(module, x)
    out, aux = module.apply({"params": params}, x)
    p, xn = _np(params), _x64(x, MODS)
    logits = sum(_dense(p[f"router_{m}"]["router"], xn[m]) for m in MODS)  # summed over modalities
    expected = np.einsum("be,beo->bo", _softmax(logits), _np_experts(p["experts"], xn, MODS))
    np.testing.assert_allclose(np.asarray(out), expected, **TOL)
    assert float(aux) == 0.0
    # ``out_features`` overrides ``output_dim``.
    wide = fusion_lib.build_fusion("multihead-moe", modalities=MODS, input_dims=dims, output_dim=3, out_features=9)
    assert jax.eval_shape(lambda f: wide.init_with_output(jax.random.PRNGKey(0), f)[0][0], x).shape == (5, 9)


@pytest.mark.parametrize("name", ["moe", "multihead-moe"])
def test_moe_fusion_training_noise_differs_from_eval(name):
    dims = {"T": 6, "A": 4, "V": 5}
    x = _features(dims, 6, seed=2)
    module = fusion_lib.build_fusion(name, modalities=MODS, input_dims=dims, output_dim=4, noisy=True)
    params = {"params": _init(module, x)}
    rngs = lambda k: {"router": jax.random.PRNGKey(k), "dropout": jax.random.PRNGKey(k + 1)}  # noqa: E731
    evaluation = np.asarray(module.apply(params, x)[0])
    train_a = np.asarray(module.apply(params, x, deterministic=False, rngs=rngs(0))[0])
    train_a2 = np.asarray(module.apply(params, x, deterministic=False, rngs=rngs(0))[0])
    train_b = np.asarray(module.apply(params, x, deterministic=False, rngs=rngs(7))[0])
    assert np.abs(train_a - evaluation).max() > 1e-3
    assert np.abs(train_a - train_b).max() > 1e-3
    np.testing.assert_array_equal(train_a, train_a2)  # the noise comes from the given keys only
    # Without ``noisy`` training is eval (the mixtures have no dropout).
    plain = fusion_lib.build_fusion(name, modalities=MODS, input_dims=dims, output_dim=4)
    plain_params = {"params": _init(plain, x)}
    np.testing.assert_allclose(np.asarray(plain.apply(plain_params, x, deterministic=False, rngs=rngs(0))[0]),
                               np.asarray(plain.apply(plain_params, x)[0]), **TOL)


# ---------------------------------------------------------------------------------------------
# Attention fusions
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("batch_as_sequence", [False, True])
def test_self_attention_fusion_matches_numpy(batch_as_sequence):
    dims = {"T": 8, "A": 4, "V": 4}
    x = _features(dims, 5, seed=3)
    module = fusion_lib.build_fusion("self-attention", modalities=MODS, input_dims=dims, output_dim=6, num_heads=4,
                                     batch_as_sequence=batch_as_sequence)
    params = _init(module, x)
    out, aux = module.apply({"params": params}, x)
    p, xn = _np(params), _x64(x, MODS)
    concat = np.concatenate([xn[m] for m in MODS], -1)
    attended = _np_attention(p["multihead_attn"], concat, concat, concat, 4, batch_as_sequence)
    np.testing.assert_allclose(np.asarray(out), _dense(p["pooler"], attended), **TOL)
    assert out.shape == (5, 6) and float(aux) == 0.0


def test_self_attention_fusion_batch_mask_keeps_padding_out():
    dims = {"T": 8, "A": 4, "V": 4}
    x = _features(dims, 5, seed=4)
    module = fusion_lib.build_fusion("self-attention", modalities=MODS, input_dims=dims, output_dim=6, num_heads=4,
                                     batch_as_sequence=True)
    params = {"params": _init(module, x)}
    mask = jnp.asarray([True, True, False, True, True])
    out = np.asarray(module.apply(params, x, batch_mask=mask)[0])
    changed = {m: v.at[2].set(v[2] * 5.0 + 3.0) for m, v in x.items()}
    out_changed = np.asarray(module.apply(params, changed, batch_mask=mask)[0])
    keep = np.asarray(mask)
    np.testing.assert_allclose(out_changed[keep], out[keep], **TOL)
    # ... whereas without the mask the padding row is a key like the others.
    unmasked = np.asarray(module.apply(params, changed)[0])
    assert np.abs(unmasked[keep] - out[keep]).max() > 1e-3
    # The valid rows are those of attention over the valid rows alone.
    p = _np(params["params"])
    concat = np.concatenate([np.asarray(x[m], np.float64)[keep] for m in MODS], -1)
    expected = _dense(p["pooler"], _np_mha(p["multihead_attn"], concat, concat, concat, 4))
    np.testing.assert_allclose(out[keep], expected, **TOL)


def _np_cross_attention_fusion(p, xn, names, residual, num_heads, batch_as_sequence, rows=None):
    outs = []
    for m in names:
        query = xn[m] if rows is None else xn[m][rows]
        others = np.concatenate([xn[n] for n in names if n != m], -1)
        others = others if rows is None else others[rows]
        attended = _np_attention(p[f"attn_{m}"]["multihead_attn"], query, others, others, num_heads,
                                 batch_as_sequence)
        out = _layer_norm(p[f"attn_{m}"]["norm"], attended + query)
        outs.append(out + query if residual else out)
    return np.concatenate(outs, -1)


# T's query size (8) equals the size of the others (4 + 4): one packed in_proj_weight; A and V have
# separate q/k/v projections (key size 12).
CROSS_DIMS = {"T": 8, "A": 4, "V": 4}


@pytest.mark.parametrize("residual", [False, True])
def test_cross_attention_fusion_per_sample_matches_numpy(residual):
    x = _features(CROSS_DIMS, 4, seed=5)
    module = fusion_lib.build_fusion("cross-attention", modalities=MODS, input_dims=CROSS_DIMS, output_dim=99,
                                     residual=residual, num_heads=2, batch_as_sequence=False)
    params = _init(module, x)
    assert "in_proj_weight" in params["attn_T"]["multihead_attn"]
    assert params["attn_V"]["multihead_attn"]["k_proj_weight"].shape == (4, 12)
    out, aux = module.apply({"params": params}, x)
    assert out.shape == (4, 16)  # sum of the input sizes, output_dim ignored
    assert fusion_lib.fusion_output_dim("cross-attention", modalities=MODS, input_dims=CROSS_DIMS,
                                        output_dim=99) == 16
    expected = _np_cross_attention_fusion(_np(params), _x64(x, MODS), MODS, residual, 2, False)
    np.testing.assert_allclose(np.asarray(out), expected, **TOL)
    assert float(aux) == 0.0


@pytest.mark.parametrize("residual", [False, True])
def test_cross_attention_fusion_batch_mask_keeps_padding_out(residual):
    x = _features(CROSS_DIMS, 5, seed=6)
    module = fusion_lib.build_fusion("cross-attention", modalities=MODS, input_dims=CROSS_DIMS, output_dim=0,
                                     residual=residual, num_heads=2, batch_as_sequence=True)
    params = {"params": _init(module, x)}
    mask = jnp.asarray([True, False, True, True, True])
    keep = np.asarray(mask)
    out = np.asarray(module.apply(params, x, batch_mask=mask)[0])
    changed = {m: v.at[1].set(-4.0 * v[1] + 2.0) for m, v in x.items()}
    np.testing.assert_allclose(np.asarray(module.apply(params, changed, batch_mask=mask)[0])[keep], out[keep], **TOL)
    assert np.abs(np.asarray(module.apply(params, changed)[0])[keep] - out[keep]).max() > 1e-3
    expected = _np_cross_attention_fusion(_np(params["params"]), _x64(x, MODS), MODS, residual, 2, True, rows=keep)
    np.testing.assert_allclose(out[keep], expected, **TOL)
    # Without a mask and with every row valid: attention across the whole batch.
    full = np.asarray(module.apply(params, x)[0])
    np.testing.assert_allclose(full, _np_cross_attention_fusion(_np(params["params"]), _x64(x, MODS), MODS,
                                                                residual, 2, True), **TOL)


# ---------------------------------------------------------------------------------------------
# Concatenation projector and mean
# ---------------------------------------------------------------------------------------------
def test_concat_projector_fusion_matches_numpy():
    dims = {"T": 5, "A": 3, "V": 4}
    x = _features(dims, 4, seed=7)
    module = fusion_lib.build_fusion("concat-projector", modalities=MODS, input_dims=dims, output_dim=99)
    params = _init(module, x)
    out, aux = module.apply({"params": params}, x)
    assert out.shape == (4, 12)
    assert fusion_lib.fusion_output_dim("concat-projector", modalities=MODS, input_dims=dims, output_dim=99) == 12
    p, xn = _np(params["projector"]), _x64(x, MODS)
    assert set(p) == {"linear_0", "linear_1"}  # default depth 2
    h = _dense(p["linear_0"], np.concatenate([xn[m] for m in MODS], -1))
    expected = _dense(p["linear_1"], _gelu(h))  # exact (erf) GELU, dropout off in eval
    np.testing.assert_allclose(np.asarray(out), expected, **TOL)
    assert float(aux) == 0.0
    # The concatenation follows ``modalities``, not the mapping's order.
    swapped = module.apply({"params": params}, {"V": x["V"], "A": x["A"], "T": x["T"]})[0]
    np.testing.assert_array_equal(np.asarray(swapped), np.asarray(out))
    reordered = fusion_lib.build_fusion("concat-projector", modalities=("A", "T", "V"), input_dims=dims,
                                        output_dim=0)
    assert np.abs(np.asarray(reordered.apply({"params": params}, x)[0]) - np.asarray(out)).max() > 1e-3


def test_mean_fusion_matches_numpy():
    dims = {m: 6 for m in MODS}
    x = _features(dims, 4, seed=8)
    module = fusion_lib.build_fusion("mean", modalities=MODS, input_dims=dims, output_dim=5, depth=2)
    params = _init(module, x)
    out, _ = module.apply({"params": params}, x)
    p, xn = _np(params["projector"]), _x64(x, MODS)
    mean = np.mean([xn[m] for m in MODS], axis=0)
    expected = _dense(p["linear_1"], _gelu(_dense(p["linear_0"], mean)))
    np.testing.assert_allclose(np.asarray(out), expected, **TOL)
    assert params["projector"]["linear_0"]["kernel"].shape == (6, 5)
    uneven = fusion_lib.build_fusion("mean", modalities=MODS, input_dims={"T": 6, "A": 6, "V": 4}, output_dim=5)
    with pytest.raises(ValueError, match="one size"):
        uneven.init(jax.random.PRNGKey(0), dict(x, V=x["V"][:, :4]))


# ---------------------------------------------------------------------------------------------
# Classifiers
# ---------------------------------------------------------------------------------------------
def _classifier_input(batch=6, features=5, seed=9):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(batch, features)).astype(np.float32))


def test_fusion_classifier_linear_matches_numpy():
    x = _classifier_input()
    module = classifier_lib.build_classifier("linear", num_classes=3, experts=1, top_k=0)
    params = _init(module, x, real=True)
    logits, aux = module.apply({"params": params}, x)
    np.testing.assert_allclose(np.asarray(logits), _dense(_np(params)["linear"], np.asarray(x, np.float64)), **TOL)
    assert logits.dtype == jnp.float32 and float(aux) == 0.0


def test_fusion_classifier_dense_moe_matches_numpy_and_balance_loss():
    x = _classifier_input()
    module = classifier_lib.build_classifier("moe", num_classes=3, experts=4, balance_weight=0.5)
    params = _init(module, x)
    logits, aux = module.apply({"params": params}, x)
    assert params["expert_kernels"].shape == (4, 5, 3) and params["expert_biases"].shape == (4, 3)
    assert "bias" not in params["router"]["router"]  # the suite's NoiseRouter has no bias
    expected, w = _np_classifier(_np(params), np.asarray(x, np.float64))
    np.testing.assert_allclose(np.asarray(logits), expected, **TOL)
    load = w.sum(0)
    np.testing.assert_allclose(float(aux), 0.5 * np.var(load, ddof=1) / (np.mean(load) ** 2 + 1e-10), rtol=1e-4)
    # top_k == experts keeps every expert: the dense mixture.
    full = classifier_lib.build_classifier("sparse-moe", num_classes=3, experts=4, top_k=4)
    np.testing.assert_allclose(np.asarray(full.apply({"params": params}, x)[0]), expected, **TOL)


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_fusion_classifier_sparse_moe_matches_numpy(top_k):
    x = _classifier_input(batch=8, seed=10)
    module = classifier_lib.build_classifier("sparse-moe", num_classes=3, experts=4, top_k=top_k)
    params = _init(module, x)
    logits, aux = module.apply({"params": params}, x)
    expected, w = _np_classifier(_np(params), np.asarray(x, np.float64), top_k=top_k)
    assert ((w > 0).sum(1) == top_k).all()
    np.testing.assert_allclose(np.asarray(logits), expected, **TOL)
    assert float(aux) == 0.0
    dense, _ = _np_classifier(_np(params), np.asarray(x, np.float64))
    assert np.abs(expected - dense).max() > 1e-3  # the sparsity matters
    # ``moe`` with top_k is the same layer.
    same = classifier_lib.build_classifier("moe", num_classes=3, experts=4, top_k=top_k)
    np.testing.assert_array_equal(np.asarray(same.apply({"params": params}, x)[0]), np.asarray(logits))


def test_fusion_classifier_sparse_moe_defaults_to_top_1():
    x = _classifier_input(seed=11)
    module = classifier_lib.build_classifier("sparse-moe", num_classes=2, experts=3)
    assert module.top_k == 1
    params = _init(module, x)
    expected, _ = _np_classifier(_np(params), np.asarray(x, np.float64), top_k=1)
    np.testing.assert_allclose(np.asarray(module.apply({"params": params}, x)[0]), expected, **TOL)


def test_fusion_classifier_top_k_weights_ties():
    w = jnp.asarray([[0.25, 0.25, 0.25, 0.25],
                     [0.1, 0.3, 0.3, 0.3],
                     [0.4, 0.1, 0.4, 0.1],
                     [0.05, 0.15, 0.2, 0.6]], jnp.float32)
    np.testing.assert_allclose(np.asarray(classifier_lib.top_k_weights(w, 1)),
                               [[1, 0, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], atol=1e-7)
    np.testing.assert_allclose(np.asarray(classifier_lib.top_k_weights(w, 2)),
                               [[0.5, 0.5, 0, 0], [0, 0.5, 0.5, 0], [0.5, 0, 0.5, 0], [0, 0, 0.25, 0.75]],
                               atol=1e-6)
    np.testing.assert_allclose(np.asarray(classifier_lib.top_k_weights(w, 3)), _np_top_k(np.asarray(w), 3),
                               atol=1e-6)
    # Exactly k nonzero entries per row even with ties, each row summing to one.
    kept = np.asarray(classifier_lib.top_k_weights(w, 2))
    assert ((kept > 0).sum(1) == 2).all()
    np.testing.assert_allclose(kept.sum(1), 1.0, atol=1e-6)


def test_balance_loss_cv_squared_matches_numpy():
    x = np.random.default_rng(12).uniform(0.1, 2.0, size=7).astype(np.float32)
    np.testing.assert_allclose(float(classifier_lib.cv_squared(x)), np.var(x, ddof=1) / np.mean(x) ** 2, rtol=1e-5)
    np.testing.assert_allclose(float(jax.jit(classifier_lib.cv_squared)(x)), np.var(x, ddof=1) / np.mean(x) ** 2,
                               rtol=1e-5)
    assert float(classifier_lib.cv_squared(np.asarray([3.0]))) == 0.0  # one value: zero, not NaN
    assert float(classifier_lib.cv_squared(np.full(4, 2.5))) == 0.0
    # eps keeps a zero mean finite.
    assert np.isfinite(float(classifier_lib.cv_squared(np.asarray([1.0, -1.0]))))


def test_fusion_classifier_errors_name_the_misuse():
    with pytest.raises(ValueError, match="experts=4.*moe"):
        classifier_lib.build_classifier("linear", num_classes=3, experts=4)
    with pytest.raises(ValueError, match="top_k must be at least 1"):
        classifier_lib.build_classifier("sparse-moe", num_classes=3, experts=4, top_k=0)
    with pytest.raises(ValueError, match="unknown classifier 'svm'"):
        classifier_lib.build_classifier("svm", num_classes=3)
    with pytest.raises(ValueError, match="bad option.*gate"):
        classifier_lib.build_classifier("moe", num_classes=3, gate=2)
    x = _classifier_input()
    for experts, top_k in ((2, 3), (0, 0), (4, -1)):
        module = classifier_lib.build_classifier("moe", num_classes=3, experts=experts, top_k=top_k)
        with pytest.raises(ValueError, match=f"experts={experts}, top_k={top_k}"):
            module.init(jax.random.PRNGKey(0), x)


# ---------------------------------------------------------------------------------------------
# Gradients and jit
# ---------------------------------------------------------------------------------------------
def _grad_case(kind, name):
    """(function of one float32 array, that array) for check_grads."""
    if kind == "fusion":
        dims = {"T": 8, "A": 4, "V": 4}
        x = _features(dims, 4, seed=13)
        options = {"num_heads": 4} if name == "self-attention" else {"noisy": True}
        module = fusion_lib.build_fusion(name, modalities=MODS, input_dims=dims, output_dim=3, **options)
        params = {"params": _init(module, x)}
        weights = jnp.asarray(np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32))
        return jax.jit(lambda t: (module.apply(params, dict(x, T=t))[0] * weights).sum()), x["T"]
    top_k = 2 if name == "sparse-moe" else 0
    module = classifier_lib.build_classifier(name, num_classes=3, experts=4, top_k=top_k)
    x = _classifier_input(seed=14)
    params = {"params": _init(module, x)}
    weights = jnp.asarray(np.random.default_rng(1).normal(size=(6, 3)).astype(np.float32))
    return jax.jit(lambda t: (module.apply(params, t)[0] * weights).sum()), x


@pytest.mark.parametrize("kind,name", [("fusion", "moe"), ("fusion", "self-attention"),
                                       ("classifier", "sparse-moe"), ("classifier", "moe")])
def test_fusion_check_grads(kind, name):
    fn, x = _grad_case(kind, name)
    check_grads(fn, (x,), **GRAD_TOL)
    assert float(jnp.abs(jax.grad(fn)(x)).max()) > 0


def test_fusion_jit_matches_eager():
    dims = CROSS_DIMS
    x = _features(dims, 5, seed=15)
    cases = [fusion_lib.build_fusion("moe", modalities=MODS, input_dims=dims, output_dim=4, noisy=True),
             fusion_lib.build_fusion("cross-attention", modalities=MODS, input_dims=dims, output_dim=0,
                                     num_heads=2, residual=True),
             fusion_lib.build_fusion("concat-projector", modalities=MODS, input_dims=dims, output_dim=0)]
    for module in cases:
        params = {"params": _init(module, x)}
        eager = np.asarray(module.apply(params, x)[0])
        jitted = np.asarray(jax.jit(lambda p, f: module.apply(p, f)[0])(params, x))
        np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-6)
    clf = classifier_lib.build_classifier("sparse-moe", num_classes=3, experts=4, top_k=2)
    z = _classifier_input(seed=16)
    params = {"params": _init(clf, z)}
    np.testing.assert_allclose(np.asarray(jax.jit(lambda p, t: clf.apply(p, t)[0])(params, z)),
                               np.asarray(clf.apply(params, z)[0]), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Suite import of a classifier and of a whole head
# ---------------------------------------------------------------------------------------------
def _suite_classifier_state(params):
    """The suite's ``state_dict`` of a classifier (PyTorch ``(out, in)`` weights) from emojax's."""
    p = jax.device_get(params)
    if "linear" in p:
        return {"weight": np.asarray(p["linear"]["kernel"]).T.copy(), "bias": np.asarray(p["linear"]["bias"])}
    state = {"router.router.weight": np.asarray(p["router"]["router"]["kernel"]).T.copy(),
             "router.noise.0.weight": np.asarray(p["router"]["noise"]["kernel"]).T.copy()}
    for i in range(p["expert_kernels"].shape[0]):
        state[f"experts.{i}.weight"] = np.asarray(p["expert_kernels"][i]).T.copy()
        state[f"experts.{i}.bias"] = np.asarray(p["expert_biases"][i])
    return state


def _assert_trees_equal(a, b):
    a, b = jax.device_get(a), jax.device_get(b)
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("name", ["linear", "moe", "sparse-moe"])
def test_fusion_suite_import_classifier_round_trip(name):
    x = _classifier_input(seed=17)
    options = {} if name == "linear" else {"experts": 3, "top_k": 2 if name == "sparse-moe" else 0}
    module = classifier_lib.build_classifier(name, num_classes=4, **options)
    params = _init(module, x, real=True)
    state = _suite_classifier_state(params)
    template = jax.tree_util.tree_map(jnp.zeros_like, params)
    imported = import_suite_classifier(state, template, source="run-7")
    _assert_trees_equal(imported, params)
    # The suite's forward from its own tensors: x W^T + b per expert, softmax(x W_router^T) mixture.
    xn = np.asarray(x, np.float64)
    if name == "linear":
        expected = xn @ state["weight"].T + state["bias"]
    else:
        w = _softmax(xn @ state["router.router.weight"].T)
        if options["top_k"]:
            w = _np_top_k(w, options["top_k"])
        expected = sum(w[:, i:i + 1] * (xn @ state[f"experts.{i}.weight"].T + state[f"experts.{i}.bias"])
                       for i in range(3))
    np.testing.assert_allclose(np.asarray(module.apply({"params": imported}, x)[0]), expected, **TOL)


def test_fusion_suite_import_classifier_names_misplaced_tensor():
    x = _classifier_input(seed=18)
    module = classifier_lib.build_classifier("moe", num_classes=4, experts=3)
    params = _init(module, x)
    state = _suite_classifier_state(params)
    template = jax.tree_util.tree_map(jnp.zeros_like, params)
    with pytest.raises(WeightError, match=r"run-7.*'experts\.3\.weight'.*3 experts"):
        import_suite_classifier({**state, "experts.3.weight": state["experts.0.weight"]}, template, source="run-7")
    with pytest.raises(WeightError, match=r"'router\.gate\.weight' has no place"):
        import_suite_classifier({**state, "router.gate.weight": np.zeros((3, 5))}, template)
    with pytest.raises(WeightError, match=r"'experts\.1\.weight'.*shape \(5, 2\).*expert_kernels\[1\]"):
        import_suite_classifier({**state, "experts.1.weight": np.zeros((2, 5))}, template)
    partial = {k: v for k, v in state.items() if not k.startswith("experts.2.")}
    with pytest.raises(WeightError, match=r"expert\(s\) \[2\]"):
        import_suite_classifier(partial, template)
    with pytest.raises(WeightError, match=r"router\.noise\.kernel"):
        import_suite_classifier({k: v for k, v in state.items() if k != "router.noise.0.weight"}, template)
    # A linear template has no place for mixture tensors.
    linear = classifier_lib.build_classifier("linear", num_classes=4)
    with pytest.raises(WeightError, match=r"'experts\.0\.weight'.*no experts"):
        import_suite_classifier({k: v for k, v in state.items() if k.startswith("experts.")},
                                jax.tree_util.tree_map(jnp.zeros_like, _init(linear, x)))


def test_fusion_suite_import_head_splits_by_prefix():
    dims = {m: 4 for m in MODS}
    x = _features(dims, 3, seed=19)
    fusion = fusion_lib.build_fusion("concat", modalities=MODS, input_dims=dims, output_dim=5, depth=2)
    fusion_params = _init(fusion, x)
    clf = classifier_lib.build_classifier("linear", num_classes=3)
    clf_params = _init(clf, jnp.zeros((3, 5), jnp.float32))
    fp = jax.device_get(fusion_params)["projector"]
    rng = np.random.default_rng(20)
    placeholders = {m: rng.normal(size=(1, 4)).astype(np.float32) for m in MODS}
    # The suite's Projector: Sequential [Linear, Dropout, GELU, Linear] named ``fc.proj``.
    checkpoint = {"fusion_layer.fc.proj.0.weight": np.asarray(fp["linear_0"]["kernel"]).T.copy(),
                  "fusion_layer.fc.proj.0.bias": np.asarray(fp["linear_0"]["bias"]),
                  "fusion_layer.fc.proj.3.weight": np.asarray(fp["linear_1"]["kernel"]).T.copy(),
                  "fusion_layer.fc.proj.3.bias": np.asarray(fp["linear_1"]["bias"]),
                  **{f"fusion_layer.placeholders.{m}": v for m, v in placeholders.items()},
                  **{f"classifier.{k}": v for k, v in _suite_classifier_state(clf_params).items()}}
    zeros = lambda t: jax.tree_util.tree_map(jnp.zeros_like, t)  # noqa: E731
    out = import_suite_head(checkpoint, fusion_params=zeros(fusion_params), classifier_params=zeros(clf_params))
    _assert_trees_equal(out["fusion"], fusion_params)
    _assert_trees_equal(out["classifier"], clf_params)
    assert sorted(out["placeholders"]) == sorted(MODS)
    for m in MODS:
        np.testing.assert_array_equal(out["placeholders"][m], placeholders[m].reshape(-1))
    # Only the classifier.
    only = import_suite_head({k: v for k, v in checkpoint.items() if k.startswith("classifier.")},
                             classifier_params=zeros(clf_params))
    assert only["fusion"] is None and only["placeholders"] == {}
    _assert_trees_equal(only["classifier"], clf_params)


def test_fusion_suite_import_head_refuses_other_prefix():
    clf = classifier_lib.build_classifier("linear", num_classes=3)
    clf_params = _init(clf, jnp.zeros((2, 5), jnp.float32))
    state = {f"classifier.{k}": v for k, v in _suite_classifier_state(clf_params).items()}
    template = jax.tree_util.tree_map(jnp.zeros_like, clf_params)
    with pytest.raises(WeightError, match=r"'backbone\.encoder\.weight' is neither"):
        import_suite_head({**state, "backbone.encoder.weight": np.zeros((2, 2))}, classifier_params=template)
    with pytest.raises(WeightError, match=r"'classifier' is neither"):
        import_suite_head({**state, "classifier": np.zeros(2)}, classifier_params=template)
    with pytest.raises(WeightError, match=r"classifier tensors.*no emojax classifier_params"):
        import_suite_head(state)
    with pytest.raises(WeightError, match="no fusion tensors"):
        import_suite_head(state, classifier_params=template, fusion_params={"projector": {}})
