"""PMM on a class-sharded head: time and bytes communicated, class-parallel vs all-gathered.

    python -m experiments.bench sharded-head --out sharded_head.json [--ks 32768,262144]

The penalty's forward + backward (``jax.value_and_grad`` of ``sum_i c_i R_i`` with
respect to the kernel and the features) at B=256, d=1024 on a ``(data=2, model=4)`` mesh
of fake CPU devices (8 by default, set before JAX starts), with the kernel sharded over
classes, ``P(None, "model")``, in four forms:

* ``class_parallel``: ``shard_map`` with ``class_axis_name="model"``, ``axis_name="data"``;
* ``all_gathered``: ``shard_map`` that all-gathers the kernel and the logits over
  ``"model"`` and runs the unsharded penalty (the gradient comes back by reduce-scatter);
* ``explicit_jit``: ``jax.jit`` over global arrays on an ``AxisType.Explicit`` mesh (the
  library routes it through the class-parallel form);
* ``auto_jit``: the same on an ``AxisType.Auto`` mesh (XLA chooses).

Bytes communicated are read from the compiled program (:func:`collectives`): every
collective's arrays, and a per-device estimate for ring algorithms
(all-reduce ``2 (n-1)/n S``, all-gather and reduce-scatter ``(n-1)/n S`` of the larger
array, all-to-all ``(n-1)/n S``, collective-permute ``S``). A form whose compiled program
would not fit in ``--max-gib`` of host memory (``memory_analysis``, summed over devices)
is compiled and counted but not run.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import time

COLLECTIVE_OPS = (
    "all-reduce",
    "all-gather",
    "reduce-scatter",
    "all-to-all",
    "ragged-all-to-all",
    "collective-permute",
    "collective-broadcast",
)
_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=\s*(?P<type>.+?)\s+"
    r"(?P<op>[a-z][a-z0-9\-]*)\((?P<args>[^)]*)\)(?P<attrs>.*)$"
)
_ARRAY = re.compile(r"\b(pred|[a-z]+\d+)\[([\d,]*)\]")
_BITS = {"pred": 8}


def _arrays(text: str) -> list[tuple[str, tuple[int, ...]]]:
    return [
        (dtype, tuple(int(n) for n in dims.split(",") if n)) for dtype, dims in _ARRAY.findall(text)
    ]


def _nbytes(array) -> int:
    dtype, dims = array
    bits = _BITS.get(dtype) or int(re.sub(r"\D", "", dtype) or 8)
    return math.prod(dims) * bits // 8


def _group_size(attrs: str, num_devices: int) -> int:
    mesh = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", attrs)
    if mesh:
        sizes = dict(re.findall(r"'([^']+)'=(\d+)", mesh.group(1)))
        return math.prod(int(sizes[a]) for a in re.findall(r"'([^']+)'", mesh.group(2)))
    iota = re.search(r"replica_groups=\[(\d+),(\d+)\]<=", attrs)
    if iota:
        return int(iota.group(2))
    listed = re.search(r"replica_groups=\{\{([\d,]*)\}", attrs)
    if listed:
        return len(listed.group(1).split(","))
    return num_devices


def collectives(hlo_text: str, num_devices: int = 1) -> list[dict]:
    """The collectives of a compiled HLO module (``compiled.as_text()``).

    Each as ``{"op", "operands", "results", "group", "bytes", "ring_bytes"}``: operand and
    result arrays as ``(dtype, dims)``, the size of its device groups, the bytes of its
    largest array and a per-device estimate of what a ring algorithm moves. ``-start``
    ops count once (their ``-done`` is skipped).
    """
    lines = [m for m in map(_INSTRUCTION.match, hlo_text.splitlines()) if m]
    types = {m["name"]: m["type"] for m in lines}
    found = []
    for m in lines:
        op = m["op"].removesuffix("-start")
        if op not in COLLECTIVE_OPS:
            continue
        operands = []
        for ref in re.findall(r"%?([\w.\-]+)", m["args"]):
            operands += _arrays(types.get(ref, ""))
        operands += _arrays(re.sub(r"%[\w.\-]+", "", m["args"]))  # inline operand types
        results = _arrays(m["type"])
        if m["op"].endswith("-start") and op == "all-gather" and len(results) > len(operands):
            results = results[len(operands) :]  # (operands, results) tuple of the async form
        n = _group_size(m["attrs"], num_devices)
        size = max(sum(map(_nbytes, operands)), sum(map(_nbytes, results)))
        share = (n - 1) / n if n > 1 else 0.0
        ring = {"all-reduce": 2 * share, "collective-permute": 1.0}.get(op, share) * size
        found.append(
            {
                "op": op,
                "operands": operands,
                "results": results,
                "group": n,
                "bytes": size,
                "ring_bytes": ring,
            }
        )
    return found


def summarize(found: list[dict]) -> dict:
    """Count, bytes and the largest collective of :func:`collectives`' list."""
    largest = max(found, key=lambda c: c["bytes"], default=None)
    return {
        "collectives": len(found),
        "bytes": int(sum(c["bytes"] for c in found)),
        "ring_bytes_per_device": int(sum(c["ring_bytes"] for c in found)),
        "largest": None
        if largest is None
        else {
            "op": largest["op"],
            "arrays": [f"{t}{list(d)}" for t, d in largest["operands"] + largest["results"]],
            "bytes": largest["bytes"],
        },
        "by_op": {
            op: sum(1 for c in found if c["op"] == op) for op in sorted({c["op"] for c in found})
        },
    }


