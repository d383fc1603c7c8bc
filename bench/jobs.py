"""Running jointstats jobs (ours) over real party processes, with per-phase timings."""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import yaml

from tests.ports import free_ports  # the one helper of tests and benchmarks

BENCH = Path(__file__).resolve().parent
SITE = BENCH / "_site"
REPO = BENCH.parent


def tls_available() -> bool:
    """True if this jointstats has TLS for the MPC links (``jointstats.consortium.tls``)."""
    return importlib.util.find_spec("jointstats.consortium.tls") is not None


def _make_tls(root: Path, names: list[str]) -> dict[str, dict]:
    from jointstats.consortium import keys
    ca = root / "ca"
    keys.make_ca(ca)
    out = {}
    for i, name in enumerate(names):
        keys.make_party_cert(name, i, ca, root / "keys")
        out[name] = {"cert": str(root / "keys" / f"{name}.crt"), "key": str(root / "keys" / f"{name}.key"),
                     "ca": str(ca / "ca.crt")}
    return out


def write_configs(root: Path, files: list[Path], *, tls: bool = False, peers_of=None) -> list[Path]:
    """One party config per data file (absolute source paths, free loopback ports, exact allowed).

    ``peers_of(peers)``, if given, maps the real listening addresses to each party's own
    ``mpc.parties`` list (bench/netem.py: the emulated links' proxies)."""
    names = [f"party_{i + 1}" for i in range(len(files))]
    ports = free_ports(len(files))
    peers = [{"name": n, "host": "127.0.0.1", "port": p} for n, p in zip(names, ports)]
    lists = peers_of(peers) if peers_of is not None else [peers] * len(files)
    tls_files = _make_tls(root, names) if tls else {}
    paths = []
    for name, f, own in zip(names, files, lists):
        mpc = {"parties": own}
        if tls:
            mpc["tls"] = tls_files[name]
        cfg = {"party": name, "mpc": mpc, "api": {"host": "127.0.0.1", "port": 0},
               "datasets": {"cohort": {"source": str(Path(f).resolve())}},
               "policy": {"budget": {"epsilon": 1.0e6, "delta": 0.5}, "max_epsilon_per_job": 1.0e3,
                          "min_count": 0, "allow_exact": True, "analysts": {}},
               "state": str(root / "state" / f"{name}.sqlite")}
        path = root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        paths.append(path)
    return paths


@contextlib.contextmanager
def probed_env(probe_dir: Path | None, profile: str | None = None, patch: str | None = None,
               secure_repeats: int = 1, launch: str | None = None):
    """Environment for child processes: our sitecustomize on the path, probe/profile switched on
    (the probe's trace sink named in JOINTSTATS_TRACE)."""
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "JOINTSTATS_BENCH_PROBE", "JOINTSTATS_BENCH_PROBE_DIR",
                                            "JOINTSTATS_BENCH_PROFILE", "JOINTSTATS_TRACE",
                                            "JOINTSTATS_BENCH_PATCH", "JOINTSTATS_BENCH_SECURE_REPEATS",
                                            "JOINTSTATS_LAUNCH")}
    parts = [str(SITE), str(REPO)] + ([saved["PYTHONPATH"]] if saved["PYTHONPATH"] else [])
    os.environ["PYTHONPATH"] = os.pathsep.join(parts)
    if probe_dir is not None:
        os.environ["JOINTSTATS_BENCH_PROBE"] = "1"
        os.environ["JOINTSTATS_BENCH_PROBE_DIR"] = str(probe_dir)
    if probe_dir is not None or profile:
        # the probe's span sink, installed by every party process as it starts (the engine's
        # tracing hook, jointstats/engine/trace.py)
        sinks = [s for s in (saved["JOINTSTATS_TRACE"] or "").split(",") if s and s != "bench._probe:install"]
        os.environ["JOINTSTATS_TRACE"] = ",".join([*sinks, "bench._probe:install"])
    if profile:
        os.environ["JOINTSTATS_BENCH_PROFILE"] = profile
    if patch:
        os.environ["JOINTSTATS_BENCH_PATCH"] = patch
    if launch:
        os.environ["JOINTSTATS_LAUNCH"] = launch
    if patch or (profile and launch != "fork"):
        # what-if patches start with the interpreter, and so do profiles unless asked for
        # forked parties (the probe then starts a fresh profile at the fork): a fresh one per party
        os.environ["JOINTSTATS_LAUNCH"] = "exec"
    if secure_repeats > 1:
        os.environ["JOINTSTATS_BENCH_SECURE_REPEATS"] = str(secure_repeats)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _party_record(name: str, metrics: dict, probe: dict | None, t_call: float) -> dict:
    rec = {"party": name,
           "local_seconds": metrics.get("local_seconds"),
           "engine_secure_seconds": metrics.get("secure_seconds"),
           "bytes_sent": metrics.get("bytes_sent"),
           # the engine's figure is ru_maxrss, which includes the launching process's peak:
           # the probe's VmHWM replaces it below when available
           "peak_rss_kb": metrics.get("peak_rss_kb"),
           "engine_peak_rss_kb": metrics.get("peak_rss_kb"),
           "cpu_seconds": metrics.get("cpu_seconds")}
    if probe:
        all_stats = probe.get("stats", [])
        stats = [s for s in all_stats if not s.get("repeat")]  # the job's own (first) run
        secure = sum(s["seconds"] for s in stats)
        secure_bytes = sum(s["bytes"] for s in stats)
        per_repeat: dict[int, float] = {}
        per_repeat_cpu: dict[int, float] = {}
        for st in all_stats:
            i = st.get("repeat", 0)
            per_repeat[i] = per_repeat.get(i, 0.0) + st["seconds"]
            per_repeat_cpu[i] = per_repeat_cpu.get(i, 0.0) + st.get("cpu_seconds", 0.0)
        rec["secure_repeat_seconds"] = [per_repeat[i] for i in sorted(per_repeat)]
        # the party's CPU during each repeat (a statistic's window: concurrent ones overlap)
        rec["secure_repeat_cpu_seconds"] = [per_repeat_cpu[i] for i in sorted(per_repeat_cpu)]
        window = (probe["secure_end"] - probe["secure_start"]) if probe.get("secure_end") and probe.get("secure_start") else None
        if window is not None and len({s["name"] for s in stats}) > 1:
            # the statistics run concurrently (their times and bytes overlap): the step is the
            # window from the plan-hash exchange to the last reveal
            secure = window
            if probe.get("bytes_at_end") is not None and probe.get("bytes_at_sync") is not None:
                secure_bytes = probe["bytes_at_end"] - probe["bytes_at_sync"]
        rec.update({
            "spawn_seconds": probe["t_site"] - t_call,
            "import_seconds": probe.get("t_main", probe["t_site"]) - probe["t_site"],
            "read_seconds": probe["read"],
            "plan_seconds": probe.get("plan"),
            "read_cpu_seconds": probe.get("read_cpu"),
            "aggregate_seconds": probe["aggregate"],
            "connect_seconds": probe.get("connect"),
            "sync_seconds": probe.get("sync"),
            "secure_seconds": secure,
            "secure_bytes": secure_bytes,
            "secure_window_seconds": window,
            "close_seconds": probe.get("close"),
            "ledger_seconds": probe.get("ledger"),
            "exit_after_call_seconds": probe["t_exit"] - t_call,
            "stats": stats,
        })
        if probe.get("vm_hwm_kb"):
            rec["peak_rss_kb"] = probe["vm_hwm_kb"]
    return rec


