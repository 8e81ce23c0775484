"""The authors' PMM penalty and objective, ported to plain PyTorch functions.

The paper's code (github.com/berryweinst/pairwise-margin-maximization) computes
PMM inside each model's ``forward`` (``models/mnist.py``: ``mms_loss``,
``max_radious``, ``forward``) and combines it in ``trainer.py`` ``_step``. The
same arithmetic, line for line, with the head's weight passed in instead of
read from ``self.classifier``::

    topk_vals, topk_indices = logit.topk(2, 1)
    competitor = where(target == topk_indices[:, 0], topk_indices[:, 1], topk_indices[:, 0])
    w1, w2 = weight.index_select(0, target), weight.index_select(0, competitor)
    mms = (w1 - w2).norm(dim=-1).mean()                   # mms_loss(mode="mean")
    radius = max(oo.norm() for oo in features)             # max_radious
    mms_scaled = (radius * mms) ** 2                       # forward
    loss = cross_entropy(output, target) + alpha * mms_scaled.sum()   # trainer._step

(``.sum()`` adds the scalars of DataParallel replicas; on one device it is the
scalar itself.) ``max_radious`` is written here as ``features.norm(dim=1).max()``:
the same value, and the same gradient (to the row of largest norm) whenever that
row is unique.

This is the single PyTorch reference of the project: ``tests/test_official_torch.py``
holds ``pmm_jax.pmm_loss(..., penalty_reduction="official")`` against it, and
the PyTorch peer of the benchmark (``experiments/bench/torch_peer.py``) trains with
it. PyTorch is imported inside the functions only.
"""

from __future__ import annotations


def competitor(logit, target):
    """The authors' competitor: the top logit, or the second one if the top is the target."""
    import torch

    _, topk_indices = logit.topk(2, 1)
    return torch.where(target.eq(topk_indices[:, 0]), topk_indices[:, 1], topk_indices[:, 0])


def mms_loss(logit, target, weight):
    """``mean_i ||w_{y_i} - w_{m_i}||`` (``mms_loss(mode="mean", optimize=True)``).

    ``weight`` is the ``nn.Linear`` weight, ``[k, d]``.
    """
    w1 = weight.index_select(0, target)
    w2 = weight.index_select(0, competitor(logit, target))
    return (w1 - w2).norm(dim=-1).mean()


def max_radius(features):
    """``max_i ||phi_i||`` (``max_radious(features, optimize=True)``)."""
    return features.norm(dim=1).max()


def official_pmm_penalty(logit, target, features, weight):
    """The scalar ``(radius * mean_i ||w_{y_i} - w_{m_i}||) ** 2`` of ``forward``."""
    import torch

    return torch.pow(max_radius(features) * mms_loss(logit, target, weight), 2)


def official_objective(logit, target, features, weight, alpha):
    """``trainer._step``'s loss: mean cross-entropy + ``alpha`` * the penalty."""
    from torch.nn import functional as F

    return (
        F.cross_entropy(logit, target)
        + alpha * official_pmm_penalty(logit, target, features, weight).sum()
    )
