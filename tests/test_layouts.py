"""Layer selection: layouts, neuron axes (multi-axis kernels), module-path output patterns."""

import doctest
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mhe_jax
from mhe_jax import NeuronAxes, _baselines, _layouts, _transform, _tree, mhe_regularizer
from mhe_jax._tree import select_layers
from tests import reference_penalty as ref

ERRORS = {}  # max |update − ∇ reference| per layout, printed at the end (pytest -s)


def rand(seed, shape):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float64)


def regularizer_update(tx, params):
    """The regularizer's update alone (zero gradients), jitted: op by op, every layer shape
    compiled dozens of small programs."""
    zero = jax.tree.map(jnp.zeros_like, params)
    u, _ = jax.jit(tx.update)(zero, tx.init(params), params)
    return u


# ------------------------------------------------------------------------------ layout rules


@pytest.mark.parametrize("layout, path, shape, want", [
    ("flax", "Dense_0/kernel", (4, 3), True),
    ("flax", "Dense_0/bias", (3,), False),
    ("flax", "embed/embedding", (10, 4), False),
    ("flax", "Conv_0/kernel", (3, 3, 2, 4), True),
    ("equinox", "layers/0/weight", (3, 4), True),
    ("equinox", "layers/0/bias", (3,), False),
    ("equinox", "conv/bias", (4, 1, 1), False),
    ("equinox", "norm/weight", (4,), False),
    ("equinox", "embedding/weight", (10, 4), False),
    ("equinox", "tok_embed/weight", (10, 4), False),
    ("haiku", "mlp/~/linear_0/w", (4, 3), True),
    ("haiku", "mlp/~/linear_0/b", (3,), False),
    ("haiku", "embed/embeddings", (10, 4), False),
    ("torch", "fc1.weight", (3, 4), True),
    ("torch", "fc1/weight", (3, 4), True),
    ("torch", "bn1.weight", (3,), False),
    ("torch", "encoder.embed_tokens.weight", (10, 4), False),
    ("torch", "attn.in_proj_weight", (12, 4), False),  # fused q/k/v: not a single layer
    ("torch", "attn.out_proj.weight", (4, 4), True),
])
def test_is_layer(layout, path, shape, want):
    assert _layouts.is_layer(layout, path, np.zeros(shape)) is want


PATHS = frozenset({"attn/query/kernel", "attn/key/kernel", "attn/value/kernel", "attn/out/kernel",
                   "mha/query/kernel", "mha/out/kernel", "conv1d/kernel", "layers/0/kernel",
                   "SelfAttention_0/out/kernel", "DenseGeneral_0/kernel"})


@pytest.mark.parametrize("layout, path, shape, want", [
    ("flax", "Dense_0/kernel", (4, 3), (1,)),
    ("flax", "Conv_0/kernel", (3, 3, 2, 4), (3,)),
    ("flax", "attn/query/kernel", (6, 2, 4), (1, 2)),  # (in, heads, head_dim)
    ("flax", "attn/key/kernel", (6, 2, 4), (1, 2)),
    ("flax", "attn/value/kernel", (6, 2, 4), (1, 2)),
    ("flax", "attn/out/kernel", (2, 4, 6), (2,)),  # (heads, head_dim, out)
    ("flax", "mha/out/kernel", (2, 4, 6), (2,)),  # sibling of mha/query
    ("flax", "SelfAttention_0/out/kernel", (2, 4, 6), (2,)),
    ("flax", "conv1d/kernel", (3, 2, 4), (2,)),
    ("equinox", "conv/weight", (4, 2, 3, 3), (0,)),
    ("haiku", "conv1_d/w", (3, 2, 4), (2,)),
    ("torch", "conv.weight", (4, 2, 3), (0,)),
])
def test_default_neuron_axes(layout, path, shape, want):
    assert _layouts.default_neuron_axes(layout, path, np.zeros(shape), PATHS) == want