def largest_dim(found: list[dict]) -> int:
    """The largest dimension of any array any collective moves (0 if none)."""
    dims = [d for c in found for _, shape in c["operands"] + c["results"] for d in shape]
    return max(dims, default=0)


# --- the four forms -----------------------------------------------------------------------


# The inputs' partition specs: kernel, features, labels, weights, logits.
_SPECS = (
    (None, "model"),
    ("data", None),
    ("data",),
    ("data",),
    ("data", "model"),
)


def _forms(mesh_shape, batch, dim, k, seed=0):
    """The four jitted forward + backward functions, each with a maker of its inputs.

    ``{name: (jitted, abstract_inputs, make_inputs)}``: the abstract inputs
    (``ShapeDtypeStruct`` with their shardings) compile without allocating anything;
    ``make_inputs()`` makes the arrays (the kernel block by block: 1 GiB at k=262,144,
    which drawing it whole on the devices would need several times over).
    """
    import jax
    from jax.sharding import AxisType
    from jax.sharding import PartitionSpec as P

    meshes = {
        kind: jax.make_mesh(mesh_shape, ("data", "model"), axis_types=(kind, kind))
        for kind in (AxisType.Explicit, AxisType.Auto)
    }
    explicit = _inputs_on(meshes[AxisType.Explicit], batch, dim, k, seed)
    forms = {}
    for name, gathered in (("class_parallel", False), ("all_gathered", True)):
        fn = jax.shard_map(
            _local_step(gathered),
            mesh=meshes[AxisType.Explicit],
            in_specs=tuple(P(*spec) for spec in _SPECS),
            out_specs=(P(), (P(None, "model"), P("data", None))),
        )
        forms[name] = (jax.jit(fn), *explicit)
    forms["explicit_jit"] = (jax.jit(_global_step), *explicit)
    auto = _inputs_on(meshes[AxisType.Auto], batch, dim, k, seed)
    forms["auto_jit"] = (jax.jit(_global_step), *auto)
    return forms


