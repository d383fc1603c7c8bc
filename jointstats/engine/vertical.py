"""Linked (vertical) jobs: each party holds some columns about overlapping people.

The flow (docs/linkage.md):

1. Local step (each holder, plain numpy): read the key and the columns it holds, normalise
   the keys, leave out rows whose key is missing or repeated, encode every value the
   statistics need as integers (the same grid, clipping and level codes as horizontal jobs,
   one-hot levels and histogram bins, a presence bit per column).
2. Holdings: every party says which schema columns it holds (public metadata, as schema
   indices) and how many keys (``link.rows`` if set); each checks that every column has one
   owner. The leader (a left join's base, else the holder with fewest keys) is then known.
3. Linkage (``_link``): the leader puts its keys in cuckoo bins; every other holder
   programs an OPPRF table (``engine.opprf``) under a DH-OPRF key the leader cannot use,
   from which the leader decodes, for each bin, that holder's row masked by the holder's
   secret per-bin masks, and a tag that is 0 exactly when the holder has the bin's key.
   The leader shares what it decoded, each holder its masks: the sum is a secret-shared
   table with a row per bin. After a resharing shuffle no coalition of t parties knows,
   s * tag is opened for a fresh secret s: 0 marks the linked rows and nothing else is
   revealed. DP mode: every party adds dummy linked rows before the shuffle.
4. Statistics: every statistic's partial vector over the linked rows (counts, sums, the
   Gram matrix of its design, crosstab cells, histogram bins) is computed with vectorised
   secure products: one resharing per output for the inner products. The secret partial is
   turned into integer additive shares (a statistically masked opening), which the
   unchanged secure step of horizontal jobs (``_secure`` exact, ``_dp`` noisy) takes as each
   party's "partial".
"""
from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass, field, replace
from fractions import Fraction

import numpy as np

from jointstats.engine import linkage as L
from jointstats.errors import DataError, LinkageError, PolicyError, SpecError
from jointstats.noise.local import discrete_laplace
from jointstats.plan.sealed import Plan, StatPlan, Term, assign_columns
from jointstats.plan.spec import Column, Spec

log = logging.getLogger("jointstats.vertical")

#: What the linkage shows every party, beside what the secure step shows (the result's
#: ``mpc.linkage``; docs/linkage.md has the full statement).
LINKAGE_SEES = ("every party learns each holder's number of keys (link.rows when set), who holds "
                "which column, and the number of linked records: exact in exact mode, raised by "
                "every party's dummy records in DP mode (privacy.linkage), so differentially private "
                "towards any coalition of up to t parties (a left join shows nothing about the "
                "matches: its records are every key of the base); no party learns another's "
                "identifiers, which of its own records are linked, or how many keys any two "
                "holders share")
#: Statistical security (bits) of the masked opening that turns the secret partials into
#: integer additive shares.
SIGMA = 64


# ----------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class Feature:
    """One encoded column of a holder's block.

    kind ``row`` (1 for a real row, 0 for padding), ``complete`` (1 if every column of
    ``stat``, a comma-separated list of this holder's columns that some statistic uses
    together, has a value: the holder multiplies its own presence bits locally, so the
    secure step multiplies one bit per holder, not one per column), ``grid`` (``term``'s integer grid value, 0 if missing), ``level`` (1 if
    ``column`` has level ``index``), ``bin`` (1 if ``column`` falls in bin ``index`` of
    histogram ``stat``)."""

    kind: str
    column: str | None = None
    term: Term | None = None
    index: int = -1
    stat: str = ""


def layout(plan: Plan, spec: Spec, held: tuple[str, ...] | list[str]) -> tuple[Feature, ...]:
    """The features of the block of a holder of columns ``held`` (every party derives the
    same from the public plan and holdings)."""
    feats = [Feature("row")]
    used = {c for s in plan.statistics for c in s.columns}
    order = [c.name for c in spec.schema]
    subsets = dict.fromkeys(",".join(sorted(set(s.columns) & set(held), key=order.index))
                            for s in plan.statistics)
    feats.extend(Feature("complete", stat=sub) for sub in subsets if sub)
    for col in spec.schema:
        if col.name not in held or col.name not in used:
            continue
        terms = dict.fromkeys(t for s in plan.statistics for t in s.terms
                              if t.kind == "num" and t.column == col.name)
        feats.extend(Feature("grid", col.name, t) for t in terms)
        if not col.numeric and any(s.kind in ("crosstab", "regression") and col.name in s.columns
                                   for s in plan.statistics):
            feats.extend(Feature("level", col.name, index=i) for i in range(len(col.levels)))
        for s in plan.statistics:
            if s.kind == "histogram" and s.columns[0] == col.name:
                feats.extend(Feature("bin", col.name, index=b, stat=s.name) for b in range(len(s.edges) - 1))
    return tuple(feats)


def encode(feats: tuple[Feature, ...], chunk, edges: dict[str, tuple[float, ...]]) -> np.ndarray:
    """The (rows x features) int64 block of an encoded chunk (missing values: all zero);
    ``edges`` are the bin edges of each histogram statistic, by name."""
    from jointstats.engine.local_step import _grid_values
    n = chunk.n_rows
    out = np.zeros((n, len(feats)), dtype=np.int64)
    buf = np.empty(n)
    for j, f in enumerate(feats):
        if f.kind == "row":
            out[:, j] = 1
            continue
        if f.kind == "complete":
            ok = np.ones(n, dtype=bool)
            for name in f.stat.split(","):
                x = chunk.numeric[name] if name in chunk.numeric else chunk.codes[name]
                ok &= ~np.isnan(x) if name in chunk.numeric else x >= 0
            out[:, j] = ok
            continue
        numeric = f.column in chunk.numeric
        x = chunk.numeric[f.column] if numeric else chunk.codes[f.column]
        present = ~np.isnan(x) if numeric else x >= 0
        if f.kind == "grid":
            _grid_values(np.where(present, x, 0.0), f.term, buf)
            out[:, j] = np.where(present, buf, 0).astype(np.int64)
        elif f.kind == "level":
            out[:, j] = x == f.index
    # histogram bins as np.histogram counts them (last bin closed), all bins of a stat at once
    for stat in {f.stat for f in feats if f.kind == "bin"}:
        cols = [j for j, f in enumerate(feats) if f.kind == "bin" and f.stat == stat]
        bounds = np.asarray(edges[stat], dtype=np.float64)
        x = chunk.numeric[feats[cols[0]].column]
        ok = ~np.isnan(x)
        b = np.searchsorted(bounds, np.where(ok, x, bounds[0] - 1), side="right") - 1
        b[ok & (x == bounds[-1])] = len(bounds) - 2
        ok &= (b >= 0) & (b < len(bounds) - 1)
        for i, j in enumerate(cols):
            out[:, j] = ok & (b == i)
    return out


