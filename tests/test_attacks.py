"""Tests for experiments/attacks.py, on linear classifiers (closed forms) and a small MLP."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import attacks as A

B, D, K = 32, 8, 5
NT = K - 1  # multi-targeted over every wrong class: exact on a linear model


def fast_key(seed):
    """A PRNG key whose random bits compile fast on CPU (threefry's take seconds)."""
    return jax.random.key(seed, impl="rbg")


def linear_problem(seed=0, wrong=3):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(D, K)).astype(np.float32)
    b = rng.normal(size=K).astype(np.float32)
    x = rng.normal(size=(B, D)).astype(np.float32)
    y = np.argmax(np.float64(x) @ w + b, -1).astype(np.int32)
    y[:wrong] = (y[:wrong] + 1) % K  # a few clean errors
    return w, b, x, y


def linear(w, b):
    return lambda x: x @ w + b


def closed_form_radius(w, b, x, y, order):
    """``min_{j != y} (s_y - s_j) / ||w_y - w_j||_q`` (q = 2 for L2, 1 for L-inf)."""
    s = np.float64(x) @ np.float64(w) + b
    out = np.full(len(y), np.inf)
    for i in range(len(y)):
        for j in range(K):
            if j != y[i]:
                dist = (s[i, y[i]] - s[i, j]) / np.linalg.norm(
                    np.float64(w[:, y[i]]) - w[:, j], ord=order
                )
                out[i] = min(out[i], dist)
    return out  # negative for misclassified examples


def flipped(apply_fn, adv, y):
    return np.asarray(jnp.argmax(apply_fn(adv), -1) != y)


@pytest.mark.parametrize(("norm", "order"), [("l2", 2), ("linf", 1)])
def test_pgd_flips_just_above_the_closed_form_radius_and_never_below(norm, order):
    w, b, x, y = linear_problem(1)
    f = linear(w, b)
    radius = closed_form_radius(w, b, x, y, order)
    ok = radius > 0
    assert ok.sum() == B - 3
    eps_above = np.where(ok, 1.01 * radius, 0.0).astype(np.float32)
    eps_below = np.where(ok, 0.99 * radius, 0.0).astype(np.float32)

    @jax.jit
    def attacks(key):
        run = lambda eps, nt: A.pgd(f, x, y, eps=eps, norm=norm, steps=30, key=key, num_targets=nt)
        return run(eps_above, NT), run(eps_below, None)

    above, below = attacks(fast_key(0))
    assert flipped(f, above, y)[ok].all()
    assert not flipped(f, below, y)[ok].any()  # no attack can beat the closed form
    norms = np.asarray(A.perturbation_norm(above - x, norm))
    assert np.all(norms <= eps_above * (1 + 1e-5))


def test_minimal_l2_eps_matches_the_closed_form():
    w, b, x, y = linear_problem(2)
    f = linear(w, b)
    radius = closed_form_radius(w, b, x, y, 2)
    ok = radius > 0
    eps_max = float(np.median(radius[ok]))  # half of the examples out of reach
    minimal = jax.jit(
        lambda key: A.minimal_l2_eps(
            f, x, y, eps_max=eps_max, bisection_steps=10, pgd_steps=20, key=key, num_targets=NT
        )
    )
    got = np.asarray(minimal(fast_key(1)))
    assert np.all(got[~ok] == 0.0)  # already misclassified
    reach = ok & (radius < 0.999 * eps_max)
    out = ok & (radius > 1.001 * eps_max)
    assert reach.sum() >= 10 and out.sum() >= 10
    assert np.all(np.isinf(got[out]))
    np.testing.assert_allclose(got[reach], radius[reach], rtol=0.02)
    assert np.all(got[reach] >= radius[reach] * (1 - 1e-5))  # an upper bound


def test_fgsm_is_the_analytic_gradient_sign_on_a_linear_model():
    w, b, x, y = linear_problem(3)
    f = linear(w, b)
    s = np.float64(x) @ w + b
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    grad = (p - np.eye(K)[y]) @ np.float64(w).T  # d CE / d x
    eps = 0.3

    @jax.jit
    def attacks():
        return (
            A.fgsm(f, x, y, eps=eps, norm="linf", loss="ce"),
            A.fgsm(f, x, y, eps=eps, norm="l2", loss="ce"),
            A.fgsm(f, x, y, eps=eps, clip=(-0.5, 0.5)),
        )

    linf, l2, clipped = (np.asarray(a) for a in attacks())
    np.testing.assert_array_equal(np.sign(linf - x), np.sign(grad))
    np.testing.assert_allclose(linf, x + eps * np.sign(grad), rtol=0, atol=1e-6)
    unit = grad / np.linalg.norm(grad, axis=1, keepdims=True)
    np.testing.assert_allclose(l2, x + eps * unit, atol=1e-5)
    assert clipped.min() >= -0.5 and clipped.max() <= 0.5


