"""Tests of mhe_jax.models (kept fast: small widths, small batches, rbg PRNG keys).

Models are initialised with ``jax.random.key(seed, impl="rbg")``: on CPU the threefry sampler
costs ~1 s of compilation per distinct parameter shape, rbg a fraction of that.
"""

from __future__ import annotations

import io

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.tree_util import DictKey, GetAttrKey, SequenceKey

from mhe_jax import models as M, train as T
from mhe_jax.experiments.plots import plot_features_2d


def R(seed=0):
    return nnx.Rngs(jax.random.key(seed, impl="rbg"))


def path_str(path):
    parts = []
    for k in path:
        if isinstance(k, DictKey):
            parts.append(str(k.key))
        elif isinstance(k, SequenceKey):
            parts.append(str(k.idx))
        elif isinstance(k, GetAttrKey):
            parts.append(k.name)
        else:
            parts.append(str(k))
    if parts and parts[-1] == "value":  # nnx.Variable leaf
        parts.pop()
    return "/".join(parts)


def param_leaves(model):
    flat, _ = jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.Param))
    return {path_str(p): leaf for p, leaf in flat}


def kernel_paths(model):
    return sorted(p for p, v in param_leaves(model).items() if p.endswith("kernel") and v.ndim >= 2)


def check_output_path(model, num_classes):
    """``output_path`` is a flattened Param path whose leaf *is* the classifier kernel."""
    leaves = param_leaves(model)
    assert model.output_path in leaves, (model.output_path, sorted(leaves))
    leaf = leaves[model.output_path]
    assert leaf is model.classifier.kernel.get_value()
    assert leaf.shape[-1] == num_classes
    assert model.output_path in kernel_paths(model)


def n_params(model):
    return sum(int(np.prod(v.shape)) for v in param_leaves(model).values())


def abstract(ctor, *args, **kwargs):
    """Shape-only model (``nnx.eval_shape``): structure and shape checks without any compute."""
    return nnx.eval_shape(lambda: ctor(*args, rngs=nnx.Rngs(0), **kwargs))


def out_shape(model, *shapes, method="__call__"):
    structs = [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]
    out = nnx.eval_shape(lambda m, *x: getattr(m, method)(*x), model, *structs)
    assert out.dtype == jnp.float32
    return out.shape


def rand(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


@nnx.jit
def forward(model, x):
    return model(x)


@pytest.mark.parametrize(
    "ctor, kwargs",
    [
        (M.cnn9, {}),
        (M.resnet32, {}),
        (M.resnet18, {"widths": (4, 8, 8, 16)}),
        (M.mnist2d, {}),
        (M.sphereface20, {"num_classes": 10, "widths": (4, 8, 8, 16), "embedding_dim": 16}),
    ],
)
def test_output_path_matches_layer_selection(ctor, kwargs):
    """The path convention agrees with the regulariser's layer selection (when available)."""
    try:
        from mhe_jax._tree import path_str as core_path_str, select_layers
    except ImportError:  # the core module is written in parallel
        pytest.skip("mhe_jax._tree not available")
    model = abstract(ctor, **kwargs)
    params = nnx.state(model, nnx.Param)
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    assert [core_path_str(p) for p, _ in flat] == [path_str(p) for p, _ in flat]
    _, _, layers = select_layers(params, output=model.output_path)
    outputs = [layer.path for layer in layers if layer.is_output]
    assert outputs == [model.output_path]
    assert {layer.path for layer in layers} == set(kernel_paths(model))


# ---------------------------------------------------------------------------------------- CNN


def test_cnn9_real_forward_output_path_and_param_count():
    model = M.cnn9(rngs=R(0))
    model.eval()
    y = forward(model, rand((2, 32, 32, 3)))
    assert y.shape == (2, 10) and y.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(y)))
    assert model.output_path == "classifier/kernel"
    check_output_path(model, 10)
    assert model.classifier.kernel.shape == (1, 1, 256, 10)
    # 9 conv3x3 + fc conv4x4 + classifier = 11 weight layers seen by the MHE regulariser
    kp = kernel_paths(model)
    assert len(kp) == 11 and "layers/8/conv/kernel" in kp and "fc/conv/kernel" in kp
    # by hand: conv3x3 (no bias) + BN (γ, β) per layer, fc 4x4x256x256 (no bias, no BN),
    # 1x1 classifier
    expected, cin = 0, 3
    for w in (64, 128, 256):
        for _ in range(3):
            expected += 3 * 3 * cin * w + 2 * w
            cin = w
    expected += 4 * 4 * 256 * 256 + 256 * 10
    assert n_params(model) == expected == 2_972_480


