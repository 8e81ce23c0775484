"""Sharded heads on 8 fake CPU devices: class-parallel under shard_map/pmap, and jit on 2-D meshes.

Everything is held against the unsharded computation on one device: values, competitors,
margins and the gradients with respect to the kernel, the logits and the features.
(What the compiled programs communicate is checked in tests/test_sharded_comm.py.)
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import pmm_jax
from tests.conftest import NUM_DEVICES
from tests.test_penalty import make_batch

B, D = 16, 8
REDUCTIONS = ["mean", "official", "sum"]
BASES = {
    "ce": optax.losses.softmax_cross_entropy_with_integer_labels,
    "hinge": optax.losses.multiclass_hinge_loss,
}


def batch(seed, k):
    logits, labels, feats, kernel = make_batch(seed, B, D, k)
    feats = feats.at[B - 3].multiply(5.0)  # the max-norm row: on one data shard only
    logits = feats @ kernel + jnp.linspace(-1.0, 1.0, k)
    return logits, labels, feats, kernel


def uneven_where():
    return (jnp.arange(B) % 5 != 2).at[B - 3].set(True)


WEIGHTS = jnp.arange(1.0, 1.0 + B)


def mesh_of(shape, kind=AxisType.Explicit):
    names = ("model",) if len(shape) == 1 else ("data", "model")
    return jax.make_mesh(shape, names, axis_types=(kind,) * len(shape))


def put(mesh, x, *spec):
    return jax.device_put(x, NamedSharding(mesh, P(*spec)))


def test_eight_devices():
    assert jax.device_count() == NUM_DEVICES


# --- the competitor: two stages, exactly jnp.argmax's answer -----------------------------


def _competitors_class_parallel(logits, labels, num_shards):
    mesh = mesh_of((num_shards,))
    fn = jax.shard_map(
        functools.partial(pmm_jax.competitor_classes, class_axis_name="model"),
        mesh=mesh,
        in_specs=(P(None, "model"), P()),
        out_specs=P(),
    )
    return np.asarray(jax.jit(fn)(put(mesh, logits, None, "model"), put(mesh, labels)))


def test_competitor_ties_across_shards_go_to_the_lowest_global_index():
    k = 16  # 8 shards of 2 classes
    logits = np.zeros((7, k), np.float32)
    logits[0, [3, 9, 14]] = 5.0  # a tie across three shards: 3
    logits[1, [9, 8]] = 5.0  # a tie within a shard, after another shard's lower score: 8
    logits[2, [0, 15]] = 7.0  # the true class 0 holds the max; the tie partner wins: 15
    logits[3, :] = -np.inf  # every score -inf: the first class, 0
    logits[4, [5, 12]] = np.nan  # NaN wins, the first in global order: 5
    logits[5, [2, 3]] = [4.0, 4.0]  # tie inside the true class's shard: 2 is the label -> 3
    logits[6, :] = -np.inf  # ... unless that is the label: (y + 1) % k, as on one device
    labels = np.array([1, 2, 0, 4, 0, 2, 0], np.int32)
    want = np.asarray(pmm_jax.competitor_classes(jnp.asarray(logits), jnp.asarray(labels)))
    np.testing.assert_array_equal(want, [3, 8, 15, 0, 5, 3, 1])
    for shards in (2, 4, 8):
        got = _competitors_class_parallel(logits, labels, shards)
        np.testing.assert_array_equal(got, want, err_msg=f"{shards} shards")


def test_competitor_random_scores_with_many_ties():
    rng = np.random.default_rng(0)
    logits = rng.integers(0, 3, size=(64, 40)).astype(np.float32)  # ties everywhere
    labels = rng.integers(0, 40, 64).astype(np.int32)
    want = np.asarray(pmm_jax.competitor_classes(jnp.asarray(logits), jnp.asarray(labels)))
    for shards in (2, 4, 8):
        np.testing.assert_array_equal(_competitors_class_parallel(logits, labels, shards), want)


# --- class-parallel inside shard_map ---------------------------------------------------------


def _specs(shape):
    data = "data" if len(shape) == 2 else None
    return data, {
        "logits": P(data, "model"),
        "rows": P(data),
        "kernel": P(None, "model"),
    }


# k=16: 2..8 local classes (the dense gradient assembly); k=160: 20..80 (sort and scan).
@pytest.mark.parametrize("k", [16, 160])
@pytest.mark.parametrize("check_vma", [True, False])
@pytest.mark.parametrize("shape", [(8,), (2, 4), (4, 2)])
@pytest.mark.parametrize("variant", ["plain", "where+stop_radius_gradient"])
def test_class_parallel_penalty_equals_unsharded(shape, check_vma, k, variant):
    logits, labels, feats, kernel = batch(1, k)
    masked = variant != "plain"
    where = uneven_where()

    def objective(kernel, feats, logits, labels, where, **axes):
        pen = pmm_jax.pmm_penalty(
            logits,
            labels,
            feats,
            kernel,
            where=where if masked else None,
            stop_radius_gradient=masked,
            **axes,
        )
        return jnp.sum(pen * _local_weights(labels.shape[0], axes.get("axis_name"))), pen

    grad = jax.grad(objective, (0, 1), has_aux=True)
    want_g, want_pen = grad(kernel, feats, logits, labels, where)
    want_m = pmm_jax.pairwise_margins(logits, labels, kernel, where=where if masked else None)
    want_c = pmm_jax.competitor_classes(logits, labels)

    mesh = mesh_of(shape)
    data, specs = _specs(shape)
    axes = dict(axis_name=data, class_axis_name="model")

    def local(logits, labels, feats, kernel, where):
        (gk, gf), pen = grad(kernel, feats, logits, labels, where, **axes)
        if data and not check_vma:
            gk = lax.psum(gk, data)  # with check_vma JAX sums the invariant kernel's gradient
        margins = pmm_jax.pairwise_margins(
            logits, labels, kernel, where=where if masked else None, class_axis_name="model"
        )
        comp = pmm_jax.competitor_classes(logits, labels, class_axis_name="model")
        return pen, margins, comp, gk, gf

    rows = specs["rows"]
    fn = jax.jit(
        jax.shard_map(
            local,
            mesh=mesh,
            in_specs=(specs["logits"], rows, rows, specs["kernel"], rows),
            out_specs=(rows, rows, rows, specs["kernel"], rows),
            check_vma=check_vma,
        )
    )
    pen, margins, comp, gk, gf = fn(
        put(mesh, logits, *specs["logits"]),
        put(mesh, labels, *rows),
        put(mesh, feats, *rows),
        put(mesh, kernel, *specs["kernel"]),
        put(mesh, where, *rows),
    )
    np.testing.assert_array_equal(comp, want_c)
    np.testing.assert_allclose(pen, want_pen, rtol=1e-6)
    np.testing.assert_allclose(margins, want_m, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(gk, want_g[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gf, want_g[1], rtol=1e-5, atol=1e-5)


def _local_weights(n, axis_name):
    """This device's rows of WEIGHTS (all of them without a data axis)."""
    if axis_name is None:
        return WEIGHTS
    return lax.dynamic_slice_in_dim(WEIGHTS, lax.axis_index(axis_name) * n, n)