@pytest.mark.parametrize("path", ["layers/0/kernel", "DenseGeneral_0/kernel"])
def test_ambiguous_3d_kernel_is_refused_naming_leaf_and_fix(path):
    params = {"Dense_0": {"kernel": rand(0, (4, 3))}}
    node = params
    for key in path.split("/")[:-1]:
        node = node.setdefault(key, {})
    node["kernel"] = rand(1, (3, 2, 4))
    tx = mhe_regularizer(1.0)
    with pytest.raises(ValueError, match=rf"{path}.*\(3, 2, 4\).*neuron_axis=") as e:
        tx.init(params)
    assert "mix the heads" in str(e.value)
    # the fix the message names
    tx = mhe_regularizer(1.0, neuron_axis=lambda p, leaf: (1, 2) if p == path else None)
    _, _, layers = select_layers(params, neuron_axis=lambda p, leaf: (1, 2) if p == path else None)
    got = {layer.path: layer.neuron_axes for layer in layers}
    assert got == {"Dense_0/kernel": (1,), path: (1, 2)}
    tx.init(params)


def test_neuron_axes_spec_forms_and_validation():
    w = rand(0, (6, 2, 4))
    assert _layouts.normalize_axes(NeuronAxes((1, 2)), 3) == (1, 2)
    assert _layouts.normalize_axes(NeuronAxes(-1, vector_axes=(0, 1)), 3) == (2,)
    assert _layouts.normalize_axes((-1, 1), 3) == (1, 2)
    assert _layouts.normalize_axes(0, 3) == (0,)
    for bad, err in [((1, 1), "repeats"), ((0, 1, 2), "at least one axis"), (3, "out of range"),
                     (NeuronAxes(2, vector_axes=0), "partition"), ("1", "int"), ((), "at least")]:
        with pytest.raises((ValueError, TypeError), match=err):
            _layouts.normalize_axes(bad, 3)
    W = _layouts.neuron_matrix(w, (1, 2))
    np.testing.assert_array_equal(W, w.reshape(6, 8))
    W = _layouts.neuron_matrix(jnp.transpose(w, (1, 0, 2)), (0, 2))  # (heads, in, hd)
    np.testing.assert_array_equal(W, w.reshape(6, 8))

    params = {"a": {"kernel": rand(1, (5, 3))}, "b": {"kernel": w}}
    for spec in ({"a": {"kernel": None}, "b": {"kernel": NeuronAxes((1, 2))}},
                 lambda path, leaf: (1, 2) if path.startswith("b") else None):
        _, _, layers = select_layers(params, neuron_axis=spec)
        assert [layer.neuron_axes for layer in layers] == [(1,), (1, 2)]
    _, _, layers = select_layers(params, neuron_axis=0)
    assert [layer.neuron_axes for layer in layers] == [(0,), (0,)]
    with pytest.raises(ValueError, match="neuron_axis"):
        select_layers(params, neuron_axis={"a": 0})
    with pytest.raises(TypeError, match="neuron_axis.*tuple"):  # an int injected as an array
        mhe_regularizer(1.0, neuron_axis=jnp.asarray(0))


# ------------------------------------------------------------------------------ output patterns


def flax_tree():
    return {"params": {
        "encoder": {"Dense_0": {"kernel": rand(0, (4, 6)), "bias": jnp.zeros(6)},
                    "classifier": {"kernel": rand(1, (6, 3)), "bias": jnp.zeros(3)}},
        "bn": {"scale": jnp.ones(6)},
        "head": {"kernel": rand(2, (6, 5)), "bias": jnp.zeros(5)},
    }}


@pytest.mark.parametrize("output, want", [
    ("head", {"params/head/kernel"}),
    ("head/kernel", {"params/head/kernel"}),
    ("params/head", {"params/head/kernel"}),
    ("encoder/classifier", {"params/encoder/classifier/kernel"}),
    ("classifier", {"params/encoder/classifier/kernel"}),
    (lambda path: path.endswith("head/kernel"), {"params/head/kernel"}),
])
def test_output_by_module_path_leaf_regex_or_callable(output, want):
    _, _, layers = select_layers(flax_tree(), output=output)
    assert {layer.path for layer in layers if layer.is_output} == want
    assert len(layers) == 3  # biases and the norm are never layers


