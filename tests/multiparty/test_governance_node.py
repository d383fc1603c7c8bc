"""Governance over three real nodes with TLS (docs/governance.md walk-through): the catalog
lets a new analyst write a spec, an officer approves (or rejects) a high-epsilon job, an
unapproved job expires, jobs outside an agreement are refused naming the reason, roles
are checked on every route, a revoked analyst is refused after a policy reload, a revoked
party certificate fails the next job (and a CRL without it lets the party back in, no
restart), and the release report verifies. docs/governance.md's walk-through itself runs
verbatim in test_governance_walkthrough.py."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest
import yaml

from jointstats.errors import AuthError, JointStatsError, PartyError, PolicyError
from jointstats.consortium.crl import issue_crl
from jointstats.consortium.keys import make_analyst_key
from tests.common import nodes_running
from tests.multiparty.test_node import NAMES, Cluster

SCHEMA = {"age": {"type": "real", "bounds": [18, 100]},
          "smoker": {"type": "categorical", "levels": ["no", "yes"]},
          "region": {"type": "categorical", "levels": ["north", "south", "east", "west"]},
          "bmi": {"type": "real", "bounds": [10, 60]}}
EXPIRY = 25


@pytest.fixture(scope="module")
def gov(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("govnodes"))
    make_analyst_key("carol", c.root / "officers")
    issue_crl(c.root / "ca", [])  # an empty CRL: ca/ca.crl, read by every node at every connection
    for i, path in enumerate(c.configs):
        cfg = yaml.safe_load(path.read_text())
        cfg["mpc"]["tls"]["crl"] = "../ca/ca.crl"
        cfg["datasets"]["cohort"].update(schema=SCHEMA, description="synthetic cohort, one row a patient")
        pol = cfg["policy"]
        pol["max_epsilon_per_job"] = 1.0
        pol["officers"] = {"carol": "../officers/carol.pub"}
        pol["groups"] = {"cardio-team": ["alice", "bob"]}
        pol["agreements"] = [{
            "id": "dua-cardio", "dataset": "cohort", "analysts": ["cardio-team"],
            "purposes": ["cardiovascular-risk-study"], "columns": ["age", "smoker", "region"],
            "kinds": ["count", "mean", "crosstab"], "modes": ["dp", "exact"],
            "budget": {"epsilon": 2.0, "delta": 0}, "valid": {"from": "2026-01-01", "until": "2099-12-31"}}]
        if i == 0:  # party_a wants an officer's sign-off above epsilon 0.5
            pol["approval"] = {"above_epsilon": 0.5, "expires_after": EXPIRY}
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    with nodes_running(c):
        yield c


def _cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "jointstats.cli.commands", *args], capture_output=True,
                          text=True, timeout=timeout)


def _officer(c, *args):
    return _cli(*args, "--key", str(c.root / "officers" / "carol.key"), "--ca", str(c.ca))


def _wait_status(c, i, job_id, status, timeout=30.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            st = c.status(i, job_id)
            if st["status"] == status:
                return st
        except JointStatsError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} not {status} at {NAMES[i]}: {c.logs()}")
        time.sleep(0.2)


def _submit_in_thread(c, text, job_id):
    box = {}

    def go():
        try:
            box["result"] = c.submit(text, job_id=job_id, timeout=120)
        except Exception as exc:  # noqa: BLE001 - examined by the test
            box["error"] = exc
    t = threading.Thread(target=go)
    t.start()
    return t, box


def _template(c) -> str:
    out = _cli("spec-template", "--node", *c.urls, "--key", str(c.root / "analysts" / "alice.key"),
               "--ca", str(c.ca), "--dataset", "cohort")
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_catalog_template_and_officer_approval(gov):
    c = gov
    cat = c.client(0).get("/catalog")
    ds = cat["datasets"]["cohort"]
    assert set(ds["columns"]) == {"age", "smoker", "region"}  # bmi is documented, not released
    assert ds["agreements"][0]["purposes"] == ["cardiovascular-risk-study"]
    assert ds["privacy"]["approval"]["above_epsilon"] == 0.5
    text = _template(c)
    assert "purpose: cardiovascular-risk-study" in text and "epsilon: 1.0" in text

    thread, box = _submit_in_thread(c, text, "approve-me")
    st = _wait_status(c, 0, "approve-me", "waiting")
    assert st["approval_reasons"] == ["epsilon 1 above 0.5"] and st["agreement"] == "dua-cardio"
    _wait_status(c, 2, "approve-me", "queued")   # the others hold it, waiting for party_a
    time.sleep(3)  # several rendezvous: the others neither run it nor fail it as missing
    assert c.status(1, "approve-me")["status"] == "queued"
    listing = _officer(c, "jobs", "--node", c.urls[0], "--json")
    assert listing.returncode == 0, listing.stderr
    assert any(j["job_id"] == "approve-me" and j["status"] == "waiting"
               for j in json.loads(listing.stdout)["jobs"])
    out = _officer(c, "approve", "approve-me", "--node", c.urls[0])
    assert out.returncode == 0 and "queued" in out.stdout, out.stderr
    thread.join(150)
    assert "error" not in box, str(box.get("error")) + c.logs()
    result = box["result"]
    approvals = result.provenance["parties"]["party_a"]["approvals"]
    assert [a["officer"] for a in approvals] == ["carol"] and approvals[0]["decision"] == "approved"
    assert result.provenance["parties"]["party_b"]["approvals"] == []
    assert result.provenance["purpose"] == "cardiovascular-risk-study"
    (c.root / "approved.json").write_text(result.to_json())
    out = _cli("report", str(c.root / "approved.json"), "--html", "--out", str(c.root / "approved.html"))
    assert out.returncode == 0, out.stderr
    out = _cli("report", "verify", str(c.root / "approved.html"))
    assert out.returncode == 0 and "report verified (html)" in out.stdout, out.stderr
    # a second approval of a finished job is refused (and audited)
    out = _officer(c, "approve", "approve-me", "--node", c.urls[0])
    assert out.returncode != 0 and "only a job waiting for approval" in out.stderr


def test_rejected_and_expired_jobs(gov):
    c = gov
    text = _template(c)
    thread, box = _submit_in_thread(c, text, "reject-me")
    _wait_status(c, 0, "reject-me", "waiting")
    out = _officer(c, "reject", "reject-me", "--node", c.urls[0], "--reason", "epsilon too high for this purpose")
    assert out.returncode == 0, out.stderr
    thread.join(150)
    err = box.get("error")
    assert isinstance(err, PartyError), box
    assert "party 'party_a': rejected by compliance officer 'carol': epsilon too high" in str(err)

    thread, box = _submit_in_thread(c, text, "expire-me")
    _wait_status(c, 0, "expire-me", "waiting")
    thread.join(EXPIRY + 90)
    assert "expired: not approved by a compliance officer" in str(box.get("error")), box
    state = c.ledger(0)
    try:
        events = [(r["event"], r["fields"].get("job_id")) for r in state.audit_records()]
        for event, job in (("waiting", "reject-me"), ("rejection", "reject-me"),
                           ("waiting", "expire-me"), ("expiry", "expire-me")):
            assert (event, job) in events
        assert state.verify_audit()[0]
    finally:
        state.close()


def test_outside_agreement_roles_and_revocation(gov):
    c = gov
    bmi = _template(c).replace("schema:\n", "schema:\n  bmi: {type: real, bounds: [10, 60]}\n")
    with pytest.raises(PolicyError, match="party 'party_a' refuses: no data-use agreement covers the "
                                          "job: agreement 'dua-cardio': column 'bmi' is not among"):
        c.submit(bmi)
    exact = _template(c).replace("purpose: cardiovascular-risk-study", "purpose: marketing")
    with pytest.raises(PolicyError, match="purpose 'marketing' is not among its purposes"):
        c.submit(exact)
    # roles: an analyst cannot read the audit log; an officer can, over the API
    assert c.client(1).request("GET", "/audit")[0] == 403
    out = _officer(c, "audit-log", "--node", c.urls[1])
    assert out.returncode == 0 and "records ok" in out.stdout, out.stderr
    state = c.ledger(1)
    try:
        reasons = [r["fields"]["reason"] for r in state.audit_records() if r["event"] == "refusal"]
        assert "role" in reasons
    finally:
        state.close()
    # bob is revoked at party_b: after a reload (no restart) his submissions are refused
    cfg = yaml.safe_load(c.configs[1].read_text())
    cfg["policy"]["revoked"] = ["bob"]
    c.configs[1].write_text(yaml.safe_dump(cfg, sort_keys=False))
    out = _officer(c, "policy", "reload", "--node", c.urls[1])
    assert out.returncode == 0 and "policy reloaded" in out.stdout, out.stderr
    with pytest.raises(AuthError, match=r"analyst 'bob' is revoked at party 'party_b' \(policy.revoked\)"):
        c.submit(_template(c).replace("epsilon: 1.0", "epsilon: 0.5"), analyst="bob")
    for i in range(3):
        out = _cli("audit", "verify", "--config", str(c.configs[i]))
        assert out.returncode == 0, out.stderr


CRL_SPEC = """name: crl
dataset: cohort
purpose: cardiovascular-risk-study
schema:
  age: {type: real, bounds: [18, 100]}
