"""End to end with Equinox models: layout="equinox" (weights (out, in, ...), neurons on axis 0)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mhe_jax
from tests import reference_penalty as ref

LR = 0.1


def to64(model):
    return jax.tree.map(lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, model)


class ConvNet(eqx.Module):
    conv: eqx.nn.Conv2d
    norm: eqx.nn.LayerNorm
    embed: eqx.nn.Embedding
    head: eqx.nn.Linear

    def __init__(self, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.conv = eqx.nn.Conv2d(2, 4, 3, key=k1)
        self.norm = eqx.nn.LayerNorm(64)
        self.embed = eqx.nn.Embedding(5, 64, key=k2)
        self.head = eqx.nn.Linear(64, 3, key=k3)

    def __call__(self, x):  # x: (2, 6, 6), one example
        h = jax.nn.relu(self.conv(x)).reshape(-1) + self.embed(jnp.asarray(1))
        return self.head(self.norm(h))


def loss_fn(model, x, y):
    logits = jax.vmap(model)(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def train_and_compare(model, x, y, reg_kwargs, hand_penalty, steps=3):
    """Train with chain(mhe_regularizer(layout='equinox'), sgd); at every step compare the
    regularizer's contribution with ∇ of the float64 reference; return the max error."""
    tx = optax.chain(mhe_jax.mhe_regularizer(layout="equinox", **reg_kwargs), optax.sgd(LR))
    state = tx.init(eqx.filter(model, eqx.is_array))
    # jitted: op by op, every step compiled hundreds of small programs
    grad_fn = eqx.filter_jit(eqx.filter_grad(loss_fn))
    update = eqx.filter_jit(tx.update)
    want_fn = eqx.filter_jit(jax.grad(hand_penalty))
    apply = eqx.filter_jit(eqx.apply_updates)
    worst = 0.0
    for _ in range(steps):
        params = eqx.filter(model, eqx.is_array)
        grads = grad_fn(model, x, y)
        updates, state = update(grads, state, params)
        assert jax.tree.structure(updates) == jax.tree.structure(params)
        added = jax.tree.map(lambda u, g: -np.asarray(u) / LR - np.asarray(g), updates, grads)
        worst = max(worst, ref.max_abs_diff(added, want_fn(params)))
        model = apply(model, updates)
    return model, worst


def test_mlp_trains_and_matches_reference(record_error):
    model = to64(eqx.nn.MLP(4, 3, 8, depth=2, key=jax.random.key(0)))
    x = jax.random.normal(jax.random.key(1), (5, 4), jnp.float64)
    y = jnp.arange(5) % 3

    def hand(p):
        hidden = [p.layers[0].weight.T, p.layers[1].weight.T]
        return ref.penalty(hidden, [p.layers[2].weight.T], 0.5, 4.0, s=1.0, half_space=True)

    reg = dict(hidden_strength=0.5, output_strength=4.0, s=1.0, half_space=True, output="layers/2")
    model, err = train_and_compare(model, x, y, reg, hand)
    record_error("equinox MLP", err)
    assert err <= 1e-6


def test_conv2d_model_trains_and_matches_reference(record_error):
    model = to64(ConvNet(jax.random.key(0)))
    x = jax.random.normal(jax.random.key(1), (4, 2, 6, 6), jnp.float64)
    y = jnp.arange(4) % 3
    before = model

    def hand(p):  # conv (out, in, kh, kw): 4 neurons in R^18; head (3, 64); embedding, norm: no
        hidden = [p.conv.weight.reshape(4, -1).T]
        return ref.penalty(hidden, [p.head.weight.T], 1.0, 2.0, s=2.0)

    reg = dict(hidden_strength=1.0, output_strength=2.0, output="head")
    model, err = train_and_compare(model, x, y, reg, hand)
    record_error("equinox Conv2d", err)
    assert err <= 1e-6
    # the regularizer alone never touches biases, the norm or the embedding
    tx = mhe_jax.mhe_regularizer(1.0, 2.0, output="head", layout="equinox")
    params = eqx.filter(before, eqx.is_array)
    zero = jax.tree.map(jnp.zeros_like, params)
    u, state = tx.update(zero, tx.init(params), params)
    for leaf in (u.conv.bias, u.head.bias, u.norm.weight, u.norm.bias, u.embed.weight):
        assert float(jnp.abs(leaf).sum()) == 0
    assert float(jnp.abs(u.conv.weight).sum()) > 0 and float(jnp.abs(u.head.weight).sum()) > 0
    assert float(state.hidden_strength) == 1.0 and float(state.output_strength) == 2.0
    stats = jax.eval_shape(  # which layers it reports: traced, not compiled op by op
        lambda p: mhe_jax.layer_energies(p, output="head", layout="equinox"), params)
    assert set(stats) == {"conv/weight", "head/weight"}


def test_flax_layout_on_equinox_params_says_what_to_do():
    params = eqx.filter(eqx.nn.MLP(4, 3, 8, depth=1, key=jax.random.key(0)), eqx.is_array)
    with pytest.raises(ValueError, match="layout='flax'.*pass layout="):
        mhe_jax.mhe_regularizer(1.0).init(params)
    # the hint names the layout that fits the tree (Equinox: '/'-joined attribute paths)
    with pytest.raises(ValueError, match="its leaves fit layout='equinox': pass "
                                         "layout='equinox'"):
        mhe_jax.mhe_regularizer(1.0).init(params)
    with pytest.raises(ValueError, match="fit layout='equinox'"):
        mhe_jax.selected_layers(params, layout="haiku")
    torch_state = {"fc1.weight": jnp.ones((3, 4))}  # a state dict: dotted keys
    with pytest.raises(ValueError, match="fit layout='torch'"):
        mhe_jax.mhe_regularizer(1.0).init(torch_state)


@pytest.fixture(scope="module")
def record_error():
    errors = {}
    yield lambda name, err: errors.__setitem__(name, err)
    print("\nmax |update - grad(float64 reference)|:", {k: f"{v:.2e}" for k, v in errors.items()})
