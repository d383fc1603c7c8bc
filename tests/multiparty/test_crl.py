"""Party certificate revocation: a CRL every party checks on every MPC connection."""
from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from jointstats import run
from jointstats.errors import PartyError
from jointstats.consortium.keys import make_ca, make_party_cert
from tests.conftest import cohort_frame, write_consortium

SPEC = """name: crl
dataset: cohort
schema:
  age: {type: real, bounds: [18, 100]}
statistics:
  n: {kind: count}
"""


def test_revoked_party_certificate_is_refused_at_the_next_connection(tmp_path):
    paths = write_consortium(tmp_path, [cohort_frame(20, i) for i in range(3)])
    make_ca(tmp_path / "ca")
    for i, p in enumerate(paths):
        name = p.stem
        make_party_cert(name, i, tmp_path / "ca", tmp_path / "keys")
        cfg = yaml.safe_load(p.read_text())
        cfg["mpc"]["tls"] = {"cert": f"../keys/{name}.crt", "key": f"../keys/{name}.key",
                             "ca": "../ca/ca.crt", "crl": "../ca/ca.crl"}
        p.write_text(yaml.safe_dump(cfg, sort_keys=False))
    cli = [sys.executable, "-m", "jointstats.cli.commands", "keys"]
    out = subprocess.run(cli + ["crl", "--ca", str(tmp_path / "ca")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    assert run(spec, paths).results["n"]["value"] == 60
    out = subprocess.run(cli + ["revoke", str(tmp_path / "keys" / "party_c.crt"), "--ca",
                                str(tmp_path / "ca")], capture_output=True, text=True)
    assert out.returncode == 0 and "party_c (index 2) revoked" in out.stdout, out.stderr
    with pytest.raises(PartyError) as err:
        run(spec, paths)
    msg = str(err.value)
    assert "revoked" in msg and "party_c" in msg and "\n" not in msg, msg