# ----------------------------------------------------------------------------- local step


@dataclass
class LocalBlock:
    """A holder's side of the linkage before any message: its usable keys (normalised; never
    sent, in any form), its encoded rows (one per key) and the announced number of keys
    (``link.rows`` when set). A compute-only party's block is empty."""

    held: tuple[int, ...] = ()  # schema indices of the columns it holds
    keys: list[str] = field(default_factory=list)
    rows: np.ndarray | None = None
    announced: int = 0
    features: tuple[Feature, ...] = field(default=())


def holders_of(peers) -> list[int]:
    """MPC indices of the data holders (role data) among the job's parties."""
    return [i for i, p in enumerate(peers) if p.role == "data"]


def heap_for_large_arrays() -> None:
    """Have glibc's malloc serve every allocation from its heap and keep freed memory there,
    in this (per-job) party process.

    A linked job's tables are arrays of tens to hundreds of megabytes. glibc serves each
    allocation above 32 MB from a fresh ``mmap`` and unmaps it when freed, so the kernel
    zeroes and maps every page of every temporary array anew: measured here, an elementwise
    product of a 300 MB array ran at 1 GB/s that way and at 5 GB/s from the heap. So: no
    mmap (``M_MMAP_MAX`` 0), one arena for all threads (the worker threads' arenas could
    not hold such arrays), and freed memory kept up to 1 GiB (``M_TRIM_THRESHOLD``). The
    peak memory is the same; the process ends with the job. Elsewhere than glibc: nothing."""
    import ctypes
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    for option, value in ((-4, 0), (-8, 1), (-1, 1 << 30)):  # M_MMAP_MAX, M_ARENA_MAX, M_TRIM_THRESHOLD
        mallopt(ctypes.c_int(option), ctypes.c_int(value))


def local_block(config, spec: Spec, plan: Plan, dp: bool, source=None) -> LocalBlock:
    """The local step of a linked job (see the module docstring, step 1)."""
    heap_for_large_arrays()
    if config.compute_only:
        return LocalBlock()
    party = config.party
    held = config.held_columns(spec.dataset)
    if held is None:
        raise DataError(f"party {party!r}: datasets.{spec.dataset}.columns is required for a linked "
                        "job (the schema columns this party holds; [] for keys only)")
    names = [c.name for c in spec.schema]
    held = tuple(c for c in held if c != spec.link.key)  # listing the key too is allowed
    unknown = [c for c in held if c not in names]
    if unknown:
        raise SpecError(f"party {party!r} declares column {unknown[0]!r} (datasets.{spec.dataset}."
                        "columns), which is not in the spec's schema")
    feats = layout(plan, spec, held)
    keys, chunk = read_linked(source, [spec.column(c) for c in names if c in held],
                              spec.link.key, party, strict=not dp)
    normal = [L.normalise_key(k, spec.link.case) for k in keys]
    keep = L.usable_keys(normal)
    dropped = len(keys) - int(keep.sum())
    if dropped:  # the owner's own log only: never sent to a peer or the analyst
        log.warning("party %r: %d of %d rows left out of the linkage (key missing or repeated)",
                    party, dropped, len(keys))
    rows = encode(feats, chunk, {s.name: s.edges for s in plan.statistics if s.kind == "histogram"})[keep]
    kept = [k for k, ok in zip(normal, keep) if ok]
    limit = plan.link[2] or plan.max_rows_per_party
    if len(kept) > limit:
        if not dp:
            raise PolicyError(f"party {party!r} has {len(kept)} usable keys, more than the "
                              f"{'link.rows' if plan.link[2] else 'row limit'} of {limit}")
        log.warning("party %r: %d usable keys, more than link.rows %d: the last %d left out",
                    party, len(kept), limit, len(kept) - limit)
        kept, rows = kept[:limit], rows[:limit]
    pad = plan.link[2] - len(kept) if plan.link[2] else 0
    if pad > 0:  # dummy keys up to link.rows (found in review: the linkage's work, and so when
        # a holder's messages go out, grew with its real number of keys): random keys, which
        # link with nothing, and all-zero rows (row bit 0), worked on like any other
        kept = kept + ["\x00pad:" + secrets.token_hex(16) for _ in range(pad)]
        rows = np.concatenate([rows, np.zeros((pad, rows.shape[1]), dtype=np.int64)])
    index = tuple(names.index(c) for c in held)
    return LocalBlock(index, kept, rows, plan.link[2] or len(kept), feats)


