"""A file-based model registry: versions of a served model and its decision policy.

Layout of a registry folder ``ROOT``::

    ROOT/NAME/index.json                       versions, the production stack, the history
    ROOT/NAME/versions/1.2.0/model.safetensors the detector (BaseDetector.save)
    ROOT/NAME/versions/1.2.0/policy.safetensors its DecisionPolicy (bound to that model)

``index.json`` is rewritten atomically (a temporary file renamed into place) under an
exclusive lock of ``ROOT/NAME/.lock``, so a service that polls it never reads a half-written
index, and two ``greyanom registry`` commands never lose each other's change. Version files
are written once and never changed or deleted by the registry.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

__all__ = ["ModelRegistry", "ModelVersion", "RegistryError", "UnknownVersionError"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_VERSION = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$")
_INDEX_FORMAT = "greyanom-registry"
_INDEX_VERSION = 1
_BUMPS = ("major", "minor", "patch")


class RegistryError(ValueError):
    """A registry operation that cannot be done (bad name, unbound policy, nothing to roll back to)."""


class UnknownVersionError(RegistryError, LookupError):
    """A model name or version the registry does not hold."""


@dataclasses.dataclass(frozen=True)
class ModelVersion:
    """One registered version of a model: its files and what is known about it.

    Attributes
    ----------
    name, version : str
        The registered name and its semantic version (``"1.0.0"`` first).
    model_path, policy_path : pathlib.Path
        The detector's and the decision policy's files, inside the registry.
    model_class, model_hash : str
        The detector's class and :func:`greyanom._persist.model_hash`.
    policy_bound : bool
        Whether the policy was fitted with ``model=`` this detector (only bound versions
        can be promoted).
    metrics : dict
        Figures the version was registered with (e.g. a retraining gate's AUROC).
    data_hash : str or None
        A hash of the data the model was trained on, as given at registration.
    created : str
        Registration time, ISO 8601 in UTC.
    stage : str
        ``"production"`` (served), ``"ready"`` (among the last promoted versions a rollback
        returns to), ``"candidate"`` (registered, never promoted) or ``"archived"``.
    description : str
    """

    name: str
    version: str
    model_path: Path
    policy_path: Path
    model_class: str
    model_hash: str
    policy_bound: bool
    metrics: dict
    data_hash: str | None
    created: str
    stage: str
    description: str = ""

    def to_dict(self):
        """The version as JSON-serialisable values (paths as strings)."""
        out = dataclasses.asdict(self)
        out["model_path"], out["policy_path"] = str(self.model_path), str(self.policy_path)
        return out


def _now():
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _parse_version(version):
    match = _VERSION.match(str(version))
    if match is None:
        raise RegistryError(f"version must be a semantic version like '1.2.0', got {version!r}.")
    return tuple(int(v) for v in match.groups())


def _bumped(latest, bump):
    if latest is None:
        return (1, 0, 0)
    major, minor, patch = latest
    if bump == "major":
        return (major + 1, 0, 0)
    if bump == "minor":
        return (major, minor + 1, 0)
    return (major, minor, patch + 1)


def _atomic_write(path, data):
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ModelRegistry:
    """Versions of named models with their decision policies; promote and roll back.

    A version is a detector file and a :class:`~greyanom.decision.DecisionPolicy` file,
    registered together with its metrics, a data hash and its creation time. Versions are
    numbered semantically from ``1.0.0``; :meth:`promote` makes one the production version
    and :meth:`rollback` returns to the one promoted before it. The last ``keep`` promoted
    versions form the rollback chain that a service keeps loaded (stage ``"ready"``).

    Parameters
    ----------
    root : str or path-like
        The registry folder (created by :meth:`add` when missing).
    keep : int, default=5
        How many of the last promoted versions are kept ready for a rollback.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from greyanom import PCADetector
    >>> from greyanom.decision import DecisionPolicy
    >>> from greyanom.registry import ModelRegistry
    >>> rng = np.random.default_rng(0)
    >>> det = PCADetector(n_components=2).fit(rng.normal(size=(200, 5)))
    >>> policy = DecisionPolicy(review_fpr=0.05, reject_fpr=0.01).fit(det.heldout_scores_, model=det)
    >>> registry = ModelRegistry(tempfile.mkdtemp())
    >>> registry.add(det, policy, name="litho").version
    '1.0.0'
    >>> registry.promote("litho", "1.0.0").stage
    'production'
    """

    def __init__(self, root, *, keep=5):
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep must be a positive integer, got {keep!r}.")
        self.root = Path(root)
        self.keep = keep

    # -- reading ---------------------------------------------------------------------
    def names(self):
        """The registered model names, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "index.json").is_file())

    def versions(self, name):
        """Every version of ``name``, oldest first."""
        index = self._read(name)
        return [self._version(name, index, v) for v in sorted(index["versions"], key=_parse_version)]

    def get(self, name, version):
        """One version of ``name``; ``"production"`` names the promoted one."""
        index = self._read(name)
        if version == "production":
            return self.production(name)
        _parse_version(version)
        if version not in index["versions"]:
            known = ", ".join(sorted(index["versions"], key=_parse_version)) or "none"
            raise UnknownVersionError(f"model {name!r} has no version {version!r}; its versions: {known}.")
        return self._version(name, index, version)

    def production(self, name):
        """The version of ``name`` in production.

        Raises
        ------
        UnknownVersionError
            If ``name`` is unknown or none of its versions was promoted.
        """
        index = self._read(name)
        if not index["stack"]:
            raise UnknownVersionError(f"model {name!r} has no production version yet: promote one first.")
        return self._version(name, index, index["stack"][-1])

    def ready(self, name):
        """The rollback chain: the production version, then the earlier promoted ones (up to ``keep``)."""
        index = self._read(name)
        chain = list(dict.fromkeys(reversed(index["stack"])))  # newest first, a re-promoted version once
        return [self._version(name, index, v) for v in chain[: self.keep]]

    def revision(self, name):
        """A counter that grows with every promote and rollback of ``name`` (0 before any)."""
        return int(self._read(name)["revision"])

    def history(self, name):
        """Promotions and rollbacks of ``name``, oldest first (time, action, version, from, actor, reason)."""
        return [dict(event) for event in self._read(name)["history"]]

    # -- changing --------------------------------------------------------------------
    def add(self, model, policy, *, name, metrics=None, data_hash=None, bump=None, description=""):
        """Register a detector and its decision policy as a new candidate version.

        Parameters
        ----------
        model : fitted detector, str or path-like
            The detector, or a file its ``save`` wrote.
        policy : fitted DecisionPolicy, str or path-like
            Its decision policy. A policy bound to another model is refused; an unbound one
            is registered (``policy_bound=False``) but cannot be promoted.
        name : str
            Letters, digits, ``.``, ``_`` and ``-`` (up to 64).
        metrics : dict, optional
            JSON-serialisable figures kept with the version.
        data_hash : str, optional
            A hash of the training data (e.g. :func:`greyanom.registry.data_hash`).
        bump : {"major", "minor", "patch"}, optional
            Which part of the newest version to increase. By default ``"major"`` when the
            detector class changes, else ``"minor"``. The first version is ``1.0.0``.
        description : str, default=""

        Returns
        -------
        version : ModelVersion
        """
        from greyanom.decision import _checked_pair, _write_model

        self._check_name(name)
        if bump is not None and bump not in _BUMPS:
            raise RegistryError(f"bump must be one of {_BUMPS} or None, got {bump!r}.")
        try:
            metrics = json.loads(json.dumps({} if metrics is None else dict(metrics), allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise RegistryError(f"metrics must be a JSON-serialisable dict of finite values: {exc}") from exc
        if data_hash is not None and not isinstance(data_hash, str):
            raise TypeError(f"data_hash must be a string or None, got {type(data_hash).__name__}.")
        # refuses a policy bound to another model; an unbound one registers but cannot be promoted
        detector, policy, digest = _checked_pair(model, policy, allow_unbound=True)
        bound = getattr(policy, "model_hash_", None) is not None

        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        with self._locked(name):
            index = self._read(name, missing_ok=True)
            latest = max((_parse_version(v) for v in index["versions"]), default=None)
            if bump is None:
                newest_class = index["versions"][".".join(map(str, latest))]["model_class"] if latest else None
                bump = "major" if newest_class not in (None, type(detector).__name__) else "minor"
            version = ".".join(str(v) for v in _bumped(latest, bump))
            target = folder / "versions" / version
            staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=folder))
            try:
                # a file is kept as it is (the bytes its policy was bound to), a detector saved
                _write_model(model, detector, staging / "model.safetensors", digest)
                policy.save(staging / "policy.safetensors")
                (folder / "versions").mkdir(exist_ok=True)
                os.replace(staging, target)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            index["versions"][version] = {
                "model_class": type(detector).__name__,
                "model_hash": digest,
                "policy_bound": bound,
                "metrics": metrics,
                "data_hash": data_hash,
                "created": _now(),
                "description": str(description),
            }
            self._write(name, index)
        return self._version(name, index, version)

    def promote(self, name, version, *, actor=None, reason=None):
        """Make ``version`` of ``name`` the production version; return it.

        Raises
        ------
        UnknownVersionError
            If the name or version is unknown.
        RegistryError
            If the version's policy is not bound to its model (its thresholds could be on
            another score scale), or it is already in production.
        """
        _parse_version(version)
        with self._locked(name):
            index = self._read(name)
            if version not in index["versions"]:
                known = ", ".join(sorted(index["versions"], key=_parse_version)) or "none"
                raise UnknownVersionError(f"model {name!r} has no version {version!r}; its versions: {known}.")
            if not index["versions"][version]["policy_bound"]:
                raise RegistryError(
                    f"{name} {version} cannot be promoted: its decision policy is not bound to its model. "
                    "Refit the policy with DecisionPolicy.fit(scores, model=detector) and register them again."
                )
            current = index["stack"][-1] if index["stack"] else None
            if current == version:
                raise RegistryError(f"{name} {version} is already in production.")
            index["stack"].append(version)
            self._event(index, "promote", version, current, actor, reason)
            self._write(name, index)
        return self._version(name, index, version)

    def rollback(self, name, *, actor=None, reason=None, if_production=None):
        """Return ``name`` to the version promoted before the current one; return that version.

        ``if_production`` (a version) makes the rollback conditional: it happens only while
        that version is in production, checked under the registry's lock (so two services
        whose guardrails fire together roll back once, not twice).

        Raises
        ------
        RegistryError
            If there is no earlier promoted version to return to, or ``if_production`` is
            not the production version.
        """
        with self._locked(name):
            index = self._read(name)
            if if_production is not None and (not index["stack"] or index["stack"][-1] != if_production):
                raise RegistryError(
                    f"{name} {if_production} is not in production "
                    f"(production: {index['stack'][-1] if index['stack'] else 'none'}); not rolled back."
                )
            if len(index["stack"]) < 2:
                raise RegistryError(
                    f"model {name!r} has no earlier production version to roll back to "
                    f"(production: {index['stack'][-1] if index['stack'] else 'none'})."
                )
            current = index["stack"].pop()
            self._event(index, "rollback", index["stack"][-1], current, actor, reason)
            self._write(name, index)
        return self._version(name, index, index["stack"][-1])

    # -- internals -------------------------------------------------------------------
    @staticmethod
    def _check_name(name):
        if not isinstance(name, str) or _NAME.match(name) is None:
            raise RegistryError(
                f"name must be 1-64 letters, digits, '.', '_' or '-' (starting with a letter or digit), got {name!r}."
            )

    def _index_path(self, name):
        self._check_name(name)
        return self.root / name / "index.json"

    def _read(self, name, *, missing_ok=False):
        path = self._index_path(name)
        if not path.is_file():
            if missing_ok:
                return {"format": _INDEX_FORMAT, "format_version": _INDEX_VERSION, "name": name,
                        "revision": 0, "versions": {}, "stack": [], "history": []}
            known = ", ".join(self.names()) or "none"
            raise UnknownVersionError(f"registry {str(self.root)!r} has no model named {name!r}; its models: {known}.")
        try:
            index = json.loads(path.read_text(encoding="utf-8"))
            if index.get("format") != _INDEX_FORMAT:
                raise ValueError("not a greyanom registry index")
            if int(index.get("format_version", 0)) > _INDEX_VERSION:
                raise ValueError(f"format version {index['format_version']} is newer than this greyanom reads")
            for key in ("revision", "versions", "stack", "history"):
                index[key]  # noqa: B018  (presence check)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise RegistryError(f"{str(path)!r} is not a readable greyanom registry index: {exc}") from exc
        return index

    def _write(self, name, index):
        _atomic_write(self._index_path(name), json.dumps(index, indent=1, sort_keys=True).encode("utf-8"))

    @contextlib.contextmanager
    def _locked(self, name):
        self._check_name(name)
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / ".lock", "a+b") as handle:
            try:
                import fcntl
            except ImportError:  # pragma: no cover - not POSIX: no inter-process lock
                yield
                return
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    @staticmethod
    def _event(index, action, version, previous, actor, reason):
        index["revision"] = int(index["revision"]) + 1
        index["history"].append({
            "time": _now(), "action": action, "version": version, "from": previous,
            "actor": actor, "reason": reason, "revision": index["revision"],
        })

    def _version(self, name, index, version):
        meta = index["versions"][version]
        stack = index["stack"]
        if stack and stack[-1] == version:
            stage = "production"
        elif version in list(dict.fromkeys(reversed(stack)))[: self.keep]:
            stage = "ready"
        elif version in stack:
            stage = "archived"
        else:
            stage = "candidate"
        folder = self.root / name / "versions" / version
        return ModelVersion(
            name=name, version=version, model_path=folder / "model.safetensors",
            policy_path=folder / "policy.safetensors", model_class=meta["model_class"],
            model_hash=meta["model_hash"], policy_bound=bool(meta["policy_bound"]), metrics=dict(meta["metrics"]),
            data_hash=meta["data_hash"], created=meta["created"], stage=stage,
            description=meta.get("description", ""),
        )
