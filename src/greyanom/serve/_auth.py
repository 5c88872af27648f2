"""Access control of the inspection service: bearer tokens with roles, browser sessions.

A token file holds one token a line, ``TOKEN ROLE [NAME]`` separated by whitespace
(``#`` starts a comment). Roles:

* ``inspect``: ``POST /api/v1/inspect``;
* ``review``: the records, heatmaps and images, the review page, posting reviews, the
  comparison of a candidate with production (``/api/v1/compare``, ``GET /api/v1/rollout``);
* ``admin``: everything (stats, ``/metrics``, the audit trail, ``/docs``, starting and
  stopping a shadow or canary candidate).

Roles are not otherwise hierarchical: a ``review`` token cannot inspect. Every route but
``/healthz`` (and the review page's login form) needs ``Authorization: Bearer <token>``
or the session cookie the login form sets: 401 without, 403 for the wrong role. Tokens
are compared with :func:`hmac.compare_digest` and never logged; the cookie holds a
token *id* (a hash prefix), an expiry and an HMAC, not the token.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ROLES", "Principal", "TokenStore", "AuthMiddleware", "required_roles", "SESSION_COOKIE", "LOCAL", "is_loopback",
    "token_store",
]

logger = logging.getLogger("greyanom.serve")

ROLES = ("inspect", "review", "admin")
#: Name of the browser session cookie.
SESSION_COOKIE = "greyanom_session"
#: Session lifetime in seconds (a working shift).
SESSION_SECONDS = 8 * 3600
#: Tokens shorter than this are refused (a guessable token is no access control).
MIN_TOKEN_LENGTH = 16
#: Header a cookie-authenticated POST must carry (a cross-site form cannot set it).
CSRF_HEADER = "x-requested-with"
_ANY = "any"


@dataclass(frozen=True)
class Principal:
    """Who is asking: the token's name and role."""

    name: str
    role: str

    def may(self, roles):
        """Whether this principal may use a route open to ``roles`` (admin may use all)."""
        return roles == _ANY or self.role == "admin" or self.role in roles


#: The principal of a service without a token file (loopback only): the local operator.
LOCAL = Principal("local", "admin")


def required_roles(method, path):
    """The roles a request needs: None (open), ``"any"`` valid token, or a tuple of roles."""
    if path == "/healthz" or (path == "/review" and method in ("GET", "HEAD")):
        return None  # the page shows its login form to a browser without a session
    if path in ("/review/login", "/review/logout") and method == "POST":
        return None
    if path == "/api/v1/inspect":
        return ("inspect",)
    if path == "/api/v1/model":
        return _ANY
    if path == "/api/v1/compare" or (path == "/api/v1/rollout" and method in ("GET", "HEAD")):
        return ("review",)
    if path.startswith(("/api/v1/inspections", "/api/v1/heatmaps/", "/api/v1/review/")):
        return ("review",)
    return ("admin",)  # /metrics, /api/v1/stats, /api/v1/audit, /docs, /openapi.json, unknown routes


def _token_id(token):
    return hashlib.sha256(token.encode("utf-8")).hexdigest()[:24]


