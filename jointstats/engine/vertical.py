"""Linked (vertical) jobs: each party holds some columns about overlapping people.

The flow (docs/linkage.md):

1. Local step (each holder, plain numpy): read the key and the columns it holds, normalise
   the keys, leave out rows whose key is missing or repeated, encode every value the
   statistics need as integers (the same grid, clipping and level codes as horizontal jobs,
   one-hot levels and histogram bins, a presence bit per column), pad to ``link.rows``,
   hash the keys to points (blinded by its first secret scalar in the linkage, before they
   leave it).
2. Holdings: every party says which schema columns it holds (public metadata, as schema
   indices) and how many rows its block has; each checks that every column has one owner.
3. Linkage (``_linkage``): each holder secret-shares its encoded block; the blocks are
   permuted by resharing shuffles that no single party knows, while the points travel the
   chain of scalars; the final pseudonyms are grouped into linked records in the clear.
4. Statistics: the linked rows are gathered from the shuffled blocks (still secret), and
   every statistic's partial vector (counts, sums, the Gram matrix of its design, crosstab
   cells, histogram bins) is computed with vectorised secure products: one resharing per
   output for the inner products. The secret partial is turned into integer additive
   shares (a statistically masked opening), which the unchanged secure step of horizontal
   jobs (``_secure`` exact, ``_dp`` noisy) takes as each party's "partial".
"""
from __future__ import annotations

import itertools
import logging
import secrets
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from jointstats.engine import linkage as L
from jointstats.errors import DataError, PolicyError, SpecError
from jointstats.noise.local import discrete_laplace
from jointstats.plan.sealed import Plan, StatPlan, Term, assign_columns
from jointstats.plan.spec import Column, Spec

log = logging.getLogger("jointstats.vertical")

#: What the linkage shows every party, beside what the secure step shows (the result's
#: ``mpc.linkage``; docs/linkage.md has the full statement).
LINKAGE_SEES = ("every party learns each holder's number of keys (link.rows when set), who holds "
                "which column, and the match structure: in exact mode the exact number of linked "
                "records and the size of every intersection of the holders' key sets; in DP mode "
                "those sizes raised by dummy linked records (privacy.linkage), so they are "
                "differentially private towards every single party (with 5 or more parties not towards two "
                "colluding holders: docs/linkage.md); no party learns another's identifiers "
                "or which of its own records are linked")
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
    """A party's side of the linkage before any message: its scalars and, for a holder,
    its hashed key points (H(key), one per row, padding included; never sent unblinded)
    and encoded rows."""

    scalars: list
    held: tuple[int, ...] = ()  # schema indices of the columns it holds
    points: np.ndarray | None = None
    rows: np.ndarray | None = None
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
    m = len(config.peers)
    t = (m - 1) // 2
    count = L.scalars_needed(m, t, holders_of(config.peers))
    scalars = [L.Scalar() for _ in range(count)]
    if config.compute_only:
        return LocalBlock(scalars)
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
    points = L.hash_points(kept, spec.dataset)
    pad = (plan.link[2] - len(kept)) if plan.link[2] else 0
    if pad > 0:  # dummy keys: random points, all-zero rows (row bit 0)
        points = np.concatenate([points, L.random_points(pad)])
        rows = np.concatenate([rows, np.zeros((pad, rows.shape[1]), dtype=np.int64)])
    index = tuple(names.index(c) for c in held)  # the points are blinded in the chain
    return LocalBlock(scalars, index, points, rows, feats)


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


async def _move(rt, vec, src: int, dst: int, n: int):
    """The points from party ``src`` to party ``dst`` (a step of every party's)."""
    if src == dst:
        return vec
    got = await rt.scatter([vec] * len(rt.parties), [src], _points_codec(n), receivers=[dst])
    return got[0] if rt.pid == dst else vec


