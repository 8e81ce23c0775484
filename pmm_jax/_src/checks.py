"""Input checks: cheap trace-time checks and an opt-in checked mode.

Two kinds of check, because jit can only see shapes and dtypes:

* Trace-time (always on, free at run time): ranks, dtypes, a shared batch size,
    ``kernel.shape == (d, k)`` and ``k >= 2``. They run while JAX traces the
    function, so they raise a Python ``TypeError`` / ``ValueError`` that names the
    argument and the shapes, under ``jit``, ``pmap`` and ``shard_map`` alike. Under
    ``class_axis_name`` the shapes are this device's: ``k`` is the local class count
    (``kernel.shape[1] == logits.shape[1]``, at least 1; ``k >= 2`` over the axis),
    and labels are global ids, so they may exceed it.
* Values (opt-in): labels outside ``[0, k)`` and NaN/Inf in the inputs cannot be
    seen at trace time (with a class-sharded head, check the global batch: ``k`` is
    the ``logits`` given). :func:`validate_batch` checks them with
    ``jax.experimental.checkify``: call it eagerly, or inside a function that you
    wrap with ``checkify.checkify`` (then call ``err.throw()``). Calling it inside a
    plain ``jax.jit`` without ``checkify`` is an error, by checkify's design.

Without the checked mode, out-of-range labels are *not* detected under jit:
gathers clamp them, and the result is silently wrong.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify


def _dtype_of(x, name: str = "input") -> np.dtype:
    try:
        return np.dtype(jnp.result_type(x))
    except (TypeError, ValueError):
        pass
    try:  # Python lists and tuples: the dtype numpy would give them
        return np.asarray(x).dtype
    except (TypeError, ValueError) as e:
        raise TypeError(
            f"`{name}` must be an array (jax or numpy) or a nested list of numbers of one "
            f"shape; got {type(x).__name__} that cannot be converted ({e})."
        ) from None


def _shape_of(x) -> tuple[int, ...]:
    return tuple(np.shape(x))


def _check_dtype_kind(name: str, x, kind, what: str) -> None:
    dtype = _dtype_of(x, name)
    if not jnp.issubdtype(dtype, kind):
        raise TypeError(f"`{name}` must {what.format(dtype=dtype, shape=_shape_of(x))}")


def check_floating(name: str, x) -> None:
    """Raises ``TypeError`` unless ``x`` has a floating dtype."""
    _check_dtype_kind(
        name,
        x,
        jnp.floating,
        "have a floating dtype (float32, bfloat16, float16, ...); got {dtype} with shape {shape}.",
    )


def check_integer(name: str, x) -> None:
    """Raises ``TypeError`` unless ``x`` has an integer dtype."""
    _check_dtype_kind(
        name,
        x,
        jnp.integer,
        "hold integer class indices (int32/int64); got dtype {dtype} with shape {shape}. "
        "One-hot labels are not accepted: pass `labels.argmax(-1)`.",
    )


def check_rank(name: str, x, rank: int, layout: str) -> None:
    """Raises ``ValueError`` unless ``x`` has the given rank."""
    shape = _shape_of(x)
    if len(shape) != rank:
        raise ValueError(
            f"`{name}` must have rank {rank} ({layout}); got shape {shape} (rank {len(shape)})."
        )


def check_logits_labels(logits, labels, *, class_parallel: bool = False) -> tuple[int, int]:
    """Checks ``logits: float[B, k]`` and ``labels: int[B]``; returns ``(B, k)``.

    ``class_parallel``: the logits are this device's slice of the classes (under
    ``class_axis_name``), so one local class is enough (the global count is checked where
    the axis size is known) and labels are global ids, possibly ``>= k``.
    """
    check_floating("logits", logits)
    check_rank("logits", logits, 2, "[batch, num_classes]")
    check_integer("labels", labels)
    check_rank("labels", labels, 1, "[batch]")
    batch, k = _shape_of(logits)
    if _shape_of(labels)[0] != batch:
        raise ValueError(
            f"`labels` and `logits` must share the batch size: labels {_shape_of(labels)}, "
            f"logits {_shape_of(logits)}."
        )
    if class_parallel and k < 1:
        raise ValueError(
            f"`logits` has no class on this device (shape {_shape_of(logits)}): under "
            "`class_axis_name` each device needs at least one class."
        )
    if not class_parallel and k < 2:
        raise ValueError(
            f"PMM needs at least 2 classes (a true class and a competitor); `logits` has "
            f"shape {_shape_of(logits)}, i.e. k={k}."
        )
    return batch, k


def check_features(features, batch: int | None = None) -> int:
    """Checks ``features: float[B, d]`` (and ``B`` if given); returns ``d``."""
    check_floating("features", features)
    check_rank("features", features, 2, "[batch, feature_dim]")
    if batch is not None and _shape_of(features)[0] != batch:
        raise ValueError(
            f"`features` and `logits` must share the batch size: features "
            f"{_shape_of(features)}, batch size {batch}."
        )
    return _shape_of(features)[1]


def check_labels(labels, batch: int) -> None:
    """Checks ``labels: int[B]`` against the batch size ``B`` (of ``features``)."""
    check_integer("labels", labels)
    check_rank("labels", labels, 1, "[batch]")
    if _shape_of(labels)[0] != batch:
        raise ValueError(
            f"`labels` and `features` must share the batch size: labels {_shape_of(labels)}, "
            f"batch size {batch}."
        )


def check_layer_features(features, batch: int | None = None, name: str = "features") -> int:
    """Checks a layer's output ``float[B, ...]`` (any trailing shape); returns ``B``."""
    check_floating(name, features)
    shape = _shape_of(features)
    if not shape:
        raise ValueError(f"`{name}` must have a batch axis, [batch, ...]; got a scalar.")
    if batch is not None and shape[0] != batch:
        raise ValueError(
            f"`{name}` and `logits` must share the batch size: {name} {shape}, batch size {batch}."
        )
    return shape[0]


