"""Access control, human reviews, the review queue, stats and the audit trail (in process)."""

import io
import logging

import numpy as np
import pytest
from serve_support import models, normal_images, png_bytes, to_uint8  # noqa: F401

from fastapi.testclient import TestClient  # noqa: E402

import greyanom  # noqa: E402
from greyanom.decision import DecisionPolicy  # noqa: E402
from greyanom.serve import create_app  # noqa: E402
from greyanom.serve._auth import SESSION_COOKIE, TokenStore  # noqa: E402

TOKENS = {
    "inspect": "tok-inspect-0123456789abcdef",
    "alice": "tok-alice-review-0123456789ab",
    "bob": "tok-bob-review-0123456789abcd",
    "admin": "tok-admin-0123456789abcdef01",
}


def _auth(who):
    return {"Authorization": f"Bearer {TOKENS[who]}"}


def _images():
    normal = normal_images(1, 99)[0]
    mild = normal.copy()
    mild[12:18, 12:18] += 0.25
    strong = normal.copy()
    strong[8:24, 8:24] = 1.0
    return {name: png_bytes(to_uint8(im)) for name, im in (("normal", normal), ("mild", mild), ("strong", strong))}


@pytest.fixture(scope="module")
def setup(models, tmp_path_factory):
    """The PaDiM model, a policy bound to it that sends the three images to PASS/REVIEW/REJECT, a token file."""
    folder = tmp_path_factory.mktemp("review")
    model_path = models["padim"][0]
    det = greyanom.load(model_path)
    images = _images()
    a, b, c = (float(det.score(np.asarray([np.asarray(_decode(images[k]))]))[0]) for k in ("normal", "mild", "strong"))
    assert a < b < c
    # 35 calibration scores between normal and mild, 5 between mild and strong (n = 40):
    # p(normal) >= 36/41 PASS, p(mild) = 6/41 in (0.05, 0.2] REVIEW, p(strong) = 1/41 REJECT
    cal = np.r_[np.linspace(a, b, 37)[1:-1][:35], np.linspace(b, c, 7)[1:-1]]
    policy = DecisionPolicy(review_fpr=0.2, reject_fpr=0.05).fit(cal, model=model_path)
    policy_path = policy.save(folder / "policy.json")
    token_file = folder / "tokens.txt"
    token_file.write_text(
        "# token role name\n"
        f"{TOKENS['inspect']} inspect line-camera-3\n"
        f"{TOKENS['alice']}  review alice\n"
        f"{TOKENS['bob']}\treview bob   # second inspector\n"
        f"{TOKENS['admin']} admin\n"
    )
    token_file.chmod(0o600)
    return {"model": model_path, "policy": policy_path, "tokens": token_file, "images": images, "folder": folder}


def _decode(png):
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)), np.float32) / 255


@pytest.fixture
def client(setup, tmp_path):
    app = create_app(setup["model"], setup["policy"], token_file=setup["tokens"],
                     db_url=f"sqlite:///{tmp_path / 'records.db'}")
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def _inspect(client, body, wafer="W1", point=1, who="inspect"):
    r = client.post("/api/v1/inspect", params={"wafer_id": wafer, "inspection_point": point}, content=body,
                    headers=_auth(who))
    assert r.status_code == 200, r.text
    return r.json()


def _three(client, setup, wafer="W1"):
    return {k: _inspect(client, setup["images"][k], wafer=wafer, point=i)
            for i, k in enumerate(("normal", "mild", "strong"))}