def read_linked(source, cols: list[Column], key: str, party: str, strict: bool):
    """(keys, one EncodedChunk of every row) of a holder: the key column read as text in a
    second pass over the same source, in the same row order (a file's order; an engine
    source's rows ordered by the key in both passes)."""
    from jointstats.engine.sources import EncodedChunk, _Tally
    header = source.columns()
    if key not in header:
        raise DataError(f"party {party!r}: the link key column {key!r} is missing from its data "
                        f"(source {source.spec})")
    if not hasattr(source, "_batches"):
        raise DataError(f"party {party!r}: this source cannot be read for a linked job "
                        f"(source {source.spec})")
    if hasattr(source, "row_order"):  # an engine source: both passes ordered by the key
        source.row_order = key
    chunks = list(source.iter_chunks(cols, party, chunk_rows=1 << 22, strict=strict)) if cols else []
    keycol = Column(key, "categorical", levels=("_",))
    keys: list = []
    for _, arrays in source._batches([keycol], _Tally(strict)):
        values = arrays[key].to_pylist()
        keys.extend(v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in values)
    n = sum(c.n_rows for c in chunks) if cols else len(keys)
    if n != len(keys):
        raise DataError(f"party {party!r}: its key column and its other columns have different "
                        f"row counts (source {source.spec})")
    if not chunks:
        return keys, EncodedChunk(n_rows=n)
    if len(chunks) == 1:
        return keys, chunks[0]
    return keys, EncodedChunk(
        n_rows=n,
        numeric={k: np.concatenate([c.numeric[k] for c in chunks]) for k in chunks[0].numeric},
        codes={k: np.concatenate([c.codes[k] for c in chunks]) for k in chunks[0].codes})


# ----------------------------------------------------------------------------- secure step


def _points_codec(n: int):
    from jointstats.mpc import codec as _codec
    return _codec.Codec("points", lambda a: _codec.encode_array(a, np.uint8),
                        lambda d: _codec.decode_array(d, np.uint8, (n, L.POINT)))


@dataclass(frozen=True)
class Layout:
    """Public shape of a linked job's bin table (every party derives the same).

    The leader (the base of a left join; otherwise the holder with the fewest keys, lowest
    index first) places its keys in ``bins`` bins; each other holder ``j`` (``others``)
    programs an OPPRF table of ``table_rows[j]`` entries. The shared table has one row per
    bin, then ``dummies`` rows per party (DP), and columns: the leader's features, then for
    each other holder its features (its row for the leader's key of the bin, if it has it)
    and its tags (0 exactly when it has the bin's key; a left join has three independent ones,
    for a zero test that is exact but for odds of about 2^-90)."""

    leader: int
    others: tuple[int, ...]
    bins: int
    widths: dict
    table_rows: dict
    dummies: int
    parties: int
    tags: int = 1  # per other holder: 1 (inner join), 3 independent ones (left join)

    @property
    def rows(self) -> int:
        return self.bins + self.parties * self.dummies

    def span(self, i: int) -> tuple[int, int]:
        """Columns of holder ``i``'s features in the table (another holder's tag follows)."""
        start = 0
        for h in (self.leader, *self.others):
            if h == i:
                return start, start + self.widths[h]
            start += self.widths[h] + (self.tags if h != self.leader else 0)
        raise KeyError(i)

    @property
    def tag_columns(self) -> list[int]:
        """The tag columns, each other holder's in turn (in ``others`` order)."""
        return [self.span(j)[1] + k for j in self.others for k in range(self.tags)]

    @property
    def width(self) -> int:
        return sum(self.widths.values()) + self.tags * len(self.others)


def make_layout(holders: list[int], sizes: dict[int, int], feats: dict, join: str, base_index: int,
                dummies: int, m: int) -> Layout:
    """The bin table's layout from the public holdings (see :class:`Layout`)."""
    from jointstats.engine import opprf
    leader = base_index if join == "left" else min(holders, key=lambda i: (sizes[i], i))
    others = tuple(i for i in holders if i != leader)
    return Layout(leader, others, L.bin_count(sizes[leader]), {i: len(feats[i]) for i in holders},
                  {j: opprf.table_rows(3 * sizes[j]) for j in others}, dummies, m,
                  3 if join == "left" else 1)


async def _send_table(rt, rns, table, src: int, dst: int, shape) -> np.ndarray | None:
    """A residue table from ``src`` to ``dst`` in chunks of rows (a step of every party's)."""
    from jointstats.mpc import shamir
    shape = tuple(int(v) for v in shape)
    out = np.empty((len(rns),) + shape, dtype=np.uint32) if rt.pid == dst else None
    for a, b in shamir.row_chunks(rns, shape):
        part = table[:, a:b] if rt.pid == src else None
        got = await rt.scatter([part] * len(rt.parties), [src], shamir.residue_codec(rns, (b - a,) + shape[1:]),
                               receivers=[dst])
        if rt.pid == dst:
            out[:, a:b] = got[0]
    return out


