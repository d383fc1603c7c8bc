"""Phase timings (and optional profiles and what-ifs) of a party process, from outside jointstats.

Observation goes through the engine's tracing hook (``jointstats.engine.trace``): the harness
names ``bench._probe:install`` in JOINTSTATS_TRACE (``bench/jobs.py``, ``probed_env``), every
party process installs it when it starts, and its sink turns the job's spans into a record.
At exit the record (absolute timestamps and durations) is written as JSON to the directory
named by JOINTSTATS_BENCH_PROBE_DIR (read when the file is written):

* ``t_site``: the interpreter reached site (``bench/_site/sitecustomize.py``, when the probe
  variables are set at interpreter start; else when this module was imported), or the fork
  from jointstats' launcher;
* ``t_main``: the party's entry point starts working (span ``start``), so ``t_main - t_site`` is
  import time;
* ``read`` / ``aggregate``: time in the chunk reader (spans ``read``: Arrow read + schema
  encoding) and the rest of the local step (span ``local_step`` less its reads);
* ``connect``: span ``connect`` (includes waiting for the slowest peer's local step);
* ``plan``: span ``plan`` (the party's DP noise plans);
* ``sync``: span ``sync``, the status exchange right after connecting (plan hash, refusals);
* ``stats``: spans ``statistic``: per statistic seconds, bytes sent and CPU over its window,
  ``phase`` ``secure`` (exact), ``prepare`` or ``reveal`` (DP);
* ``close``: span ``close``; ``ledger``: spans ``ledger`` (the party's state database work);
* ``t_exit``: at exit.

The rest is not observation but intervention, and so stays bench-side, installed by
``bench/_site/sitecustomize.py`` at interpreter start (``install_patches``):

* JOINTSTATS_BENCH_SECURE_REPEATS=k runs each exact secure step k times (every party does, in
  the same order, so the MPC stays in step) and records each run with its ``repeat`` index;
* with JOINTSTATS_BENCH_PROFILE=cprofile:DIR or pyinstrument:DIR the whole process is profiled
  and the profile saved in DIR; ``cpu:DIR`` is cProfile on CPU time (``time.process_time``),
  which does not charge a party for the time co-located parties hold the cores. A party forked
  from the launcher starts a fresh profile at the fork, so it holds only the party;
* JOINTSTATS_BENCH_PATCH (comma-separated) tries proposed engine changes without editing the
  package, to measure them (``python -m bench.profile --whatif``):

  * ``no_pandas``: pandas cannot be imported (pyarrow then never loads it behind our back);
  * ``rowgroup_reader``: Parquet is read with one ``iter_batches`` per row group, so the
    decoded row groups already consumed are released;
  * ``fast_exit``: the party process ends with ``os._exit`` once its result file is written,
    skipping interpreter teardown;
  * ``log_coins``: the DP samplers' biased coins [R < c] by a log-depth comparator (one AND
    round per level of a prefix tree over the batch's longest coin, K bits, for every coin:
    about twice the ANDs) instead of bit by bit (one round per bit): the same coin laws, the
    coins of a batch in ceil(log2 K) AND rounds instead of K - 1 (``log_depth_lane_coins``
    replaces ``jointstats.noise.sampler._lane_coins``; ``log_depth_coins`` is the same
    comparator for one list of coins, tests/unit/test_noise_plans.py checks both exact).
"""
from __future__ import annotations

import atexit
import functools
import importlib.abc
import importlib.util
import json
import os
import sys
import time

T_SITE = time.time()


def _new_record(t_site: float) -> dict:
    """A process's empty record, its Python up since ``t_site``."""
    return {"t_site": t_site, "pid": os.getpid(), "argv": None, "read": 0.0, "aggregate": 0.0,
            "stats": [], "ledger": 0.0, "connect": None, "sync": None, "close": None,
            "secure_start": None, "secure_end": None, "bytes_at_sync": None, "bytes_at_end": None}


REC: dict = _new_record(T_SITE)
_RT = {}


def _patch_sources(mod):
    if "rowgroup_reader" not in PATCHES:
        return
    import pyarrow as pa
    import pyarrow.parquet as pq
    cls = mod.ParquetSource

    def _batches(self, cols, tally):
        try:
            pf = pq.ParquetFile(self.path)
            names = [c.name for c in cols]
            for i in range(pf.num_row_groups):
                for batch in pf.iter_batches(batch_size=mod._PARQUET_BATCH_ROWS, columns=names, row_groups=[i]):
                    yield batch.num_rows, {c.name: batch.column(c.name) for c in cols}
        except (pa.ArrowException, OSError):
            raise mod._ReadError("its data could not be read as Parquet") from None
    cls._batches = _batches