def check_layer_output(out, features_shape: tuple, name: str = "fn") -> int:
    """Checks that ``fn(features)`` is ``float[B, k]`` logits of the features' batch.

    Returns ``k``. ``name`` is the function's name in the error (``"fn"``).
    """
    if isinstance(out, (tuple, list, dict)):
        raise TypeError(
            f"`{name}` must return the logits, one array [batch, num_classes]; "
            f"`{name}(features)` returned a {type(out).__name__}. If it returns (logits, aux), "
            f"wrap it: lambda h: {name}(h)[0]."
        )
    try:
        dtype = np.dtype(jnp.result_type(out))
    except (TypeError, ValueError):
        raise TypeError(
            f"`{name}` must return the logits, one array [batch, num_classes]; got "
            f"{type(out).__name__}."
        ) from None
    shape = _shape_of(out)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"`{name}(features)` must return floating logits; got dtype {dtype} with shape {shape}."
        )
    batch = features_shape[0]
    if len(shape) != 2 or shape[0] != batch:
        raise ValueError(
            f"`{name}(features)` must return logits of shape [batch, num_classes] = "
            f"({batch}, k), with the batch of `features` {tuple(features_shape)}; got {shape}. "
            f"`{name}` maps the layer's features to the logits, row by row."
        )
    if shape[1] < 2:
        raise ValueError(
            f"PMM needs at least 2 classes; `{name}(features)` has shape {shape}, i.e. "
            f"k={shape[1]}."
        )
    return shape[1]


def check_kernel(kernel, dim: int | None, num_classes: int, *, class_parallel=False) -> None:
    """Checks ``kernel: float[d, k]`` in the Flax ``nn.Dense`` layout.

    Under ``class_axis_name`` (``class_parallel``) ``k`` is the local class count: the
    kernel's and the logits' slices must match.
    """
    check_floating("kernel", kernel)
    check_rank("kernel", kernel, 2, "[feature_dim, num_classes], the flax Dense layout")
    shape = _shape_of(kernel)
    if shape[1] != num_classes or (dim is not None and shape[0] != dim):
        want = f"({dim if dim is not None else 'd'}, {num_classes})"
        hint = ""
        if dim is not None and shape == (num_classes, dim):
            hint = " It looks transposed (PyTorch nn.Linear stores [k, d]); pass `kernel.T`."
        elif class_parallel:
            hint = (
                " Under `class_axis_name` both are this device's slice of the classes: pass "
                "kernel[:, classes_local] with logits[:, classes_local] (shard_map in_specs "
                "P(None, axis) for the kernel and P(batch, axis) for the logits)."
            )
        raise ValueError(
            f"`kernel` must have shape {want} = (features.shape[-1], logits.shape[-1]); got "
            f"{shape}.{hint}"
        )


def check_where(where, batch: int) -> None:
    """Checks the optional mask ``where: bool[B]``."""
    if where is None:
        return
    if _dtype_of(where, "where") != np.bool_:
        raise TypeError(
            f"`where` must be a boolean mask of shape ({batch},) (True = real example); got "
            f"dtype {_dtype_of(where, 'where')} with shape {_shape_of(where)}."
        )
    if _shape_of(where) != (batch,):
        raise ValueError(
            f"`where` must have shape ({batch},) (one flag per example); got {_shape_of(where)}."
        )