def run_job(spec_text: str, files: list[Path], *, tls: bool = False, probe: bool = True,
            profile: str | None = None, keep: Path | None = None, patch: str | None = None,
            secure_repeats: int = 1, launch: str | None = None, peers_of=None) -> dict:
    """Run one job with ``jointstats.local.runner.run``; return wall time, per-party metrics and phases.

    ``profile`` is ``cprofile:DIR`` or ``pyinstrument:DIR`` to profile every party process;
    ``patch`` tries proposed engine changes (see bench/_probe.py); ``secure_repeats`` runs each
    exact secure step that many times inside the job (``secure_repeat_seconds`` per party);
    ``launch`` is ``fork`` or ``exec`` (JOINTSTATS_LAUNCH) for this job; ``peers_of``: see
    ``write_configs`` (the caller relaxes the runner's same-list check, bench/netem.py). With
    ``JOINTSTATS_BENCH_NETEM`` set (``rtt=50,mbit=100``) and no ``peers_of``, the job runs
    through emulated links of those settings and its result carries ``net`` (rounds, bytes).
    """
    if peers_of is None and os.environ.get("JOINTSTATS_BENCH_NETEM"):
        from . import netem  # every job over emulated links (bench/netem.py)
        with netem.LinkEmulator.from_spec(os.environ[netem.ENV]) as net, netem.per_party_addresses():
            out = run_job(spec_text, files, tls=tls, probe=probe, profile=profile, keep=keep, patch=patch,
                          secure_repeats=secure_repeats, launch=launch, peers_of=net.peer_lists)
            out["net"] = net.stats()
            return out
    from jointstats.local import runner
    from jointstats.plan.spec import parse_spec
    root = Path(tempfile.mkdtemp(prefix="jsbench-"))
    try:
        configs = write_configs(root, files, tls=tls, peers_of=peers_of)
        probe_dir = root / "probe"
        probe_dir.mkdir()
        metrics: dict = {}
        with probed_env(probe_dir if probe else None, profile, patch, secure_repeats, launch):
            t_call = time.time()
            t0 = time.perf_counter()
            spec = parse_spec(spec_text)
            result = runner.run(spec, configs, metrics=metrics)
            wall = time.perf_counter() - t0
        probes = {}
        for f in probe_dir.glob("*.json"):
            p = json.loads(f.read_text())
            probes[p["party"]] = p
        parties = [_party_record(name, m, probes.get(name), t_call) for name, m in metrics.items()]
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            for f in root.rglob("*"):
                if f.is_file() and f.suffix in (".yaml", ".json"):
                    shutil.copy(f, keep / f.name)
        return {"wall_seconds": wall, "parties": parties, "result": json.loads(result.to_json())}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def summarize(rec: dict) -> dict:
    """Maxima over parties of the phases (the job waits for its slowest party)."""
    ps = rec["parties"]

    def mx(key):
        vals = [p.get(key) for p in ps if p.get(key) is not None]
        return max(vals) if vals else None
    return {k: mx(k) for k in ("plan_seconds", "local_seconds", "read_seconds", "read_cpu_seconds", "aggregate_seconds", "import_seconds",
                               "spawn_seconds", "connect_seconds", "sync_seconds", "secure_seconds",
                               "secure_bytes", "bytes_sent", "peak_rss_kb", "cpu_seconds",
                               "close_seconds", "ledger_seconds", "engine_secure_seconds")} | {
        # per repeat of the secure step, the slowest party's time
        "secure_repeat_seconds": [max(r) for r in zip(*[p["secure_repeat_seconds"] for p in ps
                                                       if p.get("secure_repeat_seconds")])] or None}
