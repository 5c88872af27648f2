"""Cross-fitting: the one place where items are split into folds and scored out of fold.

Every held-out score in greyanom comes from :func:`cross_fit`: the image and array detectors'
held-out threshold (:func:`greyanom.base.cross_fit_scores`), :func:`greyanom.decision.calibrate`
(items or wafers), the wafer model of the trace detectors and the trace detectors' per-trace
held-out fits. Two fold rules, chosen by whether ``groups`` is given:

* no ``groups``: scikit-learn's shuffled :class:`~sklearn.model_selection.KFold` with
  ``random_state`` (or any splitter passed as ``cv``);
* ``groups`` (lots): every group is shuffled and dealt over the folds in turn, so each lot
  is spread over all folds; ``random_state=None`` means seed 0, so that fitting twice on the
  same data gives the same control limit.
"""

from __future__ import annotations

import numbers

import numpy as np

__all__ = ["cross_fit", "make_folds", "repeat_states"]


def _check_cv(cv, n, what):
    if isinstance(cv, bool) or not isinstance(cv, numbers.Integral) or cv < 2:
        raise ValueError(f"cv must be an integer >= 2 or a splitter with split(), got {cv!r}.")
    if n < cv:
        raise ValueError(f"cv={cv} folds need at least {cv} {what}, got {n}.")


def _group_folds(groups, n_splits, random_state):
    """Fold of each row, stratified by group (each group dealt over the folds after a shuffle)."""
    if random_state is None:
        random_state = 0
    rng = np.random.default_rng(random_state if not isinstance(random_state, np.random.RandomState)
                                else random_state.randint(2**31))
    groups = np.asarray(groups)
    n = groups.shape[0]
    n_splits = int(min(n_splits, n))
    if n_splits < 2:
        raise ValueError(f"cross-fitting needs at least 2 rows, got {n}.")
    folds = np.empty(n, dtype=np.int64)
    start = 0
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        idx = idx[rng.permutation(idx.size)]
        folds[idx] = (start + np.arange(idx.size)) % n_splits
        start += idx.size
    return folds


def repeat_states(random_state, n_repeats):
    """Fold seeds of ``n_repeats`` repeated splits (a repeated cross-fitting, as scikit-learn's
    :class:`~sklearn.model_selection.RepeatedKFold` repeats ``KFold``).

    One repeat is ``[random_state]`` itself, so that a single split is the plain one. Several
    start from the integer seed of ``random_state`` (``None``: 0; a ``RandomState`` instance:
    one draw from it), then add seeds spawned from it by :class:`numpy.random.SeedSequence`.

    Parameters
    ----------
    random_state : int, RandomState instance or None
    n_repeats : int >= 1

    Returns
    -------
    states : list
        ``n_repeats`` values to pass as ``random_state`` to :func:`make_folds`.

    Examples
    --------
    >>> from greyanom._crossfit import repeat_states
    >>> repeat_states(7, 1)
    [7]
    >>> states = repeat_states(7, 3)
    >>> states[0], len(set(states)), states == repeat_states(7, 3)
    (7, 3, True)
    """
    if isinstance(n_repeats, bool) or not isinstance(n_repeats, numbers.Integral) or n_repeats < 1:
        raise ValueError(f"n_repeats must be an integer >= 1, got {n_repeats!r}.")
    if n_repeats == 1:
        return [random_state]
    if random_state is None:
        base = 0
    elif isinstance(random_state, np.random.RandomState):
        base = int(random_state.randint(2**31))
    elif isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        base = int(random_state)
    else:
        raise ValueError(f"random_state must be an int, a RandomState instance or None, got {random_state!r}.")
    spawned = np.random.SeedSequence(base).generate_state(n_repeats - 1)
    return [base, *(int(s) for s in spawned)]


def make_folds(n, cv=5, random_state=None, *, groups=None, what="items"):
    """Fold number of each of ``n`` items.

    Parameters
    ----------
    n : int
        Number of items.
    cv : int >= 2, default=5
        Number of folds. With ``groups``, at most ``n`` folds are used.
    random_state : int, RandomState instance or None, default=None
        Seeds the shuffle. With ``groups``, ``None`` means 0.
    groups : array-like of shape (n,), optional
        Group (lot) of each item: each group is spread over the folds. Without it, the folds
        are those of a shuffled ``KFold``.
    what : str, default="items"
        What the items are, for error messages.

    Returns
    -------
    folds : ndarray of int of shape (n,)
    """
    if groups is not None:
        groups = np.asarray(groups)
        if groups.shape[0] != n:
            raise ValueError(f"groups has {groups.shape[0]} entries for {n} {what}.")
        return _group_folds(groups, cv, random_state)
    from sklearn.model_selection import KFold

    _check_cv(cv, n, what)
    folds = np.empty(n, dtype=np.int64)
    for k, (_, test) in enumerate(KFold(n_splits=int(cv), shuffle=True, random_state=random_state).split(np.zeros(n))):
        folds[test] = k
    return folds


def cross_fit(fit_score, n, cv=5, random_state=None, *, groups=None, folds=None, what="items"):
    """Call ``fit_score(train, test)`` once per fold; the one cross-fitting loop of greyanom.

    Parameters
    ----------
    fit_score : callable
        ``fit_score(train, test)`` with two sorted integer index arrays: fit on ``train`` and
        return whatever scores ``test`` (not on ``train``).
    n : int
        Number of items.
    cv : int >= 2 or a scikit-learn splitter, default=5
        Number of folds (see :func:`make_folds`), or a splitter with ``split`` (used as it is;
        not with ``groups``).
    random_state, groups, what
        As in :func:`make_folds`.
    folds : array-like of int of shape (n,), optional
        Fold numbers from :func:`make_folds`, for a caller that keeps them; then ``cv``,
        ``random_state`` and ``groups`` are not used.

    Returns
    -------
    results : list of (test, result)
        One pair per fold, in fold order.
    """
    if folds is None and hasattr(cv, "split"):
        if groups is not None:
            raise ValueError("a splitter cv cannot be combined with groups; pass an integer cv.")
        splits = cv.split(np.zeros(n))
    else:
        if folds is None:
            folds = make_folds(n, cv, random_state, groups=groups, what=what)
        folds = np.asarray(folds)
        splits = ((np.flatnonzero(folds != k), np.flatnonzero(folds == k)) for k in np.unique(folds))
    n_folds = len(np.unique(folds)) if folds is not None else cv.get_n_splits()
    from greyanom._progress import progress_stage

    results = []
    with progress_stage("cross-fitting", total=n_folds, unit="fold", verbose=False) as stage:
        for train, test in splits:
            results.append((test, fit_score(train, test)))
            stage.update(1)
    return results