statistics:
  n: {kind: count}
"""


def test_revoked_party_certificate_is_refused_by_the_nodes(gov):
    """The coordinator revokes party_c's certificate: the running nodes read the CRL at the next
    connection, so the next job fails in the TLS handshake naming party_c (one line) and runs
    nowhere; the previous CRL back in place lets party_c in again, without a restart."""
    c = gov
    crl = c.root / "ca" / "ca.crl"
    before = crl.read_bytes()
    try:
        out = _cli("keys", "revoke", str(c.root / "keys" / "party_c.crt"), "--ca", str(c.root / "ca"))
        assert out.returncode == 0 and "party_c (index 2) revoked" in out.stdout, out.stderr
        with pytest.raises(PartyError) as err:
            c.submit(CRL_SPEC, job_id="revoked-cert", timeout=120)
        msg = str(err.value)
        assert "TLS handshake with party 'party_c' failed" in msg and "certificate revoked" in msg, msg
        assert "\n" not in msg
        # no node ran it: the party that saw the handshake fail failed it, the others were cancelled
        states = {NAMES[i]: _wait_status_in(c, i, "revoked-cert", ("failed", "cancelled")) for i in range(3)}
        assert "failed" in {s["status"] for s in states.values()}, states
        assert not any(s.get("result") for s in states.values())
        # an analyst's client given the CRL refuses party_c's API (served with the same
        # certificate) and still talks to the others
        out = _cli("catalog", "--node", c.urls[2], "--key", str(c.root / "analysts" / "alice.key"),
                   "--ca", str(c.ca), "--crl", str(crl))
        assert out.returncode != 0 and "revoked" in out.stderr and "\n" not in out.stderr.strip(), out.stderr
        out = _cli("catalog", "--node", c.urls[0], "--key", str(c.root / "analysts" / "alice.key"),
                   "--ca", str(c.ca), "--crl", str(crl))
        assert out.returncode == 0 and "cohort" in out.stdout, out.stderr
    finally:
        crl.write_bytes(before)
    result = c.submit(CRL_SPEC, timeout=120)  # the next connection accepts party_c again
    assert result.results["n"]["value"] == sum(len(f) for f in c.frames)
    for i in range(3):
        out = _cli("audit", "verify", "--config", str(c.configs[i]))
        assert out.returncode == 0, out.stderr


def _wait_status_in(c, i, job_id, statuses, timeout=30.0):
    deadline = time.monotonic() + timeout
    while True:
        st = c.status(i, job_id)
        if st["status"] in statuses:
            return st
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} at {NAMES[i]}: {st['status']}, not {statuses}: {c.logs()}")
        time.sleep(0.2)
