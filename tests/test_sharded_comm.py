"""What a sharded head communicates: read from the compiled program, O(B*d), never k.

With B=16, d=8, k=4096 on 8 fake CPU devices, a class-sharded kernel holds k/n = 512 to
2048 classes per device. Every collective of the penalty's and the loss's forward and
backward program (values, gradients with respect to the kernel, the features and the
logits) must move arrays whose dimensions all stay below k/n, each at most 2*B*d elements
(the largest legitimate one is the [d, B] pair difference, or XLA's [2B, d] rows). The
same check flags the form that all-gathers the kernel, so it can fail.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import pmm_jax
from experiments.bench.sharded_head import collectives, largest_dim, summarize

B, D, K = 16, 8, 4096


def _inputs():
    rng = np.random.default_rng(0)
    feats = jnp.asarray(rng.normal(size=(B, D)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(D, K)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, K, B), jnp.int32)
    return feats @ kernel, labels, feats, kernel, jnp.arange(B) % 3 != 0


def _assert_o_b_d(fn, *args, k_local):
    found = collectives(jax.jit(fn).lower(*args).compile().as_text(), jax.device_count())
    assert found, "no collective at all: the check would see nothing"
    assert largest_dim(found) < k_local, summarize(found)
    biggest = max(int(np.prod(s)) for c in found for _, s in c["operands"] + c["results"])
    assert biggest <= 2 * B * D, summarize(found)
    return found


def _grads(class_axes=None, axis_name=None, gather=False):
    """Forward + backward of the penalty and of the loss (all three gradients)."""
    kw = dict(axis_name=axis_name, class_axis_name=class_axes)

    def penalty(kernel, feats, logits, labels, where):
        if gather:  # the form to avoid: the whole kernel and logits on every device
            kernel = lax.all_gather(kernel, "model", axis=1, tiled=True)
            logits = lax.all_gather(logits, "model", axis=1, tiled=True)
            pen = pmm_jax.pmm_penalty(
                logits, labels, feats, kernel, where=where, axis_name=axis_name
            )
        else:
            pen = pmm_jax.pmm_penalty(logits, labels, feats, kernel, where=where, **kw)
        return jnp.sum(pen)

    def loss(kernel, feats, logits, labels, where):
        return pmm_jax.pmm_loss(
            logits,
            labels,
            feats,
            kernel,
            alpha=0.1,
            where=where,
            penalty_reduction="official",
            **kw,
        )[0]

    def both(kernel, feats, logits, labels, where):
        # Values as [1] arrays: per data device they are shares (or partial sums).
        value, grads = jax.value_and_grad(penalty, (0, 1))(kernel, feats, logits, labels, where)
        out = (value[None], grads)
        if gather:
            return out
        value, grads = jax.value_and_grad(loss, (0, 1, 2))(kernel, feats, logits, labels, where)
        return out, (value[None], grads)

    return both


@pytest.mark.parametrize("check_vma", [True, False])
@pytest.mark.parametrize("shape", [(2, 4), (4, 2), (8,)])
def test_class_parallel_shard_map_moves_no_k_sized_array(shape, check_vma):
    logits, labels, feats, kernel, where = _inputs()
    names = ("model",) if len(shape) == 1 else ("data", "model")
    mesh = jax.make_mesh(shape, names, axis_types=(AxisType.Explicit,) * len(shape))
    data = "data" if "data" in names else None
    rows = P(data)
    fn = jax.shard_map(
        _grads(class_axes="model", axis_name=data),
        mesh=mesh,
        in_specs=(P(None, "model"), rows, P(data, "model"), rows, rows),
        out_specs=(
            (rows, (P(None, "model"), rows)),
            (rows, (P(None, "model"), rows, P(data, "model"))),
        ),
        check_vma=check_vma,
    )
    put = lambda x, *s: jax.device_put(x, NamedSharding(mesh, P(*s)))
    args = (
        put(kernel, None, "model"),
        put(feats, data),
        put(logits, data, "model"),
        put(labels, data),
        put(where, data),
    )
    _assert_o_b_d(fn, *args, k_local=K // shape[-1])


KERNEL_SPECS = [P(None, "model"), P("model", None), P("data", "model"), P("data", None)]


@pytest.mark.parametrize("kind", [AxisType.Explicit, AxisType.Auto], ids=["explicit", "auto"])
@pytest.mark.parametrize("kernel_spec", KERNEL_SPECS, ids=str)
@pytest.mark.parametrize("shape", [(2, 4), (4, 2)])
def test_jit_on_a_2d_mesh_moves_no_k_sized_array(shape, kernel_spec, kind):
    """Explicit: the library's class-parallel route. Auto: XLA's own choice (see README)."""
    logits, labels, feats, kernel, where = _inputs()
    mesh = jax.make_mesh(shape, ("data", "model"), axis_types=(kind, kind))
    put = lambda x, *s: jax.device_put(x, NamedSharding(mesh, P(*s)))
    args = (
        put(kernel, *kernel_spec),
        put(feats, "data"),
        put(logits, "data", kernel_spec[1]),
        put(labels, "data"),
        put(where, "data"),
    )
    _assert_o_b_d(_grads(), *args, k_local=K // shape[1])


def test_the_check_flags_an_all_gathered_kernel():
    logits, labels, feats, kernel, where = _inputs()
    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
    fn = jax.shard_map(
        _grads(axis_name="data", gather=True),
        mesh=mesh,
        in_specs=(P(None, "model"), P("data"), P("data", "model"), P("data"), P("data")),
        out_specs=(P("data"), (P(None, "model"), P("data"))),
        check_vma=False,
    )
    put = lambda x, *s: jax.device_put(x, NamedSharding(mesh, P(*s)))
    args = (
        put(kernel, None, "model"),
        put(feats, "data"),
        put(logits, "data", "model"),
        put(labels, "data"),
        put(where, "data"),
    )
    with pytest.raises(AssertionError):
        _assert_o_b_d(fn, *args, k_local=K // 4)


HLO = "\n".join(
    [
        "ENTRY %main {",
        "  %p0 = f32[8,512]{1,0} parameter(0)",
        "  %p1 = s32[16]{0} parameter(1)",
        "  %all-gather = f32[8,2048]{1,0} all-gather(%p0), channel_id=1,"
        " replica_groups=[2,4]<=[8], dimensions={1}",
        "  %all-reduce = (f32[8,16]{1,0}, s32[16]{0}) all-reduce(%x, %p1),"
        " replica_groups={{0,1},{2,3},{4,5},{6,7}}, to_apply=%add",
        "  %rs = f32[4]{0} reduce-scatter(%y),"
        " replica_groups=mesh['axis_0'=2,'axis_1'=4] {'axis_1'}, dimensions={0}",
        "  %x = f32[8,16]{1,0} add(%p0, %p0)",
        "  %y = f32[16]{0} add(%p1, %p1)",
        "  ROOT %cp = pred[3]{0} collective-permute(%z), source_target_pairs={{0,1}}",
        "}",
    ]
)


def test_the_hlo_parser():
    found = collectives(HLO, num_devices=8)
    assert [c["op"] for c in found] == [
        "all-gather",
        "all-reduce",
        "reduce-scatter",
        "collective-permute",
    ]
    gather, reduce, scatter, permute = found
    assert gather["operands"] == [("f32", (8, 512))] and gather["results"] == [("f32", (8, 2048))]
    assert gather["group"] == 4 and gather["bytes"] == 8 * 2048 * 4
    assert gather["ring_bytes"] == pytest.approx(0.75 * 8 * 2048 * 4)
    assert reduce["group"] == 2 and reduce["bytes"] == (8 * 16 + 16) * 4
    assert reduce["ring_bytes"] == pytest.approx(reduce["bytes"])  # 2 (n-1)/n = 1 for n=2
    assert scatter["group"] == 4
    assert permute["bytes"] == 3 and permute["ring_bytes"] == 3
    assert largest_dim(found) == 2048
    summary = summarize(found)
    assert summary["collectives"] == 4 and summary["largest"]["op"] == "all-gather"