def _repeats() -> int:
    # read at call time: a party forked from the launcher imported this module long before
    return max(1, int(os.environ.get("JOINTSTATS_BENCH_SECURE_REPEATS", "1") or 1))


def _repeat_wrapper(fn):
    """JOINTSTATS_BENCH_SECURE_REPEATS=k runs each exact secure step k times in a row (every
    party does, in the same order, so the MPC stays in step) and records each run: the median
    of k runs on the job's real partials is far steadier than one run on this VM. (The span
    sink then leaves the exact ``statistic`` spans to this record.)"""
    @functools.wraps(fn)
    async def wrapper(rt, stat, *a, **kw):
        repeats = _repeats()
        if repeats == 1:
            return await fn(rt, stat, *a, **kw)
        result = None
        for repeat in range(repeats):
            b0 = rt.bytes_sent()
            t, c = time.perf_counter(), time.process_time()
            try:
                result = await fn(rt, stat, *a, **kw)
            finally:
                REC["stats"].append({"name": stat.name, "kind": stat.kind, "phase": "secure", "repeat": repeat,
                                     "seconds": time.perf_counter() - t, "bytes": rt.bytes_sent() - b0,
                                     "cpu_seconds": time.process_time() - c})
        return result
    return wrapper


def _patch_output(mod):
    mod.secure_statistic = _repeat_wrapper(mod.secure_statistic)


async def log_depth_coins(ctx, coins, W):
    """What-if for ``jointstats.noise.sampler._coins``: shared outcomes of independent coins [R < c]
    (k uniform bits R, public c), shape (h, len(coins), W), by a comparison tree.

    Bit b of a coin gives lt_b = [r_b < c_b] = c_b and not r_b and eq_b = [r_b == c_b] (local;
    public 0 and 1 beyond the coin's k bits); adjacent (hi, lo) pairs merge into
    (lt_hi xor (eq_hi and lt_lo), eq_hi and eq_lo) (lt_hi and eq_hi exclude each other, so xor
    is or): ceil(log2 k) AND rounds for all coins at once, every coin's bits in one draw."""
    import numpy as np
    from jointstats.noise.sampler import _ONES, _cmask
    out = ctx.zeros(len(coins), W)
    const = [i for i, c in enumerate(coins) if c.k == 0]
    if const:
        masks = np.broadcast_to(_cmask([coins[i].c for i in const]), (len(const), W))
        out[:, const] = ctx.public(np.ascontiguousarray(masks))
    live = [i for i, c in enumerate(coins) if c.k > 0]
    if not live:
        return out
    ks = np.array([coins[i].k for i in live])
    cs = [coins[i].c for i in live]
    K, n = int(ks.max()), len(live)
    cbit = np.array([[(c >> b) & 1 for c in cs] for b in range(K)], dtype=bool)   # (K, n)
    valid = np.arange(K)[:, None] < ks[None, :]
    r = ctx.rand(K * n, W).reshape(ctx.h, K, n, W)
    m_lt = np.where(valid & cbit, _ONES, np.uint64(0))[..., None]
    m_valid = np.where(valid, _ONES, np.uint64(0))[..., None]
    m_notc = np.where(cbit, np.uint64(0), _ONES)[..., None]
    lt = ctx.not_(r) & m_lt
    eq = ctx.xor_public(ctx.xor_public(r, m_notc) & m_valid, ~m_valid)
    while lt.shape[1] > 1:
        p = lt.shape[1] // 2
        hi_eq = eq[:, 1:2 * p:2]
        prod = await ctx.and_(np.ascontiguousarray(np.concatenate([hi_eq, hi_eq], axis=1)),
                              np.ascontiguousarray(np.concatenate([lt[:, 0:2 * p:2], eq[:, 0:2 * p:2]],
                                                                  axis=1)))
        nlt, neq = lt[:, 1:2 * p:2] ^ prod[:, :p], prod[:, p:]
        if lt.shape[1] % 2:
            nlt = np.concatenate([nlt, lt[:, -1:]], axis=1)
            neq = np.concatenate([neq, eq[:, -1:]], axis=1)
        lt, eq = nlt, neq
    out[:, live] = lt[:, 0]
    return out


