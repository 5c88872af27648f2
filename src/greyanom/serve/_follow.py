"""Serving from a model registry: follow promotions and rollbacks without a restart.

:class:`RegistryFollower` polls :meth:`ModelRegistry.revision` (a counter in ``index.json``)
every ``poll_s`` seconds. When it changed, the new production version is loaded completely
(detector, policy, the policy's binding to the detector checked) **before** the service
swaps its reference to it; a version that fails to load leaves the old model serving (an
error in the log and an ``swap-failed`` audit event). The last ``keep`` versions of the
rollback chain stay loaded ("warm"), so a rollback swaps without loading anything. Each
observed promotion or rollback becomes an audit event whose actor is the registry's.
"""

from __future__ import annotations

import logging
import threading

from greyanom.serve._auth import Principal
from greyanom.serve._served import ServedModel

__all__ = ["RegistryFollower", "DEFAULT_POLL_S"]

logger = logging.getLogger("greyanom.serve")

#: Seconds between two reads of the registry's revision.
DEFAULT_POLL_S = 1.0


class RegistryFollower:
    """Keep a service's :class:`ModelSwitch` on the production version of a registered model.

    Parameters
    ----------
    registry : ModelRegistry
    name : str
        The registered model's name.
    poll_s : float, default=1.0
        Seconds between two reads of the registry's revision.
    **model_kwargs
        Passed to :meth:`ServedModel.from_registry` (the drift settings).

    Attributes
    ----------
    warm : dict
        Registry version -> loaded :class:`ServedModel` (the rollback chain and the candidate).
    revision : int
        The registry revision the service follows.
    """

    def __init__(self, registry, name, *, poll_s=DEFAULT_POLL_S, **model_kwargs):
        if isinstance(poll_s, bool) or not 0 < float(poll_s) <= 3600:
            raise ValueError(f"poll_s must be a number of seconds in (0, 3600], got {poll_s!r}.")
        self.registry, self.name, self.poll_s = registry, name, float(poll_s)
        self.model_kwargs = model_kwargs
        self.warm = {}
        self.revision = registry.revision(name)  # an unknown name raises UnknownVersionError here
        self._failed = None
        self._thread = None
        self._stop = threading.Event()
        self._sync_lock = threading.Lock()

    def load(self, version):
        """The :class:`ServedModel` of a registry version (``"1.2.0"`` or a ModelVersion), from the warm set or loaded."""
        if isinstance(version, str):
            version = self.registry.get(self.name, version)
        served = self.warm.get(version.version)
        if served is None:
            served = ServedModel.from_registry(version, **self.model_kwargs)
            self.warm[version.version] = served
        return served

    def warm_up(self, keep=()):
        """Load the rollback chain; drop loaded versions outside it and ``keep``."""
        chain = [v.version for v in self.registry.ready(self.name)]
        for version in chain:
            try:
                self.load(version)
            except Exception:  # a broken old version must not stop serving the current one
                logger.exception("could not keep %s %s ready for a rollback", self.name, version)
        for version in list(self.warm):
            if version not in chain and version not in keep:
                del self.warm[version]

    def sync(self, switch):
        """Swap ``switch`` (a :class:`ModelSwitch`) to the registry's production version if the revision changed.

        Returns True if it swapped.
        """
        with self._sync_lock:
            revision = self.registry.revision(self.name)
            if revision == self.revision:
                return False
            events = [e for e in self.registry.history(self.name) if int(e.get("revision", 0)) > self.revision]
            production = self.registry.production(self.name)
            swapped = False
            if production.version != switch.production.registry_version:
                try:
                    served = self.load(production)
                except Exception as exc:
                    if self._failed != revision:
                        logger.exception("registry %s: production %s does not load; still serving %s",
                                         self.name, production.version, switch.production.label)
                        switch.audit.add(Principal("registry", "registry"), "swap-failed", f"model:{self.name}",
                                         {"version": production.version, "revision": revision,
                                          "serving": switch.production.label,
                                          "error": f"{type(exc).__name__}: {exc}"})
                    self._failed = revision
                    return False
                switch.swap_production(served)
                swapped = True
            self.revision, self._failed = revision, None
            for event in events:
                switch.audit.add(Principal(str(event.get("actor") or "unknown")[:128], "registry"),
                                 str(event["action"]), f"model:{self.name}",
                                 {k: event.get(k) for k in ("version", "from", "reason", "revision", "time")})
            keep = () if switch.candidate is None else (switch.candidate.registry_version,)
            self.warm_up(keep)
            return swapped

    # -- the background thread -------------------------------------------------------------
    def start(self, switch):
        """Poll in a daemon thread until :meth:`stop`; each tick syncs and runs the guardrail."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(switch,), name="greyanom-registry", daemon=True)
        self._thread.start()

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self, switch):
        while not self._stop.wait(self.poll_s):
            try:
                self.sync(switch)
                switch.check_guardrail()
            except Exception:  # keep following: a bad tick must not end the thread
                logger.exception("registry %s: the follower's tick failed", self.name)
