"""The radius and the composed loss under pmap and shard_map on 8 fake CPU devices."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import pmm_jax
from tests.conftest import NUM_DEVICES
from tests.test_penalty import make_batch

B = 8 * NUM_DEVICES


# k=10 takes the kernel gradient's dense path, k=40 its sort-and-scan path.
KS = [10, 40]


def global_batch(seed=0, k=10):
    logits, labels, feats, kernel = make_batch(seed, B, 6, k)
    # The max-norm example sits on one device only (device 5's shard).
    feats = feats.at[5 * 8 + 3].multiply(10.0)
    logits = feats @ kernel
    return logits, labels, feats, kernel


def shard(x):
    return x.reshape(NUM_DEVICES, -1, *x.shape[1:])


def test_eight_devices_exist():
    assert jax.device_count() == NUM_DEVICES


def _objective(logits, labels, feats, kernel, axis_name):
    return jnp.sum(
        pmm_jax.pmm_penalty(logits, labels, feats, kernel, axis_name=axis_name)
        * jnp.arange(1.0, 1.0 + labels.shape[0])
    )


def test_pmap_radius_and_penalty_equal_global():
    logits, labels, feats, kernel = global_batch()
    want_r = pmm_jax.feature_radius(feats)
    want = pmm_jax.pmm_penalty(logits, labels, feats, kernel)

    @functools.partial(jax.pmap, axis_name="batch", in_axes=(0, 0, 0, None))
    def per_device(logits, labels, feats, kernel):
        return (
            pmm_jax.feature_radius(feats, axis_name="batch"),
            pmm_jax.pmm_penalty(logits, labels, feats, kernel, axis_name="batch"),
            pmm_jax.feature_radius(feats),  # per-device radius, for contrast
        )

    r, pen, r_local = per_device(shard(logits), shard(labels), shard(feats), kernel)
    np.testing.assert_allclose(r, np.full(NUM_DEVICES, want_r), rtol=1e-6)
    np.testing.assert_allclose(pen.reshape(-1), want, rtol=1e-6)
    # The per-device radius differs on every device but the one with the max.
    assert np.sum(np.isclose(np.asarray(r_local), float(want_r))) == 1


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("per_device_radius", [False, True])
def test_pmap_gradients_equal_global(per_device_radius, k):
    logits, labels, feats, kernel = global_batch(1, k)
    axis = None if per_device_radius else "batch"
    want_gk, want_gf = jax.grad(_objective, (3, 2))(logits, labels, feats, kernel, None)

    @functools.partial(jax.pmap, axis_name="batch", in_axes=(0, 0, 0, None, 0))
    def grads(logits, labels, feats, kernel, offset):
        def local(kernel, feats):
            weights = offset + jnp.arange(1.0, 1.0 + labels.shape[0])
            pen = pmm_jax.pmm_penalty(logits, labels, feats, kernel, axis_name=axis)
            return jnp.sum(pen * weights)

        gk, gf = jax.grad(local, (0, 1))(kernel, feats)
        return jax.lax.psum(gk, "batch"), gf

    offsets = jnp.arange(NUM_DEVICES, dtype=jnp.float32) * 8
    gk, gf = grads(shard(logits), shard(labels), shard(feats), kernel, offsets)
    close_k = np.allclose(gk[0], want_gk, rtol=1e-5, atol=1e-4)
    close_f = np.allclose(gf.reshape(B, -1), want_gf, rtol=1e-5, atol=1e-4)
    if per_device_radius:  # the test must be able to fail
        assert not (close_k and close_f)
    else:
        np.testing.assert_allclose(gk[0], want_gk, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(gf.reshape(B, -1), want_gf, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("axis_type", [AxisType.Explicit, AxisType.Auto])
@pytest.mark.parametrize("check_vma", [True, False])
@pytest.mark.parametrize("k", KS)
def test_shard_map_gradients_equal_global(axis_type, check_vma, k):
    logits, labels, feats, kernel = global_batch(2, k)
    mesh = jax.make_mesh((NUM_DEVICES,), ("data",), axis_types=(axis_type,))
    put = lambda x: jax.device_put(x, NamedSharding(mesh, P("data")))
    kernel_r = jax.device_put(kernel, NamedSharding(mesh, P()))
    want_gk, want_gf = jax.grad(_objective, (3, 2))(logits, labels, feats, kernel, None)
    want_r = pmm_jax.feature_radius(feats)

    def local(logits, labels, feats, kernel):
        def f(kernel, feats):
            offset = jax.lax.axis_index("data") * labels.shape[0]
            weights = offset + jnp.arange(1.0, 1.0 + labels.shape[0])
            pen = pmm_jax.pmm_penalty(logits, labels, feats, kernel, axis_name="data")
            return jnp.sum(pen * weights)

        gk, gf = jax.grad(f, (0, 1))(kernel, feats)
        r = pmm_jax.feature_radius(feats, axis_name="data")
        # With check_vma the gradient of the replicated (invariant) kernel already
        # is the sum over devices (JAX inserts the psum); without it, sum here.
        return (gk if check_vma else jax.lax.psum(gk, "data")), gf, r[None]

    fn = jax.jit(
        jax.shard_map(
            local,
            mesh=mesh,
            in_specs=(P("data"), P("data"), P("data"), P()),
            out_specs=(P(), P("data"), P("data")),
            check_vma=check_vma,
        )
    )
    gk, gf, r = fn(put(logits), put(labels), put(feats), kernel_r)
    np.testing.assert_allclose(r, np.full(NUM_DEVICES, want_r), rtol=1e-6)
    np.testing.assert_allclose(gk, want_gk, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(gf, want_gf, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("axis_type", [AxisType.Explicit, AxisType.Auto])
@pytest.mark.parametrize("k", KS)
def test_jit_over_sharded_global_arrays_needs_no_axis_name(axis_type, k):
    logits, labels, feats, kernel = global_batch(3, k)
    mesh = jax.make_mesh((NUM_DEVICES,), ("data",), axis_types=(axis_type,))
    put = lambda x: jax.device_put(x, NamedSharding(mesh, P("data")))
    kernel_r = jax.device_put(kernel, NamedSharding(mesh, P()))

    def loss(kernel, feats, logits, labels):
        total, parts = pmm_jax.pmm_loss(logits, labels, feats, kernel, alpha=1e-3)
        return total, parts

    step = jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))
    (total, parts), (gk, gf) = step(kernel_r, put(feats), put(logits), put(labels))
    (w_total, w_parts), (w_gk, w_gf) = jax.value_and_grad(loss, (0, 1), has_aux=True)(
        kernel, feats, logits, labels
    )
    np.testing.assert_allclose(total, w_total, rtol=1e-6)
    np.testing.assert_allclose(parts["radius"], w_parts["radius"], rtol=1e-6)
    np.testing.assert_allclose(gk, w_gk, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gf, w_gf, rtol=1e-5, atol=1e-6)
    pen = jax.jit(pmm_jax.pmm_penalty)(put(logits), put(labels), put(feats), kernel_r)
    np.testing.assert_allclose(pen, pmm_jax.pmm_penalty(logits, labels, feats, kernel), rtol=1e-6)


REDUCTIONS = ["mean", "official", "sum"]


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_pmap_loss_share_pmean_equals_global(reduction):
    _logits, labels, feats, kernel = global_batch(4)
    # Uneven padding: each device masks a different number of rows.
    where = jnp.arange(B) % 8 < (jnp.arange(B) // 8) % 8 + 1
    kw = dict(alpha=1e-3, penalty_reduction=reduction)

    def single(kernel, feats):
        return pmm_jax.pmm_loss(feats @ kernel, labels, feats, kernel, where=where, **kw)

    (want, want_parts), want_g = jax.value_and_grad(single, (0, 1), has_aux=True)(kernel, feats)

    @functools.partial(jax.pmap, axis_name="batch", in_axes=(None, 0, 0, 0))
    def per_device(kernel, feats, labels, where):
        def f(kernel, feats):
            return pmm_jax.pmm_loss(
                feats @ kernel, labels, feats, kernel, where=where, axis_name="batch", **kw
            )

        (loss, parts), g = jax.value_and_grad(f, (0, 1), has_aux=True)(kernel, feats)
        return jax.lax.pmean((loss, parts), "batch"), jax.lax.pmean(g[0], "batch"), g[1]

    (loss, parts), gk, gf = per_device(kernel, shard(feats), shard(labels), shard(where))
    np.testing.assert_allclose(loss[0], want, rtol=1e-5)
    for name in want_parts:
        np.testing.assert_allclose(parts[name][0], want_parts[name], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(gk[0], want_g[0], rtol=1e-4, atol=1e-6)
    # Feature gradients are per example: the pmean'd loss's gradient is 1/D of each share's.
    np.testing.assert_allclose(gf.reshape(B, -1) / NUM_DEVICES, want_g[1], rtol=1e-4, atol=1e-6)


def _uneven_where():
    return jnp.arange(B) % 8 < (jnp.arange(B) // 8) % 8 + 1


@pytest.mark.parametrize("check_vma", [True, False])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_shard_map_loss_share_equals_global(reduction, check_vma):
    """Under shard_map each device's share, averaged, is the global loss and gradient."""
    _logits, labels, feats, kernel = global_batch(5)
    where = _uneven_where()
    kw = dict(alpha=1e-2, penalty_reduction=reduction)

    def single(kernel, feats):
        return pmm_jax.pmm_loss(feats @ kernel, labels, feats, kernel, where=where, **kw)[0]

    want, (want_gk, want_gf) = jax.value_and_grad(single, (0, 1))(kernel, feats)
    mesh = jax.make_mesh((NUM_DEVICES,), ("data",), axis_types=(AxisType.Explicit,))

    def local(kernel, feats, labels, where):
        def f(kernel, feats):
            loss, _ = pmm_jax.pmm_loss(
                feats @ kernel, labels, feats, kernel, where=where, axis_name="data", **kw
            )
            return loss

        loss, (gk, gf) = jax.value_and_grad(f, (0, 1))(kernel, feats)
        # With check_vma the replicated kernel's gradient is already summed over
        # the devices (JAX's psum); without it, sum here. The pmean is sum / N.
        gk = gk if check_vma else jax.lax.psum(gk, "data")
        return jax.lax.pmean(loss, "data"), gk / NUM_DEVICES, gf / NUM_DEVICES

    fn = jax.jit(
        jax.shard_map(
            local,
            mesh=mesh,
            in_specs=(P(), P("data"), P("data"), P("data")),
            out_specs=(P(), P(), P("data")),
            check_vma=check_vma,
        )
    )
    put = lambda x: jax.device_put(x, NamedSharding(mesh, P("data")))
    loss, gk, gf = fn(
        jax.device_put(kernel, NamedSharding(mesh, P())), put(feats), put(labels), put(where)
    )
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    np.testing.assert_allclose(gk, want_gk, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(gf, want_gf, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("axis_type", [AxisType.Explicit, AxisType.Auto])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_sharded_jit_loss_equals_global(reduction, axis_type):
    _logits, labels, feats, kernel = global_batch(6)
    where = _uneven_where()
    mesh = jax.make_mesh((NUM_DEVICES,), ("data",), axis_types=(axis_type,))
    put = lambda x: jax.device_put(x, NamedSharding(mesh, P("data")))

    def f(kernel, feats, labels, where):
        return pmm_jax.pmm_loss(
            feats @ kernel,
            labels,
            feats,
            kernel,
            where=where,
            alpha=1e-2,
            penalty_reduction=reduction,
        )[0]

    grad = jax.value_and_grad(f, (0, 1))
    want, (want_gk, want_gf) = grad(kernel, feats, labels, where)
    kernel_r = jax.device_put(kernel, NamedSharding(mesh, P()))
    got, (gk, gf) = jax.jit(grad)(kernel_r, put(feats), put(labels), put(where))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(gk, want_gk, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(gf, want_gf, rtol=1e-5, atol=1e-7)
