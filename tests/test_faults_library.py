"""Issue #12, library edges: each bad input or misuse gives the right result or a clear error.

One test per case, each reproducing the case for real. Core tests (no Flax): those of
pmm_jax.training are in tests/test_faults_training.py.
"""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

import pmm_jax
from tests.test_penalty import make_batch

BAD_ALPHAS = [-1.0, float("nan"), float("inf"), "1e-3"]


@pytest.mark.parametrize("alpha", BAD_ALPHAS)
def test_alpha_negative_nan_or_string_is_refused(alpha):
    logits, labels, feats, kernel = make_batch(0, 8, 4, 5)
    with pytest.raises((ValueError, TypeError), match="alpha"):
        pmm_jax.pmm_loss(logits, labels, feats, kernel, alpha=alpha)
    # The train step refuses them too: tests/test_faults_training.py.


def test_alpha_none_names_the_fix():
    logits, labels, feats, kernel = make_batch(1, 8, 4, 5)
    with pytest.raises(TypeError, match=r"alpha=0\.0.*make_train_step\(alpha=None\)"):
        pmm_jax.pmm_loss(logits, labels, feats, kernel, alpha=None)


def test_negative_schedule_is_refused_at_its_first_value():
    logits, labels, feats, kernel = make_batch(2, 8, 4, 5)
    bad = pmm_jax.linear_alpha_schedule(-1e-3, 1e-3, total_steps=10)
    with pytest.raises(ValueError, match=r"alpha\(0\)"):
        pmm_jax.pmm_loss(logits, labels, feats, kernel, alpha=bad, step=3)
    with pytest.raises(ValueError, match=r"alpha\(0\)"):  # under jit, while tracing
        jax.jit(lambda s: pmm_jax.pmm_loss(logits, labels, feats, kernel, alpha=bad, step=s))(3)
    # A traced alpha cannot be checked (no value at trace time) and is accepted.
    out = jax.jit(lambda a: pmm_jax.pmm_loss(logits, labels, feats, kernel, alpha=a)[0])(0.1)
    assert np.isfinite(float(out))


def test_nan_features_give_a_nan_radius_and_margin_not_zero():
    logits, labels, feats, kernel = make_batch(3, 8, 4, 5)
    feats = feats.at[2, 1].set(jnp.nan)
    _, parts = pmm_jax.pmm_loss(logits, labels, feats, kernel, alpha=1e-3)
    assert np.isnan(parts["penalty"])
    assert np.isnan(parts["radius"]), "a NaN feature must not look like radius 0"
    assert np.isnan(parts["mean_margin"]), "a NaN radius must not look like margin 0"
    assert np.isnan(pmm_jax.feature_radius(feats))
    # NaN logits show in the margins too; masked-out rows stay 0 whatever they hold.
    d = pmm_jax.pairwise_margins(logits.at[4, 0].set(jnp.nan), labels, kernel)
    assert np.isnan(d[4]) and np.all(np.isfinite(np.delete(np.asarray(d), 4)))
    where = jnp.arange(8) != 4
    d = pmm_jax.pairwise_margins(logits.at[4, 0].set(jnp.nan), labels, kernel, where=where)
    assert float(d[4]) == 0.0
    # Finite inputs are unchanged: w_y = w_m and a zero radius still give 0.
    same = jnp.zeros_like(kernel)
    assert np.all(np.asarray(pmm_jax.pairwise_margins(logits, labels, same)) == 0.0)


def test_validate_batch_accepts_an_empty_batch():
    logits = jnp.zeros((0, 5))
    labels = jnp.zeros((0,), jnp.int32)
    pmm_jax.validate_batch(logits, labels, features=jnp.zeros((0, 3)), kernel=jnp.ones((3, 5)))
    err, _ = checkify.checkify(lambda lg, lb: pmm_jax.validate_batch(lg, lb))(logits, labels)
    err.throw()


def test_python_lists_work_or_name_the_argument():
    logits, labels, feats, kernel = make_batch(4, 4, 3, 3)
    as_lists = [np.asarray(x).tolist() for x in (logits, labels, feats, kernel)]
    np.testing.assert_allclose(
        pmm_jax.pmm_penalty(*as_lists), pmm_jax.pmm_penalty(logits, labels, feats, kernel)
    )
    ragged = [[1.0, 2.0], [3.0]]
    for fn, args, name in [
        (pmm_jax.pmm_penalty, (ragged, labels, feats, kernel), "logits"),
        (pmm_jax.pmm_penalty, (logits, [[0], [1, 2]], feats, kernel), "labels"),
        (pmm_jax.feature_radius, (ragged,), "features"),
        (pmm_jax.competitor_classes, (logits, ["a", "b", "c", "d"]), "labels"),
    ]:
        with pytest.raises(TypeError, match=f"`{name}`"):
            fn(*args)


def test_importing_training_without_flax_names_the_extra():
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'flax' or name.startswith('flax.'):\n"
        "            raise ModuleNotFoundError(\"No module named 'flax'\")\n"
        "sys.meta_path.insert(0, Block())\n"
        "import pmm_jax\n"  # the library itself imports without Flax
        "from pmm_jax import training\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode != 0
    assert "ImportError" in out.stderr and "pmm_jax[training]" in out.stderr, out.stderr[-2000:]