@pytest.mark.parametrize("check_vma", [True, False])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("base", sorted(BASES))
def test_class_parallel_loss_shares_equal_unsharded(reduction, base, check_vma):
    """Per data device a share (pmean = global); the same on every device of the class axis."""
    logits, labels, feats, kernel = batch(2, 40)
    where = uneven_where()
    kw = dict(alpha=0.05, penalty_reduction=reduction, base_loss=BASES[base], where=where)

    def single(kernel, logits, feats):
        return pmm_jax.pmm_loss(logits, labels, feats, kernel, **kw)

    (want, want_parts), want_g = jax.value_and_grad(single, (0, 1, 2), has_aux=True)(
        kernel, logits, feats
    )
    shape = (2, 4)
    mesh, n_data = mesh_of(shape), shape[0]

    def local(kernel, logits, feats, labels, where):
        def f(kernel, logits, feats):
            return pmm_jax.pmm_loss(
                logits,
                labels,
                feats,
                kernel,
                **dict(kw, where=where),
                axis_name="data",
                class_axis_name="model",
            )

        (loss, parts), (gk, gl, gf) = jax.value_and_grad(f, (0, 1, 2), has_aux=True)(
            kernel, logits, feats
        )
        if not check_vma:
            gk = lax.psum(gk, "data")
        return lax.pmean((loss, parts), "data"), gk / n_data, gl / n_data, gf / n_data

    fn = jax.jit(
        jax.shard_map(
            local,
            mesh=mesh,
            in_specs=(P(None, "model"), P("data", "model"), P("data"), P("data"), P("data")),
            out_specs=(P(), P(None, "model"), P("data", "model"), P("data")),
            check_vma=check_vma,
        )
    )
    (loss, parts), gk, gl, gf = fn(
        put(mesh, kernel, None, "model"),
        put(mesh, logits, "data", "model"),
        put(mesh, feats, "data"),
        put(mesh, labels, "data"),
        put(mesh, where, "data"),
    )
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    for name, value in want_parts.items():
        np.testing.assert_allclose(parts[name], value, rtol=1e-5, atol=1e-7, err_msg=name)
    for got, ref in zip((gk, gl, gf), want_g, strict=True):
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-6)