def test_cnn_variants_shapes():
    for ctor, depth in ((M.cnn6, 2), (M.cnn9, 3), (M.cnn15, 5)):
        for widths in ((16, 32, 64), (256, 512, 1024)):
            m = abstract(ctor, 100, widths)
            assert len(m.layers) == 3 * depth
            assert out_shape(m, (2, 32, 32, 3)) == (2, 100)
            assert m.output_path == "classifier/kernel"
            check_output_path(m, 100)
    m = abstract(M.cnn9, fc_bn_relu=True, fc_width=128)
    assert m.fc.bn is not None and m.classifier.kernel.shape == (1, 1, 128, 10)
    # grey digits upsampled to 32x32, MNIST 28x28 (both → 4x4 before the fc conv) ...
    g = abstract(M.cnn9, in_channels=1)
    assert out_shape(g, (3, 32, 32, 1)) == (3, 10)
    assert out_shape(g, (3, 28, 28, 1)) == (3, 10)
    assert out_shape(g, (3, 32, 32, 1), method="features") == (3, 1, 1, 256)
    # ... 8x8 digits with a 1x1 fc conv, and larger inputs (logits averaged spatially)
    s = abstract(M.cnn9, 5, in_channels=1, fc_kernel_size=1)
    assert out_shape(s, (2, 8, 8, 1)) == (2, 5)
    assert out_shape(abstract(M.cnn9), (2, 64, 64, 3)) == (2, 10)


def test_cnn_train_eval_batchnorm():
    model = M.CNN(1, (4, 8, 8), fc_width=8, rngs=R(3))
    x0 = rand((1, 32, 32, 3), 10)
    xa = jnp.concatenate([x0, rand((3, 32, 32, 3), 11)])
    xb = jnp.concatenate([x0, rand((3, 32, 32, 3), 12) * 3.0 + 1.0])
    model.train()
    mean0 = np.asarray(model.layers[0].bn.mean[...]).copy()
    ya, yb = forward(model, xa)[0], forward(model, xb)[0]
    assert not np.allclose(ya, yb, atol=1e-5)  # batch statistics: depends on the other samples
    mean1 = np.asarray(model.layers[0].bn.mean[...]).copy()
    assert not np.allclose(mean0, mean1)  # running averages updated in train mode
    model.eval()
    e1, e2 = forward(model, xa)[0], forward(model, xb)[0]
    np.testing.assert_allclose(e1, e2, rtol=1e-5, atol=1e-6)  # per-sample, deterministic
    np.testing.assert_array_equal(forward(model, xa)[0], e1)
    np.testing.assert_array_equal(np.asarray(model.layers[0].bn.mean[...]), mean1)


def _train(model, x, y, steps=12, lr=0.05):
    model.train()
    opt = nnx.Optimizer(model, optax.sgd(lr, momentum=0.9), wrt=nnx.Param)

    def loss_fn(m):
        return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

    @nnx.jit
    def step(m, o):
        loss, grads = nnx.value_and_grad(loss_fn)(m)
        o.update(m, grads)
        return loss

    losses = [float(step(model, opt)) for _ in range(steps)]
    assert all(np.isfinite(losses))
    return losses


def test_cnn_sgd_lowers_loss():
    model = M.CNN(1, (4, 8, 8), fc_width=8, rngs=R(4))
    x = rand((8, 32, 32, 3), 20)
    y = jnp.arange(8) % 4
    losses = _train(model, x, y)
    assert losses[-1] < 0.7 * losses[0], losses


# ------------------------------------------------------------------------------------- ResNets