def _inputs_on(mesh, batch, dim, k, seed):
    """``(abstract, make)``: the inputs on ``mesh`` as ``ShapeDtypeStruct`` and a maker
    of the arrays (see :func:`_forms`)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    shapes = ((dim, k), (batch, dim), (batch,), (batch,), (batch, k))
    dtypes = (jnp.float32, jnp.float32, jnp.int32, jnp.float32, jnp.float32)
    shardings = [NamedSharding(mesh, P(*spec)) for spec in _SPECS]
    abstract = tuple(
        jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
        for shape, dtype, sharding in zip(shapes, dtypes, shardings, strict=True)
    )

    def make():
        rng = np.random.default_rng(seed)
        feats = rng.standard_normal((batch, dim), dtype=np.float32)
        labels = rng.integers(0, k, batch).astype(np.int32)
        weights = np.arange(1.0, 1.0 + batch, dtype=np.float32)

        def kernel_block(index):  # each device's columns, drawn on the host per block
            cols = index[1]
            start = cols.start or 0
            block = np.random.default_rng((seed, start)).standard_normal(
                (dim, (cols.stop or k) - start), dtype=np.float32
            )
            return block / np.float32(np.sqrt(dim))

        head = jax.jit(lambda f, w: f @ w, out_shardings=shardings[4])
        with jax.set_mesh(mesh):
            kernel = jax.make_array_from_callback((dim, k), shardings[0], kernel_block)
            host = (feats, labels, weights)
            feats, labels, weights = (
                jax.device_put(x, sh) for x, sh in zip(host, shardings[1:4], strict=True)
            )
            return kernel, feats, labels, weights, head(feats, kernel)

    return abstract, make


def _global_step(kernel, feats, labels, weights, logits):
    """The penalty's value and gradients over global arrays (the ``*_jit`` forms)."""
    import jax
    import jax.numpy as jnp

    import pmm_jax

    def objective(kernel, feats):
        pen = pmm_jax.pmm_penalty(logits, labels, feats, kernel)
        return jnp.sum(pen * weights)

    return jax.value_and_grad(objective, (0, 1))(kernel, feats)


def _local_step(gathered: bool):
    """The per-device step of the ``shard_map`` forms: class-parallel, or on the kernel
    and logits all-gathered over ``"model"`` (``gathered``)."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    import pmm_jax

    def step(kernel, feats, labels, weights, logits):
        def objective(kernel, feats):
            if gathered:
                full = lax.all_gather(kernel, "model", axis=1, tiled=True)
                scores = lax.all_gather(logits, "model", axis=1, tiled=True)
                pen = pmm_jax.pmm_penalty(scores, labels, feats, full, axis_name="data")
                # Each model device computed the whole value: count it once (the
                # all-gather's transpose sums the kernel gradients over "model").
                return lax.pmean(jnp.sum(pen * weights), "model")
            pen = pmm_jax.pmm_penalty(
                logits, labels, feats, kernel, axis_name="data", class_axis_name="model"
            )
            return jnp.sum(pen * weights)

        value, grads = jax.value_and_grad(objective, (0, 1))(kernel, feats)
        return lax.psum(value, "data"), grads

    return step


def _relative_error(got, want):
    """Largest ``|got - want|`` over ``max |want|``, per output, computed on the devices."""
    import jax
    import jax.numpy as jnp

    error = jax.jit(lambda a, b: jnp.max(jnp.abs(a - b)) / jnp.maximum(jnp.max(jnp.abs(b)), 1e-30))
    pairs = zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True)
    # On the reference's sharding (the auto form's mesh differs from the explicit one's).
    return max(float(error(jax.device_put(a, b.sharding), b)) for a, b in pairs)


def bench_sharded_head(
    ks=(32768, 262144),
    *,
    batch=256,
    dim=1024,
    mesh_shape=(2, 4),
    reps=5,
    max_gib=8.0,
    forms=("class_parallel", "all_gathered", "explicit_jit", "auto_jit"),
):
    """Rows ``{k, form, time_ms, collectives, bytes, ...}`` (see the module docstring).

    Each form is compiled from abstract inputs; those that fit in ``max_gib`` (its
    compiled program's arguments, outputs and scratch, summed over the devices) are run:
    their values and gradients are checked against the first one's (relative error in
    ``max_rel_error_vs``), then timed in interleaved repetitions.
    """
    import jax

    rows = []
    for k in ks:
        built = _forms(mesh_shape, batch, dim, k)
        compiled, k_rows = {}, {}
        for name in forms:
            fn, abstract, _ = built[name]
            row, program = _compile_form(fn, abstract, name, k, batch, dim, mesh_shape, max_gib)
            if program is not None:
                compiled[name] = program
            rows.append(row)
            k_rows[name] = row
        inputs = _inputs(built, compiled)
        _check_against_first(compiled, inputs, k_rows)
        _time_forms(compiled, inputs, k_rows, k, reps)
        del built, compiled, inputs
        jax.clear_caches()
    return rows


def _compile_form(fn, abstract, name, k, batch, dim, mesh_shape, max_gib):
    """``(row, program)``: one form compiled, its collectives counted and printed;
    ``program`` is None (and the row says why) where it would not fit in ``max_gib``."""
    num_devices = math.prod(mesh_shape)
    t0 = time.perf_counter()
    program = fn.lower(*abstract).compile()
    found = collectives(program.as_text(), num_devices)
    memory = program.memory_analysis()
    per_device = sum(
        getattr(memory, f, 0) or 0
        for f in ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes")
    )
    row = {
        "k": k,
        "batch": batch,
        "dim": dim,
        "mesh": {"data": mesh_shape[0], "model": mesh_shape[1]},
        "form": name,
        "compile_s": time.perf_counter() - t0,
        "memory_per_device_mib": per_device / 2**20,
        "largest_dim": largest_dim(found),
        **summarize(found),
        "time_ms": None,
    }
    if per_device * num_devices > max_gib * 2**30:
        row["not_run"] = (
            f"needs {per_device * num_devices / 2**30:.1f} GiB over {num_devices} "
            f"devices (> --max-gib {max_gib}); compiled and counted only"
        )
        program = None
    print(
        f"  k={k:>7} {name:15s} {row['collectives']:3d} collectives,"
        f" {row['bytes'] / 2**20:9.3f} MiB (ring/device"
        f" {row['ring_bytes_per_device'] / 2**20:9.3f} MiB), largest dim"
        f" {row['largest_dim']}, {row['memory_per_device_mib']:.0f} MiB/device"
        + (f" -- {row['not_run']}" if "not_run" in row else ""),
        flush=True,
    )
    return row, program


def _inputs(built, compiled) -> dict:
    """Each compiled form's input arrays, drawn once per mesh (forms on one mesh share them)."""
    inputs = {}
    for name in compiled:
        make = built[name][2]
        inputs[name] = next((v for n, v in inputs.items() if built[n][2] is make), None)
        inputs[name] = inputs[name] or make()
    return inputs


