import jax
import numpy as np
import pytest

from lvns_jax import selection


def test_most_sparse_order_and_ties_by_index():
    sp = np.array([1.0, 3.0, 2.0, 3.0, 0.5, 2.0], np.float32)
    np.testing.assert_array_equal(selection.most_sparse(sp, 4), [1, 3, 2, 5])
    np.testing.assert_array_equal(selection.most_sparse(np.zeros(5, np.float32), 3), [0, 1, 2])


def test_nan_and_minus_inf_never_preferred():
    sp = np.array([np.nan, 1.0, -np.inf, 0.1, np.nan], np.float32)
    np.testing.assert_array_equal(selection.most_sparse(sp, 2), [1, 3])


def test_random_control_is_uniform_and_skips_invalid():
    sp = np.array([0.0, 5.0, -np.inf, 1.0, 2.0, 3.0], np.float32)
    counts = np.zeros(6)
    for seed in range(400):
        idx = np.asarray(selection.uniform_random(jax.random.key(seed), sp, 3))
        assert len(set(idx)) == 3 and 2 not in idx
        counts[idx] += 1
    # each of the 5 valid members is kept 3/5 of the time
    np.testing.assert_allclose(counts[[0, 1, 3, 4, 5]] / 400, 0.6, atol=0.1)


def test_replace_keeps_children():
    np.testing.assert_array_equal(selection.Replace().select(None, np.zeros(8), 4), [4, 5, 6, 7])
    with pytest.raises(ValueError, match="breed_size == container_size"):
        selection.children_only(4, 3)


def test_unknown_method():
    from lvns_jax import plugins
    from lvns_jax.errors import ConfigError

    with pytest.raises(ConfigError, match="^selection: 'bogus_rule' is not one of novelty, random, replace"):
        plugins.builder("selector", "bogus_rule", "selection")