def test_class_parallel_under_pmap():
    """pmap over the classes (the batch on every device): the same answer."""
    logits, labels, feats, kernel = batch(3, 40)
    loss = lambda w, lg, **kw: pmm_jax.pmm_loss(lg, labels, feats, w, alpha=0.1, **kw)[0]
    want, want_g = jax.value_and_grad(loss, (0, 1))(kernel, logits)

    def per_device(kernel, logits):
        return jax.value_and_grad(functools.partial(loss, class_axis_name="model"), (0, 1))(
            kernel, logits
        )

    n = 4
    got, (gk, gl) = jax.pmap(per_device, axis_name="model", in_axes=(1, 1))(
        kernel.reshape(D, n, -1), logits.reshape(B, n, -1)
    )
    np.testing.assert_allclose(got, np.full(n, want), rtol=1e-6)
    # Device c holds classes [10c, 10c + 10): its gradients are those columns' own.
    np.testing.assert_allclose(
        np.asarray(gk).transpose(1, 0, 2).reshape(D, -1), want_g[0], rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        np.asarray(gl).transpose(1, 0, 2).reshape(B, -1), want_g[1], rtol=1e-5, atol=1e-6
    )


def test_class_parallel_kernel_gradient_is_bitwise_reproducible():
    logits, labels, feats, kernel = batch(4, 160)
    mesh = mesh_of((2, 4))

    def local(kernel, feats, logits, labels):
        def f(kernel, feats):
            pen = pmm_jax.pmm_penalty(
                logits, labels, feats, kernel, axis_name="data", class_axis_name="model"
            )
            return jnp.sum(pen)

        return jax.grad(f, (0, 1))(kernel, feats)

    fn = jax.jit(
        jax.shard_map(
            local,
            mesh=mesh,
            in_specs=(P(None, "model"), P("data"), P("data", "model"), P("data")),
            out_specs=(P(None, "model"), P("data")),
        )
    )
    args = (
        put(mesh, kernel, None, "model"),
        put(mesh, feats, "data"),
        put(mesh, logits, "data", "model"),
        put(mesh, labels, "data"),
    )
    first = jax.tree.map(np.asarray, fn(*args))
    for _ in range(3):
        for a, b in zip(first, fn(*args), strict=True):
            np.testing.assert_array_equal(np.asarray(b), a)
    jaxpr = jax.make_jaxpr(fn)(*args)
    text = str(jaxpr)
    assert "scatter-add" not in text and "scatter_add" not in text


# --- errors ----------------------------------------------------------------------------------


def _run_model_axis(fn, *arrays, specs):
    mesh = mesh_of((4,))
    return jax.shard_map(fn, mesh=mesh, in_specs=specs, out_specs=P())(
        *(put(mesh, x, *s) for x, s in zip(arrays, specs, strict=True))
    )


def test_other_base_loss_under_class_axis_name_names_the_fix():
    logits, labels, feats, kernel = batch(5, 16)

    def f(logits, labels, feats, kernel):
        return pmm_jax.pmm_loss(
            logits,
            labels,
            feats,
            kernel,
            alpha=0.1,
            base_loss=lambda lg, y: jnp.zeros(lg.shape[0]),
            class_axis_name="model",
        )[0]

    with pytest.raises(ValueError, match=r"class_axis_name.*pmm_penalty"):
        _run_model_axis(
            f, logits, labels, feats, kernel, specs=(P(None, "model"), P(), P(), P(None, "model"))
        )


def test_kernel_slice_must_match_the_logits_slice():
    logits, labels, feats, kernel = batch(6, 16)

    def f(logits, labels, feats, kernel):
        return jnp.sum(pmm_jax.pmm_penalty(logits, labels, feats, kernel, class_axis_name="model"))

    with pytest.raises(ValueError, match=r"this device's slice of the classes"):
        _run_model_axis(f, logits, labels, feats, kernel, specs=(P(None, "model"), P(), P(), P()))