def test_routes_need_a_token_and_the_right_role(client, setup):
    done = _three(client, setup)
    assert [done[k]["decision"] for k in ("normal", "mild", "strong")] == ["PASS", "REVIEW", "REJECT"]
    rid = done["mild"]["id"]
    routes = [
        ("POST", "/api/v1/inspect?wafer_id=W&inspection_point=1", {"inspect", "admin"}),
        ("GET", "/api/v1/inspections", {"review", "admin"}),
        ("GET", f"/api/v1/inspections/{rid}", {"review", "admin"}),
        ("GET", f"/api/v1/inspections/{rid}/image.png", {"review", "admin"}),
        ("GET", f"/api/v1/heatmaps/{rid}.png", {"review", "admin"}),
        ("GET", "/api/v1/review/queue", {"review", "admin"}),
        ("POST", f"/api/v1/inspections/{rid}/review", {"review", "admin"}),
        ("GET", "/api/v1/stats", {"admin"}),
        ("GET", "/api/v1/audit", {"admin"}),
        ("GET", "/metrics", {"admin"}),
        ("GET", "/docs", {"admin"}),
        ("GET", "/openapi.json", {"admin"}),
        ("GET", "/api/v1/model", {"inspect", "review", "admin"}),
    ]
    who_role = {"inspect": "inspect", "alice": "review", "admin": "admin"}
    for method, url, allowed in routes:
        body = {"content": setup["images"]["normal"]} if "inspect?" in url else {}
        if url.endswith("/review"):
            body = {"json": {"verdict": "defect"}}
        r = client.request(method, url, **body)
        assert r.status_code == 401, (url, r.text)
        assert r.json()["error"] == "unauthorized" and r.headers["www-authenticate"].startswith("Bearer")
        r = client.request(method, url, headers={"Authorization": "Bearer not-a-known-token-at-all"}, **body)
        assert r.status_code == 401, url
        for who, role in who_role.items():
            r = client.request(method, url, headers=_auth(who), **body)
            if role in allowed:
                assert r.status_code in (200, 201), (url, who, r.text)
            else:
                assert r.status_code == 403, (url, who, r.text)
                assert r.json()["error"] == "forbidden" and role in r.json()["message"]
    assert client.get("/healthz").status_code == 200  # open, for the load balancer
    assert client.get("/no/such/route").status_code == 401  # no route is revealed without a token
    assert client.get("/no/such/route", headers=_auth("admin")).status_code == 404


def test_review_bad_inputs(client, setup):
    rid = _three(client, setup)["mild"]["id"]
    url = f"/api/v1/inspections/{rid}/review"
    cases = [
        ({"verdict": "maybe"}, 422, "verdict"),
        ({"note": "no verdict"}, 422, "verdict"),
        ({"verdict": "defect", "inspector": "mallory"}, 422, "inspector"),  # the token names the inspector
        ({"verdict": "defect", "note": "x" * 2001}, 422, "note"),
    ]
    for body, status, word in cases:
        r = client.post(url, json=body, headers=_auth("alice"))
        assert r.status_code == status, r.text
        assert r.json()["error"] == "bad_parameters" and word in r.json()["message"]
    r = client.post(url, content=b"not json", headers={**_auth("alice"), "content-type": "application/json"})
    assert r.status_code == 422
    r = client.post("/api/v1/inspections/999999/review", json={"verdict": "normal"}, headers=_auth("alice"))
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    assert client.get("/api/v1/inspections/999999", headers=_auth("alice")).status_code == 404
    assert client.get("/api/v1/inspections/999999/image.png", headers=_auth("alice")).status_code == 404
    r = client.get("/api/v1/review/queue", params={"since": "yesterday"}, headers=_auth("alice"))
    assert r.status_code == 422 and "since" in r.json()["message"]
    r = client.get("/api/v1/review/queue", params={"decision": "MAYBE"}, headers=_auth("alice"))
    assert r.status_code == 422
    # nothing of that was stored or audited
    assert client.get("/api/v1/stats", headers=_auth("admin")).json()["reviews"] == 0
    assert client.get("/api/v1/audit", headers=_auth("admin")).json()["events"] == []