async def _bin_table(rt, rns, lay: Layout, block: LocalBlock, spec: Spec, metrics: dict):
    """Steps 3 and 4 of the linkage: the OPPRF exchange between the leader and every other
    holder, then this party's share of the bin table ``(L, bins, width)`` (see
    docs/linkage.md). Only the leader and the other holders compute; everyone shares.

    The work overlaps: another holder computes its own PRF outputs (its keys in each of their
    bins) from the start, while the leader hashes and blinds its queries; the leader removes
    the blinding from each holder's answers while the holders build their tables."""
    import asyncio
    import time
    from jointstats.engine import opprf
    from jointstats.mpc import shamir
    me = rt.pid
    bins = lay.bins
    m = len(rt.parties)
    started = time.perf_counter()
    queries = own = keys = outputs_task = None
    # every other holder's PRF has a secret scalar per bin (from a seed). Threshold 1 (3 or 4
    # parties): the other holders share the seed, so the leader blinds and unblinds each bin
    # once and each other holder answers a part of the bins; from 5 parties a coalition of
    # the leader and one holder would then decode every holder's table, so each holder has
    # its own seed and answers every bin
    shared = rt.threshold < 2
    if shared:
        seed = secrets.token_bytes(32) if me == lay.others[0] else None
        got = await rt.scatter([seed] * m, [lay.others[0]], shamir.SEED, receivers=list(lay.others))
        seed = got[0]
    else:
        seed = secrets.token_bytes(32)
    if me in lay.others:  # its own PRF outputs need nothing from anyone: start at once
        keys = await shamir.offload(L.bin_keys, seed, bins)
        outputs_task = _background(shamir.offload(_own_outputs, block, keys, spec.dataset, bins))
    seed = None
    if me == lay.leader:  # its keys in bins; one blinded query point per bin
        choices = await shamir.offload(L.bin_choices, block.keys, spec.dataset, bins)
        owner, dropped = await shamir.offload(L.cuckoo, choices, bins)
        if dropped:  # its own log only
            log.warning("%d key(s) of this party found no bin and are left out of the linkage", dropped)
        full = owner >= 0
        points = np.empty((bins, L.POINT), dtype=np.uint8)
        points[~full] = await shamir.offload(L.random_points, int((~full).sum()))  # an empty bin: random
        if full.any():
            points[full] = await shamir.offload(L.hash_points, [block.keys[k] for k in owner[full]], spec.dataset)
        blind, unblind = L.blinding()
        queries = await shamir.offload(blind.apply, points)
        own = np.zeros((bins, lay.widths[me]), dtype=np.int64)
        own[full] = block.rows[owner[full]]
    # which bins each other holder answers: shared, a part each; otherwise all
    cuts = np.linspace(0, bins, len(lay.others) + 1).astype(int) if shared else None
    part = {j: (cuts[k], cuts[k + 1]) if shared else (0, bins) for k, j in enumerate(lay.others)}
    ask = [queries[slice(*part[j])] if j in part and queries is not None else None for j in range(m)]
    mine = part.get(me, (0, 0))
    got = await rt.scatter(ask, [lay.leader], _points_codec(mine[1] - mine[0]), receivers=lay.others)
    queries = got[0]
    if not shared and len(lay.others) > 1:
        # each answers every bin under its own scalars: the holders check that the leader
        # asked them all the same (a leader asking two holders different points for a bin
        # could learn from the opening whether one of them has a key it guessed)
        digest = hashlib.sha256(queries.tobytes()).digest() if me in lay.others else None
        heard = await rt.scatter([digest] * m, list(lay.others), shamir.SEED, receivers=list(lay.others))
        if me in lay.others and any(d != digest for d in heard):
            rt.drop_peer(lay.leader, "different linkage queries to different holders")
            raise LinkageError(f"party {rt.name_of(lay.leader)!r} sent the other holders different "
                               "linkage queries")
    unblinded: dict[int, asyncio.Future] = {}
    for j in lay.others:
        lo, hi = part[j]
        answer = await _from_peer(rt, lay.leader, L.multiply, keys[lo:hi], queries) if me == j else None
        got = await rt.scatter([answer] * m, [j], _points_codec(hi - lo), receivers=[lay.leader])
        if me == lay.leader:  # this holder's PRF outputs of the leader's keys, while the others work
            unblinded[j] = _background(_from_peer(rt, j, unblind.apply, got[0]))

    every: list[np.ndarray] = []

    async def outputs_for(j: int) -> np.ndarray:
        """The leader's PRF outputs under holder j's scalars (shared: every holder's part,
        put together once)."""
        if not shared:
            return await unblinded[j]
        if not every:
            every.append(np.concatenate([await unblinded[i] for i in lay.others]))
        return every[0]
    metrics["queries_seconds"] = time.perf_counter() - started
    metrics["cpu_queries"] = time.process_time()
    decoded = None
    if me == lay.leader:  # its own rows, then what every table gives under its keys' outputs
        decoded = np.empty((len(rns), bins, lay.width), dtype=np.uint32)
        lo, hi = lay.span(me)
        decoded[:, :, lo:hi] = rns.encode(own)
        own = None
    masks = None
    for j in lay.others:  # every other holder programs its table
        seed = table = None
        if me == j:
            seed, table, masks = await shamir.offload(_programmed, rns, lay, block, await outputs_task)
            outputs_task = None
        got = await rt.scatter([seed] * m, [j], shamir.SEED, receivers=[lay.leader])
        table = await _send_table(rt, rns, table, j, lay.leader, (lay.table_rows[j], lay.widths[j] + lay.tags))
        if me == lay.leader:
            lo, _ = lay.span(j)
            view = decoded[:, :, lo:lo + lay.widths[j] + lay.tags]
            values = await shamir.offload(opprf.evaluate, rns, got[0], table, await outputs_for(j))
            view[...] = values
        table = None
    metrics["opprf_seconds"] = time.perf_counter() - started
    metrics["cpu_opprf"] = time.process_time()
    # the leader shares its rows and the decoded values, each other holder its bin masks and
    # tags; their sum is, for every bin, the other holder's row and a tag of 0 if it holds
    # the leader's key, and uniformly random values otherwise
    out = await shamir.deal(rt, rns, (lambda a, b: decoded[:, a:b]) if me == lay.leader else None,
                            [lay.leader], (bins, lay.width))
    decoded = None
    for j in lay.others:
        lo, _ = lay.span(j)
        w = lay.widths[j] + lay.tags
        extra = await shamir.deal(rt, rns, (lambda a, b: masks[:, a:b]) if me == j else None, [j], (bins, w))

        def add(lo=lo, w=w, extra=extra):
            for a in range(0, bins, 1 << 16):  # in slices: no table-sized temporary
                b = min(a + (1 << 16), bins)
                out[:, a:b, lo:lo + w] = rns.add(out[:, a:b, lo:lo + w], extra[:, a:b])
        await shamir.offload(add)
    return out