async def _link_block(rt, rns, h: int, n: int, width: int, block: LocalBlock, m: int, metrics):
    """Share block ``h`` (n rows of ``width`` encoded features) and run its chain: returns
    (this party's share of the shuffled table, the final pseudonyms).

    It runs on its own branch of the program counter (``_mpc.start_branch``): its waits
    are not wrapped in tasks (``rt.guard``), which would leave the branch; the caller
    guards the whole branch."""
    import time
    from jointstats.mpc import shamir
    t = rt.threshold
    k = len(block.scalars)
    route = L.chain(m, t, h, k)
    # applying several scalars to this block: the first times r, the last times r^-1 (fresh
    # for the block), so that no intermediate value recurs in another block
    r, r_inv = L.block_blinding(block.scalars[0], block.scalars[-1]) if k > 1 else (1, 1)

    async def multiply(points, j: int):
        # in a worker thread (libsodium runs without the interpreter lock): seconds of
        # multiplications must not hold up this party's messages and heartbeats
        return await shamir.offload(block.scalars[j].apply, points, r if j == 0 else r_inv if j == k - 1 else 1)

    table = await shamir.share(rt, rns, block.rows if rt.pid == h else None, h, (n, width))
    vec = block.points if rt.pid == h else None
    used = 0
    if rt.pid == h and not route.holder_carries_first:  # blinded before they leave the holder
        vec = await multiply(vec, 0)
        used = 1
    cur = h
    for members, carrier in zip(route.sets, route.carriers):
        perm = None
        seed = secrets.token_bytes(32) if rt.pid == members[0] else None
        got = await rt.scatter([seed] * m, [members[0]], shamir.SEED, receivers=list(members))
        if rt.pid in members:
            perm = await shamir.offload(L.permutation, got[0], n)
        table = await shamir.reshare_permute(rt, rns, table, members, perm)
        vec = await _move(rt, vec, cur, carrier, n)
        if rt.pid == carrier:
            started = time.perf_counter()
            vec = await multiply(vec[perm], used)
            metrics["exp_seconds"] = metrics.get("exp_seconds", 0.0) + time.perf_counter() - started
            used += 1
        cur = carrier
    for party, count in route.tail:
        vec = await _move(rt, vec, cur, party, n)
        if rt.pid == party:
            started = time.perf_counter()
            for j in range(used, used + count):
                vec = await multiply(vec, j)
            metrics["exp_seconds"] = metrics.get("exp_seconds", 0.0) + time.perf_counter() - started
            used += count
        cur = party
    final = await rt.scatter([vec] * m, [cur], _points_codec(n))
    return table, final[0]


async def secure_partials(rt, config, spec: Spec, plan: Plan, block: LocalBlock, guard,
                          metrics: dict) -> dict[str, list[int]]:
    """Steps 2 to 4 of a linked job: every statistic's partial as this party's integer
    additive share (the sum over the parties is the partial over the linked records)."""
    import time
    from jointstats.mpc import codec as _codec
    started = time.perf_counter()
    m = len(config.peers)
    names = [c.name for c in spec.schema]
    own = [len(block.points) if block.points is not None else 0, *block.held]
    got = await guard(rt.transfer(own, codec=_codec.INTS), "the holdings exchange")
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
    width_d = 0  # DP: dummy linked records per holder (every party's, a public number)
    if link_noise is not None:
        cells_each = sum(1 for c in dummy_cells(holders) if holders[0] in c)  # the same for all
        # at most the plan's bound for as many holders as parties (engine.dp._linkage_share)
        width_d = m * 2 * int(link_noise["shift"]) * cells_each
    width = 4 * len(rns)  # bytes of an element's shares: one uint32 residue per prime
    full = {i: sizes[i] + width_d for i in holders}  # every block's rows, dummies included
    n_max = full[base_index] if join == "left" else min(full.values())  # the most linked records
    check_sizes([p.name for p in config.peers], sizes, full, feats, n_max, width)
    # what a peer may send ahead of this party's steps, and its longest message, from here on
    plan_limit = rt.unread_limit  # the secure step's own messages (after the linkage)
    rt.frame_limit = max(plan_limit, _frame_bound(rns, full, feats, width_d))
    rt.unread_limit = max(plan_limit, _unread_bound(plan, rns, full, feats, m, n_max))
    # every party has raised its bounds before any block is sent (a holder that got here first
    # would otherwise send its shares to a party still under the plan's bound); the same round
    # gives every pair of parties a seed for pseudorandom shares (half the share messages)
    await guard(shamir.pair_seeds(rt), "the start of the linkage")
    if link_noise is not None:  # DP: dummy linked records hide the match structure's counts
        dummies = await guard(_exchange_dummies(rt, link_noise, holders, m), "the dummy records")
        sizes = full
        if rt.pid in holders:
            if len(dummies) != width_d:
                raise DataError("the dummy records received do not have the plan's size")
            block.points = np.concatenate([block.points, L.dummy_points(dummies, spec.dataset)])
            block.rows = np.concatenate([block.rows, np.zeros((width_d, block.rows.shape[1]),
                                                              dtype=block.rows.dtype)])
        metrics["dummy_rows_per_holder"] = width_d
    # every holder secret-shares its encoded block, and every block's chain runs on its own
    # branch of the program counter: the parties work on different blocks at the same time
    # (the scalar multiplications dominate)
    from jointstats.mpc import runtime as _mpc
    pending = {i: _mpc.start_branch(_link_block(rt, rns, i, sizes[i], len(feats[i]), block, m, metrics))
               for i in holders}
    tables, pseudonyms = {}, {}
    # a hang still ends (a lost peer ends it at once, through the runtime's failure future);
    # the linkage's honest time grows with the rows: 5 ms per row (about 20 times what the
    # benchmark takes) on top of the step timeout, and never over 3 hours
    timeout = min(600.0 + 0.005 * sum(sizes.values()), LINKAGE_TIMEOUT)
    for i in holders:
        tables[i], pseudonyms[i] = await guard(_mpc.await_branch(pending[i]), "the linkage", timeout)
    metrics["linkage_seconds"] = time.perf_counter() - started
    order = list(holders)
    idx = L.group([pseudonyms[i] for i in order], join, order.index(base_index) if join == "left" else 0)
    n_linked = len(idx[0])
    metrics["linked_records"] = n_linked  # known to every party (docs/linkage.md)
    started = time.perf_counter()
    index_of = {p.name: i for i, p in enumerate(config.peers)}
    partials = await guard(_statistics(rt, rns, plan, spec, order, feats, tables, idx, join, base_index,
                                       {c: index_of[p] for c, p in owners.items()},
                                       dummies=link_noise is not None),
                           "the statistics over the linked rows", timeout)
    rt.pair_seeds = None  # this job's seeds serve its linkage and statistics only
    metrics["linked_statistics_seconds"] = time.perf_counter() - started
    return partials


