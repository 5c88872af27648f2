"""The models a service runs: production and a shadow or canary candidate, swapped atomically.

:class:`ModelSwitch` holds one immutable state (production, candidate, mode, canary
fraction, start time) that it replaces whole under a lock; :meth:`ModelSwitch.plan` reads it
once per request, so a request finishes on the models it started with. It also starts and
stops rollouts and runs the FNR guardrail (:class:`~greyanom.serve._rollout.FNRGuardrail`).
"""

from __future__ import annotations

import datetime as _dt
import logging
import random
import threading
from typing import NamedTuple

from greyanom.registry import RegistryError
from greyanom.serve._auth import LOCAL, Principal
from greyanom.serve._rollout import compare_models
from greyanom.serve._served import ServedModel

__all__ = ["ModelSwitch", "Plan", "check_fraction"]

logger = logging.getLogger("greyanom.serve")


class Plan(NamedTuple):
    """The models one request runs on, taken once at its start: the deciding model first."""

    models: tuple
    roles: tuple


class _State(NamedTuple):
    production: ServedModel
    candidate: ServedModel | None
    mode: str | None  # "shadow" or "canary" with a candidate
    fraction: float
    since: _dt.datetime  # when this rollout (or the service) started


def _now():
    return _dt.datetime.now(_dt.timezone.utc)