async def log_depth_lane_coins(ctx, coins, lanes):
    """What-if for ``jointstats.noise.sampler._lane_coins`` (same layout, ``_CoinProgram``): every
    coin compared on the batch's K bits, c aligned as there (c 2**(K - k): probability
    c / 2**k exactly), by the comparison tree of ``log_depth_coins``."""
    import numpy as np
    from jointstats.noise.sampler import _CoinProgram, pack, unpack
    prog = _CoinProgram(coins, lanes)
    state = ctx.zeros(max(prog.nwords, 1))
    if prog.K:
        K, nw = prog.K, prog.nwords
        m = prog.masks[::-1]                      # most significant bit first
        r = ctx.rand(K, nw)
        lt = ctx.not_(r) & m
        eq = ctx.xor_public(ctx.xor_public(r, m), ~np.uint64(0))
        while lt.shape[1] > 1:                    # rows: bit positions, MSB first
            p = lt.shape[1] // 2
            hi_eq = eq[:, 0:2 * p:2]
            prod = await ctx.and_(np.ascontiguousarray(np.concatenate([hi_eq, hi_eq], axis=1)),
                                  np.ascontiguousarray(np.concatenate([lt[:, 1:2 * p:2], eq[:, 1:2 * p:2]],
                                                                      axis=1)))
            nlt, neq = lt[:, 0:2 * p:2] ^ prod[:, :p], prod[:, p:]
            if lt.shape[1] % 2:
                nlt = np.concatenate([nlt, lt[:, -1:]], axis=1)
                neq = np.concatenate([neq, eq[:, -1:]], axis=1)
            lt, eq = nlt, neq
        state = lt[:, 0]
    flat = unpack(state, 64 * state.shape[1])
    out = np.zeros((ctx.h, prog.R, lanes.W * 64), dtype=np.uint8)
    out[:, prog.rows, prog.cols] = flat[:, prog.pos]
    return ctx.xor_public(pack(out), lanes.spread(prog.one))


def _patch_noise(mod):
    if "log_coins" in PATCHES and hasattr(mod, "_lane_coins"):
        mod._lane_coins = log_depth_lane_coins


PATCHES = set(filter(None, os.environ.get("JOINTSTATS_BENCH_PATCH", "").split(",")))

_PATCHES = {"jointstats.engine.sources": _patch_sources, "jointstats.engine.output": _patch_output,
            "jointstats.noise.sampler": _patch_noise}


class _Finder(importlib.abc.MetaPathFinder):
    """Runs the patch of a module right after the module is first executed."""

    def find_spec(self, name, path, target=None):
        if name not in _PATCHES:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        orig_exec = loader.exec_module

        class Loader(importlib.abc.Loader):
            def create_module(self, s):
                return loader.create_module(s)

            def exec_module(self, module):
                orig_exec(module)
                try:
                    _PATCHES[name](module)
                except Exception as exc:  # noqa: BLE001 - measurement must not break the job
                    print(f"bench probe: cannot patch {name}: {exc!r}", file=sys.stderr)
        spec.loader = Loader()
        return spec