def check_sizes(names: list[str], sizes: dict[int, int], full: dict[int, int], feats: dict,
                n_max: int, width: int) -> None:
    """Refuse, before any block is sent, a linkage whose shares would not fit: every party
    holds every holder's block (``full[i]`` rows, dummies included, of ``len(feats[i])``
    encoded features, ``width`` bytes each) and then the linked table (up to ``n_max``
    records, every holder's features for each: a left join keeps every row of its base);
    each must stay below ``codec.MAX_MESSAGE`` (1 GiB). Also refuse a holder with no
    usable keys. (All of it public: block sizes are announced, ``link.rows`` in DP mode.)"""
    from jointstats.mpc import codec as _codec
    limit = _codec.MAX_MESSAGE
    for i in full:
        if full[i] * len(feats[i]) * width > limit:
            raise DataError(f"party {names[i]!r}: its linked block of {sizes[i]} rows x "
                            f"{len(feats[i])} encoded features is over the {limit >> 20} "
                            "MiB limit of a block's shares; use fewer rows (link.rows) or fewer statistics")
    features = sum(len(f) for f in feats.values())
    if n_max * features * width > limit:
        raise DataError(f"the linked table of up to {n_max} records x {features} encoded features "
                        f"would be over the {limit >> 20} MiB limit of a table's shares; "
                        "use fewer rows (link.rows) or fewer statistics")
    empty = [names[i] for i in full if sizes[i] == 0]
    if empty:
        raise DataError(f"party {empty[0]!r} has no usable keys to link")


