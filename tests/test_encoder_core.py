"""``emojax.encoders.core``: attention on both of its paths against a NumPy transcription (key
mask, sliding window, causal, additive bias, a query that sees no key, dropout), and the weights
hash of a renamed pytree taken under the names runs recorded."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emojax.encoders import core

B, T, H, D = 2, 7, 3, 4


def reference(q, k, v, *, allowed=None, bias=None, keep=None, rate=0.0):
    """softmax(q k^T / sqrt(D) + bias, masked to finfo.min) [dropout] v, in float64."""
    scores = np.einsum("bqhd,bkhd->bhqk", q, k).astype(np.float64) / np.sqrt(D)
    if bias is not None:
        scores = scores + bias
    if allowed is not None:
        scores = np.where(allowed, scores, np.finfo(np.float32).min)
    scores = scores - scores.max(-1, keepdims=True)
    probs = np.exp(scores) / np.exp(scores).sum(-1, keepdims=True)
    if keep is not None:
        probs = np.where(keep, probs / (1.0 - rate), 0.0)
    return np.einsum("bhqk,bkhd->bqhd", probs, v).reshape(B, T, H * D)


@pytest.fixture(scope="module")
def qkv():
    rng = np.random.default_rng(0)
    return tuple(rng.normal(size=(B, T, H, D)).astype(np.float32) for _ in range(3))


def _allowed(keys, window=None, causal=False):
    q, k = np.arange(T)[:, None], np.arange(T)[None, :]
    out = np.broadcast_to(keys[:, None, None, :], (B, 1, T, T))
    if window is not None:
        out = out & (np.abs(q - k) <= window)
    if causal:
        out = out & (k <= q)
    return out


@pytest.mark.parametrize("window,causal", [(None, False), (1, False), (None, True)])
def test_attention_mask_window_causal_match_numpy_on_both_paths(qkv, window, causal):
    q, k, v = qkv
    keys = np.ones((B, T), bool)
    keys[1, 3:] = False  # row 1: queries 5, 6 see no token within a window of 1
    mask = core.Mask(keys=jnp.asarray(keys), window=window, causal=causal)
    expected = reference(q, k, v, allowed=_allowed(keys, window, causal))
    fused = core.attention(q, k, v, mask=mask)  # deterministic: jax.nn.dot_product_attention
    np.testing.assert_allclose(np.asarray(fused), expected, atol=1e-5)
    if window is not None:  # a query that sees no key attends uniformly to every key
        np.testing.assert_allclose(np.asarray(fused)[1, 6], v[1].mean(0).reshape(-1), atol=1e-5)

    rng, rate = jax.random.PRNGKey(3), 0.25
    keep = np.asarray(jax.random.bernoulli(rng, 1.0 - rate, (B, H, T, T)))
    dropped = core.attention(q, k, v, mask=mask, dropout_rate=rate, rng=rng, deterministic=False)
    np.testing.assert_allclose(np.asarray(dropped), reference(q, k, v, allowed=_allowed(keys, window, causal),
                                                              keep=keep, rate=rate), atol=1e-5)


def test_attention_additive_bias_and_scale_match_numpy(qkv):
    q, k, v = qkv
    keys = np.ones((B, T), bool)
    keys[0, -2:] = False
    bias = np.where(keys, 0.0, np.finfo(np.float32).min).astype(np.float32)[:, None, None, :]
    expected = reference(q, k, v, bias=bias)
    np.testing.assert_allclose(np.asarray(core.attention(q, k, v, bias=jnp.asarray(bias))), expected, atol=1e-5)
    # queries carrying the scale themselves (BERT, the Whisper decoder)
    scaled = core.attention(q * np.float32(D ** -0.5), k, v, bias=jnp.asarray(bias), scale=1.0)
    np.testing.assert_allclose(np.asarray(scaled), expected, atol=1e-5)


def test_format_1_weights_view_restores_the_names_runs_recorded():
    """Runs of format 1 recorded weights hashes (and keyed the feature cache) under the layer names
    each family's pytree had before the families shared one transformer block: the migration takes
    the hash on that view to recognise a run's store entry before storing it under today's."""
    from emojax.runs.format import weights_view_1

    layer = {name: {"w": np.zeros((1, 1), np.float32)} for name in core.BLOCK_NAMES}
    recorded = {
        "whisper": set(core.BLOCK_NAMES),
        "wav2vec2": {"attn_norm", "query", "key", "value", "attn_out", "final_norm", "intermediate", "output"},
        "videomae": {"norm_before", "query", "key", "value", "attn_out", "norm_after", "intermediate", "output"},
        "clip": {"norm1", "query", "key", "value", "attn_out", "norm2", "fc1", "fc2"},
    }
    for family, names in recorded.items():
        view = weights_view_1({"layers": [layer, layer], "other": 1}, family)
        assert [set(v) for v in view["layers"]] == [names, names] and view["other"] == 1
