"""Finding the classifier head in a params pytree, and the penalty from params.

Works on plain nested dicts (Flax linen ``variables`` or ``variables["params"]``,
haiku-style dicts), ``flax.core.FrozenDict`` and ``flax.nnx.State`` (whose leaves
are ``nnx.Variable`` objects) without importing Flax: any ``Mapping``-like node
with ``__getitem__`` and ``keys()`` is walked, and variable wrappers are
unwrapped through ``get_value()`` / ``.value``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from pmm_jax._src import checks
from pmm_jax._src.penalty import pmm_penalty

Array = jax.Array
_HeadPath = str | Sequence[str]  # private alias; public signatures spell it out


class HeadNotFoundError(LookupError):
    """No ``kernel`` at the given head path; the message lists the paths that exist."""


def _is_node(x) -> bool:
    return hasattr(x, "keys") and hasattr(x, "__getitem__")


def _unwrap(x):
    """An array from a leaf that may be an ``nnx.Variable`` / ``VariableState``."""
    if hasattr(x, "get_value"):
        return x.get_value()
    if not hasattr(x, "shape") and hasattr(x, "value"):
        return x.value
    return x


def _split(head: _HeadPath) -> tuple[str, ...]:
    if isinstance(head, str):
        parts = tuple(p for p in head.split("/") if p)
    else:
        parts = tuple(str(p) for p in head)
    if not parts:
        raise ValueError(
            f"`head` must name a path such as 'head' or ('params', 'head'); got {head!r}."
        )
    return parts


def _kernel_paths(tree, prefix=()) -> list[str]:
    """Every path below ``tree`` whose node holds a ``kernel`` leaf."""
    found = []
    if not _is_node(tree):
        return found
    keys = list(tree.keys())
    if "kernel" in keys and not _is_node(tree["kernel"]):
        found.append("/".join(prefix))
    for key in keys:
        found.extend(_kernel_paths(tree[key], (*prefix, str(key))))
    return found


def _walk(tree, path):
    node = tree
    for key in path:
        if not _is_node(node) or key not in node.keys():
            return None
        node = node[key]
    return node if _is_node(node) and "kernel" in node.keys() else None


def find_head(params, head: str | Sequence[str] = "head") -> tuple[Array, Array | None]:
    """The classifier head's ``(kernel, bias)`` in a params pytree.

    ``head`` is a key (``"head"``), a ``/``-path (``"params/head"``,
    ``"classifier/dense"``) or a sequence of keys (``("params", "head")``). If
    the path is not found from the root but the root has a ``"params"`` entry
    (Flax linen ``variables``), it is also looked up under ``"params"``.

    Args:
      params: nested mapping of parameters (linen dict / FrozenDict, nnx.State).
      head: path of the head module.

    Returns:
      ``(kernel [d, k], bias [k] or None)`` as arrays.

    Raises:
      HeadNotFoundError: no ``kernel`` under ``head``; the message lists every
        path that does hold a ``kernel``.
      ValueError: the kernel is not 2-D (``[d, k]``).

    Example:
      >>> import jax.numpy as jnp, pmm_jax
      >>> params = {"params": {"head": {"kernel": jnp.zeros((4, 3)), "bias": jnp.zeros(3)}}}
      >>> kernel, bias = pmm_jax.find_head(params)
      >>> kernel.shape, bias.shape
      ((4, 3), (3,))
    """
    path = _split(head)
    node = _walk(params, path)
    if node is None and path[0] != "params" and _is_node(params) and "params" in params.keys():
        node = _walk(params["params"], path)
    if node is None:
        existing = _kernel_paths(params)
        raise HeadNotFoundError(
            f"No head with a 'kernel' at `head`={'/'.join(path)!r}. Paths holding a 'kernel': "
            f"{existing if existing else 'none (is this a params pytree?)'}."
        )
    kernel = jnp.asarray(_unwrap(node["kernel"]))
    checks.check_rank("kernel", kernel, 2, "[feature_dim, num_classes], the flax Dense layout")
    bias = jnp.asarray(_unwrap(node["bias"])) if "bias" in node.keys() else None
    return kernel, bias


def pmm_penalty_from_params(
    params,
    features: Array,
    labels: Array,
    *,
    head: str | Sequence[str] = "head",
    logits: Array | None = None,
    where: Array | None = None,
    axis_name=None,
    class_axis_name=None,
    stop_radius_gradient: bool = False,
) -> Array:
    """Per-example PMM penalty straight from a params pytree and features.

    Finds the head's kernel (and bias) with :func:`find_head` and returns
    :func:`pmm_jax.pmm_penalty`. Gradients flow into ``params`` (the head's
    kernel) and ``features`` exactly as there.

    Args:
      params: params pytree holding the head (see :func:`find_head`).
      features: ``float[B, d]`` the head's input.
      labels: ``int[B]``.
      head: path of the head in ``params``.
      logits: optional ``float[B, k]``; if omitted they are recomputed as
        ``features @ kernel + bias`` (only to pick the competitor class), which
        costs one extra head matmul -- pass them when you have them.
      where, axis_name, class_axis_name, stop_radius_gradient: as in
        :func:`pmm_jax.pmm_penalty` (under ``class_axis_name`` the head in ``params`` is
        this device's slice of the classes, and so are recomputed logits).

    Returns:
      ``float32[B]`` penalties.

    Example:
      >>> import jax, jax.numpy as jnp, flax.linen as nn, pmm_jax
      >>> head = nn.Dense(3, name="head")
      >>> feats = jnp.ones((2, 4)); labels = jnp.array([0, 2])
      >>> variables = {"params": {"head": head.init(jax.random.key(0), feats)["params"]}}
      >>> pmm_jax.pmm_penalty_from_params(variables, feats, labels).shape
      (2,)
    """
    kernel, bias = find_head(params, head)
    dim = checks.check_features(features)
    checks.check_kernel(kernel, dim, jnp.shape(kernel)[1])
    features = jnp.asarray(features)
    if logits is None:
        logits = features @ kernel.astype(features.dtype)
        if bias is not None:
            logits = logits + bias.astype(logits.dtype)
    axes = {"axis_name": axis_name, "class_axis_name": class_axis_name}
    return pmm_penalty(
        logits,
        labels,
        features,
        kernel,
        where=where,
        stop_radius_gradient=stop_radius_gradient,
        **axes,
    )