def validate_batch(
    logits, labels, *, features=None, kernel=None, bias=None, where=None, num_rows: int = 8
) -> None:
    """Value checks that jit cannot do at trace time (the checked mode).

    Checks, on the rows selected by ``where`` (all rows by default), that labels lie
    in ``[0, k)`` and that ``logits``, ``features`` and ``kernel`` are finite. With
    ``bias`` (and ``features`` and ``kernel``), also that the logits are those of
    this head, ``logits ~ features @ kernel + bias``, on ``num_rows`` evenly spaced
    rows: this catches a kernel passed transposed when ``d == k`` (which no shape
    check can), a kernel of another layer, or features taken after the head.
    Shapes and dtypes are checked too, as in every public function.

    Use it eagerly, where it raises at once::

        pmm_jax.validate_batch(logits, labels, features=feats, kernel=kernel)

    or inside a jitted function wrapped with ``checkify``::

        from jax.experimental import checkify

        def loss_fn(logits, labels, feats, kernel):
            pmm_jax.validate_batch(logits, labels, features=feats, kernel=kernel)
            return pmm_jax.pmm_penalty(logits, labels, feats, kernel).sum()

        err, value = jax.jit(checkify.checkify(loss_fn))(logits, labels, feats, kernel)
        err.throw()  # raises JaxRuntimeError naming the failed check

    Args:
        logits: ``float[B, k]`` scores.
        labels: ``int[B]`` class indices.
        features: optional ``float[B, d]`` penultimate features.
        kernel: optional ``float[d, k]`` last-layer kernel.
        bias: optional ``float[k]`` last-layer bias, or ``0.0`` for a head without
          one: turns on the logits check. Tolerance, per entry: ``|logits - features
          @ kernel - bias| <= rtol * (|features| @ |kernel| + |bias|) + 1e-6``, with
          ``rtol`` 2e-3 for float32 inputs (TF32 matmuls on GPUs) and 2e-2 for
          bf16/f16 ones; a transposed or foreign kernel misses it by ~``sqrt(2 / d)``.
        where: optional ``bool[B]`` mask of real examples.
        num_rows: how many rows the logits check recomputes (at most ``B``).

    Raises:
        TypeError, ValueError: wrong dtypes or shapes (at trace time).
        jax.experimental.checkify.JaxRuntimeError: a value check failed (eagerly, or
            from ``err.throw()`` under ``checkify``).
    """
    batch, k = check_logits_labels(logits, labels)
    check_where(where, batch)
    dim = None
    if features is not None:
        dim = check_features(features, batch)
    if kernel is not None:
        check_kernel(kernel, dim, k)
    if batch == 0:
        return  # an empty batch has no values to check
    valid = jnp.ones((batch,), bool) if where is None else jnp.asarray(where)
    labels = jnp.asarray(labels)
    bad = valid & ((labels < 0) | (labels >= k))
    checkify.check(
        ~jnp.any(bad),
        "`labels` must lie in [0, {k}); first bad row {row} holds {value}",
        k=jnp.asarray(k),
        row=jnp.argmax(bad),
        value=labels[jnp.argmax(bad)],
    )
    for name, rows in (("logits", logits), ("features", features)):
        if rows is None:
            continue
        ok = jnp.all(jnp.isfinite(jnp.asarray(rows)), axis=-1) | ~valid  # masked rows pass
        checkify.check(jnp.all(ok), f"`{name}` has NaN/Inf in row {{row}}", row=jnp.argmin(ok))
    if kernel is not None:
        checkify.check(jnp.all(jnp.isfinite(jnp.asarray(kernel))), "`kernel` has NaN/Inf entries")
    if bias is not None:
        if features is None or kernel is None:
            raise ValueError(
                "`bias` checks the logits against `features @ kernel + bias`: "
                "pass `features` and `kernel` too."
            )
        _check_head_logits(logits, features, kernel, bias, valid, num_rows)


def _check_head_logits(logits, features, kernel, bias, valid, num_rows: int) -> None:
    """``logits ~ features @ kernel + bias`` on ``num_rows`` evenly spaced valid rows."""
    batch, k = _shape_of(logits)
    if _shape_of(bias) not in ((), (k,)):
        raise ValueError(f"`bias` must be float[{k}] (or 0.0); got shape {_shape_of(bias)}.")
    bias = jnp.broadcast_to(jnp.asarray(bias, jnp.float32), (k,))
    low = any(np.dtype(_dtype_of(x)).itemsize < 4 for x in (logits, features, kernel))
    rtol = 2e-2 if low else 2e-3
    rows = np.unique(np.linspace(0, batch - 1, min(max(num_rows, 1), batch)).astype(int))
    f = jnp.asarray(features)[rows].astype(jnp.float32)
    w = jnp.asarray(kernel).astype(jnp.float32)
    got = jnp.asarray(logits)[rows].astype(jnp.float32)
    want = jnp.matmul(f, w, precision="highest") + bias
    scale = jnp.matmul(jnp.abs(f), jnp.abs(w), precision="highest") + jnp.abs(bias)
    ok = (jnp.abs(got - want) <= rtol * scale + 1e-6) | ~jnp.asarray(valid)[rows, None]
    row_ok = jnp.all(ok, axis=-1)
    checkify.check(
        jnp.all(row_ok),
        "`logits` are not `features @ kernel + bias` (row {row}): the kernel is not the "
        "head's that produced the logits -- passed transposed ([k, d] of a square head, "
        "e.g. PyTorch's Linear.weight: pass its .T), or of another layer, or the features "
        "are not the head's input",
        row=jnp.asarray(rows)[jnp.argmin(row_ok)],
    )