def mlp_params(seed, d_in=(3, 4), hidden=16):
    rng = np.random.default_rng(seed)
    n = int(np.prod(d_in))
    return {
        "w1": jnp.asarray(rng.normal(size=(n, hidden)) / np.sqrt(n), jnp.float32),
        "w2": jnp.asarray(rng.normal(size=(hidden, K)), jnp.float32),
    }


def mlp(params):
    return lambda x: jnp.tanh(x.reshape(x.shape[0], -1) @ params["w1"]) @ params["w2"]


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_projection_and_clip_on_a_nonlinear_model(norm):
    params = mlp_params(0)
    x = np.random.default_rng(1).uniform(-1.0, 1.0, (B, 3, 4)).astype(np.float32)
    y = jnp.argmax(mlp(params)(x), -1)
    eps = jnp.linspace(0.05, 1.5, B)  # per-example budgets; norms over both trailing dims

    @jax.jit
    def attacks(key):
        run = lambda clip: A.pgd(
            mlp(params), x, y, eps=eps, norm=norm, steps=10, key=key, clip=clip
        )
        return run(None), run((-1.0, 1.0))

    free, clipped = attacks(fast_key(2))
    for adv in (free, clipped):
        assert np.all(np.asarray(A.perturbation_norm(adv - x, norm)) <= eps * (1 + 1e-5))
    assert flipped(mlp(params), free, y).any()
    assert float(free.min()) < -1.0 or float(free.max()) > 1.0  # the clip does something
    assert float(clipped.min()) >= -1.0 and float(clipped.max()) <= 1.0


def test_random_start_is_uniform_in_the_ball_and_deterministic():
    x = jnp.zeros((4000, 2, 3))  # n = 6
    eps = 0.5
    params = mlp_params(1)
    xs = np.random.default_rng(3).normal(size=(B, 3, 4)).astype(np.float32)
    y = jnp.zeros(B, jnp.int32)

    @jax.jit
    def draw(key):
        start = A.pgd(mlp(params), xs, y, eps=eps, norm="l2", steps=0, key=key)
        return A.uniform_in_ball(key, x, eps, "l2"), A.uniform_in_ball(key, x, eps, "linf"), start

    d2, dinf, start = draw(fast_key(4))
    r = np.asarray(A.perturbation_norm(d2, "l2")) / eps
    assert r.max() <= 1 + 1e-6
    # Uniform in the 6-ball: P(r <= t) = t^6, so E r = 6/7 and r^6 ~ U[0, 1].
    assert abs(r.mean() - 6 / 7) < 0.01 and abs(np.mean(r**6) - 0.5) < 0.02
    dinf = np.asarray(dinf)
    assert np.abs(dinf).max() <= eps and abs(np.abs(dinf).mean() - eps / 2) < 0.01
    # pgd with 0 steps returns its random start (the only point it visits) ...
    norms = np.asarray(A.perturbation_norm(start - xs, "l2"))
    assert np.all(norms <= eps * (1 + 1e-6)) and np.all(norms > 0)
    # ... the same for the same key, another for another key.
    np.testing.assert_array_equal(draw(fast_key(4))[2], start)
    assert not np.array_equal(draw(fast_key(5))[2], start)


def test_jit_and_vmap_over_seeds_equal_a_loop_and_keys_are_deterministic():
    seeds = [mlp_params(s) for s in range(3)]
    stacked = jax.tree.map(lambda *v: jnp.stack(v), *seeds)
    rng = np.random.default_rng(5)
    x = rng.normal(size=(B, 3, 4)).astype(np.float32)
    y = rng.integers(0, K, size=B).astype(np.int32)
    grid = np.array([0.0, 0.3, 1.0], np.float32)

    def one_seed(params, key):
        return A.robust_correct(mlp(params), x, y, eps_grid=grid, steps=5, key=key)

    # One key shared by the seeds (a batch of keys, in_axes=(0, 0), works as well).
    key = fast_key(7)
    batched = jax.jit(jax.vmap(one_seed, in_axes=(0, None)))(stacked, key)
    assert batched.shape == (3, 3, B)
    single = jax.jit(one_seed)
    for s in range(3):
        correct = single(seeds[s], key)
        np.testing.assert_array_equal(batched[s], correct)
        np.testing.assert_array_equal(correct[0], jnp.argmax(mlp(seeds[s])(x), -1) == y)
        assert correct[-1].sum() < correct[0].sum()
    np.testing.assert_array_equal(single(seeds[0], key), batched[0])