def test_labels_varying_over_the_class_axis_is_an_error():
    logits, labels, feats, kernel = batch(7, 16)

    def f(logits, labels, feats, kernel):
        return jnp.sum(pmm_jax.pmm_penalty(logits, labels, feats, kernel, class_axis_name="model"))

    # Each device along "model" gets other rows (4 of them) and a slice of the classes.
    mesh = mesh_of((4,))
    fn = jax.shard_map(
        f,
        mesh=mesh,
        in_specs=(P(None, "model"), P("model"), P("model"), P(None, "model")),
        out_specs=P(),
    )
    with pytest.raises(ValueError, match=r"same examples"):
        fn(
            put(mesh, logits[:4], None, "model"),
            put(mesh, labels, "model"),
            put(mesh, feats, "model"),
            put(mesh, kernel, None, "model"),
        )


# --- jit over global arrays on 2-D meshes ------------------------------------------------------

LAYOUTS = [
    ((8,), P()),
    ((8,), P(None, "data")),  # the classes split over the batch axis
    ((8,), P("data", None)),  # FSDP
    ((2, 4), P(None, "model")),
    ((2, 4), P("model", None)),
    ((2, 4), P("data", None)),
    ((2, 4), P("data", "model")),
    ((2, 4), P()),
    ((4, 2), P(None, "model")),
    ((4, 2), P("model", None)),
    ((4, 2), P("data", "model")),
]


def _everything(kernel, feats, logits, labels, where, reduction="official", base="ce"):
    """Values and gradients of all four functions, in one program."""

    def penalty(kernel, feats):
        pen = pmm_jax.pmm_penalty(logits, labels, feats, kernel, where=where)
        return jnp.sum(pen * WEIGHTS), pen

    def loss(kernel, feats, logits):
        return pmm_jax.pmm_loss(
            logits,
            labels,
            feats,
            kernel,
            alpha=0.05,
            where=where,
            penalty_reduction=reduction,
            base_loss=BASES[base],
        )

    pen_g, pen = jax.grad(penalty, (0, 1), has_aux=True)(kernel, feats)
    (total, parts), loss_g = jax.value_and_grad(loss, (0, 1, 2), has_aux=True)(
        kernel, feats, logits
    )
    margins = pmm_jax.pairwise_margins(logits, labels, kernel, where=where)
    return {
        "penalty": pen,
        "penalty_grads": pen_g,
        "loss": total,
        "parts": parts,
        "loss_grads": loss_g,
        "margins": margins,
        "competitors": pmm_jax.competitor_classes(logits, labels),
    }


def _check_like_unsharded(got, want):
    np.testing.assert_array_equal(got["competitors"], want["competitors"])
    for name in ("penalty", "margins", "loss"):
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6, err_msg=name)
    for name, value in want["parts"].items():
        np.testing.assert_allclose(got["parts"][name], value, rtol=1e-5, atol=1e-7, err_msg=name)
    for group in ("penalty_grads", "loss_grads"):
        for i, (a, b) in enumerate(zip(got[group], want[group], strict=True)):
            scale = float(np.max(np.abs(b))) or 1.0
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * scale, err_msg=f"{group}{i}")


def _jit_on_mesh(shape, kernel_spec, kind, seed=8, k=40, **kw):
    logits, labels, feats, kernel = batch(seed, k)
    where = uneven_where()
    want = _everything(kernel, feats, logits, labels, where, **kw)
    names = ("data",) if len(shape) == 1 else ("data", "model")
    mesh = jax.make_mesh(shape, names, axis_types=(kind,) * len(shape))
    classes = kernel_spec[1] if len(kernel_spec) > 1 and kernel_spec[1] != "data" else None
    args = (
        put(mesh, kernel, *kernel_spec),
        put(mesh, feats, "data"),
        put(mesh, logits, "data", classes),
        put(mesh, labels, "data"),
        put(mesh, where, "data"),
    )
    fn = jax.jit(functools.partial(_everything, **kw))
    got = fn(*args)
    _check_like_unsharded(got, want)
    return got, args


@pytest.mark.parametrize("kind", [AxisType.Explicit, AxisType.Auto], ids=["explicit", "auto"])
@pytest.mark.parametrize(("shape", "kernel_spec"), LAYOUTS, ids=str)
def test_jit_on_mesh_equals_unsharded(shape, kernel_spec, kind):
    got, _ = _jit_on_mesh(shape, kernel_spec, kind)
    if kind == AxisType.Explicit:  # the gradients are sharded like the kernel
        pad = lambda spec: tuple(spec) + (None,) * (2 - len(spec))
        for grad in (got["loss_grads"][0], got["penalty_grads"][0]):
            assert pad(jax.typeof(grad).sharding.spec) == pad(kernel_spec)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("base", sorted(BASES))
