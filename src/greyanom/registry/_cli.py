"""``greyanom registry DIR ...`` and ``greyanom retrain``: the command line over the model registry.

:func:`add_parsers` adds both commands to the ``greyanom`` parser; each parsed namespace
carries its ``handler``, which :func:`greyanom.cli.main` calls. Bad input (an unknown name or
version, an unbound policy, nothing to roll back to, a malformed option) ends in one line
on stderr and exit status 2, as argparse's own errors do; a retraining whose candidate fails
its gate prints the report and exits with status 1.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

__all__ = ["add_parsers", "format_versions", "format_history"]


def add_parsers(sub):
    """Add the ``registry`` and ``retrain`` commands to the sub-parsers of ``greyanom``."""
    _add_registry_parser(sub)
    _add_retrain_parser(sub)


def _add_registry_parser(sub):
    registry = sub.add_parser(
        "registry",
        help="register, list, promote and roll back model versions (greyanom.registry)",
        description=(
            "A folder of named models, each with semantic versions (1.0.0 first): a detector file and "
            "its decision policy, with metrics, a data hash and the creation time. 'promote' makes a "
            "version the one 'greyanom serve --registry DIR --name N' serves, 'rollback' returns to the "
            "one promoted before it; the last 5 promoted versions are kept ready."
        ),
    )
    registry.add_argument("root", metavar="DIR", help="the registry folder (created by 'add')")
    registry.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    actions = registry.add_subparsers(dest="registry_action", metavar="ACTION", required=True)

    add = actions.add_parser("add", help="register a detector and its decision policy as a candidate version")
    add.add_argument("model", metavar="MODEL", help="model file written by a detector's save()")
    add.add_argument("policy", metavar="POLICY",
                     help="decision policy file written by DecisionPolicy.save(), fitted with model= this model")
    add.add_argument("--name", required=True, metavar="N", help="the model's name (letters, digits, '.', '_', '-')")
    add.add_argument("--metrics", default=None, metavar="JSON",
                     help="figures kept with the version: a JSON object, or a file holding one")
    add.add_argument("--data-hash", default=None, metavar="H", help="a hash of the training data")
    add.add_argument("--bump", choices=("major", "minor", "patch"), default=None,
                     help="which part of the newest version to increase (default: major when the detector "
                     "class changes, else minor)")
    add.add_argument("--description", default="", metavar="TEXT", help="a note kept with the version")

    ls = actions.add_parser("list", help="the versions with their stage, class, creation time and metrics")
    ls.add_argument("--name", default=None, metavar="N", help="only this model (default: every model)")
    ls.add_argument("--json", action="store_true", help="JSON instead of a table")

    for action, text in (("promote", "make a version the production version"),
                         ("rollback", "return to the version promoted before the current one")):
        parser = actions.add_parser(action, help=text)
        parser.add_argument("name", metavar="N", help="the model's name")
        if action == "promote":
            parser.add_argument("version", metavar="VERSION", help="the version to promote, e.g. 1.2.0")
        parser.add_argument("--actor", default=None, metavar="A", help="who does it (kept in the history)")
        parser.add_argument("--reason", default=None, metavar="R", help="why (kept in the history)")

    history = actions.add_parser("history", help="the promotions and rollbacks of a model, oldest first")
    history.add_argument("name", metavar="N", help="the model's name")
    history.add_argument("--json", action="store_true", help="JSON instead of a table")
    registry.set_defaults(handler=_run_registry, subparser=registry)


def _add_retrain_parser(sub):
    retrain = sub.add_parser(
        "retrain",
        help="retrain the production model on kept PASS images and register it as a candidate if it passes a gate",
        description=(
            "Pull the kept PASS images of the records database since a time (reviewed-normal ones first), "
            "drop the unreadable, the duplicates and those the production model would REJECT, train a "
            "detector of the production model's class with its parameters, calibrate its decision policy "
            "with the production policy's rates, evaluate both models on the reviewed defects and normals, "
            "and register the new one as a candidate when it is not worse than production by more than the "
            "gate's tolerances. Never promotes. Exit status 0 registered, 1 gate failed, 2 bad input."
        ),
    )
    retrain.add_argument("--db", required=True, metavar="URL", help="SQLAlchemy URL of the records database")
    retrain.add_argument("--registry", required=True, metavar="DIR", help="the registry folder")
    retrain.add_argument("--name", required=True, metavar="N", help="the model's name in the registry")
    retrain.add_argument("--since", default="90d", metavar="AGE",
                         help="inspections newer than this: 90d, 12h, 30m, or an ISO 8601 time (default: %(default)s)")
    retrain.add_argument("--min-images", type=int, default=100, metavar="K",
                         help="fewest usable training images (default: %(default)s)")
    retrain.add_argument("--min-defects", type=int, default=10, metavar="K",
                         help="fewest reviewed defects (and reviewed normals) to judge the candidate by "
                         "(default: %(default)s)")
    retrain.add_argument("--max-images", type=int, default=None, metavar="K",
                         help="most training images, reviewed-normal ones first, then the newest (default: all)")
    retrain.add_argument("--actor", default=None, metavar="A", help="who retrains (kept in the description)")
    retrain.add_argument("--random-state", type=int, default=0, metavar="S",
                         help="seed of the split of the reviewed normals (default: %(default)s)")
    retrain.add_argument("--json", action="store_true", help="print the report as JSON")
    retrain.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    retrain.set_defaults(handler=_run_retrain, subparser=retrain)


# -- formatting --------------------------------------------------------------------------
def _metric_text(metrics, limit=4):
    items = []
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        items.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
    more = len(items) - limit
    return " ".join(items[:limit]) + (f" (+{more})" if more > 0 else "")


def _table(header, rows):
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    return "\n".join(lines)


def format_versions(versions):
    """A table of :class:`~greyanom.registry.ModelVersion` objects: name, version, stage, class, created, metrics."""
    rows = [(v.name, v.version, v.stage + ("" if v.policy_bound else " (unbound)"), v.model_class,
             v.created, _metric_text(v.metrics)) for v in versions]
    return _table(("name", "version", "stage", "class", "created", "metrics"), rows)


def format_history(events):
    """A table of :meth:`~greyanom.registry.ModelRegistry.history` events."""
    rows = [(e["time"], e["action"], e["version"], e["from"] or "-", e["actor"] or "-", e["reason"] or "")
            for e in events]
    return _table(("time", "action", "version", "from", "actor", "reason"), rows)


# -- the commands ------------------------------------------------------------------------
def _fail(args, message):
    args.subparser.error(message)  # one line on stderr, exit status 2


def _read_metrics(args, text):
    if text is None:
        return None
    path = Path(text)
    try:
        if not text.lstrip().startswith("{") and path.is_file():
            text = path.read_text(encoding="utf-8")
        metrics = json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        _fail(args, f"--metrics must be a JSON object or a file holding one: {exc}")
    if not isinstance(metrics, dict):
        _fail(args, f"--metrics must be a JSON object, got {type(metrics).__name__}.")
    return metrics


def _run_registry(args):
    from greyanom.registry import ModelRegistry, RegistryError

    registry = ModelRegistry(args.root)
    action = args.registry_action
    if action != "add" and not Path(args.root).is_dir():
        _fail(args, f"registry {args.root!r} is not a folder (register a first version with 'add').")
    try:
        if action == "add":
            for label in ("model", "policy"):
                if not Path(getattr(args, label)).is_file():
                    _fail(args, f"{label.upper()} {getattr(args, label)!r} is not a file.")
            metrics = _read_metrics(args, args.metrics)
            version = registry.add(args.model, args.policy, name=args.name, metrics=metrics,
                                   data_hash=args.data_hash, bump=args.bump, description=args.description)
            print(f"registered {version.name} {version.version} ({version.stage}): {version.model_class} "
                  f"{version.model_hash[:19]}")
            if not version.policy_bound:
                print(f"note: the policy is not bound to the model, so {version.name} {version.version} cannot be "
                      "promoted; refit it with DecisionPolicy.fit(scores, model=detector).")
        elif action == "list":
            names = [args.name] if args.name is not None else registry.names()
            versions = [v for name in names for v in registry.versions(name)]
            if args.json:
                print(json.dumps([v.to_dict() for v in versions], indent=1))
            elif versions:
                print(format_versions(versions))
            else:
                print(f"registry {args.root!r} holds no model.")
        elif action == "promote":
            version = registry.promote(args.name, args.version, actor=args.actor, reason=args.reason)
            print(f"promoted {version.name} {version.version} to production (revision {registry.revision(args.name)})")
        elif action == "rollback":
            version = registry.rollback(args.name, actor=args.actor, reason=args.reason)
            before = registry.history(args.name)[-1]["from"]
            print(f"rolled {version.name} back from {before} to {version.version} "
                  f"(revision {registry.revision(args.name)})")
        elif action == "history":
            events = registry.history(args.name)
            if args.json:
                print(json.dumps(events, indent=1))
            else:
                print(format_history(events) if events else f"{args.name}: no promotion yet.")
    except (RegistryError, TypeError, ValueError, OSError) as exc:
        _fail(args, str(exc))
    return 0


def _run_retrain(args):
    from greyanom.registry._retrain import RetrainError, parse_since, retrain

    try:
        since = parse_since(args.since)
    except ValueError as exc:
        _fail(args, f"--since: {exc}")
    for option in ("min_images", "min_defects", "max_images"):
        value = getattr(args, option)
        if value is not None and value < 1:
            _fail(args, f"--{option.replace('_', '-')} must be at least 1, got {value}.")
    if not Path(args.registry).is_dir():
        _fail(args, f"--registry {args.registry!r} is not a folder.")
    try:
        report = retrain(args.db, args.registry, name=args.name, since=since, min_images=args.min_images,
                         min_defects=args.min_defects, max_images=args.max_images, actor=args.actor,
                         random_state=args.random_state)
    except (RetrainError, ValueError, TypeError, ImportError) as exc:
        _fail(args, str(exc))
    print(json.dumps(report.to_dict(), indent=1) if args.json else report.format())
    if not report.registered:
        print(f"greyanom retrain: {report.message}", file=sys.stderr)
        return 1
    return 0