def _check_against_first(compiled, inputs, k_rows) -> None:
    """Each form's values and gradients against the first form's: ``max_rel_error_vs``."""
    reference = None
    for name, program in compiled.items():
        out = program(*inputs[name])
        if reference is None:
            reference = (name, out)
        else:
            k_rows[name]["max_rel_error_vs"] = {reference[0]: _relative_error(out, reference[1])}
        del out
    del reference


def _time_forms(compiled, inputs, k_rows, k, reps) -> None:
    """The compiled forms timed in interleaved repetitions, into their rows."""
    from experiments.bench.timing import time_interleaved

    timings = time_interleaved(
        {name: (lambda p=p, a=inputs[name]: p(*a)) for name, p in compiled.items()}, reps=reps
    )
    for name, t in timings.items():
        row = k_rows[name]
        row.update(time_ms=t["median_ms"], spread_ms=[t["p25_ms"], t["p75_ms"]], reps=t["reps"])
        print(f"  k={k:>7} {name:15s} {row['time_ms']:10.1f} ms", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m experiments.bench sharded-head", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument(
        "--ks", type=lambda t: tuple(int(x) for x in t.split(",")), default=(32768, 262144)
    )
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument(
        "--mesh", type=lambda t: tuple(int(x) for x in t.split(",")), default=(2, 4)
    )
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument(
        "--max-gib", type=float, default=8.0, help="run only forms that fit in this much memory"
    )
    args = parser.parse_args(argv)
    devices = math.prod(args.mesh)
    if "jax" not in sys.modules:  # fake CPU devices must be asked for before JAX starts
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}"
        ).strip()
    import jax

    from experiments.bench.timing import device_name, load_average, write_result

    if jax.device_count() < devices:
        raise SystemExit(f"need {devices} devices for mesh {args.mesh}; JAX sees {jax.devices()}")
    start = time.perf_counter()
    result = {
        "device": device_name(),
        "devices": jax.device_count(),
        "jax": jax.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "load_avg_start": load_average(),
        "command": "python -m experiments.bench sharded-head " + " ".join(argv or sys.argv[1:]),
        "rows": bench_sharded_head(
            args.ks,
            batch=args.batch,
            dim=args.dim,
            mesh_shape=args.mesh,
            reps=args.reps,
            max_gib=args.max_gib,
        ),
    }
    write_result(result, args.out, start)
    print(f"[bench] wrote {args.out} ({result['wall_s']:.0f} s)")
