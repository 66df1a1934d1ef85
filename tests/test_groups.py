"""Grouped and masked pairs (issue 28 §2) and the pair-potential variance of ``energy_stats``.

``groups=`` (one integer id per neuron) with ``pairs="within"`` / ``"across"``: only those pairs
count and the energy is their mean, checked in float64 against the brute force of
``tests/pair_reference.py`` (a group of one neuron, groupings where no pair counts), on the dense
and tiled paths, sampled, projected (CoMHE), with traced labels (a HUG-style inter-class term of
features) and with the ``groups="heads"`` preset of the regularizers. The sharded ring's grouped
pairs are checked in tests/test_potential.py's child run.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mhe_jax
from mhe_jax import EnergySpec
from mhe_jax._energy import energy_from_spec
from tests import helpers, pair_reference as ref

IDS = np.array([0, 2, 0, 1, 2, 2, 0, 3, 1, 2])  # group 3 has one neuron


def rand(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def riesz(s):
    return lambda r: r ** -s if s else -np.log(r)


def vg(fn, w, *args):
    return jax.jit(jax.value_and_grad(fn))(jnp.asarray(w), *args)


CASES = ((2.0, "euclidean", False), (1.0, "angular", True), (0.0, "euclidean", True))


@pytest.mark.parametrize("pairs", ["within", "across"])
def test_grouped_energy_against_brute_force_dense_and_tiled(pairs):
    w = rand((4, 10), 1)
    dirs = ref.directions(w.shape, seed=5)

    @jax.jit
    def all_cases(w):  # one program: dense and tiled (10 neurons in blocks of 3: padding)
        return [[jax.value_and_grad(lambda w: mhe_jax.hyperspherical_energy(
            w, s=s, distance=distance, half_space=half, groups=IDS, pairs=pairs,
            block_size=block))(w) for block in (None, 3)] for s, distance, half in CASES]

    for (s, distance, half), ((v, g), (vt, gt)) in zip(CASES, all_cases(jnp.asarray(w)),
                                                        strict=True):
        np_kw = dict(distance=distance, half_space=half, groups=IDS, pairs=pairs)
        np.testing.assert_allclose(float(v), ref.np_mean_potential(w, riesz(s), **np_kw),
                                   rtol=1e-9)
        fd = ref.fd_directional(lambda w: ref.np_mean_potential(w, riesz(s), **np_kw), w, dirs)
        got = np.array([float(jnp.sum(g * d)) for d in dirs])
        np.testing.assert_allclose(got, fd, rtol=1e-6, atol=1e-6 * np.abs(fd).max())
        np.testing.assert_allclose(float(vt), float(v), rtol=1e-12)
        np.testing.assert_allclose(gt, g, rtol=1e-10, atol=1e-13 * float(jnp.abs(g).max()))


def test_no_pair_counts_is_zero_with_zero_gradient():
    """Every group a single neuron ("within") or one group ("across"): 0, finite, no NaN; in
    half-space "within" only the pairs (ŵ_i, −ŵ_i) count: f(−1) = 2^{−s} (chord 2)."""
    w = rand((3, 6), 2)
    singletons, one_group = np.arange(6), np.zeros(6, int)
    empty = (dict(groups=singletons), dict(groups=one_group, pairs="across"),
             dict(groups=one_group, pairs="across", half_space=True))

    @jax.jit
    def run(w):
        out = []
        for block in (None, 2):
            for kw in empty:
                fns = [mhe_jax.hyperspherical_energy] + [mhe_jax.gaussian_energy] * (not block)
                for fn in fns:
                    out.append(jax.value_and_grad(lambda w: fn(w, block_size=block, **kw))(w))
        half = [jax.value_and_grad(lambda w: mhe_jax.hyperspherical_energy(
            w, groups=singletons, half_space=True, block_size=block))(w) for block in (None, 2)]
        return out, half

    zeros, halves = run(jnp.asarray(w))
    for v, g in zeros:
        assert float(v) == 0.0 and float(jnp.max(jnp.abs(g))) == 0.0
    for v, g in halves:
        np.testing.assert_allclose(float(v), 2.0 ** -2, rtol=1e-11)
        assert float(jnp.max(jnp.abs(g))) == 0.0
    st = mhe_jax.energy_stats(w, groups=singletons)
    assert float(st.energy) == 0.0 and float(st.pair_variance) == 0.0
    assert np.isfinite(float(st.min_angle))


def test_within_is_the_mean_of_equal_groups_energies_and_one_group_is_ungrouped():
    w = rand((5, 12), 3)
    ids = np.repeat(np.arange(3), 4)

    @jax.jit
    def run(w):
        energy = mhe_jax.hyperspherical_energy
        per_group = [energy(w[:, ids == g], s=1.0) for g in range(3)]
        pairs = [(energy(w, groups=np.zeros(12, int), half_space=h), energy(w, half_space=h))
                 for h in (False, True)]
        return energy(w, s=1.0, groups=ids), jnp.mean(jnp.stack(per_group)), pairs

    grouped, mean, pairs = run(jnp.asarray(w))
    np.testing.assert_allclose(float(grouped), float(mean), rtol=1e-12)
    for a, b in pairs:
        np.testing.assert_allclose(float(a), float(b), rtol=1e-12)


def test_features_with_traced_labels_hug_style_inter_class_term():
    """Features (batch, dim), rows as neurons, labels as groups under jit: the inter-class
    ("across") and intra-class ("within") energies of a batch, one compilation for all labels."""
    x = rand((12, 6), 4)
    traces = []

    @jax.jit
    def terms(x, labels):
        traces.append(labels)  # runs once per trace (per compilation)
        across = mhe_jax.hyperspherical_energy(x, neuron_axis=0, groups=labels, pairs="across")
        within = mhe_jax.gaussian_energy(x, neuron_axis=0, groups=labels, t=2.0)
        return across, within

    for seed in range(3):
        labels = np.random.default_rng(seed).integers(0, 3, 12)
        across, within = terms(jnp.asarray(x), jnp.asarray(labels))
        kw = dict(groups=labels, neuron_axis=0)
        np.testing.assert_allclose(float(across), ref.np_mean_potential(
            x, riesz(2.0), pairs="across", **kw), rtol=1e-9)
        np.testing.assert_allclose(float(within), np.log(ref.np_mean_potential(
            x, lambda r: np.exp(-2.0 * r * r), **kw)), rtol=1e-9)
    assert len(traces) == 1  # traced once: the labels are data, not part of the program


def test_sampled_groups_use_the_same_draw_and_scale_to_the_full_set():
    w = rand((4, 10), 5)
    key = jax.random.key(3)
    k = 6

    @jax.jit
    def run(w):
        energy = mhe_jax.hyperspherical_energy
        return (energy(w, sample_size=k, key=key, groups=IDS, pairs="across"),
                energy(w, sample_size=10, key=key, groups=IDS), energy(w, groups=IDS))

    got, permuted, grouped = (float(x) for x in run(jnp.asarray(w)))
    idx = np.asarray(jax.random.choice(key, 10, (k,), replace=False))
    sub, sub_ids = w[:, idx], IDS[idx]
    counted = sum(sub_ids[i] != sub_ids[j] for i in range(k) for j in range(k) if i != j)
    total = ref.np_mean_potential(sub, riesz(2.0), groups=sub_ids, pairs="across") * counted
    p_full = sum(IDS[i] != IDS[j] for i in range(10) for j in range(10) if i != j)
    np.testing.assert_allclose(got, total * (10 * 9) / (k * (k - 1)) / p_full, rtol=1e-9)
    # all neurons sampled: the grouped energy itself (the draw is a permutation)
    np.testing.assert_allclose(permuted, grouped, rtol=1e-12)


def test_projection_dispatch_keeps_the_grouping():
    """CoMHE with orthogonal projections onto k = d preserves the angles: grouped CoMHE equals
    the grouped energy (the projection and the grouping are options of one pair sum)."""
    w = jnp.asarray(rand((6, 10), 6))
    spec = EnergySpec(projection={"projections": 2, "dim": 6, "kind": "orthogonal"},
                      pairs="across")
    projected, plain = jax.jit(lambda w: (
        energy_from_spec(w, spec, key=jax.random.key(0), groups=IDS),
        mhe_jax.hyperspherical_energy(w, groups=IDS, pairs="across")))(w)
    np.testing.assert_allclose(float(projected), float(plain), rtol=1e-10)


def test_tiled_grouped_path_forms_no_n_by_n_array():
    d, n = 16, 40
    w = jnp.zeros((d, n))
    ids = jnp.arange(n) % 7
    for pairs in ("within", "across"):
        jaxpr = jax.make_jaxpr(jax.value_and_grad(lambda w, g: mhe_jax.hyperspherical_energy(
            w, groups=g, pairs=pairs, half_space=True, block_size=8)))(w, ids)
        shapes = helpers.jaxpr_shapes(jaxpr.jaxpr)
        assert not [s for s in shapes if s.count(n) >= 2], shapes
        assert max(np.prod(s) for s in shapes if s) <= 2 * d * n  # O(N·d + B·W)


def test_heads_preset_in_penalty_regularizer_and_layer_energies():
    """groups="heads": the attention query kernel (in, heads, head_dim) gets one energy per head,
    averaged; a Dense layer and the output layer keep the plain energy."""
    rng = np.random.default_rng(7)
    params = {"attn": {"query": {"kernel": jnp.asarray(rng.standard_normal((8, 3, 4)))}},
              "mlp": {"kernel": jnp.asarray(rng.standard_normal((8, 5)))},
              "head": {"kernel": jnp.asarray(rng.standard_normal((5, 4)))}}
    q = np.asarray(params["attn"]["query"]["kernel"])
    heads = np.repeat(np.arange(3), 4)
    tx = mhe_jax.mhe_regularizer(1.0, 0.5, output="head", groups="heads")

    @jax.jit
    def run(params):
        penalties = {pairs: mhe_jax.mhe_penalty(params, 1.0, 0.5, output="head", groups="heads",
                                                pairs=pairs) for pairs in ("within", "across")}
        grads = jax.grad(lambda p: mhe_jax.mhe_penalty(p, 1.0, 0.5, output="head",
                                                       groups="heads"))(params)
        zeros = jax.tree.map(jnp.zeros_like, params)
        updates, _ = tx.update(zeros, tx.init(params), params)
        stats = mhe_jax.layer_energies(params, output="head", groups="heads")
        return penalties, grads, updates, stats

    penalties, grads, updates, stats = run(params)
    mlp = ref.np_mean_potential(np.asarray(params["mlp"]["kernel"]), riesz(2.0))
    head = ref.np_mean_potential(np.asarray(params["head"]["kernel"]), riesz(2.0))
    for pairs in ("within", "across"):
        attn = ref.np_mean_potential(q.reshape(8, 12), riesz(2.0), groups=heads, pairs=pairs)
        np.testing.assert_allclose(float(penalties[pairs]), attn + mlp + 0.5 * head, rtol=1e-9)
    per_head = [ref.np_mean_potential(q[:, h, :], riesz(2.0)) for h in range(3)]
    attn_within = ref.np_mean_potential(q.reshape(8, 12), riesz(2.0), groups=heads)
    np.testing.assert_allclose(attn_within, np.mean(per_head), rtol=1e-12)
    for path in ("attn", "mlp", "head"):
        np.testing.assert_allclose(jax.tree.leaves(updates[path]), jax.tree.leaves(grads[path]),
                                   rtol=1e-12)
    np.testing.assert_allclose(float(stats["attn/query/kernel"].energy), attn_within, rtol=1e-9)
    np.testing.assert_allclose(float(stats["mlp/kernel"].energy), mlp, rtol=1e-9)


def test_pair_variance_against_brute_force():
    w = rand((4, 9), 8)
    tiled = EnergySpec(s=0.0, pairs="across", half_space=True, block_size=4)
    cases = ((dict(s=1.0), 1.0, {}),
             (dict(s=2.0, half_space=True, distance="angular"), 2.0,
              dict(half_space=True, distance="angular")),
             (dict(spec=tiled, groups=IDS[:9]), 0.0,
              dict(groups=IDS[:9], pairs="across", half_space=True)))

    @jax.jit
    def run(w):
        stats = [mhe_jax.energy_stats(w, **kw) for kw, _, _ in cases]
        grad = jax.grad(lambda w: mhe_jax.energy_stats(w).pair_variance)(w)
        return stats, grad

    stats, grad = run(jnp.asarray(w))
    for st, (_, s, np_kw) in zip(stats, cases, strict=True):
        f = riesz(s)
        np.testing.assert_allclose(float(st.energy), ref.np_mean_potential(w, f, **np_kw),
                                   rtol=1e-9)
        np.testing.assert_allclose(float(st.pair_variance),
                                   ref.np_mean_potential(w, f, moment=2, **np_kw), rtol=1e-8)
    assert float(jnp.max(jnp.abs(grad))) == 0.0  # only the energy carries a gradient
    # equal pairs (all at 90°): zero up to the rounding of their mean (the energy, 0.5), squared
    st = mhe_jax.energy_stats(np.eye(4))
    assert 0.0 <= float(st.pair_variance) <= (4 * np.finfo(np.float64).eps * float(st.energy)) ** 2


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda w: mhe_jax.hyperspherical_energy(w, groups=np.zeros(4, int)), ValueError,
         r"^groups must have shape \(N,\) = \(5,\)"),
        (lambda w: mhe_jax.hyperspherical_energy(w, groups=np.zeros(5)), TypeError,
         "^groups must hold integer"),
        (lambda w: mhe_jax.hyperspherical_energy(w, groups=np.zeros(5, bool)), TypeError,
         "^groups must hold integer"),
        (lambda w: mhe_jax.hyperspherical_energy(w, groups="heads"), TypeError,
         "^groups='heads' is a preset"),
        (lambda w: mhe_jax.hyperspherical_energy(w, groups=np.zeros(5, int), pairs="all"),
         ValueError, "^pairs must be one of"),
        (lambda w: EnergySpec(groups=np.zeros(5, int)), TypeError, "^groups in a spec"),
        (lambda w: EnergySpec(groups="tokens"), ValueError, "^groups must be one of"),
        (lambda w: mhe_jax.hyperspherical_energy(w, spec=EnergySpec(groups="heads")), ValueError,
         "^spec.groups='heads' is resolved per layer"),
        (lambda w: mhe_jax.mhe_penalty({"a": {"kernel": w}}, 1.0, groups="layers"), ValueError,
         "^groups must be one of"),
        (lambda w: mhe_jax.hyperspherical_energy(w, pairs="across"), ValueError,
         "^pairs='across' applies to grouped pairs"),
        (lambda w: mhe_jax.layer_energies({"a": {"kernel": w}}, pairs="across"), ValueError,
         "^pairs='across' applies"),
    ],
)
def test_errors_name_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call(jnp.asarray(rand((3, 5), 9)))
