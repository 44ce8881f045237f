"""Fusion layers against the PyTorch suite's outputs (suite-golden) and NumPy transcriptions."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import suite_golden
from emojax.model import fusion as fusion_lib
from emojax.encoders.hub import WeightError
from emojax.model.suite_import import import_suite_params

MODS = ("T", "A", "V")


def _golden(name):
    folder = suite_golden(name)
    return (np.load(folder / "inputs.npz"), np.load(folder / "outputs.npz"),
            load_file(str(folder / "params.safetensors")), json.loads((folder / "golden.json").read_text()))


def _build(name):
    dims = {m: 24 for m in MODS}
    if name.startswith("fusion-DF"):
        alpha = 1.0 if "1.0" in name else 2.0
        return fusion_lib.build_fusion("disentanglement", modalities=MODS, input_dims=dims, output_dim=0,
                                       private_dim=8, shared_dim=4, alpha=alpha, use_cross_attn="attn" in name)
    depth = 5 if "deep" in name else 1
    return fusion_lib.build_fusion("concat", modalities=MODS, input_dims=dims, output_dim=16, depth=depth)


@pytest.mark.parametrize("name", ["fusion-vallina", "fusion-deep-vallina", "fusion-DF-1.0-attn",
                                  "fusion-DF-2.0-concat"])
@pytest.mark.slow
def test_fusion_suite_golden(name):
    inputs, outputs, state, _ = _golden(name)
    module = _build(name)
    features = {m: jnp.asarray(inputs[m]) for m in MODS}
    template = module.init(jax.random.PRNGKey(0), features)["params"]
    params, placeholders = import_suite_params(state, template, source=name)
    apply = jax.jit(lambda p, x: module.apply({"params": p}, x, deterministic=True))
    scale = np.abs(outputs["output"]).max()
    out, _ = apply(params, features)
    np.testing.assert_allclose(np.asarray(out), outputs["output"], atol=1e-5 * max(1.0, scale))
    missing_v = dict(features, V=jnp.broadcast_to(jnp.asarray(placeholders["V"]), features["V"].shape))
    out_v, _ = apply(params, missing_v)
    np.testing.assert_allclose(np.asarray(out_v), outputs["output_without_V"], atol=1e-5 * max(1.0, scale))
    if "aux_loss" in outputs:
        fused, aux = module.apply({"params": params}, features, deterministic=True, compute_aux=True)
        np.testing.assert_allclose(float(aux), float(outputs["aux_loss"].reshape(())), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(fused), outputs["forward_with_loss_output"], atol=1e-5 * max(1.0, scale))


def test_fusion_import_names_unplaceable_tensor():
    inputs, _, state, _ = _golden("fusion-vallina")
    module = _build("fusion-vallina")
    template = module.init(jax.random.PRNGKey(0), {m: jnp.asarray(inputs[m]) for m in MODS})["params"]
    with pytest.raises(WeightError, match="mystery.weight"):
        import_suite_params({**state, "mystery.weight": np.zeros(3)}, template)
    with pytest.raises(WeightError, match=r"fc\.proj\.0\.weight.*shape"):
        import_suite_params({**state, "fc.proj.0.weight": np.zeros((16, 10))}, template)


@pytest.mark.slow
def test_fusion_attention_modes_differ_in_batch_dependence():
    """Suite mode: a sample's output depends on its batch mates; per-sample mode: it does not."""
    rng = np.random.default_rng(0)
    # 24 features: the attention heads (8 in the cross projectors, 12 in the shared one) divide it.
    x = {m: jnp.asarray(rng.normal(size=(6, 24)).astype(np.float32)) for m in MODS}
    for batch_as_sequence, depends in ((True, True), (False, False)):
        module = fusion_lib.build_fusion("disentanglement", modalities=MODS, input_dims={m: 24 for m in MODS},
                                         output_dim=0, private_dim=8, shared_dim=4,
                                         batch_as_sequence=batch_as_sequence)
        params = module.init(jax.random.PRNGKey(1), x)
        full, _ = module.apply(params, x)
        half, _ = module.apply(params, {m: v[:3] for m, v in x.items()})
        assert np.allclose(np.asarray(full[:3]), np.asarray(half), atol=1e-5) is (not depends)


