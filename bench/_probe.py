"""Phase timings (and optional profiles) inside a party process, without touching jointstats.

Installed by ``bench/_site/sitecustomize.py`` in processes started by the harness.
It wraps, as their modules are imported, the functions one party's job goes through
and, at exit, writes a JSON file of absolute timestamps and durations to the directory
named by JOINTSTATS_BENCH_PROBE_DIR (read when the file is written, so that a party forked
from jointstats' launcher writes where its own job asked; JOINTSTATS_BENCH_PROBE=1 switches
the probe on at interpreter start):

* ``t_site``: the interpreter reached site (Python itself is up);
* ``t_main``: the party's entry point starts working (first ``load_party_config``),
  so ``t_main - t_site`` is import time;
* ``read`` / ``aggregate``: time inside the chunk reader (Arrow read + schema encoding)
  and in the partial-aggregate code (``jointstats.engine.local_step``), which together are the local step;
* ``connect``: ``JointRuntime.start`` (includes waiting for the slowest peer's local step);
* ``plan``: the party's DP noise plans (``jointstats.engine.output.add_noise_plans``);
* ``sync``: the status exchange right after connecting (plan hash, refusals);
* ``stats``: per statistic seconds and bytes sent in its secure step (exact or DP); with
  JOINTSTATS_BENCH_SECURE_REPEATS=k each exact secure step runs k times and each run is
  recorded with its ``repeat`` index;
* ``close``: ``JointRuntime.close``; ``ledger``: the party's state database work;
* ``t_exit``: at exit.

With JOINTSTATS_BENCH_PROFILE=cprofile:DIR or pyinstrument:DIR the whole process is profiled
and the profile saved in DIR; ``cpu:DIR`` is cProfile on CPU time (``time.process_time``),
which does not charge a party for the time co-located parties hold the cores. A party
forked from the launcher starts a fresh profile at the fork, so it holds only the party.

JOINTSTATS_BENCH_PATCH (comma-separated) tries proposed engine changes without editing the
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
  replaces ``jointstats.noise.sampler._lane_coins``; ``log_depth_coins`` is the same comparator for
  one list of coins, tests/unit/test_noise_plans.py checks both exact).
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


def _timed(key):
    """Decorator: add the wrapped call's duration to REC[key]."""
    def deco(fn):
        if getattr(fn, "_bench_wrapped", False):
            return fn

        @functools.wraps(fn)
        def wrapper(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                REC[key] = (REC.get(key) or 0.0) + time.perf_counter() - t
        wrapper._bench_wrapped = True
        return wrapper
    return deco


def _patch_config(mod):
    orig = mod.load_party_config

    @functools.wraps(orig)
    def load_party_config(path):
        REC.setdefault("t_main", time.time())
        cfg = orig(path)
        REC.setdefault("party", cfg.party)
        return cfg
    mod.load_party_config = load_party_config


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


def _patch_local(mod):
    orig = mod.compute_partials

    def compute_partials(plan, chunks):
        def timed_chunks():
            it = iter(chunks)
            while True:
                t, c = time.perf_counter(), time.process_time()
                try:
                    chunk = next(it)
                except StopIteration:
                    REC["read"] += time.perf_counter() - t
                    REC["read_cpu"] = REC.get("read_cpu", 0.0) + time.process_time() - c
                    return
                REC["read"] += time.perf_counter() - t
                REC["read_cpu"] = REC.get("read_cpu", 0.0) + time.process_time() - c
                yield chunk
        t0 = time.perf_counter()
        REC["t_local_start"] = time.time()
        try:
            return orig(plan, timed_chunks())
        finally:
            REC["aggregate"] += time.perf_counter() - t0 - REC["read"]
            REC["t_local_end"] = time.time()
    mod.compute_partials = compute_partials


def _patch_mpc(mod):
    cls = mod.JointRuntime
    start, guard, close = cls.start, cls.guard, cls.close

    async def s(self, *a, **kw):
        _RT["rt"] = self
        t = time.perf_counter()
        REC["t_connect_start"] = time.time()
        try:
            return await start(self, *a, **kw)
        finally:
            REC["connect"] = time.perf_counter() - t

    async def g(self, awaitable, timeout, what):
        t = time.perf_counter()
        try:
            return await guard(self, awaitable, timeout, what)
        finally:
            if what == "the local step":
                REC["sync"] = time.perf_counter() - t
                REC["secure_start"] = time.time()
                REC["bytes_at_sync"] = self.bytes_sent()

    async def c(self, *a, **kw):
        REC["secure_end"] = time.time()
        REC["bytes_at_end"] = self.bytes_sent()
        t = time.perf_counter()
        try:
            return await close(self, *a, **kw)
        finally:
            REC["close"] = time.perf_counter() - t
    cls.start, cls.guard, cls.close = s, g, c


def _stat_wrapper(fn, phase):
    # JOINTSTATS_BENCH_SECURE_REPEATS=k runs each exact secure step k times in a row (every
    # party does, in the same order, so the MPC stays in step) and records each run: the
    # median of k runs on the job's real partials is far steadier than one run on this VM.
    @functools.wraps(fn)
    async def wrapper(rt, stat, *a, **kw):
        # read at call time: a party forked from the launcher imported this module long before
        repeats = max(1, int(os.environ.get("JOINTSTATS_BENCH_SECURE_REPEATS", "1") or 1)) if phase == "secure" else 1
        result = None
        for repeat in range(repeats):
            b0 = rt.bytes_sent()
            t, c = time.perf_counter(), time.process_time()
            try:
                result = await fn(rt, stat, *a, **kw)
            finally:
                # cpu_seconds: the whole process's CPU over the window (concurrent statistics overlap)
                REC["stats"].append({"name": stat.name, "kind": stat.kind, "phase": phase, "repeat": repeat,
                                     "seconds": time.perf_counter() - t, "bytes": rt.bytes_sent() - b0,
                                     "cpu_seconds": time.process_time() - c})
        return result
    return wrapper


def _patch_output(mod):
    mod.secure_statistic = _stat_wrapper(mod.secure_statistic, "secure")
    # ``plan``: the party's DP noise plans (``PartyJob.plan`` imports this at call time; the
    # party module itself is not patched: run as ``python -m`` it must keep its own loader)
    if hasattr(mod, "add_noise_plans"):
        mod.add_noise_plans = _timed("plan")(mod.add_noise_plans)


def _patch_dp(mod):
    for name in ("prepare", "reveal"):
        if hasattr(mod, name):
            setattr(mod, name, _stat_wrapper(getattr(mod, name), name))


def _patch_hooks(mod):
    cls = mod.LedgerHooks
    for name in ("__init__", "before_data", "before_reveal", "done", "failed"):
        if hasattr(cls, name):
            setattr(cls, name, _timed("ledger")(getattr(cls, name)))


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

_PATCHES = {"jointstats.consortium.config": _patch_config, "jointstats.engine.local_step": _patch_local,
            "jointstats.engine.sources": _patch_sources,
            "jointstats.mpc.runtime": _patch_mpc, "jointstats.engine.output": _patch_output,
            "jointstats.engine.dp": _patch_dp, "jointstats.engine.hooks": _patch_hooks,
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


def install():
    """Install the import hooks (and the profiler if asked); idempotent."""
    if any(isinstance(f, _Finder) for f in sys.meta_path):
        return
    os.register_at_fork(after_in_child=_after_fork_in_child)
    if "no_pandas" in PATCHES:
        sys.modules.setdefault("pandas", None)
    if "fast_exit" in PATCHES:
        _fast_exit()
    sys.meta_path.insert(0, _Finder())
    atexit.register(_write)
    _start_profiler()
