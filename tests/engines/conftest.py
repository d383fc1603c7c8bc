"""A throw-away PostgreSQL server for the engine tests (initdb + pg_ctl in a temp directory, on a
free loopback port, as an unprivileged user when the tests run as root), stopped at the end."""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.conftest import free_ports

PASSWORD = "s3cret-Pw-never-shown"


def _pg_bin() -> Path | None:
    for name in ("initdb", "pg_ctl", "postgres"):
        found = shutil.which(name)
        if found:
            return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    return Path(candidates[0]).parent if candidates else None


class PgServer:
    def __init__(self, root: Path, port: int, bindir: Path, user: str | None):
        self.root, self.port, self.bindir, self.user = root, port, bindir, user

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [str(a) for a in args]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--"] + cmd
        return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=60)

    def url(self, db="cohort", user="reader", **params) -> str:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return f"postgresql://{user}@127.0.0.1:{self.port}/{db}" + (f"?{query}" if query else "")

    def connect(self, db="postgres"):
        import psycopg
        return psycopg.connect(host=str(self.root / "sock"), port=self.port, user="postgres",
                               dbname=db, autocommit=True)


@pytest.fixture(scope="session")
def pg_server():
    pytest.importorskip("psycopg")
    bindir = _pg_bin()
    if bindir is None or not (bindir / "initdb").exists():
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not installed")
    user = None
    if os.geteuid() == 0:  # initdb refuses to run as root
        for name in ("postgres", "nobody"):
            try:
                pwd.getpwnam(name)
                user = name
                break
            except KeyError:
                continue
        if user is None or shutil.which("runuser") is None:
            pytest.skip("running as root without an unprivileged user (postgres, nobody) and runuser")
    root = Path(tempfile.mkdtemp(prefix="jointstats-pg-"))
    os.chmod(root, 0o777)
    (root / "sock").mkdir()
    os.chmod(root / "sock", 0o777)
    pwfile = root / "pw"
    pwfile.write_text(PASSWORD + "\n")
    os.chmod(pwfile, 0o644)
    port = free_ports(1)[0]
    srv = PgServer(root, port, bindir, user)
    srv.run(bindir / "initdb", "-D", root / "data", "-U", "postgres", "--pwfile", pwfile,
            "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C", "-N")
    started = srv.run(bindir / "pg_ctl", "-D", root / "data", "-l", root / "log", "-w", "-t", "30", "-o",
                      f"-p {port} -k {root / 'sock'} -c listen_addresses=127.0.0.1 -c fsync=off "
                      f"-c full_page_writes=off -c synchronous_commit=off", "start", check=False)
    if started.returncode:
        log = (root / "log").read_text() if (root / "log").exists() else started.stderr
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"could not start PostgreSQL: {log[-2000:]}")
    try:
        with srv.connect() as con:
            con.execute("CREATE DATABASE cohort")
            con.execute(f"CREATE ROLE reader LOGIN PASSWORD '{PASSWORD}'")
            con.execute(f"CREATE ROLE stranger LOGIN PASSWORD '{PASSWORD}'")
        yield srv
    finally:
        srv.run(bindir / "pg_ctl", "-D", root / "data", "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(root, ignore_errors=True)


def load_frame(srv: PgServer, table: str, df, grant: bool = True) -> None:
    """CREATE TABLE from a DataFrame (types: double precision / text / bigint) and COPY its rows."""
    import numpy as np
    types = []
    for name, col in df.items():
        if col.dtype.kind == "f":
            types.append("double precision")
        elif col.dtype.kind in "iu":
            types.append("bigint")
        else:
            types.append("text")
    with srv.connect("cohort") as con:
        con.execute(f'DROP TABLE IF EXISTS "{table}"')
        con.execute(f'CREATE TABLE "{table}" ({", ".join(f"{chr(34)}{n}{chr(34)} {t}" for n, t in zip(df.columns, types))})')
        with con.cursor().copy(f'COPY "{table}" FROM STDIN') as copy:
            for row in df.itertuples(index=False):
                copy.write_row([None if (v is None or (isinstance(v, float) and np.isnan(v))) else v
                                for v in row])
        if grant:
            con.execute(f'GRANT SELECT ON "{table}" TO reader')