async def _from_peer(rt, sender: int, fn, *args):
    """``fn(*args)`` on points the party ``sender`` sent (in a daemon thread); a point of
    small order, which only a deviating peer sends, drops that peer and names it (found in
    review: the job failed naming nobody, or an honest party that had stopped)."""
    from jointstats.mpc import shamir
    try:
        return await shamir.offload(fn, *args)
    except LinkageError:
        why = "a point of small order in the linkage"
        rt.drop_peer(sender, why)
        raise LinkageError(f"party {rt.name_of(sender)!r} sent a malformed message ({why}); dropped") from None


def _background(coro):
    """A task for work in a daemon thread that runs while this party goes on with its steps;
    its failure surfaces where it is awaited (and is not reported again as never retrieved
    if the job failed first)."""
    import asyncio
    task = asyncio.ensure_future(coro)
    task.add_done_callback(lambda t: t.cancelled() or t.exception())
    return task


def _own_outputs(block: LocalBlock, keys: np.ndarray, dataset: str, bins: int):
    """An other holder's PRF outputs: for each of its keys y and each distinct bin b of y,
    F_b(y) = k_b * H(y); returns (key indices, bins, outputs)."""
    choices = L.bin_choices(block.keys, dataset, bins)
    # numpy throughout: a Python sort of millions of pairs would hold the interpreter lock,
    # and so this party's heartbeats, for seconds
    keep = np.ones(choices.shape, dtype=bool)
    keep[:, 1] = choices[:, 1] != choices[:, 0]
    keep[:, 2] = (choices[:, 2] != choices[:, 0]) & (choices[:, 2] != choices[:, 1])
    ys = np.repeat(np.arange(len(block.keys), dtype=np.int64), 3)[keep.ravel()]
    bs = choices.ravel()[keep.ravel()]
    points = L.hash_points(block.keys, dataset)
    return ys, bs, L.multiply(keys[bs], points[ys])


def _programmed(rns, lay: Layout, block: LocalBlock, own):
    """An other holder's OPPRF table: (seed, table, its bin masks and tags ``(L, bins,
    width + tags)``, uint32). Under F_b(y) (``own``: :func:`_own_outputs`) the table decodes
    to (row(y) - mask(b), -tag(b)...)."""
    from jointstats.engine import opprf
    ys, bs, outputs = own
    width = block.rows.shape[1]
    masks = np.empty((len(rns), lay.bins, width + lay.tags), dtype=np.uint32)
    values = np.empty((len(rns), len(ys), width + lay.tags), dtype=np.uint32)
    step = 1 << 16
    for a in range(0, lay.bins, step):  # in slices: no table-sized int64 temporary
        masks[:, a:a + step] = rns.random((min(step, lay.bins - a), width + lay.tags))
    for a in range(0, len(ys), step):
        y, b = ys[a:a + step], bs[a:a + step]
        part = np.zeros((len(rns), len(y), width + lay.tags), dtype=np.int64)
        part[:, :, :width] = rns.encode(block.rows[y])
        part -= masks[:, b]
        for l, p in enumerate(rns.primes):
            values[l, a:a + step] = part[l] % p
    seed, table = opprf.program(rns, outputs, values, opprf.table_rows(3 * block.announced))
    return seed, table, masks


def dummy_rows(rns, lay: Layout, link_noise: dict) -> np.ndarray:
    """This party's dummy records (DP, inner join), ``(L, dummies, width)``: a count
    Z = clamp(k + DL(1 / epsilon), 0, 2k), drawn exactly and kept by this party alone, of rows
    whose tags are all 0 (they link), then fillers with random tags up to 2k rows; every
    feature 0. So every party shares the same number of rows whatever its Z, and after the
    shuffle no coalition of t parties knows which rows are another party's dummies: the
    linked count, as every party sees it, is the real one plus the sum of the parties' Z."""
    k = int(link_noise["shift"])
    z = min(max(k + discrete_laplace(LINK_SENSITIVITY / Fraction(link_noise["epsilon_exact"])), 0), 2 * k)
    tags = rns.random((lay.dummies, len(lay.tag_columns)))  # uniform: a 0 tag by chance has odds 1/M
    tags[:, :z] = 0
    out = np.zeros((len(rns), lay.dummies, lay.width), dtype=np.int64)
    out[:, :, lay.tag_columns] = tags
    return out


#: How much the linked count the parties see (inner join) changes when one row is added or
#: removed at one holder.
LINK_SENSITIVITY = 1