def test_robust_accuracy_on_a_linear_model():
    w, b, x, y = linear_problem(4)
    f = linear(w, b)
    radius = closed_form_radius(w, b, x, y, 2)
    grid = np.array([0.0, *np.quantile(radius[radius > 0], [0.25, 0.5, 0.75])]) * 1.001
    mask = np.arange(B) >= 3  # the clean errors as padding

    accuracy = jax.jit(
        lambda key: A.robust_accuracy(
            f, x, y, eps_grid=grid, steps=20, key=key, num_targets=NT, where=mask
        )
    )
    acc = accuracy(fast_key(0))
    np.testing.assert_allclose(acc, [(radius[3:] > e).mean() for e in grid], atol=1e-6)
    assert acc[0] == 1.0


def test_transfer_exposes_gradient_masking():
    w, b, x, y = linear_problem(5)
    f = linear(w, b)
    # Same decisions, no gradient: white-box PGD from x cannot move.
    masked = lambda x: f(jax.lax.stop_gradient(x))
    grid = np.array([0.0, 0.5, 1.0], np.float32)

    @jax.jit
    def evaluate(key):
        kw = dict(eps_grid=grid, steps=10, key=key, random_start=False)
        return (
            A.robust_correct(f, x, y, **kw),
            A.robust_correct(masked, x, y, **kw),
            A.transfer_accuracy(f, masked, x, y, **kw),
            A.transfer_correct(f, f, x, y, **kw),
        )

    own, white_box_masked, transferred, self_transfer = evaluate(fast_key(0))
    own_acc = np.asarray(own).mean(axis=1)
    np.testing.assert_allclose(white_box_masked.mean(axis=1), own_acc[0])  # looks "robust"
    np.testing.assert_allclose(transferred, own_acc)  # transfer shows that it is not
    assert own_acc[-1] < own_acc[0]
    # Source = target: exactly the white-box attack (same keys).
    np.testing.assert_array_equal(self_transfer, own)


def test_ce_attack_raises_the_loss():
    params = mlp_params(2)
    x = np.random.default_rng(5).normal(size=(B, 3, 4)).astype(np.float32)

    @jax.jit
    def losses(key):
        y = jnp.argmax(mlp(params)(x), -1)
        adv = A.pgd(mlp(params), x, y, eps=0.5, norm="l2", steps=5, loss="ce", key=key)
        return A.attack_loss(mlp(params)(x), y, "ce"), A.attack_loss(mlp(params)(adv), y, "ce")

    before, after = losses(fast_key(1))
    assert float(jnp.mean(after)) > float(jnp.mean(before))


def test_eps_grid_for():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(101, 3, 4)) * 2.0 + 1.0
    norms = np.linalg.norm(x.reshape(101, -1), axis=1)
    got = A.eps_grid_for(x, [0.0, 0.1, 1.0], "l2", chunk=7)
    np.testing.assert_allclose(got, [0.0, 0.1 * np.median(norms), np.median(norms)], rtol=1e-6)
    assert got.dtype == np.float32
    got = A.eps_grid_for(x.astype(np.float32), [0.5, 2.0], "linf", chunk=10)
    np.testing.assert_allclose(got, [0.5 * x.std(), 2.0 * x.std()], rtol=1e-5)
    with pytest.raises(ValueError, match="norm"):
        A.eps_grid_for(x, [0.1], "l1")


def test_bad_arguments():
    w, b, x, y = linear_problem(6)
    f = linear(w, b)
    key = fast_key(0)
    with pytest.raises(ValueError, match="Unknown norm 'l1'"):
        A.pgd(f, x, y, eps=0.1, norm="l1", key=key)
    with pytest.raises(ValueError, match="Unknown loss 'hinge'"):
        A.fgsm(f, x, y, eps=0.1, loss="hinge")
    with pytest.raises(TypeError, match="must be floating"):
        A.pgd(f, x.astype(np.int32), y, eps=0.1, key=key)
    with pytest.raises(ValueError, match="`y` \\[B\\]"):
        A.pgd(f, x, y[:3], eps=0.1, key=key)
    with pytest.raises(TypeError, match="`y` must be integer"):
        A.fgsm(f, x, y.astype(np.float32), eps=0.1)
    with pytest.raises(ValueError, match="needs a `key`"):
        A.pgd(f, x, y, eps=0.1)
    with pytest.raises(ValueError, match="num_targets"):
        A.pgd(f, x, y, eps=0.1, key=key, num_targets=K)
    with pytest.raises(ValueError, match="minimal_l2_eps is L2"):
        A.minimal_l2_eps(f, x, y, eps_max=1.0, key=key, norm="linf")