def test_reviews_queue_stats_metrics_and_audit(client, setup):
    first = _three(client, setup, wafer="W1")
    second = _three(client, setup, wafer="W2")
    # images: REVIEW and REJECT kept, PASS not (no --keep-images)
    for done in (first, second):
        assert client.get(f"/api/v1/inspections/{done['normal']['id']}/image.png", headers=_auth("alice")).status_code == 404
        for k in ("mild", "strong"):
            r = client.get(f"/api/v1/inspections/{done[k]['id']}/image.png", headers=_auth("alice"))
            assert r.status_code == 200 and r.content == setup["images"][k]
    # the queue: every REVIEW (no audit sample), oldest first; filters
    queue = client.get("/api/v1/review/queue", headers=_auth("alice")).json()["inspections"]
    assert [q["id"] for q in queue] == [first["mild"]["id"], second["mild"]["id"]]
    assert queue[0]["n_reviews"] == 0
    only_w2 = client.get("/api/v1/review/queue", params={"wafer_id": "W2"}, headers=_auth("alice")).json()
    assert [q["id"] for q in only_w2["inspections"]] == [second["mild"]["id"]]
    later = client.get("/api/v1/review/queue", params={"since": "2999-01-01T00:00"}, headers=_auth("alice")).json()
    assert later["inspections"] == []
    rejects = client.get("/api/v1/review/queue", params={"decision": "REJECT"}, headers=_auth("alice")).json()
    assert rejects["inspections"] == []  # REJECT is queued only in the audit sample

    def review(who, inspection_id, verdict, note=""):
        r = client.post(f"/api/v1/inspections/{inspection_id}/review", json={"verdict": verdict, "note": note},
                        headers=_auth(who))
        assert r.status_code == 201, r.text
        return r.json()

    rev = review("alice", first["mild"]["id"], "defect", "scratch at the edge")
    assert rev["inspector"] == "alice" and rev["verdict"] == "defect" and rev["note"] == "scratch at the edge"
    review("bob", first["mild"]["id"], "normal")
    review("alice", first["strong"]["id"], "normal")  # overrides a REJECT: an estimated false reject
    review("bob", second["strong"]["id"], "defect")
    review("bob", second["strong"]["id"], "normal")  # bob changes his mind: the latest counts, both kept
    record = client.get(f"/api/v1/inspections/{second['strong']['id']}", headers=_auth("bob")).json()
    assert [r["verdict"] for r in record["reviews"]] == ["defect", "normal"]
    assert record["image_url"].endswith("/image.png")
    queue = client.get("/api/v1/review/queue", headers=_auth("alice")).json()["inspections"]
    assert [q["id"] for q in queue] == [second["mild"]["id"]]  # reviewed ones leave the queue
    everything = client.get("/api/v1/review/queue", params={"include_reviewed": True}, headers=_auth("alice"))
    assert [q["n_reviews"] for q in everything.json()["inspections"]] == [2, 0]

    stats = client.get("/api/v1/stats", headers=_auth("admin")).json()
    assert stats["decisions"] == {"PASS": 2, "REVIEW": 2, "REJECT": 2}
    assert stats["reviews"] == 5 and stats["queued"] == 2 and stats["reviewed"] == 1
    assert stats["reviewed_fraction"] == 0.5
    assert stats["reviewed_rejects"] == 2 and stats["reject_override_rate"] == 1.0
    assert stats["inspector_pairs"] == 1 and stats["inspector_agreement"] == 0.0  # alice defect, bob normal
    assert stats["pass_miss_rate"] is None  # no PASS was audited
    text = client.get("/metrics", headers=_auth("admin")).text
    assert "greyanom_review_reject_override_rate 1.0" in text
    assert "greyanom_review_inspector_agreement 0.0" in text
    assert "greyanom_review_reviewed_fraction 0.5" in text
    assert "greyanom_review_pass_miss_rate NaN" in text

    events = client.get("/api/v1/audit", params={"action": "review"}, headers=_auth("admin")).json()["events"]
    assert len(events) == 5
    newest = events[0]
    assert newest["actor"] == "bob" and newest["role"] == "review" and newest["action"] == "review"
    assert newest["target"] == f"inspection:{second['strong']['id']}"
    assert newest["detail"]["verdict"] == "normal" and newest["detail"]["decision"] == "REJECT"
    assert set(newest) == {"id", "created_at", "actor", "role", "action", "target", "detail"}
    by_alice = client.get("/api/v1/audit", params={"actor": "alice"}, headers=_auth("admin")).json()["events"]
    assert len(by_alice) == 2