async def _link(rt, rns, lay: Layout, block: LocalBlock, spec: Spec, join: str, link_noise,
                metrics: dict, commit=None) -> tuple[dict[int, np.ndarray], int]:
    """The linkage (docs/linkage.md): this party's shares of every holder's columns over the
    linked records (``(L, n, features)`` per holder) and their number n. ``commit``: awaited
    before the opening (DP: the noisy count is a release, charged before anyone sees it)."""
    import time
    from jointstats.mpc import shamir
    m = len(rt.parties)
    metrics["cpu_link_start"] = time.process_time()
    table = await _bin_table(rt, rns, lay, block, spec, metrics)
    metrics["cpu_shared"] = time.process_time()
    started = time.perf_counter()
    if join == "left":
        linked = await _left(rt, rns, lay, table)
        metrics["shuffle_seconds"] = time.perf_counter() - started
        return linked, lay.bins
    if lay.dummies:  # every party's dummy records, each in its own rows
        mine = dummy_rows(rns, lay, link_noise)
        mine_at = rt.pid * lay.dummies

        def rows_of(a: int, b: int) -> np.ndarray:
            part = np.zeros((len(rns), b - a, lay.width), dtype=np.int64)
            lo, hi = max(a, mine_at), min(b, mine_at + lay.dummies)
            if lo < hi:
                part[:, lo - a:hi - a] = mine[:, lo - mine_at:hi - mine_at]
            return part
        extra = await shamir.deal(rt, rns, rows_of, range(m), (m * lay.dummies, lay.width))
        table = np.concatenate([table, extra], axis=1)
        metrics["dummy_rows"] = m * lay.dummies
    # a permutation no coalition of t parties knows: one resharing shuffle per set
    for members in L.shuffle_sets(m, rt.threshold):
        seed = secrets.token_bytes(32) if rt.pid == members[0] else None
        got = await rt.scatter([seed] * m, [members[0]], shamir.SEED, receivers=list(members))
        perm = await shamir.offload(L.permutation, got[0], lay.rows) if rt.pid in members else None
        table = await shamir.reshare_permute(rt, rns, table, members, perm)
    # open s * (sum of the tags) for a fresh random s: 0 exactly where every tag is (a
    # linked record), uniformly random elsewhere
    tags = rns.total([table[:, :, c].astype(np.int64) for c in lay.tag_columns])[:, :, None]
    s = await shamir.deal(rt, rns, lambda a, b: rns.random((b - a, 1)), range(m), tags.shape[1:])
    masked = await shamir.multiply(rt, rns, tags, s)
    if commit is not None:  # the job's budget is spent from here on, whatever happens next
        await commit()
    opened = await shamir.open_values(rt, rns, masked)
    pos = np.flatnonzero((opened == 0).all(axis=0)[:, 0])
    from jointstats.engine import trace
    trace.point("linked", records=len(pos))
    metrics["shuffle_seconds"] = time.perf_counter() - started
    metrics["cpu_opened"] = time.process_time()
    linked: dict[int, np.ndarray] = {}
    for i in (lay.leader, *lay.others):
        lo, hi = lay.span(i)
        linked[i] = table[:, pos, lo:hi]
    return linked, len(pos)


async def _left(rt, rns, lay: Layout, table: np.ndarray) -> dict[int, np.ndarray]:
    """A left join's linked table: every bin of the base (the leader), each other holder's
    columns multiplied by a secret bit, 1 exactly when it has the bin's key (its three tags
    are 0: ``shamir.is_zero``, about 31 rounds of products). Nothing is opened, so nothing
    about who has which key is shown, and the bins need no shuffle. In blocks of
    ``LEFT_BLOCK`` bins: the zero tests' temporaries are some ten times their input."""
    from jointstats.engine import trace
    from jointstats.mpc import shamir
    trace.point("zero_tests")
    lo, hi = lay.span(lay.leader)
    linked = {lay.leader: table[:, :, lo:hi]}
    for j in lay.others:
        linked[j] = np.empty((len(rns), lay.bins, lay.widths[j]), dtype=np.uint32)
    cols = lay.tag_columns
    for a in range(0, lay.bins, LEFT_BLOCK):
        b = min(a + LEFT_BLOCK, lay.bins)
        tags = table[:, a:b][:, :, cols].astype(np.int64).reshape(len(rns), b - a, len(lay.others), lay.tags)
        bits = await shamir.is_zero(rt, rns, tags)
        match = bits[..., 0]
        for k in range(1, lay.tags):
            match = await shamir.multiply(rt, rns, match, bits[..., k])  # (L, rows, others)
        for k, j in enumerate(lay.others):
            lo, hi = lay.span(j)
            linked[j][:, a:b] = await shamir.multiply(rt, rns, table[:, a:b, lo:hi], match[:, :, k, None])
    return linked


#: Bins per block of a left join's zero tests.
LEFT_BLOCK = 1 << 17


async def secure_partials(rt, config, spec: Spec, plan: Plan, block: LocalBlock, guard,
                          metrics: dict, commit=None) -> dict[str, list[int]]:
    """Steps 2 to 5 of a linked job: every statistic's partial as this party's integer
    additive share (the sum over the parties is the partial over the linked records).
    ``commit`` (DP): the budget commit, awaited before an inner join opens its noisy count."""
    import time
    from jointstats.mpc import codec as _codec
    started = time.perf_counter()
    m = len(config.peers)
    names = [c.name for c in spec.schema]
    own = [block.announced, *block.held]
    # echoed: every party checks that every other heard the same holdings from each (found in
    # review: a holder telling two parties different key counts made them derive different
    # leaders, and an honest holder then sent it the other holders' shared seed)
    got = await guard(rt.transfer(own, codec=_codec.ECHOED_INTS), "the holdings exchange")
    holders = holders_of(config.peers)
    sizes: dict[int, int] = {}
    holdings: dict[str, tuple[str, ...]] = {}
    for i, msg in enumerate(got):
        who = config.peers[i].name
        if (not msg or not 0 <= msg[0] <= spec_limit(plan) or any(not 0 <= c < len(names) for c in msg[1:])
                or len(set(msg[1:])) != len(msg) - 1 or (i not in holders and msg != [0])):
            raise DataError(f"party {who!r} sent a malformed holdings message")
        if plan.link[2] and i in holders and msg[0] != plan.link[2]:
            raise DataError(f"party {who!r} sent {msg[0]} keys, not link.rows {plan.link[2]}")
        if i in holders:
            sizes[i] = msg[0]
            holdings[who] = tuple(names[c] for c in msg[1:])
    owners = assign_columns(spec, holdings)
    join, base = plan.link[3], plan.link[4]
    base_index = [p.name for p in config.peers].index(base) if join == "left" else 0
    if join == "left" and base_index not in holders:
        raise SpecError(f"link.base: {base!r} holds no data (role: compute); a left join keeps "
                        "the records of a data holder")
    from jointstats.mpc import shamir
    from jointstats.mpc.rns import Rns, primes_for
    rns = Rns(primes_for(shamir.modulus_bits(_entry_bits(plan), SIGMA, m)))
    feats = {i: layout(plan, spec, holdings[config.peers[i].name]) for i in holders}
    link_noise = (plan.privacy or {}).get("linkage")
    lay = make_layout(holders, sizes, feats, join, base_index, 0, m)
    if link_noise is not None and join != "left":  # DP: every party's dummy records, 2k rows
        lay = replace(lay, dummies=2 * int(link_noise["shift"]))
    width = 4 * len(rns)  # bytes of an element's shares: one uint32 residue per prime
    n_max = lay.rows if join == "left" else min(min(sizes.values()), lay.bins) + m * lay.dummies
    check_sizes([p.name for p in config.peers], sizes, lay, width)
    # what a peer may send ahead of this party's steps, and its longest message, from here on
    plan_limit = rt.unread_limit  # the secure step's own messages (after the linkage)
    rt.frame_limit = max(plan_limit, _frame_bound(rns, lay))
    rt.unread_limit = max(plan_limit, _unread_bound(plan, rns, lay, m, n_max))
    # every party has raised its bounds before any table is sent (a party that got here first
    # would otherwise send to a party still under the plan's bound); the same round gives
    # every pair of parties a seed for pseudorandom shares (half the share messages)
    await guard(shamir.pair_seeds(rt), "the start of the linkage")
    # a hang still ends (a lost peer ends it at once, through the runtime's failure future);
    # the linkage's honest time grows with the rows: 5 ms per row and PRF output (about 20
    # times what the benchmark takes) on top of the step timeout, and never over 3 hours
    work = lay.bins * len(holders) + sum(3 * sizes[j] for j in lay.others)
    timeout = min(600.0 + 0.005 * work, LINKAGE_TIMEOUT)
    linked, n_linked = await guard(_link(rt, rns, lay, block, spec, join, link_noise, metrics, commit),
                                   "the linkage", timeout)
    metrics["linkage_seconds"] = time.perf_counter() - started
    metrics["linked_records"] = n_linked  # known to every party (docs/linkage.md)
    started = time.perf_counter()
    index_of = {p.name: i for i, p in enumerate(config.peers)}
    partials = await guard(_statistics(rt, rns, plan, spec, lay, feats, linked, n_linked, join,
                                       {c: index_of[p] for c, p in owners.items()},
                                       dummies=link_noise is not None),
                           "the statistics over the linked rows", timeout)
    rt.pair_seeds = None  # this job's seeds serve its linkage and statistics only
    metrics["linked_statistics_seconds"] = time.perf_counter() - started
    return partials


