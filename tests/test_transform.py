"""mhe_regularizer / mhe_penalty / layer_energies and the baseline regularizers."""

import itertools

import chex
import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mhe_jax
from mhe_jax import mhe_penalty, mhe_regularizer
from tests import helpers


def make_params(dtype=jnp.float32, seed=0):
    k = jax.random.split(jax.random.key(seed), 4)
    return {
        "conv": {"kernel": jax.random.normal(k[0], (3, 3, 2, 6), dtype),
                 "bias": jnp.zeros(6, dtype)},
        "Dense_0": {"kernel": jax.random.normal(k[1], (18, 8), dtype),
                    "bias": jnp.zeros(8, dtype)},
        "bn": {"scale": jnp.ones(8, dtype)},
        "head": {"kernel": jax.random.normal(k[2], (8, 5), dtype)},
    }


def loss_fn(params, x, y):
    h = jax.lax.conv_general_dilated(x, params["conv"]["kernel"], (1, 1), "VALID",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    h = jnp.tanh(h + params["conv"]["bias"]).reshape(x.shape[0], -1)[:, :18]
    h = (jnp.tanh(h @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"])
         * params["bn"]["scale"])
    logits = h @ params["head"]["kernel"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def batch(seed=1):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return jax.random.normal(k1, (4, 5, 5, 2), jnp.float32), jax.random.randint(k2, (4,), 0, 5)


CONFIGS = [
    dict(s=s, distance=d, half_space=h, output=o)
    for s, d, h, o in itertools.product((0.0, 2.0), ("euclidean", "angular"), (False, True),
                                        (None, "head/kernel"))
]


# CI runs four configs in which every option value appears twice; the other twelve are slow.
FAST_CONFIGS = [(0.0, "euclidean", False, None), (0.0, "angular", True, "head/kernel"),
                (2.0, "euclidean", True, "head/kernel"), (2.0, "angular", False, None)]


@pytest.mark.parametrize("cfg", [
    pytest.param(c, marks=() if tuple(c.values()) in FAST_CONFIGS else pytest.mark.slow)
    for c in CONFIGS], ids=str)
def test_chain_equals_sgd_on_loss_plus_penalty(cfg):
    params = make_params()
    x, y = batch()
    lam_o = 10.0 if cfg["output"] else None
    tx = optax.chain(mhe_regularizer(0.5, lam_o, **cfg), optax.sgd(0.1, momentum=0.9))
    ref = optax.sgd(0.1, momentum=0.9)
    state, ref_state = tx.init(params), ref.init(params)
    p1 = p2 = params
    for _ in range(3):
        g = jax.grad(loss_fn)(p1, x, y)
        u, state = tx.update(g, state, p1)
        p1 = optax.apply_updates(p1, u)
        g2 = jax.grad(lambda p: loss_fn(p, x, y) + mhe_penalty(p, 0.5, lam_o, **cfg))(p2)
        u2, ref_state = ref.update(g2, ref_state, p2)
        p2 = optax.apply_updates(p2, u2)
    chex.assert_trees_all_close(p1, p2, atol=1e-6, rtol=1e-6)
    chex.assert_trees_all_equal(p1["conv"]["bias"], p2["conv"]["bias"])


def test_penalty_is_the_sum_of_layer_energies():
    params = jax.tree.map(lambda a: np.asarray(a, np.float64), make_params())
    got = mhe_penalty(params, 0.5, 10.0, s=1.0, half_space=True, output="head/kernel")
    want = 0.5 * (helpers.np_energy(params["conv"]["kernel"], 1.0, half_space=True)
                  + helpers.np_energy(params["Dense_0"]["kernel"], 1.0, half_space=True)) \
        + 10.0 * helpers.np_energy(params["head"]["kernel"], 1.0)
    np.testing.assert_allclose(float(got), want, rtol=1e-9)
    # no output layer: the head is an ordinary hidden layer
    got = mhe_penalty(params, 1.0, s=1.0)
    want = sum(helpers.np_energy(params[k]["kernel"], 1.0) for k in ("conv", "Dense_0", "head"))
    np.testing.assert_allclose(float(got), want, rtol=1e-9)


def test_default_selection_and_masks():
    params = make_params()
    zero = jax.tree.map(jnp.zeros_like, params)
    u, _ = mhe_regularizer(1.0).update(zero, mhe_regularizer(1.0).init(params), params)
    assert float(jnp.abs(u["conv"]["kernel"]).sum()) > 0
    assert float(jnp.abs(u["head"]["kernel"]).sum()) > 0
    for leaf in (u["conv"]["bias"], u["Dense_0"]["bias"], u["bn"]["scale"]):
        assert float(jnp.abs(leaf).sum()) == 0
    mask = {"conv": {"kernel": False, "bias": False}, "Dense_0": True, "bn": False, "head": False}
    with pytest.raises(ValueError, match="Dense_0/bias"):  # a 1-d leaf forced in by the mask
        tx = mhe_regularizer(1.0, mask=mask)
        tx.update(zero, tx.init(params), params)
    mask["Dense_0"] = {"kernel": True, "bias": False}
    for m in (mask, lambda p: mask):
        tx = mhe_regularizer(1.0, mask=m)
        u, _ = tx.update(zero, tx.init(params), params)
        assert float(jnp.abs(u["conv"]["kernel"]).sum()) == 0
        want = jax.grad(lambda w: mhe_jax.hyperspherical_energy(w))(params["Dense_0"]["kernel"])
        np.testing.assert_allclose(u["Dense_0"]["kernel"], want, rtol=1e-6)


def test_errors():
    params = make_params()
    zero = jax.tree.map(jnp.zeros_like, params)
    tx = mhe_regularizer(1.0)
    with pytest.raises(ValueError, match="params is None"):
        tx.update(zero, tx.init(params), None)
    only_bias = {"a": {"bias": jnp.zeros(3)}}
    with pytest.raises(ValueError, match="no parameter was selected"):
        tx.update(only_bias, tx.init(only_bias), only_bias)
    with pytest.raises(ValueError, match="half-space MHE is for hidden layers"):
        mhe_regularizer(1.0, 1.0, output="head/kernel", half_space="all")
    with pytest.raises(ValueError, match="matches no leaf"):
        tx = mhe_regularizer(1.0, 1.0, output="classifier/kernel")
        tx.update(zero, tx.init(params), params)
    with pytest.raises(ValueError, match="output="):
        mhe_regularizer(1.0, 10.0)
    with pytest.raises(ValueError, match="distance"):
        mhe_regularizer(1.0, distance="cos")
    with pytest.raises(ValueError, match="s must"):
        mhe_regularizer(1.0, s=-2.0)
    with pytest.raises(ValueError, match="sample_size"):
        mhe_regularizer(1.0, sample_size=1)


def test_schedule_strength_follows_step():
    params = make_params()
    zero = jax.tree.map(jnp.zeros_like, params)
    tx = mhe_regularizer(optax.linear_schedule(1.0, 3.0, 2))
    state = tx.init(params)
    u0, state = tx.update(zero, state, params)
    u1, state = tx.update(zero, state, params)
    u2, state = tx.update(zero, state, params)
    np.testing.assert_allclose(u1["Dense_0"]["kernel"], 2 * u0["Dense_0"]["kernel"], rtol=1e-5)
    np.testing.assert_allclose(u2["Dense_0"]["kernel"], 3 * u0["Dense_0"]["kernel"], rtol=1e-5)
    assert int(state.count) == 3


def test_inject_hyperparams():
    params = make_params()
    zero = jax.tree.map(jnp.zeros_like, params)
    tx = optax.inject_hyperparams(
        mhe_regularizer, static_args=("sample_size", "neuron_axis", "output", "mask"))(
        hidden_strength=1.0, output_strength=10.0, s=2.0, output="head/kernel", half_space=True)
    state = tx.init(params)
    u, state = jax.jit(tx.update)(zero, state, params)
    want = jax.grad(lambda p: mhe_penalty(p, 1.0, 10.0, s=2.0, output="head/kernel",
                                          half_space=True))(params)
    chex.assert_trees_all_close(u, want, rtol=1e-5, atol=1e-7)
    state.hyperparams["hidden_strength"] = jnp.asarray(0.5)
    state.hyperparams["s"] = jnp.asarray(0.0)
    u, state = jax.jit(tx.update)(zero, state, params)
    want = jax.grad(lambda p: mhe_penalty(p, 0.5, 10.0, s=0.0, output="head/kernel",
                                          half_space=True))(params)
    chex.assert_trees_all_close(u, want, rtol=1e-5, atol=1e-7)


def test_multisteps_masked_and_apply_if_finite():
    params = make_params()
    x, y = batch()
    g = jax.grad(loss_fn)(params, x, y)
    reg = jax.grad(lambda p: mhe_penalty(p, 1.0))(params)
    tx = optax.MultiSteps(optax.chain(mhe_regularizer(1.0), optax.sgd(1.0)), every_k_schedule=2)
    state = tx.init(params)
    u, state = tx.update(g, state, params)
    assert all(float(jnp.abs(v).sum()) == 0 for v in jax.tree.leaves(u))  # accumulating
    u, state = tx.update(g, state, params)
    chex.assert_trees_all_close(u, jax.tree.map(lambda a, b: -(a + b), g, reg),
                                rtol=1e-5, atol=1e-7)

    mask = {"conv": {"kernel": False, "bias": False}, "Dense_0": {"kernel": True, "bias": False},
            "bn": {"scale": False}, "head": {"kernel": True}}
    tx = optax.masked(mhe_regularizer(1.0), mask)
    u, _ = tx.update(g, tx.init(params), params)
    np.testing.assert_allclose(u["Dense_0"]["kernel"],
                               g["Dense_0"]["kernel"] + reg["Dense_0"]["kernel"], rtol=1e-5)
    np.testing.assert_array_equal(u["conv"]["kernel"], g["conv"]["kernel"])

    tx = optax.apply_if_finite(optax.chain(mhe_regularizer(1.0), optax.sgd(1.0)),
                               max_consecutive_errors=2)
    u, state = tx.update(g, tx.init(params), params)
    assert bool(state.last_finite)


def test_labels_extra_arg_uses_eq8():
    params = make_params()
    x, y = batch()
    zero = jax.tree.map(jnp.zeros_like, params)
    tx = optax.chain(mhe_regularizer(0.0, 1.0, output="head/kernel"), optax.identity())
    u, _ = tx.update(zero, tx.init(params), params, labels=y)
    want = jax.grad(lambda w: mhe_jax.output_energy(w, y))(params["head"]["kernel"])
    np.testing.assert_allclose(u["head"]["kernel"], want, rtol=1e-5)
    assert float(jnp.abs(u["Dense_0"]["kernel"]).sum()) == 0  # hidden strength 0


def test_sampling_is_reproducible_and_changes_with_step():
    params = {"a": {"kernel": jax.random.normal(jax.random.key(3), (6, 20))}}
    zero = jax.tree.map(jnp.zeros_like, params)

    def run(seed):
        tx = mhe_regularizer(1.0, sample_size=5, seed=seed)
        state = tx.init(params)
        u0, state = tx.update(zero, state, params)
        u1, _ = tx.update(zero, state, params)
        return u0["a"]["kernel"], u1["a"]["kernel"]

    a0, a1 = run(0)
    b0, b1 = run(0)
    np.testing.assert_array_equal(a0, b0)
    np.testing.assert_array_equal(a1, b1)
    assert not np.allclose(a0, a1)
    assert int(np.sum(np.any(np.asarray(a0) != 0, axis=0))) == 5  # only sampled neurons move


def test_no_retrace_and_bf16_preserved():
    params = make_params(jnp.bfloat16)
    tx = optax.chain(mhe_regularizer(1.0, 10.0, output="head/kernel", half_space=True),
                     optax.sgd(0.1))
    state = tx.init(params)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(params, state):
        g = jax.tree.map(jnp.zeros_like, params)
        u, state = tx.update(g, state, params)
        return optax.apply_updates(params, u), state

    for _ in range(3):
        params, state = step(params, state)
    assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(params))
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(params))


def test_max_norm_clips_only_the_regularizer():
    params = make_params()
    g = jax.tree.map(lambda a: 5 * jnp.ones_like(a), params)
    tx = mhe_regularizer(100.0, max_norm=0.1)
    u, _ = tx.update(g, tx.init(params), params)
    added = jax.tree.map(lambda a, b: a - b, u, g)
    assert float(optax.global_norm(added)) == pytest.approx(0.1, rel=1e-4)


class SmallCNN(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(1, 8, (3, 3), rngs=rngs)
        self.dense = nnx.Linear(8 * 4 * 4, 6, rngs=rngs)
        self.classifier = nnx.Linear(6, 4, use_bias=False, rngs=rngs)

    def __call__(self, x):
        h = nnx.relu(self.conv(x)).reshape(x.shape[0], -1)
        return self.classifier(nnx.relu(self.dense(h)))


def test_nnx_optimizer_regularizer_only_lowers_energies():
    model = SmallCNN(nnx.Rngs(0))
    tx = optax.chain(mhe_regularizer(1.0, 1.0, output="classifier/kernel", half_space=True),
                     optax.sgd(0.05))
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
    before = mhe_jax.layer_energies(nnx.state(model, nnx.Param), output="classifier/kernel",
                                    half_space=True)
    assert set(before) == {"conv/kernel", "dense/kernel", "classifier/kernel"}
    bias0 = np.asarray(model.dense.bias[...])

    @nnx.jit
    def step(model, opt):
        grads = nnx.grad(lambda m: 0.0 * jnp.sum(m(jnp.ones((1, 4, 4, 1)))))(model)
        opt.update(model, grads)

    for _ in range(300):
        step(model, opt)
    after = mhe_jax.layer_energies(nnx.state(model, nnx.Param), output="classifier/kernel",
                                   half_space=True)
    for path in before:
        assert float(after[path].energy) < float(before[path].energy) - 1e-3, path
        assert float(after[path].min_angle) > float(before[path].min_angle)
    np.testing.assert_array_equal(np.asarray(model.dense.bias[...]), bias0)
    # the penalty also reads nnx.State and its pure form
    st = nnx.state(model, nnx.Param)
    np.testing.assert_allclose(float(mhe_penalty(st, 1.0)),
                               float(mhe_penalty(nnx.as_pure(st), 1.0)), rtol=1e-6)


def test_layer_energies_values():
    params = jax.tree.map(lambda a: np.asarray(a, np.float64), make_params())
    stats = mhe_jax.layer_energies(params, s=0.0, half_space=True, output="head/kernel")
    np.testing.assert_allclose(float(stats["conv/kernel"].energy),
                               helpers.np_energy(params["conv"]["kernel"], 0.0, half_space=True),
                               rtol=1e-9)
    np.testing.assert_allclose(float(stats["head/kernel"].energy),
                               helpers.np_energy(params["head"]["kernel"], 0.0), rtol=1e-9)


def test_baselines():
    params = jax.tree.map(lambda a: np.asarray(a, np.float64), make_params())
    w = params["Dense_0"]["kernel"]
    u = helpers.unit(w)
    np.testing.assert_allclose(float(mhe_jax.orthonormal_penalty(w)),
                               np.sum((u.T @ u - np.eye(8)) ** 2), rtol=1e-10)
    np.testing.assert_allclose(float(mhe_jax.orthonormal_penalty(w, normalize=False)),
                               np.sum((w.T @ w - np.eye(8)) ** 2), rtol=1e-10)
    c = u.T @ u
    off = ~np.eye(8, dtype=bool)
    np.testing.assert_allclose(float(mhe_jax.orthogonality_penalty(w)), np.abs(c[off]).sum(),
                               rtol=1e-10)
    np.testing.assert_allclose(float(mhe_jax.orthogonality_penalty(w, power=2)),
                               (c[off] ** 2).sum(), rtol=1e-10)
    assert float(mhe_jax.orthonormal_penalty(np.eye(4))) == 0.0
    zero = jax.tree.map(np.zeros_like, params)
    for tx, fn in [
        (mhe_jax.orthonormal_regularizer(0.3), mhe_jax.orthonormal_penalty),
        (mhe_jax.orthogonality_regularizer(0.3), mhe_jax.orthogonality_penalty),
    ]:
        upd, _ = tx.update(zero, tx.init(params), params)
        for k in ("conv", "Dense_0", "head"):
            np.testing.assert_allclose(upd[k]["kernel"], 0.3 * jax.grad(fn)(params[k]["kernel"]),
                                       rtol=1e-9)
        assert float(np.abs(upd["conv"]["bias"]).sum()) == 0
    with pytest.raises(ValueError, match="power"):
        mhe_jax.orthogonality_regularizer(1.0, power=3)


# ------------------------------------------------------------------------------ issue 12


from tests import reference_penalty as ref  # noqa: E402

LAYOUT_ERRORS = {}  # max |update − ∇ float64 reference| per model, printed by the last test


def test_linen_mnist_cnn_output_by_module_name():
    import flax.linen as nn

    class CNN(nn.Module):  # the Flax MNIST example
        @nn.compact
        def __call__(self, x):
            x = nn.avg_pool(nn.relu(nn.Conv(features=32, kernel_size=(3, 3))(x)), (2, 2), (2, 2))
            x = nn.avg_pool(nn.relu(nn.Conv(features=64, kernel_size=(3, 3))(x)), (2, 2), (2, 2))
            x = nn.relu(nn.Dense(features=256)(x.reshape((x.shape[0], -1))))
            return nn.Dense(features=10)(x)

    model = CNN()
    x = jax.random.normal(jax.random.key(0), (2, 28, 28, 1), jnp.float64)
    y = jnp.array([3, 7])
    # flax's initializers (truncated normal of every kernel shape) compile for ~10 CPU-s:
    # the same LeCun-normal scale, drawn by NumPy
    rng = np.random.default_rng(1)
    params = jax.tree.map(
        lambda a: (rng.normal(size=a.shape) / np.sqrt(np.prod(a.shape[:-1])) if a.ndim > 1
                   else np.zeros(a.shape)), jax.eval_shape(model.init, jax.random.key(1), x))

    def loss(p):
        return optax.softmax_cross_entropy_with_integer_labels(model.apply(p, x), y).mean()

    tx = optax.chain(mhe_regularizer(1.0, 10.0, output="Dense_1", half_space=True), optax.sgd(0.1))
    state = tx.init(params)

    def hand(p):
        q = p["params"]
        hidden = [q["Conv_0"]["kernel"].reshape(-1, 32), q["Conv_1"]["kernel"].reshape(-1, 64),
                  q["Dense_0"]["kernel"]]
        return ref.penalty(hidden, [q["Dense_1"]["kernel"]], 1.0, 10.0, half_space=True)

    # jitted: op by op, the two steps compiled ~600 small programs (~35 CPU-s)
    grad, update, want = jax.jit(jax.grad(loss)), jax.jit(tx.update), jax.jit(jax.grad(hand))
    apply = jax.jit(optax.apply_updates)
    worst = 0.0
    for _ in range(2):
        g = grad(params)
        u, state = update(g, state, params)
        added = jax.tree.map(lambda a, b: -np.asarray(a) / 0.1 - np.asarray(b), u, g)
        worst = max(worst, ref.max_abs_diff(added, want(params)))
        for k in ("Conv_0", "Conv_1", "Dense_0", "Dense_1"):  # biases: the loss gradient only
            np.testing.assert_array_equal(u["params"][k]["bias"],
                                          -0.1 * np.asarray(g["params"][k]["bias"]))
        params = apply(params, u)
    LAYOUT_ERRORS["flax linen MNIST CNN"] = worst
    assert worst <= 1e-6
    assert float(state[0].output_strength) == 10.0


class Mixed(nnx.Module):
    """Conv (1-D, a 3-D kernel), BatchNorm, Embed, MultiHeadAttention, LayerNorm, Linear."""

    def __init__(self, rngs, dtype=jnp.float64):
        kw = dict(param_dtype=dtype, dtype=dtype, rngs=rngs)
        self.embed = nnx.Embed(11, 8, **kw)
        self.conv = nnx.Conv(8, 6, (3,), **kw)
        self.bn = nnx.BatchNorm(6, **kw)
        self.attn = nnx.MultiHeadAttention(num_heads=2, in_features=6, qkv_features=8,
                                           out_features=6, decode=False, **kw)
        self.ln = nnx.LayerNorm(6, **kw)
        self.linear = nnx.Linear(6, 5, **kw)
        self.head = nnx.Linear(5, 3, **kw)

    def __call__(self, tokens):
        h = self.bn(nnx.relu(self.conv(self.embed(tokens))))
        h = self.ln(h + self.attn(h))
        return self.head(nnx.relu(self.linear(h.mean(axis=1))))


def test_nnx_attention_model_right_neurons_and_untouched_leaves():
    model = nnx.jit(lambda: Mixed(nnx.Rngs(0)))()  # one compile, not one per initializer
    tokens = jax.random.randint(jax.random.key(1), (4, 5), 0, 11)
    y = jnp.array([0, 1, 2, 0])
    lr = 0.1
    opt = nnx.Optimizer(model, optax.chain(mhe_regularizer(0.5, 2.0, s=1.0, output="head"),
                                           optax.sgd(lr)), wrt=nnx.Param)

    def loss(m):
        return optax.softmax_cross_entropy_with_integer_labels(m(tokens), y).mean()

    def hand(p, qkv_mixed=False):
        a = p["attn"]
        # q/k/v (in, heads, head_dim): heads·head_dim = 8 neurons in R^6; out (heads, hd, out)
        qkv = [a[n]["kernel"].reshape((12, 4) if qkv_mixed else (6, 8))
               for n in ("query", "key", "value")]
        hidden = [p["conv"]["kernel"].reshape(-1, 6), *qkv, a["out"]["kernel"].reshape(8, 6),
                  p["linear"]["kernel"]]
        return ref.penalty(hidden, [p["head"]["kernel"]], 0.5, 2.0, s=1.0)

    @nnx.jit  # op by op, the two steps compiled ~700 small programs (~40 CPU-s)
    def step(model, opt):
        grads = nnx.grad(loss)(model)
        opt.update(model, grads)
        return grads

    want_grad = jax.jit(jax.grad(hand))
    wrong_grad = jax.jit(jax.grad(lambda p: hand(p, qkv_mixed=True)))
    worst = 0.0
    for _ in range(2):
        before = nnx.to_pure_dict(nnx.state(model, nnx.Param))
        grads = step(model, opt)
        after = nnx.to_pure_dict(nnx.state(model, nnx.Param))
        g = nnx.to_pure_dict(grads)
        added = jax.tree.map(lambda b, a, gg: (np.asarray(b) - np.asarray(a)) / lr
                             - np.asarray(gg), before, after, g)
        want = want_grad(before)
        worst = max(worst, ref.max_abs_diff(added, want))
        wrong = wrong_grad(before)
        assert ref.max_abs_diff(added["attn"]["query"], wrong["attn"]["query"]) > 1e-3
        untouched = [added["embed"], added["bn"], added["ln"]] + [
            added[k]["bias"] for k in ("conv", "linear", "head")] + [
            added["attn"][k]["bias"] for k in ("query", "key", "value", "out")]
        assert all(float(np.max(np.abs(v))) <= 1e-12 for v in jax.tree.leaves(untouched))
    LAYOUT_ERRORS["flax nnx Conv/BN/Embed/MHA/LN/Linear"] = worst
    assert worst <= 1e-6
    stats = jax.eval_shape(  # which layers it reports: traced, not compiled op by op
        lambda p: mhe_jax.layer_energies(p, output="head"), nnx.state(model, nnx.Param))
    assert set(stats) == {"conv/kernel", "attn/query/kernel", "attn/key/kernel",
                          "attn/value/kernel", "attn/out/kernel", "linear/kernel", "head/kernel"}


def test_inject_hyperparams_without_static_args_strength_changed_mid_run():
    params = make_params()
    zero = jax.tree.map(jnp.zeros_like, params)
    tx = optax.inject_hyperparams(mhe_regularizer)(1.0, 10.0, output="head", half_space=True)
    state = tx.init(params)
    step = jax.jit(tx.update)

    def want(lam_h):
        return jax.grad(lambda p: mhe_penalty(p, lam_h, 10.0, output="head",
                                              half_space=True))(params)

    u, state = step(zero, state, params)
    chex.assert_trees_all_close(u, want(1.0), rtol=1e-5, atol=1e-7)
    assert float(state.inner_state.hidden_strength) == 1.0
    dtype = state.hyperparams["hidden_strength"].dtype
    state.hyperparams["hidden_strength"] = jnp.asarray(0.25, dtype)  # changed mid-run
    for _ in range(2):
        u, state = step(zero, state, params)
        chex.assert_trees_all_close(u, want(0.25), rtol=1e-5, atol=1e-7)
    assert float(state.inner_state.hidden_strength) == 0.25
    assert float(state.inner_state.output_strength) == 10.0
    # a schedule strength, injected
    tx = optax.inject_hyperparams(mhe_regularizer)(optax.linear_schedule(1.0, 3.0, 2))
    state = tx.init(params)
    for lam in (1.0, 2.0, 3.0):
        u, state = jax.jit(tx.update)(zero, state, params)
        assert float(state.hyperparams["hidden_strength"]) == pytest.approx(lam)
    # structural ints would be injected as arrays: a clear error at init, naming them
    for kwargs, name in [(dict(sample_size=4), "sample_size"),
                         (dict(neuron_axis=0), "neuron_axis")]:
        with pytest.raises(TypeError, match=f"{name}.*static_args"):
            optax.inject_hyperparams(mhe_regularizer)(1.0, **kwargs).init(params)
    tx = optax.inject_hyperparams(mhe_regularizer)(1.0, neuron_axis=(-1,))  # the tuple form works
    tx.update(zero, tx.init(params), params)


def test_none_leaves_pass_through():
    params = make_params()
    g = jax.tree.map(jnp.ones_like, params)
    g["Dense_0"]["kernel"] = None  # a selected layer without an update
    g["conv"]["bias"] = None
    tx = mhe_regularizer(1.0, 10.0, output="head")
    u, _ = tx.update(g, tx.init(params), params)
    assert u["Dense_0"]["kernel"] is None and u["conv"]["bias"] is None
    reg = jax.grad(lambda p: mhe_penalty(p, 1.0, 10.0, output="head"))(params)
    np.testing.assert_allclose(u["head"]["kernel"], 1.0 + reg["head"]["kernel"], rtol=1e-6)
    np.testing.assert_allclose(u["conv"]["kernel"], 1.0 + reg["conv"]["kernel"], rtol=1e-6)
    u, _ = optax.chain(tx, optax.add_decayed_weights(1e-4), optax.sgd(0.1)).update(
        g, optax.chain(tx, optax.add_decayed_weights(1e-4), optax.sgd(0.1)).init(params), params)
    assert u["Dense_0"]["kernel"] is None


@pytest.mark.parametrize("kwargs, exc, name", [
    (dict(hidden_strength=-1.0), ValueError, "hidden_strength"),
    (dict(hidden_strength=[1.0]), TypeError, "hidden_strength"),
    (dict(hidden_strength="1"), TypeError, "hidden_strength"),
    (dict(hidden_strength=True), TypeError, "hidden_strength"),
    (dict(hidden_strength=jnp.ones(2)), ValueError, "hidden_strength"),
    (dict(hidden_strength=float("nan")), ValueError, "hidden_strength"),
    (dict(hidden_strength=None), ValueError, "hidden_strength"),
    (dict(hidden_strength=1.0, output_strength=-2.0, output="head"), ValueError, "output_strength"),
    (dict(hidden_strength=1.0, output_strength=(1.0,), output="head"), TypeError,
     "output_strength"),
    (dict(hidden_strength=1.0, seed="a"), TypeError, "seed"),
    (dict(hidden_strength=1.0, max_norm=-1.0), ValueError, "max_norm"),
    (dict(hidden_strength=1.0, eps=-1.0), ValueError, "eps"),
    (dict(hidden_strength=1.0, min_distance=-1.0), ValueError, "min_distance"),
    (dict(hidden_strength=1.0, calibrate="yes"), TypeError, "calibrate"),
    (dict(hidden_strength=1.0, projection=3), TypeError, "projection"),
    (dict(hidden_strength=1.0, layout="pytorch"), ValueError, "layout"),
    (dict(hidden_strength=1.0, half_space="yes"), TypeError, "half_space"),
    (dict(hidden_strength=1.0, spec=mhe_jax.EnergySpec(), s=1.0), TypeError, "spec"),
])
def test_bad_input_raises_at_construction_naming_the_argument(kwargs, exc, name):
    with pytest.raises(exc, match=name):
        mhe_regularizer(**kwargs)


def test_selection_is_checked_at_init():
    params = make_params()
    for kwargs, match in [(dict(output="classifier"), "matches no leaf"),
                          (dict(output="kernel"), "matches every layer"),
                          (dict(layout="haiku"), "no parameter was selected"),
                          (dict(mask={"conv": True, "Dense_0": False, "bn": False, "head": False}),
                           "conv/bias")]:
        tx = mhe_regularizer(1.0, 1.0 if "output" in kwargs else None, **kwargs)
        with pytest.raises(ValueError, match=match):
            tx.init(params)
    with pytest.raises(ValueError, match="step="):
        mhe_penalty(params, optax.constant_schedule(1.0))
    np.testing.assert_allclose(mhe_penalty(params, optax.linear_schedule(0.0, 2.0, 4), step=2),
                               mhe_penalty(params, 1.0), rtol=1e-6)


def test_state_exposes_current_strengths():
    params = make_params()
    zero = jax.tree.map(jnp.zeros_like, params)
    tx = mhe_regularizer(optax.linear_schedule(1.0, 3.0, 2), 5.0, output="head")
    state = tx.init(params)
    assert float(state.hidden_strength) == 1.0 and float(state.output_strength) == 5.0
    seen = []
    for _ in range(3):
        _, state = tx.update(zero, state, params)
        seen.append(float(state.hidden_strength))
    assert seen == [1.0, 2.0, 3.0]  # the strength used by each update
    assert mhe_regularizer(1.0).init(params).output_strength is None
    chain = optax.chain(optax.add_decayed_weights(1e-4), tx, optax.sgd(0.1))
    chain_state = chain.init(params)
    _, chain_state = chain.update(zero, chain_state, params)
    assert float(optax.tree_utils.tree_get(chain_state, "last_hidden_strength")) == 1.0
    with pytest.raises(AttributeError):
        state.no_such_strength  # noqa: B018


def test_layer_energies_as_floats_in_degrees():
    params = jax.tree.map(lambda a: np.asarray(a, np.float64), make_params())
    arrays = mhe_jax.layer_energies(params, s=0.0, half_space=True, output="head")
    floats = mhe_jax.layer_energies(params, s=0.0, half_space=True, output="head", as_floats=True,
                                    degrees=True)
    assert set(floats) == {"conv/kernel", "Dense_0/kernel", "head/kernel"}
    for path, entry in floats.items():
        assert set(entry) == {"energy", "min_angle_deg", "mean_abs_cosine", "pair_variance"}
        assert all(type(v) is float for v in entry.values())
        assert entry["pair_variance"] == pytest.approx(float(arrays[path].pair_variance))
        assert entry["min_angle_deg"] == pytest.approx(np.degrees(float(arrays[path].min_angle)))
        assert entry["energy"] == pytest.approx(float(arrays[path].energy))
    np.testing.assert_allclose(floats["head/kernel"]["energy"],
                               helpers.np_energy(params["head"]["kernel"], 0.0), rtol=1e-9)
    U = helpers.unit(params["Dense_0"]["kernel"])
    c = (U.T @ U)[~np.eye(8, dtype=bool)]
    assert floats["Dense_0/kernel"]["min_angle_deg"] == pytest.approx(
        np.degrees(np.arccos(c.max())))
    jitted = jax.jit(lambda p: mhe_jax.layer_energies(p, output="head"))(params)
    assert mhe_jax.energies_as_floats(jitted)["head/kernel"] == pytest.approx(
        mhe_jax.layer_energies(params, output="head", as_floats=True, degrees=True)["head/kernel"])
    with pytest.raises(TypeError, match="concrete"):
        jax.jit(lambda p: mhe_jax.layer_energies(p, as_floats=True))(params)


def test_zz_report_layout_errors():
    print("\nmax |update - grad(float64 reference)|:",
          {k: f"{v:.2e}" for k, v in LAYOUT_ERRORS.items()})