def test_audit_sample_and_keep_images(setup, tmp_path):
    app = create_app(setup["model"], setup["policy"], token_file=setup["tokens"], audit_sample=1.0,
                     keep_images=True, random_state=0, db_url=f"sqlite:///{tmp_path / 'r.db'}")
    with TestClient(app) as client:
        done = _three(client, setup)
        queue = client.get("/api/v1/review/queue", headers=_auth("alice")).json()["inspections"]
        assert [q["decision"] for q in queue] == ["PASS", "REVIEW", "REJECT"]
        r = client.get(f"/api/v1/inspections/{done['normal']['id']}/image.png", headers=_auth("alice"))
        assert r.status_code == 200
        r = client.post(f"/api/v1/inspections/{done['normal']['id']}/review", json={"verdict": "defect"},
                        headers=_auth("admin"))
        assert r.status_code == 201 and r.json()["inspector"] == "admin-5"  # the default name: role-line
        assert client.get("/api/v1/stats", headers=_auth("admin")).json()["pass_miss_rate"] == 1.0
    with pytest.raises(ValueError, match="audit_sample"):
        create_app(setup["model"], setup["policy"], audit_sample=1.5, db_url="sqlite://")


def test_session_cookie_login(client, setup):
    rid = _three(client, setup)["mild"]["id"]
    page = client.get("/review")
    assert page.status_code == 200 and "name='token'" in page.text and "inspection" not in page.text
    r = client.post("/review/login", content=f"token={TOKENS['inspect']}",
                    headers={"content-type": "application/x-www-form-urlencoded"}, follow_redirects=False)
    assert r.status_code == 403 and SESSION_COOKIE not in r.headers.get("set-cookie", "")
    r = client.post("/review/login", content="token=wrong-token-0123456789",
                    headers={"content-type": "application/x-www-form-urlencoded"}, follow_redirects=False)
    assert r.status_code == 401 and "Unknown token" in r.text
    r = client.post("/review/login", content="token=" + "x" * 5000,
                    headers={"content-type": "application/x-www-form-urlencoded"}, follow_redirects=False)
    assert r.status_code == 413
    r = client.post("/review/login", content=f"token={TOKENS['alice']}",
                    headers={"content-type": "application/x-www-form-urlencoded"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/review"
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Max-Age=28800" in cookie
    assert TOKENS["alice"] not in cookie
    page = client.get("/review")  # the TestClient keeps the cookie
    assert page.status_code == 200 and "alice (review)" in page.text and f"data-id='{rid}'" in page.text
    assert client.get(f"/api/v1/heatmaps/{rid}.png").status_code == 200
    # a cookie POST needs the header a cross-site form cannot send
    assert client.post(f"/api/v1/inspections/{rid}/review", json={"verdict": "defect"}).status_code == 403
    r = client.post(f"/api/v1/inspections/{rid}/review", json={"verdict": "defect"},
                    headers={"X-Requested-With": "greyanom-review"})
    assert r.status_code == 201 and r.json()["inspector"] == "alice"
    assert client.get("/api/v1/stats").status_code == 403  # the session has alice's role
    logins = client.get("/api/v1/audit", params={"action": "login"}, headers=_auth("admin")).json()["events"]
    assert [(e["actor"], e["target"]) for e in logins] == [("alice", "review-page")]
    client.post("/review/logout", follow_redirects=False)
    assert client.get(f"/api/v1/heatmaps/{rid}.png").status_code == 401
    client.cookies.set(SESSION_COOKIE, "0" * 24 + ".99999999999." + "0" * 64)  # forged
    assert client.get(f"/api/v1/heatmaps/{rid}.png").status_code == 401


def test_session_cookies_expire_and_follow_the_token_file():
    alice = ("a" * 20, "review", "alice")
    store = TokenStore([(1, *alice)])
    cookie = store.session_cookie("a" * 20, now=1000.0)
    assert store.session(cookie, now=1001.0).name == "alice"
    assert store.session(cookie, now=1000.0 + 8 * 3600 + 1) is None  # expired
    tid, expires, sig = cookie.split(".")
    assert store.session(f"{tid}.{int(expires) + 3600}.{sig}", now=1001.0) is None  # extended by hand
    other = TokenStore([(1, *alice), (2, "b" * 20, "admin", "bob")])
    assert other.session(cookie, now=1001.0) is None  # the token file changed: new key


@pytest.mark.parametrize(
    "line, match",
    [
        ("tok-0123456789abcdef superuser x", "unknown role 'superuser'"),
        ("short review x", "shorter than 16"),
        ("tok-0123456789abcdef", "expected 'TOKEN ROLE"),
        ("tok-0123456789abcdef review a b", "expected 'TOKEN ROLE"),
        ("tok-0123456789abcdef review a\ntok-0123456789abcdef admin b", "repeats"),
        ("tok-0123456789abcdef review a\ntok-0123456789abcdeX admin a", "name 'a' repeats"),
        ("# only a comment", "holds no token"),
    ],
)
def test_bad_token_files(tmp_path, line, match):
    path = tmp_path / "tokens.txt"
    path.write_text(line + "\n")
    with pytest.raises(ValueError, match=match) as exc:
        TokenStore.from_file(path)
    assert "tok-0123456789abcde" not in str(exc.value)  # the message never shows a token
    with pytest.raises(FileNotFoundError):
        TokenStore.from_file(tmp_path / "absent.txt")


def test_tokens_are_never_logged(setup, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    setup["tokens"].chmod(0o644)
    try:
        app = create_app(setup["model"], setup["policy"], token_file=setup["tokens"],
                         db_url=f"sqlite:///{tmp_path / 'r.db'}")
    finally:
        setup["tokens"].chmod(0o600)
    assert "can be read by other users" in caplog.text
    with TestClient(app) as client:
        done = _three(client, setup)
        client.post(f"/api/v1/inspections/{done['mild']['id']}/review", json={"verdict": "normal"},
                    headers=_auth("alice"))
        client.get("/api/v1/stats", headers=_auth("alice"))
        client.post("/review/login", content=f"token={TOKENS['bob']}",
                    headers={"content-type": "application/x-www-form-urlencoded"})
    assert "review of inspection" in caplog.text  # something was logged
    for token in TOKENS.values():
        assert token not in caplog.text


def test_policy_must_be_bound_to_the_served_model(models, setup, caplog):
    vae_model, vae_policy = models["vae"]
    padim_model = setup["model"]
    with pytest.raises(ValueError, match="calibrated on a ConvVAEDetector"):
        create_app(padim_model, vae_policy, db_url="sqlite://")
    scores = greyanom.load(padim_model).score(normal_images(30, 3))
    unbound = DecisionPolicy(review_fpr=0.2, reject_fpr=0.05).fit(scores)
    with pytest.raises(ValueError, match="records no model"):
        create_app(padim_model, unbound, db_url="sqlite://")
    with caplog.at_level(logging.WARNING, logger="greyanom.serve"):
        app = create_app(padim_model, unbound, db_url="sqlite://", allow_unbound_policy=True)
    assert "not bound to a model" in caplog.text
    with TestClient(app) as client:  # no token file: everything is open (loopback only, see serve)
        info = client.get("/api/v1/model").json()
        assert info["policy_bound"] is False and info["model_hash"].startswith("sha256:")
        assert client.get("/review").status_code == 200