def check_sizes(names: list[str], sizes: dict[int, int], lay: Layout, width: int) -> None:
    """Refuse, before anything is sent, a linkage whose shares would not fit: every party holds
    the bin table (``lay.rows`` rows of ``lay.width`` columns, ``width`` bytes each) and the
    leader every other holder's OPPRF table, one at a time; each must stay below
    ``codec.MAX_MESSAGE`` (1 GiB). Also refuse a holder with no usable keys. (All of it
    public: the numbers of keys are announced, ``link.rows`` in DP mode.)"""
    from jointstats.mpc import codec as _codec
    limit = _codec.MAX_MESSAGE
    empty = [names[i] for i in sizes if sizes[i] == 0]
    if empty:
        raise DataError(f"party {empty[0]!r} has no usable keys to link")
    for j in lay.others:
        if lay.table_rows[j] * (lay.widths[j] + lay.tags) * width > limit:
            raise DataError(f"party {names[j]!r}: its linkage table for {sizes[j]} keys x "
                            f"{lay.widths[j]} encoded features is over the {limit >> 20} MiB "
                            "limit; use fewer rows (link.rows) or fewer statistics")
    if lay.rows * lay.width * width > limit:
        raise DataError(f"the linked table of {lay.rows} rows x {lay.width} encoded features "
                        f"would be over the {limit >> 20} MiB limit of a table's shares; "
                        "use fewer rows (link.rows) or fewer statistics")


