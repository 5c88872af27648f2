"""The one cross-fitting helper: both fold rules, and every caller going through it."""

import numpy as np
import pytest
from sklearn.model_selection import KFold, ShuffleSplit

from greyanom import PCADetector
from greyanom._crossfit import cross_fit, make_folds, repeat_states
from greyanom.base import cross_fit_scores


def test_folds_without_groups_are_sklearn_shuffled_kfold():
    folds = make_folds(23, 5, random_state=7)
    for k, (train, test) in enumerate(KFold(5, shuffle=True, random_state=7).split(np.zeros(23))):
        np.testing.assert_array_equal(np.flatnonzero(folds == k), test)
        np.testing.assert_array_equal(np.flatnonzero(folds != k), train)


def test_group_folds_spread_every_group_and_are_seeded():
    groups = np.repeat(["a", "b", "c"], [7, 5, 9])
    folds = make_folds(groups.size, 4, random_state=3, groups=groups)
    for g in "abc":  # every lot is dealt over the folds: fold sizes within a lot differ by at most 1
        counts = np.bincount(folds[groups == g], minlength=4)
        assert counts.max() - counts.min() <= 1
    np.testing.assert_array_equal(folds, make_folds(groups.size, 4, random_state=3, groups=groups))
    # random_state=None is seed 0 for lot folds (a refit gives the same control limit)
    np.testing.assert_array_equal(make_folds(21, 4, None, groups=groups), make_folds(21, 4, 0, groups=groups))
    assert not np.array_equal(make_folds(21, 4, 1, groups=groups), make_folds(21, 4, 0, groups=groups))


def test_cross_fit_calls_once_per_fold_on_disjoint_sorted_indices():
    seen = []

    def fit_score(train, test):
        assert np.intersect1d(train, test).size == 0 and np.all(np.diff(test) > 0)
        seen.append(test)
        return test * 10

    out = cross_fit(fit_score, 17, 4, random_state=0)
    assert len(out) == 4
    np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.arange(17))
    for test, res in out:
        np.testing.assert_array_equal(res, test * 10)


def test_cross_fit_takes_a_splitter_but_not_with_groups():
    out = cross_fit(lambda tr, te: te, 10, ShuffleSplit(3, test_size=2, random_state=0))
    assert len(out) == 3
    with pytest.raises(ValueError, match="splitter"):
        cross_fit(lambda tr, te: te, 10, KFold(2), groups=np.zeros(10))


@pytest.mark.parametrize("cv", [1, 2.5, True])
def test_bad_cv_names_the_argument(cv):
    with pytest.raises(ValueError, match="cv must be an integer"):
        make_folds(10, cv)
    with pytest.raises(ValueError, match="need at least 5 wafers"):
        make_folds(3, 5, what="wafers")


def test_cross_fit_scores_equal_a_hand_written_kfold_loop():
    X = np.random.default_rng(0).normal(size=(40, 6))
    got = cross_fit_scores(PCADetector(n_components=2), X, cv=4, random_state=5)
    want = np.empty(40)
    for train, test in KFold(4, shuffle=True, random_state=5).split(X):
        want[test] = PCADetector(n_components=2).fit(X[train]).score(X[test])
    np.testing.assert_array_equal(got, want)


def test_repeat_states_start_from_the_seed_and_are_distinct_and_seeded():
    assert repeat_states(7, 1) == [7]  # one repeat is the plain split
    rs = np.random.RandomState(3)
    assert repeat_states(rs, 1) == [rs]  # passed on untouched, drawn from by make_folds as before
    states = repeat_states(7, 5)
    assert states[0] == 7 and len(set(states)) == 5 and states == repeat_states(7, 5)
    assert repeat_states(None, 4) == repeat_states(0, 4)  # None means seed 0, as for one split
    assert repeat_states(8, 3)[1:] != states[1:3]  # another seed, other repeats
    assert repeat_states(np.random.RandomState(3), 3) == repeat_states(np.random.RandomState(3), 3)
    groups = np.repeat(["a", "b"], 20)
    folds = [make_folds(40, 5, s, groups=groups) for s in states]
    assert all(not np.array_equal(folds[0], f) for f in folds[1:])  # different splits


@pytest.mark.parametrize("n_repeats", [0, -1, 1.5, True, "3"])
def test_repeat_states_checks_n_repeats(n_repeats):
    with pytest.raises(ValueError, match="n_repeats must be an integer >= 1"):
        repeat_states(0, n_repeats)


def test_repeat_states_checks_random_state():
    with pytest.raises(ValueError, match="random_state must be an int"):
        repeat_states("seed", 2)