def test_tensor_fusion_matches_numpy():
    rng = np.random.default_rng(0)
    x = {m: jnp.asarray(rng.normal(size=(4, 5)).astype(np.float32)) for m in MODS}
    module = fusion_lib.build_fusion("tensor", modalities=MODS, input_dims={m: 5 for m in MODS}, output_dim=6,
                                     hidden=3, depth=1)
    params = module.init(jax.random.PRNGKey(0), x)["params"]
    out, _ = module.apply({"params": params}, x)
    z = {m: np.asarray(x[m]) @ np.asarray(params[f"reduce_{m}"]["kernel"]) + np.asarray(params[f"reduce_{m}"]["bias"])
         for m in MODS}
    aug = {m: np.concatenate([z[m], np.ones((4, 1))], 1) for m in MODS}
    outer = np.einsum("bi,bj,bk->bijk", aug["T"], aug["A"], aug["V"]).reshape(4, -1)
    proj = params["projector"]["linear_0"]
    np.testing.assert_allclose(np.asarray(out), outer @ np.asarray(proj["kernel"]) + np.asarray(proj["bias"]),
                               rtol=1e-4, atol=1e-5)


def test_low_rank_fusion_matches_numpy_and_grads():
    from jax.test_util import check_grads

    rng = np.random.default_rng(1)
    x = {m: jnp.asarray(rng.normal(size=(3, 4)).astype(np.float32)) for m in ("T", "A")}
    module = fusion_lib.build_fusion("low-rank", modalities=("T", "A"), input_dims={"T": 4, "A": 4}, output_dim=5,
                                     rank=2)
    params = module.init(jax.random.PRNGKey(0), x)["params"]
    out, _ = module.apply({"params": params}, x)
    # The suite's LowRankFusionLayer: product over modalities of the rank factors, then a
    # Linear(rank -> 1) over the rank axis.
    prod = np.ones((3, 2, 5))
    for m in ("T", "A"):
        prod = prod * np.einsum("bd,rdo->bro", np.asarray(x[m]), np.asarray(params[f"factor_{m}"]))
    layer = params["output_layer"]
    expected = np.einsum("bro,r->bo", prod, np.asarray(layer["kernel"])[:, 0]) + np.asarray(layer["bias"])[0]
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-4, atol=1e-5)
    # The LMF paper's form appends a constant 1 to every modality.
    paper = fusion_lib.build_fusion("low-rank", modalities=("T", "A"), input_dims={"T": 4, "A": 4}, output_dim=5,
                                    rank=2, append_one=True)
    p2 = paper.init(jax.random.PRNGKey(0), x)["params"]
    assert p2["factor_T"].shape == (2, 5, 5)
    prod = np.ones((3, 2, 5))
    for m in ("T", "A"):
        aug = np.concatenate([np.asarray(x[m]), np.ones((3, 1))], 1)
        prod = prod * np.einsum("bd,rdo->bro", aug, np.asarray(p2[f"factor_{m}"]))
    expected = np.einsum("bro,r->bo", prod, np.asarray(p2["output_layer"]["kernel"])[:, 0]) + np.asarray(
        p2["output_layer"]["bias"])[0]
    np.testing.assert_allclose(np.asarray(paper.apply({"params": p2}, x)[0]), expected, rtol=1e-4, atol=1e-5)
    check_grads(lambda t: module.apply({"params": params}, dict(x, T=t))[0].sum(), (x["T"],), order=1,
                modes=("rev",), atol=1e-2, rtol=1e-2)


@pytest.mark.slow
def test_fusion_jit_matches_eager_and_noise_only_in_training():
    rng = np.random.default_rng(2)
    x = {m: jnp.asarray(rng.normal(size=(5, 24)).astype(np.float32)) for m in MODS}
    module = fusion_lib.build_fusion("disentanglement", modalities=MODS, input_dims={m: 24 for m in MODS},
                                     output_dim=0, private_dim=8, shared_dim=4)
    params = module.init(jax.random.PRNGKey(0), x)
    eager, _ = module.apply(params, x)
    jitted, _ = jax.jit(lambda p, x: module.apply(p, x))(params, x)
    np.testing.assert_allclose(np.asarray(eager), np.asarray(jitted), atol=1e-5)
    rngs = lambda k: {"dropout": jax.random.PRNGKey(k), "router": jax.random.PRNGKey(k + 1)}  # noqa: E731
    a, aux_a = module.apply(params, x, deterministic=False, rngs=rngs(0))
    b, _ = module.apply(params, x, deterministic=False, rngs=rngs(5))
    assert not np.allclose(np.asarray(a), np.asarray(b)) and float(aux_a) > 0
    assert module.apply(params, x)[1] == 0.0  # no auxiliary loss in evaluation
