"""Operator structure: every child is a crossover of two container members at a valid point plus
exactly one mutated column, for every option."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lvns_jax import operators

N, C, T, B = 12, 3, 8, 7


def _container(seed=0):
    # distinct values everywhere, so any copied entry can be traced back to its source
    return jnp.arange(N * C * T, dtype=jnp.float32).reshape(N, C, T) + 1000.0 * seed


@pytest.mark.parametrize("crossover_mode,mutation,distribution,last", list(itertools.product(
    ["shared", "per_child"], ["add", "replace"], ["normal", "uniform"], [False, True])))
def test_child_structure(crossover_mode, mutation, distribution, last):
    cont = _container()
    for seed in range(5):
        children, info = operators.breed(jax.random.key(seed), cont, B, crossover_mode=crossover_mode,
                                         mutation=mutation, distribution=distribution, scale=0.5,
                                         mutate_last_frame=last)
        children, cont_np = np.asarray(children), np.asarray(cont)
        first, second = np.asarray(info.first_parent), np.asarray(info.second_parent)
        points, cols = np.asarray(info.crossover_point), np.asarray(info.mutation_column)
        vals = np.asarray(info.mutation_value)
        assert children.shape == (B, C, T) and children.dtype == np.float32
        # parents: first B of a permutation -> distinct within each list, valid indices
        assert len(set(first)) == B and len(set(second)) == B
        assert first.min() >= 0 and first.max() < N and second.max() < N
        assert np.all((points >= 1) & (points <= T - 3))
        if crossover_mode == "shared":
            assert np.all(points == points[0])
        assert np.all((cols >= 0) & (cols <= (T - 1 if last else T - 2)))
        if distribution == "uniform":
            assert np.all((vals >= 0) & (vals < 0.5))
        for i in range(B):
            expect = np.concatenate([cont_np[first[i], :, :points[i]], cont_np[second[i], :, points[i]:]], axis=-1)
            diff_cols = np.where(np.any(children[i] != expect, axis=0))[0]
            # exactly one column differs (values are continuous: a zero draw has probability 0)
            assert list(diff_cols) == [cols[i]]
            t = cols[i]
            if mutation == "add":
                np.testing.assert_allclose(children[i, :, t], expect[:, t] + vals[i], rtol=1e-6)
            else:
                np.testing.assert_array_equal(children[i, :, t], vals[i])


def test_ranges_are_covered_and_last_frame_never_mutated_by_default():
    cont = _container()
    points, cols, cols_last = set(), set(), set()
    for seed in range(300):
        _, info = operators.breed(jax.random.key(seed), cont, B, crossover_mode="per_child")
        points |= set(np.asarray(info.crossover_point).tolist())
        cols |= set(np.asarray(info.mutation_column).tolist())
        _, info = operators.breed(jax.random.key(seed), cont, B, mutate_last_frame=True)
        cols_last |= set(np.asarray(info.mutation_column).tolist())
    assert points == set(range(1, T - 2))  # [1, T-3]
    assert cols == set(range(0, T - 1))  # [0, T-2]: the original never mutates frame T-1
    assert cols_last == set(range(0, T))


def test_parent_permutations_are_independent():
    cont = _container()
    same = 0
    for seed in range(50):
        _, info = operators.breed(jax.random.key(seed), cont, B)
        same += int(np.array_equal(info.first_parent, info.second_parent))
    assert same == 0


def test_crossover_hand_worked():
    a = jnp.zeros((1, 2, 6))
    b = jnp.ones((1, 2, 6))
    out = operators.crossover(a, b, jnp.array([2]))
    np.testing.assert_array_equal(out[0], [[0, 0, 1, 1, 1, 1]] * 2)


def test_mutate_hand_worked():
    z = jnp.ones((2, 2, 4))
    v = jnp.array([[1.0, 2.0], [3.0, 4.0]])
    added = operators.mutate(z, jnp.array([0, 3]), v, "add")
    np.testing.assert_array_equal(added[0], [[2, 1, 1, 1], [3, 1, 1, 1]])
    np.testing.assert_array_equal(added[1], [[1, 1, 1, 4], [1, 1, 1, 5]])
    replaced = operators.mutate(z, jnp.array([1, 1]), v, "replace")
    np.testing.assert_array_equal(replaced[1], [[1, 3, 1, 1], [1, 4, 1, 1]])


def test_normal_mutation_statistics():
    v = operators.mutation_values(jax.random.key(0), 20000, 4, "normal", 2.0)
    assert abs(float(v.mean())) < 0.05 and abs(float(v.std()) - 2.0) < 0.05


def test_bad_options_raise():
    with pytest.raises(ValueError, match="distribution"):
        operators.mutation_values(jax.random.key(0), 2, 2, "cauchy", 1.0)
    with pytest.raises(ValueError, match="method"):
        operators.mutate(jnp.zeros((1, 1, 4)), jnp.array([0]), jnp.zeros((1, 1)), "swap")


def test_jit_equals_eager():
    cont = _container()
    f = lambda k: operators.breed(k, cont, B, crossover_mode="per_child")[0]
    np.testing.assert_array_equal(jax.jit(f)(jax.random.key(3)), f(jax.random.key(3)))