def _unread_bound(plan: Plan, rns, lay: Layout, m: int, n_max: int) -> int:
    """The most bytes of a linked job's messages one peer may send this party before a step
    reads them (the runtime's per-peer bound, raised from the plan's once the holdings are
    known; at most ``codec.MAX_UNREAD``): the bin table's shares once per dealing,
    resharing and product (a fast peer can be that far ahead), an OPPRF table per other
    holder, the query points and answers, and the statistics' products over at most
    ``n_max`` linked records (one share of every column a product takes, the weights'
    products included)."""
    from jointstats.mpc import codec as _codec
    element = 4 * len(rns)
    rounds = len(L.shuffle_sets(m, (m - 1) // 2)) + len(lay.others) + 4
    tables = sum(lay.table_rows[j] * (lay.widths[j] + lay.tags) for j in lay.others)
    columns = sum(len(s.terms) + sum(s.shape or ()) + len(lay.widths) + 2 for s in plan.statistics)
    total = element * (lay.rows * lay.width * rounds + tables + n_max * columns) + 2 * L.POINT * lay.bins
    if lay.tags > 1:  # a left join's zero tests: the rounds between two meetings, then the ANDs
        from jointstats.mpc import shamir
        block = min(lay.bins, LEFT_BLOCK)
        tests = len(lay.others) * lay.tags
        total += element * block * (tests * 2 * shamir.ZERO_TEST_SYNC + tests + sum(lay.widths.values()))
    return min(_codec.UNREAD_FLOOR + total, _codec.MAX_UNREAD)


def _frame_bound(rns, lay: Layout) -> int:
    """The longest message of a linked job's linkage and statistics: a chunk of shares
    (``shamir.MESSAGE_BYTES``, or one row if a row is longer) or the leader's query points
    (32 bytes a bin); the frame header and the codec's framing are far below the 1 KiB
    added."""
    from jointstats.mpc import shamir
    row = 4 * len(rns) * lay.width
    return 1024 + max(shamir.MESSAGE_BYTES, row, L.POINT * lay.bins)


#: Longest any wait of a linked job's linkage or statistics may take (seconds).
LINKAGE_TIMEOUT = 3 * 3600.0


def spec_limit(plan: Plan) -> int:
    """Largest block a holder may announce."""
    from jointstats.plan.spec import MAX_LINK_ROWS
    return plan.link[2] or MAX_LINK_ROWS


async def _statistics(rt, rns, plan: Plan, spec: Spec, lay: Layout, feats, linked, n: int, join,
                      owners: dict[str, int], dummies: bool = False):
    """Every statistic's partial over the linked records, as integer additive shares
    (``owners``: the MPC index of each column's holder). ``linked[i]``: this party's shares
    of holder i's features over the n linked records, a residue array ``(L, n, features)``."""
    from jointstats.mpc import shamir
    order = [lay.leader, *lay.others]
    base_index = lay.leader
    where: dict[tuple, tuple[int, int]] = {}
    for i in order:
        for j, f in enumerate(feats[i]):
            where.setdefault((f.kind, f.column, f.term, f.index, f.stat), (i, j))

    def col(kind, column=None, term=None, index=-1, stat="") -> np.ndarray:
        """This party's shares of one encoded column over the linked records: (L, n)."""
        i, j = where[(kind, column, term, index, stat)]
        return linked[i][:, :, j]

    def cols(keys: list[tuple]) -> np.ndarray:
        return np.stack([col(*key) for key in keys], axis=2)  # (L, n, len(keys))

    weights: dict[tuple, object] = {}

    async def weight(columns: tuple[str, ...]):
        """Shares of the 0/1 weight of a record for a statistic of ``columns`` (every one
        present; a left join's base row real; a DP dummy record none), or None: all count."""
        key = tuple(sorted(set(columns)))
        if key not in weights:
            # one bit per holder: the product of its own presence bits, made locally
            parts = []
            for i in order:
                mine = [c for c in key if owners[c] == i]
                if mine:
                    sub = ",".join(sorted(mine, key=[c.name for c in spec.schema].index))
                    parts.append(col("complete", stat=sub))
            if join == "left":  # a padding row of the base is no record
                parts.append(linked[base_index][:, :, feats[base_index].index(Feature("row"))])
            if not parts and dummies:  # a dummy linked record (DP) is no record
                parts.append(linked[order[0]][:, :, feats[order[0]].index(Feature("row"))])
            w = parts[0] if parts else None
            for part in parts[1:]:
                w = await shamir.multiply(rt, rns, w, part)
            weights[key] = w
        return weights[key]

    pieces = []
    for stat in plan.statistics:
        if n == 0:
            pieces.append(np.zeros((len(rns), stat.partial_size), dtype=np.int64))
            continue
        pieces.append(await _statistic(rt, rns, stat, col, cols, weight, n))
    vector = np.concatenate(pieces, axis=1)
    shares = await shamir.integer_shares(rt, rns, vector, _entry_bits(plan), SIGMA)
    out, pos = {}, 0
    for stat in plan.statistics:
        out[stat.name] = shares[pos:pos + stat.partial_size]
        pos += stat.partial_size
    return out


async def _statistic(rt, rns, stat: StatPlan, col, cols, weight, n: int) -> np.ndarray:
    """This party's shares of one statistic's partial vector over the linked records (n of
    them): ``(L, partial_size)``, of degree t (sums) or 2t (inner products, opened without
    a resharing by ``shamir.integer_shares``)."""
    from jointstats.mpc import shamir
    if stat.kind == "count":
        w = await weight(stat.columns)
        if w is None:
            return rns.from_ints([n])  # public: every party's share is the count itself
        return rns.sum_rows(w[:, :, None])
    if stat.kind == "histogram":
        bins = cols([("bin", stat.columns[0], None, b, stat.name) for b in range(stat.partial_size)])
        w = await weight(())
        if w is None:
            return rns.sum_rows(bins)
        # left join: padding rows of the base count nowhere (an inner product: degree 2t)
        return (await shamir.offload(rns.inner, w[:, :, None], bins))[:, 0, :]
    if stat.kind == "crosstab":
        rname, cname = stat.columns
        nr, nc = stat.shape
        a = cols([("level", rname, None, i) for i in range(nr)])
        b = cols([("level", cname, None, i) for i in range(nc)])
        w = await weight(())
        if w is not None:
            a = await shamir.multiply(rt, rns, a, w[:, :, None])
        return (await shamir.offload(rns.inner, a, b)).reshape(len(rns), nr * nc)
    # Gram statistics: terms[0] is the constant; the rest numeric grids or level indicators
    keys = [("grid", term.column, term) if term.kind == "num" else ("level", term.column, None, term.level)
            for term in stat.terms[1:]]
    x = cols(keys)
    k = len(stat.terms)
    w = await weight(stat.columns)
    if w is None:
        count = rns.from_ints([n])
        sums = rns.sum_rows(x)
        gram = await shamir.offload(rns.inner, x, x)
    else:
        count = rns.sum_rows(w[:, :, None])
        sums = (await shamir.offload(rns.inner, w[:, :, None], x))[:, 0, :]  # degree 2t, as the Gram matrix
        v = await shamir.multiply(rt, rns, x, w[:, :, None])
        gram = await shamir.offload(rns.inner, v, x)
    full = np.concatenate([count, sums, gram.reshape(len(rns), (k - 1) * (k - 1))], axis=1)
    # row-major upper triangle of [[n, s^T], [s, G]]
    pick = []
    for i in range(k):
        for j in range(i, k):
            if i == 0:
                pick.append(j)  # n, then s
            else:
                pick.append(k + (i - 1) * (k - 1) + (j - 1))
    return full[:, np.array(pick)]


def _entry_bits(plan: Plan) -> int:
    """Bits of the largest |entry| any partial of the plan can reach over the linked rows."""
    top = max([t.bound for s in plan.statistics for t in s.terms] or [1])
    return (plan.max_rows_per_party * top * top).bit_length() + 1