def _unread_bound(plan: Plan, rns, full: dict[int, int], feats: dict, m: int, n_max: int) -> int:
    """The most bytes of a linked job's share messages one peer may send this party before a
    step reads them (the runtime's per-peer bound, raised from the plan's once the holdings
    are known; at most ``codec.MAX_UNREAD``): every block's shares (``full``: its rows,
    dummies included) once per resharing and once for its input (a fast peer can be that
    far ahead, every block's chain running at once), and the statistics' products over at
    most ``n_max`` linked records (one share of every column a product takes, the weights'
    products included: a party that deals in no product may get them all ahead)."""
    from jointstats.mpc import codec as _codec
    element = 4 * len(rns)
    rounds = len(L.shuffle_sets(m, (m - 1) // 2)) + 1
    blocks = sum(full[i] * len(f) for i, f in feats.items()) * rounds
    columns = sum(len(s.terms) + sum(s.shape or ()) + len(feats) + 2 for s in plan.statistics)
    return min(_codec.UNREAD_FLOOR + element * (blocks + n_max * columns), _codec.MAX_UNREAD)


def _frame_bound(rns, full: dict[int, int], feats: dict, width_d: int) -> int:
    """The longest message of a linked job's linkage and statistics: a chunk of shares
    (``shamir.MESSAGE_BYTES``, or one row if a row is longer), a block's points or
    pseudonyms (32 bytes a row) or a holder's dummy identifiers; the frame header and the
    codec's framing are far below the 1 KiB added."""
    from jointstats.mpc import shamir
    row = 4 * len(rns) * max(len(f) for f in feats.values())
    return 1024 + max(shamir.MESSAGE_BYTES, row, L.POINT * max(full.values()), _ID * width_d)


#: Longest any wait of a linked job's linkage or statistics may take (seconds).
LINKAGE_TIMEOUT = 3 * 3600.0


_ID = 16  # bytes of a dummy record's random identifier
#: How much the match structure (the counts of every cell) changes, in L1, when one row is
#: added or removed: a row at a third holder moves a record from cell AB to cell ABC.
LINK_SENSITIVITY = 2


def dummy_cells(holders: list[int]) -> list[tuple[int, ...]]:
    """The combinations of holders whose shared records the parties see counted: every set of
    two or more holders (a record at one holder only is the rest of its public block size)."""
    return [c for r in range(2, len(holders) + 1) for c in itertools.combinations(holders, r)]


def dummy_lists(link_noise: dict, holders: list[int]) -> dict[int, list[bytes]]:
    """This party's dummy records for each holder: for every cell (combination of holders) a
    count Z = clamp(k + DL(2 / epsilon), 0, 2k), drawn exactly and kept by this party alone,
    of fresh random identifiers given to every holder of the cell; then unique random fillers,
    so that every holder gets 2k identifiers per cell it is in, in a random order, whatever Z
    is. A holder cannot tell a shared identifier from a filler; after the linkage the
    parties see every cell's count raised by the sum of the parties' Z."""
    k = int(link_noise["shift"])
    # sensitivity 2: one row added at a holder can move a record from one cell to another
    scale = LINK_SENSITIVITY / Fraction(link_noise["epsilon_exact"])
    lists: dict[int, list[bytes]] = {h: [] for h in holders}
    cells = dummy_cells(holders)
    for cell in cells:
        z = min(max(k + discrete_laplace(scale), 0), 2 * k)
        # the same work whatever z is: 2k shared candidates and 2k fillers per holder, cut
        shared = [secrets.token_bytes(_ID) for _ in range(2 * k)]
        for h in cell:
            fillers = [secrets.token_bytes(_ID) for _ in range(2 * k)]
            lists[h] += shared[:z] + fillers[z:]
    for h in holders:  # a uniformly random order (sorted by random 64-bit keys)
        lists[h] = [d for _, d in sorted((secrets.randbits(64), d) for d in lists[h])]
    return lists


async def _exchange_dummies(rt, link_noise: dict, holders: list[int], m: int) -> list[bytes]:
    """Every party gives every holder its dummy identifiers (one message per pair, of a size
    fixed by the plan); a holder gets those of all parties, others an empty list."""
    from jointstats.mpc import codec as _codec
    mine = dummy_lists(link_noise, holders)
    n = len(mine[holders[0]])
    codec = _codec.Codec("dummies", lambda a: _codec.encode_array(a, np.uint8),
                         lambda d: _codec.decode_array(d, np.uint8, (n, _ID)))
    parts = [np.frombuffer(b"".join(mine[j]), dtype=np.uint8).reshape(n, _ID) if j in mine else None
             for j in range(m)]
    got = await rt.scatter(parts, list(range(m)), codec, receivers=holders)
    if rt.pid not in holders:
        return []
    return [bytes(row) for arr in got for row in arr]


def spec_limit(plan: Plan) -> int:
    """Largest block a holder may announce."""
    from jointstats.plan.spec import MAX_LINK_ROWS
    return plan.link[2] or MAX_LINK_ROWS


async def _statistics(rt, rns, plan: Plan, spec: Spec, order, feats, tables, idx, join, base_index,
                      owners: dict[str, int], dummies: bool = False):
    """Every statistic's partial over the linked records, as integer additive shares
    (``owners``: the MPC index of each column's holder). ``tables[i]``: this party's share
    of holder i's shuffled block, a residue array ``(L, rows, features)``."""
    from jointstats.mpc import shamir
    n = len(idx[0])
    linked: dict[int, np.ndarray] = {}
    where: dict[tuple, tuple[int, int]] = {}
    for i, pos in zip(order, idx):
        tab = tables.pop(i)  # each shuffled block freed as soon as its linked rows are out
        if join == "left" and (pos < 0).any():  # no partner: a row of public zeros
            tab = np.concatenate([tab, np.zeros((tab.shape[0], 1, tab.shape[2]), dtype=tab.dtype)], axis=1)
            pos = np.where(pos < 0, tab.shape[1] - 1, pos)
        linked[i] = await shamir.offload(tab.__getitem__, (slice(None), pos))  # in the records' order
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