@pytest.mark.parametrize(
    "ctor, n_blocks, n_proj, hw, n_classes, expected_params",
    [
        (M.resnet32, 15, 2, 32, 10, None),
        # torchvision's resnet18 / resnet34 have the same parameters (1x1 conv + BN downsample)
        (M.resnet18, 8, 3, 224, 1000, 11_689_512),
        (M.resnet34, 16, 3, 224, 1000, 21_797_672),
    ],
)
def test_resnets(ctor, n_blocks, n_proj, hw, n_classes, expected_params):
    model = abstract(ctor)
    assert len(model.blocks) == n_blocks
    assert out_shape(model, (2, hw, hw, 3)) == (2, n_classes)
    assert out_shape(model, (2, 64, 64, 3)) == (2, n_classes)  # global average pool
    assert model.output_path == "classifier/kernel"
    check_output_path(model, n_classes)
    assert model.classifier.kernel.shape == (model.blocks[-1].conv2.kernel.shape[-1], n_classes)
    kp = kernel_paths(model)
    assert len(kp) == 1 + 2 * n_blocks + n_proj + 1, kp  # stem, blocks, projections, classifier
    assert "blocks/3/conv1/kernel" in kp
    if expected_params is not None:
        assert n_params(model) == expected_params


def test_resnet32_param_count_and_batchnorm():
    model = abstract(M.resnet32)
    # by hand: stem conv+BN; 5 blocks per stage (2 conv3x3 + 2 BN); option-B projections; fc
    expected = 3 * 3 * 3 * 16 + 2 * 16
    cin = 16
    for w in (16, 32, 64):
        for _ in range(5):
            expected += 9 * cin * w + 9 * w * w + 4 * w
            if cin != w:
                expected += cin * w + 2 * w
            cin = w
    expected += 64 * 10 + 10
    assert n_params(model) == expected
    # real compute (1 block per stage, tiny widths): batch statistics in train mode only
    small = M.ResNetCIFAR((1, 1, 1), (2, 4, 4), rngs=R(6))
    x0 = rand((1, 16, 16, 3), 1)
    xa = jnp.concatenate([x0, rand((2, 16, 16, 3), 2)])
    xb = jnp.concatenate([x0, rand((2, 16, 16, 3), 3) + 2.0])
    small.train()
    assert not np.allclose(forward(small, xa)[0], forward(small, xb)[0], atol=1e-5)
    small.eval()
    np.testing.assert_allclose(forward(small, xa)[0], forward(small, xb)[0], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------- 2-D model


def test_mnist2d_shapes_and_output_path():
    model = abstract(M.mnist2d)
    for hw in (28, 16, 8):
        assert out_shape(model, (2, hw, hw, 1), method="features") == (2, 2)
        assert out_shape(model, (2, hw, hw, 1)) == (2, 10)
    assert "classifier/bias" not in param_leaves(model)  # bias-free classifier
    check_output_path(model, 10)
    assert model.classifier.kernel.shape == (2, 10)
    assert len(model.layers) == 6 and model.fc.kernel.shape == (128, 2)


def test_mnist2d_sgd_lowers_loss_and_plot():
    model = M.MNIST2D(4, widths=(4,) * 6, rngs=R(8))
    x = rand((8, 16, 16, 1), 30)
    y = jnp.arange(8) % 4
    losses = _train(model, x, y, steps=15, lr=0.05)
    assert losses[-1] < 0.8 * losses[0], losses
    model.eval()
    feats, logits = nnx.jit(lambda m, a: (m.features(a), m(a)))(model, x)
    assert feats.shape == (8, 2)
    np.testing.assert_allclose(logits, feats @ model.classifier.kernel[...], rtol=1e-5, atol=1e-5)
    feats = np.asarray(feats)
    fig = plot_features_2d(feats, np.asarray(y), model.classifier.kernel[...], title="t")
    ax = fig.axes[0]
    assert ax.get_title() == "t"
    assert len(ax.collections) == 4  # one scatter per class
    assert sum(1 for t in ax.texts if t.get_text() in {"0", "1", "2", "3"}) == 4  # neuron labels
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    assert buf.getvalue()[:4] == b"\x89PNG"
    # drawing into an existing Axes returns its figure
    fig2 = plot_features_2d(feats, np.asarray(y), np.asarray(model.classifier.kernel[...]), ax=ax)
    assert fig2 is fig
    with pytest.raises(ValueError):
        plot_features_2d(feats[:, :1], y, model.classifier.kernel[...])


# ----------------------------------------------------------------------------------- SphereFace


def test_sphereface20_shapes_and_output_path():
    model = abstract(M.sphereface20, 10572)
    assert out_shape(model, (2, 112, 96, 3)) == (2, 512)
    assert out_shape(model, (2, 112, 96, 3), method="logits") == (2, 10572)
    assert model.fc.kernel.shape == (7 * 6 * 512, 512)
    assert model.output_path == "classifier/kernel"
    check_output_path(model, 10572)
    assert model.classifier.kernel.shape == (512, 10572)
    assert [len(s.units) for s in model.stages] == [1, 2, 4, 1]
    # 4 stride-2 convs + 2·8 residual convs + fc + classifier
    assert len(kernel_paths(model)) == 22
    assert "classifier/bias" not in param_leaves(model)
    small = abstract(M.sphereface20, 10, widths=(4, 8, 8, 16), embedding_dim=16,
                     input_shape=(64, 48))
    assert out_shape(small, (3, 64, 48, 3)) == (3, 16)


def _np_norm_softmax_loss(x, w, y):
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    logits = x @ (w / np.linalg.norm(w, axis=0, keepdims=True))
    logits -= logits.max(axis=1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return -logp[np.arange(len(y)), y].mean()


def _np_psi(theta, m):
    k = np.minimum(np.floor(m * theta / np.pi), m - 1)
    return (-1.0) ** k * np.cos(m * theta) - 2 * k


a_softmax_loss = jax.jit(T.a_softmax_loss, static_argnames=("m",))
a_softmax_logits = jax.jit(T.a_softmax_logits, static_argnames=("m",))
normalized_softmax_loss = jax.jit(T.normalized_softmax_loss)
sphereface_plus_loss = jax.jit(T.sphereface_plus_loss, static_argnames=("m", "s", "distance"))


@pytest.fixture(scope="module")
def sf_data():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(6, 5)) * 3.0)
    w = jnp.asarray(rng.normal(size=(5, 4)))
    y = jnp.asarray([0, 1, 2, 3, 0, 2])
    return x, w, y