def check_fraction(fraction):
    """The canary fraction as a float in (0, 1), or a ValueError naming it."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < float(fraction) < 1.0:
        raise ValueError(f"canary_fraction must be a fraction in (0, 1), got {fraction!r}.")
    return float(fraction)


class ModelSwitch:
    """Production and a candidate model of the inspection service, and the FNR guardrail.

    Parameters
    ----------
    production : ServedModel
    records : Records
    audit : AuditLog
    guardrail : FNRGuardrail
    follower : RegistryFollower, optional
        Without one (a fixed model file) there is no candidate.
    random_state : int or None, default=None
        Seeds the canary's choice of requests.
    prepare : callable, optional
        ``prepare(served)`` before a model first serves (the service's thread settings).

    Attributes
    ----------
    guarded : str or None
        The registry version the guardrail watches (the candidate, also once promoted).
    last_guardrail : dict or None
        The latest :meth:`check_guardrail` result.
    on_swap : list of callables
        ``hook(old, new)`` after each swap of the production model.
    """

    def __init__(self, production, *, records, audit, guardrail, follower=None, random_state=None, prepare=None):
        self.records, self.audit, self.guardrail, self.follower = records, audit, guardrail, follower
        self._prepare = prepare if prepare is not None else (lambda served: None)
        self._rng = random.Random(None if random_state is None else f"canary-{random_state}")
        self._lock = threading.Lock()
        self._state = _State(production, None, None, 0.0, _now())
        self.guarded = None
        self.last_guardrail = None
        self.on_swap = []

    @property
    def production(self):
        """The :class:`ServedModel` deciding now."""
        return self._state.production

    @property
    def candidate(self):
        """The shadow or canary :class:`ServedModel`, or None."""
        return self._state.candidate

    def plan(self):
        """The models the next request runs on, taken once: production, or the canary, and a shadow."""
        s = self._state
        if s.candidate is None:
            return Plan((s.production,), ("production",))
        if s.mode == "shadow":
            return Plan((s.production, s.candidate), ("production", "shadow"))
        with self._lock:
            canary = self._rng.random() < s.fraction
        return Plan((s.candidate,), ("canary",)) if canary else Plan((s.production,), ("production",))

    def swap_production(self, served):
        """Serve ``served`` from the next request on (requests in flight finish on the old model).

        A candidate that became production stops being a candidate; the guardrail keeps
        watching its version.
        """
        self._prepare(served)
        with self._lock:
            old = self._state
            candidate, mode, fraction = old.candidate, old.mode, old.fraction
            if candidate is not None and (candidate.registry_version == served.registry_version
                                          or candidate.image_shape != served.image_shape):
                candidate, mode, fraction = None, None, 0.0
            self._state = _State(served, candidate, mode, fraction, old.since)
        for hook in self.on_swap:
            hook(old.production, served)
        logger.info("now serving %s (%s), was %s", served.label, served.model_version, old.production.label)

    def start_rollout(self, mode, version, *, fraction=0.1, principal=None):
        """Run registry ``version`` as a ``"shadow"`` or ``"canary"`` candidate beside production.

        Raises
        ------
        ValueError
            Without a registry, for another mode, a fraction outside (0, 1), the production
            version itself, or a candidate of another image shape.
        UnknownVersionError
            If the registry has no such version.
        """
        if self.follower is None:
            raise ValueError("shadow and canary name registry versions: serve with registry and name.")
        if mode not in ("shadow", "canary"):
            raise ValueError(f"mode must be 'shadow' or 'canary', got {mode!r}.")
        fraction = check_fraction(fraction) if mode == "canary" else 0.0
        served = self.follower.load(version)
        if served.registry_version == self.production.registry_version:
            raise ValueError(f"{version} is the production version; a candidate must be another version.")
        if served.image_shape != self.production.image_shape:
            raise ValueError(f"candidate {version} takes images of shape {served.image_shape}, production "
                             f"{self.production.image_shape}; they cannot score the same images.")
        self._prepare(served)
        with self._lock:
            self._state = _State(self._state.production, served, mode, fraction, _now())
            self.guarded = served.registry_version
        detail = {"version": served.registry_version, "mode": mode, "fraction": fraction,
                  "production": self.production.label}
        self.audit.add(principal or LOCAL, f"{mode}-start", f"model:{self.follower.name}", detail)
        logger.info("%s of %s beside production %s", mode, served.label, self.production.label)

    def stop_rollout(self, *, principal=None, reason=None):
        """Drop the candidate (the guardrail stops watching it); True if there was one."""
        with self._lock:
            old = self._state
            if old.candidate is None:
                return False
            self._state = _State(old.production, None, None, 0.0, _now())
            if self.guarded == old.candidate.registry_version:
                self.guarded = None
        self.audit.add(principal or LOCAL, f"{old.mode}-stop", f"model:{self.follower.name}",
                       {"version": old.candidate.registry_version, "reason": reason})
        return True

    def rollout(self):
        """The rollout now: mode, candidate, fraction, since, the guarded version and the guardrail."""
        s = self._state
        return {"mode": s.mode, "candidate": None if s.candidate is None else s.candidate.label,
                "fraction": s.fraction if s.mode == "canary" else None, "since": s.since.isoformat(),
                "guarded": self.guarded, "max_fnr": self.guardrail.max_fnr,
                "min_reviewed_defects": self.guardrail.min_defects, "last_guardrail": self.last_guardrail}

    def compare(self, since=None, alpha=0.01):
        """``GET /api/v1/compare`` (see :func:`~greyanom.serve._rollout.compare_models`); since the rollout by default."""
        s = self._state
        out = compare_models(self.records, s.production, s.candidate, since=s.since if since is None else since,
                             alpha=alpha)
        out["mode"] = s.mode
        out["guardrail"] = None if self.guarded is None else self.guardrail.evaluate(self.records, self.guarded)
        return out

    def check_guardrail(self):
        """Judge the guarded version's FNR; above the limit drop it, and roll the registry back if it was promoted.

        Returns
        -------
        result : dict or None
            :meth:`FNRGuardrail.evaluate` of the guarded version (None when none is guarded),
            with ``action``: None, ``"dropped"`` or ``"rolled back"``.
        """
        version = self.guarded
        if version is None or self.follower is None:
            return None
        result = self.guardrail.evaluate(self.records, version)
        result["action"] = None
        if result["exceeded"]:
            guard = Principal("guardrail", "guardrail")
            registry, name = self.follower.registry, self.follower.name
            reason = (f"FNR {result['fnr']:.4f} on {result['reviewed_defects']} reviewed defects exceeds "
                      f"{self.guardrail.max_fnr}")
            if self.candidate is not None and self.candidate.registry_version == version:
                self.stop_rollout(principal=guard, reason=reason)
                result["action"] = "dropped"
            if registry.production(name).version == version:
                try:
                    registry.rollback(name, actor="guardrail", reason=reason, if_production=version)
                    result["action"] = "rolled back"
                except RegistryError as exc:  # another worker rolled back first, or nothing to return to
                    logger.warning("guardrail: cannot roll back %s %s: %s", name, version, exc)
                self.follower.sync(self)
            self.guarded = None
            self.audit.add(guard, "guardrail", f"model:{name}", result)
            logger.error("guardrail: %s %s %s (%s)", name, version, result["action"], reason)
        self.last_guardrail = result
        return result