class TokenStore:
    """The tokens of a token file, their roles and names, and signed session cookies.

    Parameters
    ----------
    entries : list of (line, token, role, name)
        ``line`` numbers the entry in messages (never the token).
    source : str, default="the token list"
        Where the entries come from, for messages.

    Raises
    ------
    ValueError
        An unknown role, a token shorter than 16 characters, a repeated token or name, or
        no token at all.
    """

    def __init__(self, entries, *, source="the token list"):
        if not entries:
            raise ValueError(f"{source} holds no token.")
        self._tokens = []
        self._by_id = {}
        names = set()
        for lineno, token, role, name in entries:
            where = f"{source}, line {lineno}"
            if role not in ROLES:
                raise ValueError(f"{where}: unknown role {role!r}; the roles are {', '.join(ROLES)}.")
            if len(token) < MIN_TOKEN_LENGTH:
                raise ValueError(f"{where}: the token is shorter than {MIN_TOKEN_LENGTH} characters.")
            tid = _token_id(token)
            if tid in self._by_id:
                raise ValueError(f"{where}: the token repeats an earlier line's.")
            if name in names:
                raise ValueError(f"{where}: the name {name!r} repeats an earlier line's.")
            names.add(name)
            principal = Principal(name, role)
            self._tokens.append((token.encode("utf-8"), tid, principal))
            self._by_id[tid] = principal
        material = b"\0".join(t for t, _, _ in sorted(self._tokens))
        # the cookie key follows from all tokens together: workers share it, editing the
        # file ends every session, and one token's holder cannot sign another's session
        self._key = hashlib.sha256(b"greyanom-session\0" + material).digest()

    @classmethod
    def from_file(cls, path):
        """Read a token file (``TOKEN ROLE [NAME]`` a line); warn if others can read it."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"token file {str(path)!r} does not exist or is not a file.")
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            logger.warning("the token file %s can be read by other users; chmod 600 it.", path)
        entries = []
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            fields = line.split("#", 1)[0].split()
            if not fields:
                continue
            if len(fields) not in (2, 3):
                raise ValueError(
                    f"token file {str(path)!r}, line {lineno}: expected 'TOKEN ROLE [NAME]', got {len(fields)} fields."
                )
            token, role = fields[0], fields[1]
            name = fields[2] if len(fields) == 3 else f"{role}-{lineno}"
            entries.append((lineno, token, role, name))
        return cls(entries, source=f"token file {str(path)!r}")

    def authenticate(self, token):
        """The principal of a bearer token, or None. Compares with every token in constant time."""
        if not token:
            return None
        given = token.encode("utf-8")
        found = None
        for known, _, principal in self._tokens:
            if hmac.compare_digest(known, given) and found is None:
                found = principal
        return found

    def session_cookie(self, token, *, now=None):
        """A signed session cookie value for a valid token: its id, an expiry and an HMAC, not the token."""
        expires = int((time.time() if now is None else now) + SESSION_SECONDS)
        payload = f"{_token_id(token)}.{expires}"
        return f"{payload}.{self._sign(payload)}"

    def session(self, cookie, *, now=None):
        """The principal of a session cookie, or None if it is forged, expired or its token gone."""
        try:
            tid, expires, signature = cookie.split(".")
            expires = int(expires)
        except (AttributeError, ValueError):
            return None
        if not hmac.compare_digest(signature, self._sign(f"{tid}.{expires}")):
            return None
        if expires < (time.time() if now is None else now):
            return None
        return self._by_id.get(tid)

    def _sign(self, payload):
        return hmac.new(self._key, payload.encode("ascii"), hashlib.sha256).hexdigest()


def _header(scope, name):
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def _cookie(scope, name):
    raw = _header(scope, b"cookie")
    if not raw:
        return None
    from http.cookies import SimpleCookie

    jar = SimpleCookie()
    try:
        jar.load(raw)
    except Exception:  # a malformed Cookie header is no session
        return None
    return jar[name].value if name in jar else None


class AuthMiddleware:
    """ASGI middleware: authenticate every request, check the route's role, or answer 401/403.

    The principal is put in ``request.state.principal`` for the routes (the reviewer's
    name, the audit trail).
    """

    def __init__(self, app, tokens, on_denied=None):
        self.app = app
        self.tokens = tokens
        self.on_denied = on_denied

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        method, path = scope["method"], scope["path"]
        principal, via_cookie = None, False
        auth = _header(scope, b"authorization")
        if auth is not None:
            scheme, _, credential = auth.partition(" ")
            if scheme.lower() == "bearer":
                principal = self.tokens.authenticate(credential.strip())
        else:
            cookie = _cookie(scope, SESSION_COOKIE)
            if cookie:
                principal, via_cookie = self.tokens.session(cookie), True
        scope.setdefault("state", {})["principal"] = principal
        roles = required_roles(method, path)
        if roles is not None:
            denied = None
            if principal is None:
                denied = (401, "unauthorized", "this route needs 'Authorization: Bearer <token>' (or a review-page "
                          "session); the token is missing, unknown or expired.")
            elif not principal.may(roles):
                need = "any role" if roles == _ANY else " or ".join(roles + ("admin",))
                denied = (403, "forbidden", f"the token of {principal.name!r} has the role {principal.role!r}; "
                          f"{method} {path} needs {need}.")
            elif via_cookie and method not in ("GET", "HEAD") and _header(scope, CSRF_HEADER.encode()) is None:
                denied = (403, "forbidden", f"a session-cookie {method} must carry the {CSRF_HEADER} header.")
            if denied is not None:
                if self.on_denied is not None:
                    self.on_denied(denied[0])
                return await self._deny(scope, receive, send, *denied)
        return await self.app(scope, receive, send)

    @staticmethod
    async def _deny(scope, receive, send, status, code, message):
        from starlette.responses import JSONResponse

        headers = {"WWW-Authenticate": 'Bearer realm="greyanom"'} if status == 401 else None
        response = JSONResponse({"error": code, "message": message, "status": status}, status_code=status,
                                headers=headers)
        await response(scope, receive, send)


def is_loopback(host):
    """Whether ``host`` names only the loopback interface."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def token_store(token_file):
    """A :class:`TokenStore` from a path, or None for None (the environment names no file)."""
    return None if token_file is None else TokenStore.from_file(os.fspath(token_file))