def vm_hwm_kb() -> int | None:
    """This process's own peak RSS (VmHWM). Unlike ``ru_maxrss``, which on Linux starts from the
    launching process's peak (exec keeps the old address space's high-water mark), this is
    reset by exec, so it is what the party itself used."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _write():
    if "party" not in REC and "trace" in _STATE and _STATE["trace"].context.get("party"):
        REC["party"] = _STATE["trace"].context["party"]
    REC["t_exit"] = time.time()
    REC["vm_hwm_kb"] = vm_hwm_kb()
    REC["argv"] = sys.argv
    out = os.environ.get("JOINTSTATS_BENCH_PROBE_DIR")
    if not out or "party" not in REC:
        return
    path = os.path.join(out, f"{REC['party']}-{os.getpid()}.json")
    with open(path, "w") as fh:
        json.dump(REC, fh)


_PROFILE: dict = {}


def _start_profiler():
    spec = os.environ.get("JOINTSTATS_BENCH_PROFILE", "")
    if ":" not in spec:
        return
    kind, out = spec.split(":", 1)
    if _PROFILE:  # a forked child: forget the parent's profile (and its exit handler) first
        _PROFILE.pop("drop")()
        atexit.unregister(_PROFILE.pop("stop"))
    if kind in ("cprofile", "cpu"):
        import cProfile
        prof = cProfile.Profile(time.process_time) if kind == "cpu" else cProfile.Profile()
        prof.enable()

        def stop():
            prof.disable()
            prof.dump_stats(os.path.join(out, f"{REC.get('party', 'proc')}-{os.getpid()}.prof"))

        def drop():
            prof.disable()
    elif kind == "pyinstrument":
        from pyinstrument import Profiler
        prof = Profiler(interval=0.001, async_mode="disabled")
        prof.start()

        def stop():
            prof.stop()
            base = os.path.join(out, f"{REC.get('party', 'proc')}-{os.getpid()}")
            with open(base + ".txt", "w") as fh:
                fh.write(prof.output_text(unicode=False, color=False, show_all=False))
            with open(base + ".html", "w") as fh:
                fh.write(prof.output_html())

        def drop():
            prof.stop()
    else:
        return
    _PROFILE.update(stop=stop, drop=drop)
    atexit.register(stop)


def _fast_exit():
    real_exit = sys.exit

    def exit_now(code=0):
        if not REC.get("party"):
            real_exit(code)
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code if isinstance(code, int) else 1)
    sys.exit = exit_now


def _after_fork_in_child():
    """A party forked from jointstats' launcher (jointstats/local/launch.py) starts its own record:
    its Python is already up and its modules imported, so its import time is ~0."""
    global REC
    REC = {**_new_record(time.time()), "forked": True}
    if _PROFILE:  # profiling: this child's own profile, from here
        _start_profiler()


def _on_span(span) -> None:
    """The trace sink: fold one finished span of the party's job into REC."""
    name, start, duration, attrs = span
    end = start + duration
    if "party" not in REC and _STATE["trace"].context.get("party"):
        REC["party"] = _STATE["trace"].context["party"]
    if name == "start":
        REC.setdefault("t_main", start)
    elif name == "read":
        REC["read"] += duration
        REC["read_cpu"] = REC.get("read_cpu", 0.0) + attrs.get("cpu", 0.0)
    elif name == "local_step":
        REC["aggregate"] += duration - REC["read"]
        REC["t_local_start"], REC["t_local_end"] = start, end
    elif name == "connect":
        REC["t_connect_start"], REC["connect"] = start, duration
    elif name == "plan":
        REC["plan"] = (REC.get("plan") or 0.0) + duration
    elif name == "sync":
        REC["sync"], REC["secure_start"] = duration, end
        REC["bytes_at_sync"] = attrs.get("bytes_sent")
    elif name == "statistic":
        if attrs.get("phase") == "secure" and _repeats() > 1:
            return  # recorded run by run by the repeat wrapper
        REC["stats"].append({"name": attrs.get("stat"), "kind": attrs.get("kind"), "phase": attrs.get("phase"),
                             "repeat": 0, "seconds": duration, "bytes": attrs.get("bytes"),
                             "cpu_seconds": attrs.get("cpu")})
    elif name == "close":
        REC["secure_end"], REC["bytes_at_end"] = start, attrs.get("bytes_sent")
        REC["close"] = duration
    elif name == "ledger":
        REC["ledger"] += duration


def install():
    """The trace sink (named by JOINTSTATS_TRACE=bench._probe:install in each party process),
    the exit record, and the profiler if asked and not started at interpreter start; idempotent."""
    from jointstats.engine import trace
    if _STATE.get("sink"):
        return
    _STATE["trace"] = trace
    _STATE["sink"] = trace.add_sink(_on_span)
    atexit.register(_write)
    if not _PROFILE:
        _start_profiler()


_STATE: dict = {}


def install_patches():
    """At interpreter start (bench/_site/sitecustomize.py): the what-if patches, the secure-step
    repeats, the profiler and the fork hook; idempotent."""
    if any(isinstance(f, _Finder) for f in sys.meta_path):
        return
    os.register_at_fork(after_in_child=_after_fork_in_child)
    if "no_pandas" in PATCHES:
        sys.modules.setdefault("pandas", None)
    if "fast_exit" in PATCHES:
        _fast_exit()
    sys.meta_path.insert(0, _Finder())
    _start_profiler()