@pytest.mark.parametrize("lam", [0.0, 5.0])
def test_a_softmax_m1_is_normalized_softmax(sf_data, lam):
    x, w, y = sf_data
    ref = _np_norm_softmax_loss(x, w, np.asarray(y))
    np.testing.assert_allclose(a_softmax_loss(x, w, y, m=1, lam=lam), ref, rtol=1e-10)
    np.testing.assert_allclose(normalized_softmax_loss(x, w, y), ref, rtol=1e-10)


def test_a_softmax_margin_properties(sf_data):
    x, w, y = sf_data
    base = float(normalized_softmax_loss(x, w, y))
    prev = base
    for m in (2, 3, 4):  # ψ ≤ cos θ: a larger margin gives a larger loss
        cur = float(a_softmax_loss(x, w, y, m=m))
        assert cur > base and cur >= prev - 1e-12
        prev = cur
    # λ → ∞ recovers the normalised-weight softmax; only the target logit is changed
    np.testing.assert_allclose(a_softmax_loss(x, w, y, m=4, lam=1e9), base, rtol=1e-6)
    lg = a_softmax_logits(x, w, y, m=4, lam=5.0)
    plain = np.asarray(x) @ (np.asarray(w) / np.linalg.norm(np.asarray(w), axis=0))
    mask = np.eye(4, dtype=bool)[np.asarray(y)]
    np.testing.assert_allclose(np.asarray(lg)[~mask], plain[~mask], rtol=1e-12)
    # target logit = (λ‖x‖cosθ + ‖x‖ψ)/(1+λ)
    xn = np.linalg.norm(np.asarray(x), axis=1)
    cos_y = plain[mask] / xn
    f = (5.0 * xn * cos_y + xn * _np_psi(np.arccos(cos_y), 4)) / 6.0
    np.testing.assert_allclose(np.asarray(lg)[mask], f, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("m", [2, 3, 4])
def test_psi_continuous_monotone(m):
    theta = np.linspace(0.0, np.pi, 20001)
    psi = np.asarray(T.sphereface_psi(jnp.asarray(np.cos(theta)), m))
    np.testing.assert_allclose(psi, _np_psi(theta, m), atol=1e-9)
    d = np.diff(psi)
    assert np.all(d <= 1e-12)  # monotonically decreasing
    assert np.max(np.abs(d)) <= m * (theta[1] - theta[0]) + 1e-9  # no jumps: |ψ'| ≤ m
    np.testing.assert_allclose([psi[0], psi[-1]], [1.0, 1.0 - 2.0 * m], atol=1e-9)
    for k in range(1, m):  # exact continuity at the interval boundaries kπ/m
        c = np.cos(k * np.pi / m)
        left = float(T.sphereface_psi(jnp.asarray(c + 1e-12), m))
        right = float(T.sphereface_psi(jnp.asarray(c - 1e-12), m))
        assert abs(left - right) < 1e-9 and abs(left - (1 - 2 * k)) < 1e-9


@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_a_softmax_gradient_finite_at_0_and_pi(m):
    g = jax.jit(jax.vmap(jax.grad(lambda c: T.sphereface_psi(c, m))))
    assert bool(jnp.all(jnp.isfinite(g(jnp.asarray([1.0, -1.0])))))
    w = jnp.asarray(np.random.default_rng(1).normal(size=(3, 4)))
    wn = w / jnp.linalg.norm(w, axis=0)
    y = jnp.array([2, 2])
    x = jnp.stack([2.0 * wn[:, 2], -3.0 * wn[:, 2]])  # θ_y = 0 and θ_y = π
    grad = jax.jit(jax.grad(lambda a, b: T.a_softmax_loss(a, b, y, m=m, lam=1.0), argnums=(0, 1)))
    gx, gw = grad(x, w)
    assert bool(jnp.all(jnp.isfinite(gx))) and bool(jnp.all(jnp.isfinite(gw)))
    gx0, _ = grad(jnp.zeros((2, 3)), w)  # x = 0
    assert bool(jnp.all(jnp.isfinite(gx0)))


def test_sphereface_lambda_schedule():
    np.testing.assert_allclose(T.sphereface_lambda(0), 1000.0)
    np.testing.assert_allclose(T.sphereface_lambda(1), 1000.0 / 1.12, rtol=1e-6)
    np.testing.assert_allclose(T.sphereface_lambda(100), 1000.0 / 13.0, rtol=1e-6)
    np.testing.assert_allclose(T.sphereface_lambda(1658), 1000.0 / (1 + 0.12 * 1658), rtol=1e-6)
    np.testing.assert_allclose(T.sphereface_lambda(1659), 5.0)  # 1000/(1+0.12·s) < 5 for s > 1658.3
    np.testing.assert_allclose(T.sphereface_lambda(10**6), 5.0)
    np.testing.assert_allclose(T.sphereface_lambda(10, power=2.0, lambda_min=0.0),
                               1000 / 2.2**2, rtol=1e-6)
    steps = jnp.arange(0, 3000, 500)
    v = np.asarray(T.sphereface_lambda(steps))
    assert v.shape == (6,) and np.all(np.diff(v) <= 0) and v.min() == 5.0


def test_sphereface_plus_loss(sf_data):
    try:
        from mhe_jax import output_energy
    except ImportError:  # the core energy module is written in parallel
        pytest.skip("mhe_jax.output_energy not available yet")
    x, w, y = sf_data
    e = output_energy(w, y, s=2.0, distance="euclidean")
    got = sphereface_plus_loss(x, w, y, m=4, lam=5.0, mhe_weight=0.5, s=2.0, distance="euclidean")
    want = a_softmax_loss(x, w, y, m=4, lam=5.0) + 0.5 * e
    np.testing.assert_allclose(got, want, rtol=1e-10)
    assert float(e) > 0
    g = jax.jit(jax.grad(lambda b: T.sphereface_plus_loss(x, b, y, m=4)))(w)
    assert bool(jnp.all(jnp.isfinite(g)))


def test_models_do_not_borrow_from_each_other_or_from_train():
    """PReLU / he_normal live in models/layers.py; models import neither train nor experiments,
    nor a private module of the core."""
    import ast
    from pathlib import Path

    root = Path(M.__file__).parent
    for f in root.glob("*.py"):
        tree = ast.parse(f.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                mod = node.module
                assert not mod.startswith(("mhe_jax.train", "mhe_jax.experiments", "mhe_jax._")), (
                    f.name, mod)
                if mod.startswith("mhe_jax.models.") and f.name != "__init__.py":
                    assert mod == "mhe_jax.models.layers", (f.name, mod)
    assert M.PReLU is __import__("mhe_jax.models.layers", fromlist=["PReLU"]).PReLU
    base = M.ResNetCIFAR.__mro__[1]
    assert base.__name__ == "_ResNet" and issubclass(M.ResNet, base)  # the two share blocks