def test_explicit_jit_reductions_and_base_losses(reduction, base):
    _jit_on_mesh((2, 4), P(None, "model"), AxisType.Explicit, reduction=reduction, base=base)


@pytest.mark.parametrize("kernel_spec", [P("data", "model"), P("data", None)], ids=str)
def test_explicit_jit_stop_radius_gradient_and_bitwise_reproducible(kernel_spec):
    logits, labels, feats, kernel = batch(11, 160)
    where = uneven_where()

    def f(kernel, feats):
        pen = pmm_jax.pmm_penalty(
            logits, labels, feats, kernel, where=where, stop_radius_gradient=True
        )
        return jnp.sum(pen * WEIGHTS)

    want = jax.grad(f, (0, 1))(kernel, feats)
    mesh = mesh_of((4, 2))
    grad = jax.jit(jax.grad(f, (0, 1)))
    args = (put(mesh, kernel, *kernel_spec), put(mesh, feats, "data"))
    first = jax.tree.map(np.asarray, grad(*args))
    for got, ref in zip(first, want, strict=True):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * float(np.max(np.abs(ref))))
    np.testing.assert_array_equal(first[1], 0.0)  # no gradient through the radius
    for _ in range(2):  # bitwise the same, run after run
        for again, ref in zip(grad(*args), first, strict=True):
            np.testing.assert_array_equal(np.asarray(again), ref)


def test_explicit_jit_with_a_custom_base_loss_over_class_sharded_logits():
    """Evaluated on the global arrays (XLA partitions it), the rest class-parallel."""
    logits, labels, feats, kernel = batch(9, 40)
    mine = lambda lg, y: jnp.mean(jnp.square(lg), axis=-1) + 0.0 * y

    def f(kernel, feats, logits, labels):
        return pmm_jax.pmm_loss(logits, labels, feats, kernel, alpha=0.1, base_loss=mine)[0]

    want = jax.value_and_grad(f, (0, 1, 2))(kernel, feats, logits, labels)
    mesh = mesh_of((2, 4))
    got = jax.jit(jax.value_and_grad(f, (0, 1, 2)))(
        put(mesh, kernel, None, "model"),
        put(mesh, feats, "data"),
        put(mesh, logits, "data", "model"),
        put(mesh, labels, "data"),
    )
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_explicit_jit_logits_computed_from_the_sharded_kernel():
    """The usual step: logits = features @ kernel inside the differentiated function."""
    _, labels, feats, kernel = batch(10, 40)

    def f(kernel, feats, labels):
        return pmm_jax.pmm_loss(feats @ kernel, labels, feats, kernel, alpha=0.1)[0]

    want = jax.value_and_grad(f, (0, 1))(kernel, feats, labels)
    for shape in ((2, 4), (4, 2)):
        mesh = mesh_of(shape)
        for spec in (P(None, "model"), P("data", "model"), P("model", None)):
            got = jax.jit(jax.value_and_grad(f, (0, 1)))(
                put(mesh, kernel, *spec), put(mesh, feats, "data"), put(mesh, labels, "data")
            )
            for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=str(spec))


def test_readme_example_runs_and_both_forms_agree_with_one_device():
    """The README's sharded-heads example, executed as written."""
    import pathlib

    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    code = readme.split("<!-- sharded-heads-example -->\n```python\n", 1)[1].split("```", 1)[0]
    env = {}
    exec(compile(code, "README.md", "exec"), env)  # our own README, as written

    def loss_fn(kernel, feats, labels):
        logits = feats @ kernel
        return pmm_jax.pmm_loss(logits, labels, feats, kernel, alpha=1e-3)[0]

    host = [np.asarray(env[name]) for name in ("kernel", "feats", "labels")]
    want, want_g = jax.value_and_grad(loss_fn, (0, 1))(*map(jnp.asarray, host))
    assert str(jax.typeof(env["g_kernel"])) == "float32[32,4096@model]"
    for loss, g_kernel, g_feats in (
        (env["loss"], env["g_kernel"], env["g_feats"]),
        (env["loss2"], env["g_kernel2"], env["g_feats2"]),
    ):
        np.testing.assert_allclose(loss, want, rtol=1e-5)
        np.testing.assert_allclose(g_kernel, want_g[0], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(g_feats, want_g[1], rtol=1e-4, atol=1e-6)
