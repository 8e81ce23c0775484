"""Adapting models that do not return ``(logits, {"pre_logits": ...})``."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn


@dataclasses.dataclass(frozen=True)
class with_pre_logits:
    """Wraps a linen model that returns plain logits so it follows the contract.

    The head's *input* is captured with ``flax.linen.intercept_methods`` while
    the model runs, so the model's code is untouched::

        model = with_pre_logits(MyNet(), head="classifier")
        (logits, aux) = model.apply(variables, x, train=False)
        aux["pre_logits"]        # the input of MyNet's `classifier` submodule

    Args:
      module: the linen module; it returns logits.
      head: the name of the classifier submodule (an ``nn.Dense``), which must be
        called exactly once per forward pass.
      train_kwarg: the keyword the module uses for train mode (``"train"``,
        ``"training"``; use ``"deterministic"`` with ``invert_train=True``), or
        ``None`` if it takes none.
      invert_train: pass ``not train`` (for ``deterministic=`` style modules).
    """

    module: nn.Module
    head: str = "head"
    train_kwarg: str | None = "train"
    invert_train: bool = False

    def _kwargs(self, train: bool, kwargs: dict[str, Any]) -> dict[str, Any]:
        if self.train_kwarg is not None:
            kwargs[self.train_kwarg] = (not train) if self.invert_train else train
        return kwargs

    def init(self, rngs, x, *, train: bool = False, **kwargs):
        return self.module.init(rngs, x, **self._kwargs(train, kwargs))

    def apply(self, variables, x, *, train: bool = False, **kwargs):
        captured = []

        def interceptor(next_fun, args, kw, context):
            if context.module.name == self.head and context.method_name == "__call__":
                captured.append(args[0])
            return next_fun(*args, **kw)

        with nn.intercept_methods(interceptor):
            out = self.module.apply(variables, x, **self._kwargs(train, kwargs))
        if len(captured) != 1:
            raise ValueError(
                f"with_pre_logits: expected the submodule {self.head!r} to be called once, "
                f"saw {len(captured)} calls; pass the classifier's name as `head`."
            )
        if isinstance(out, tuple):  # (logits, mutated variables) when mutable=...
            logits, updates = out
            return (logits, {"pre_logits": captured[0]}), updates
        return out, {"pre_logits": captured[0]}