def test_output_pattern_errors_and_warnings_at_init():
    params = flax_tree()
    for output, err in [("kernel", "matches every layer"), ("classifer", "matches no leaf"),
                        ("bn", "none of which is a layer"), ("(", "regular expression")]:
        tx = mhe_regularizer(1.0, 1.0, output=output)
        with pytest.raises(ValueError, match=err) as e:
            tx.init(params)
        assert f"output={output!r}" in str(e.value)
    with pytest.raises(TypeError, match="output"):
        mhe_regularizer(1.0, 1.0, output=3).init(params)
    tx = mhe_regularizer(1.0, 1.0, output="head|classifier")
    with pytest.warns(UserWarning, match="matches 2 layers"):
        tx.init(params)
    with pytest.warns(UserWarning, match="last .*layer gets half-space"):
        mhe_regularizer(1.0, half_space=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mhe_regularizer(1.0, 1.0, half_space=True, output="head").init(params)
        mhe_regularizer(0.0, half_space=True)  # no hidden MHE: nothing to warn about


def test_layout_argument_is_checked():
    for fn in (lambda: mhe_regularizer(1.0, layout="pytorch"),
               lambda: mhe_jax.mhe_penalty(flax_tree(), 1.0, layout="jax"),
               lambda: mhe_jax.layer_energies(flax_tree(), layout="keras"),
               lambda: mhe_jax.orthonormal_regularizer(1.0, layout="tf")):
        with pytest.raises(ValueError, match="layout must be one of"):
            fn()
    with pytest.raises(ValueError, match=r"layout='equinox'.*'weight'"):
        mhe_regularizer(1.0, layout="equinox").init(flax_tree())


# ------------------------------------------------------------------------------ haiku, torch


def test_haiku_tree_update_equals_reference_gradient():
    params = {
        "conv2_d": {"w": rand(0, (3, 3, 2, 5)), "b": jnp.zeros(5)},
        "mlp/~/linear_0": {"w": rand(1, (18, 7)), "b": jnp.zeros(7)},
        "mlp/~/linear_1": {"w": rand(2, (7, 4)), "b": jnp.zeros(4)},
        "layer_norm": {"scale": jnp.ones(7), "offset": jnp.zeros(7)},
        "embed": {"embeddings": rand(3, (11, 6))},
    }
    tx = mhe_regularizer(0.5, 3.0, output="mlp/~/linear_1", half_space=True, layout="haiku")
    u = regularizer_update(tx, params)

    def r(p):
        hidden = [p["conv2_d"]["w"].reshape(-1, 5), p["mlp/~/linear_0"]["w"]]
        return ref.penalty(hidden, [p["mlp/~/linear_1"]["w"]], 0.5, 3.0, half_space=True)

    want = jax.jit(jax.grad(r))(params)
    ERRORS["haiku"] = err = ref.max_abs_diff(u, want)
    assert err <= 1e-6
    for path in ("layer_norm", "embed"):
        assert all(float(np.abs(np.asarray(v)).sum()) == 0 for v in jax.tree.leaves(u[path]))


@pytest.mark.parametrize("nested", [False, True])
def test_torch_state_dict_update_equals_reference_gradient(nested):
    flat = {
        "conv1.weight": rand(0, (5, 2, 3, 3)), "conv1.bias": jnp.zeros(5),
        "bn1.weight": jnp.ones(5), "bn1.bias": jnp.zeros(5),
        "emb.embedding.weight": rand(1, (11, 6)),
        "fc1.weight": rand(2, (7, 18)), "fc1.bias": jnp.zeros(7),
        "fc2.weight": rand(3, (4, 7)), "fc2.bias": jnp.zeros(4),
    }
    if nested:  # the same names as a nested dict: paths 'fc1/weight', ...
        tree = {}
        for name, value in flat.items():
            *mods, leaf = name.split(".")
            node = tree
            for m in mods:
                node = node.setdefault(m, {})
            node[leaf] = value
        params, get = tree, (lambda p, name: p[name.split(".")[0]]["weight"])
    else:
        params, get = flat, (lambda p, name: p[name + ".weight"])
    tx = mhe_regularizer(0.5, 3.0, s=0.0, output="fc2", layout="torch")
    u = regularizer_update(tx, params)

    def r(p):
        hidden = [get(p, "conv1").reshape(5, -1).T, get(p, "fc1").T]
        return ref.penalty(hidden, [get(p, "fc2").T], 0.5, 3.0, s=0.0)

    want = jax.jit(jax.grad(r))(params)
    err = ref.max_abs_diff(u, want)
    ERRORS["torch (nested)" if nested else "torch"] = err
    assert err <= 1e-6


def test_baselines_follow_the_layout():
    params = {"fc1": {"weight": rand(0, (7, 18))}, "fc2": {"weight": rand(1, (4, 7))}}
    def orthogonality2(w, neuron_axis):
        return mhe_jax.orthogonality_penalty(w, power=2, neuron_axis=neuron_axis)

    cases = [(mhe_jax.orthonormal_regularizer(0.3, layout="equinox"), mhe_jax.orthonormal_penalty),
             (mhe_jax.orthogonality_regularizer(0.3, power=2, layout="torch"), orthogonality2)]
    for tx, fn in cases:
        u = regularizer_update(tx, params)
        for k in params:
            want = 0.3 * jax.jit(jax.grad(lambda w: fn(w, neuron_axis=0)))(params[k]["weight"])
            np.testing.assert_allclose(u[k]["weight"], want, rtol=1e-9, atol=1e-12)
        assert float(tx.init(params).strength) == pytest.approx(0.3)
    for bad, exc in [(-1.0, ValueError), ([1.0], TypeError), ("1", TypeError), (True, TypeError)]:
        with pytest.raises(exc, match="strength"):
            mhe_jax.orthonormal_regularizer(bad)


def test_selected_layers_is_what_the_regularizer_acts_on():
    torch_params = {"conv1": {"weight": rand(0, (5, 2, 3, 3)), "bias": jnp.zeros(5)},
                    "bn1": {"weight": jnp.ones(5)},
                    "fc2": {"weight": rand(3, (4, 7)), "bias": jnp.zeros(4)}}
    cases = [(flax_tree(), {"output": "head"}, "flax"),
             (flax_tree(), {"output": lambda p: p.endswith("classifier/kernel")}, "flax"),
             (torch_params, {"output": "fc2"}, "torch"),
             (flax_tree(), {"output": "head", "neuron_axis": 0}, "flax")]
    for params, options, layout in cases:
        layers = mhe_jax.selected_layers(params, layout=layout, **options)
        u = regularizer_update(mhe_regularizer(1.0, 1.0, layout=layout, **options), params)
        moved = {mhe_jax.path_str(kp) for kp, v in jax.tree_util.tree_flatten_with_path(u)[0]
                 if float(np.abs(np.asarray(v)).sum()) > 0}
        assert set(layers) == moved
        _, _, internal = select_layers(params, layout=layout, **options)
        assert {la.path: la.is_output for la in internal} == {
            p: la.is_output for p, la in layers.items()}
        leaves = {mhe_jax.path_str(kp): v
                  for kp, v in jax.tree_util.tree_flatten_with_path(params)[0]}
        for p, la in layers.items():  # N and d of the (d, N) neuron matrix the energy sees
            assert (la.dim, la.neurons) == _layouts.neuron_matrix(leaves[p], la.neuron_axes).shape
    conv = mhe_jax.selected_layers(torch_params, output="fc2", layout="torch")["conv1/weight"]
    assert conv == (False, (0,), 5, 18)
    shapes = jax.eval_shape(flax_tree)  # shapes only
    assert mhe_jax.selected_layers(shapes, output="head") == mhe_jax.selected_layers(
        flax_tree(), output="head")
    with pytest.raises(ValueError, match="output='classifer' matches no leaf"):
        mhe_jax.selected_layers(flax_tree(), output="classifer")
    with pytest.raises(ValueError, match="no parameter was selected"):
        mhe_jax.selected_layers({"bn": {"scale": jnp.ones(3)}})


def test_doctests():
    for module in (_transform, _baselines, _layouts, _tree):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, raise_on_error=False)
        assert result.failed == 0, module.__name__
    assert doctest.testmod(_transform).attempted >= 10


def test_zz_report_errors():
    print("\nmax |update - grad(float64 reference)| per layout:",
          {k: f"{v:.2e}" for k, v in sorted(ERRORS.items())})
