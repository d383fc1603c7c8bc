"""The plan: what each party computes locally, what is shared, in which number type, what is revealed.

Every party derives the plan from the spec and the public party list on its own and
checks, before any data moves, that all parties hold the same plan (its hash).
The plan also proves the sizes: every secure number type is chosen from the
largest value its contents can reach, given the declared bounds, the row limit and d.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from fractions import Fraction

from jointstats.errors import SpecError
from jointstats.plan.accounting import JobCharge, PrivacyBudget
from jointstats.plan.spec import MAX_LINK_ROWS, Column, Spec, Statistic

#: Largest number of rows a party may contribute (the plan's sizes are proven for it).
MAX_ROWS_PER_PARTY = 1 << 31
#: Grid values of real columns are below 2**GRID_BITS in magnitude (|x| * 2**f <= 2**30).
GRID_BITS = 30
#: Bits of each prime of the multi-prime fields used for exact regression.
REGRESSION_PRIME_BITS = 2048


@dataclass(frozen=True)
class Term:
    """One column of a Gram statistic's design: the constant 1, a numeric column, or an indicator."""

    kind: str  # 'one' | 'num' | 'ind'
    name: str
    column: str | None = None
    frac_bits: int = 0  # grid: value = round(x * 2**frac_bits)
    level: int = -1  # indicator of this level index
    bound: int = 1  # largest |grid value|
    grid_lo: int = 0  # smallest grid value (numeric terms; 0/1 otherwise)
    grid_hi: int = 1
    col_lo: float = 0.0  # the declared bounds, in the column's units
    col_hi: float = 1.0
    offset: float = 0.0  # DP encoding of a numeric term: value = round((x - offset) * mult)
    mult: float = 0.0  # 0: the exact grid, value = round(x * 2**frac_bits)

    @property
    def multiplier(self) -> float:
        """What the owner multiplies ``x - offset`` by before rounding to the grid."""
        return self.mult if self.mult else 2.0 ** self.frac_bits

    @property
    def grid_bounds(self) -> tuple[int, int]:
        """(lowest, highest) value of this term on the grid."""
        return self.grid_lo, self.grid_hi

    @property
    def column_bounds(self) -> tuple[float, float]:
        """The declared bounds of the column, in its own units."""
        return self.col_lo, self.col_hi


@dataclass(frozen=True)
class NoisePlan:
    """Where DP noise goes for one statistic (filled in by the output layer; None in exact mode).

    Every released entry i is an integer whose change, when one row is added or removed, is
    ``units[i] * c_i`` with ``|c_i| <= 1`` and, over the whole vector, ``sum |c_i| <= bound``
    (pure DP) or ``sum c_i**2 <= bound`` (zCDP). Entry i gets discrete Laplace noise of scale
    ``units[i] * base`` (``base = bound / epsilon``) or discrete Gaussian noise of variance
    ``units[i]**2 * base`` (``base = bound / (2 rho)``): in units of ``c`` every entry has the
    same noise law, which is what post-processing and uncertainty use.
    """

    mechanism: str  # 'discrete_laplace' | 'discrete_gaussian'
    epsilon: Fraction | None  # this statistic's share (pure DP)
    rho: Fraction | None  # this statistic's share (zCDP)
    bound: Fraction  # joint L1 (pure) or squared L2 (zCDP) sensitivity in units of c
    base: Fraction  # Laplace scale or Gaussian sigma^2 in units of c
    units: tuple[int, ...]  # per released entry

    @property
    def scales(self) -> tuple[Fraction, ...]:
        """Per released entry: Laplace scale or Gaussian sigma^2, in the entry's integer units."""
        if self.mechanism == "discrete_laplace":
            return tuple(u * self.base for u in self.units)
        return tuple(u * u * self.base for u in self.units)

    @property
    def sd(self) -> float:
        """Standard deviation of every entry's noise in units of c (continuous approximation)."""
        if self.mechanism == "discrete_laplace":
            return math.sqrt(2.0) * float(self.base)
        return math.sqrt(float(self.base))


@dataclass(frozen=True)
class StatPlan:
    """The plan of one statistic."""

    name: str
    kind: str
    columns: tuple[str, ...]
    terms: tuple[Term, ...] = ()
    shape: tuple[int, ...] = ()
    edges: tuple[float, ...] = ()
    labels: tuple[tuple[str, ...], ...] = ()
    min_count: int | None = None
    ridge: Fraction = Fraction(0)
    intercept: bool = True
    partial_size: int = 1
    secure_bits: int = 64  # bit length l of the SecInt used (or bits needed for regression)
    primes: int = 0  # regression: 2048-bit prime fields (CRT) the row limit needs; a job uses those its n needs
    reveals: str = ""
    sizes: tuple[int, ...] = ()  # bit sizes the secure step needs for exact rational reveals
    noise: NoisePlan | None = None

    @property
    def gram(self) -> bool:
        """True for statistics whose partial is the upper triangle of a Gram matrix."""
        return bool(self.terms)


@dataclass(frozen=True)
class Plan:
    """The frozen plan of one job; ``sha256`` is what the parties compare before data moves."""

    protocol: str
    spec_sha256: str
    dataset: str
    parties: tuple[str, ...]
    mode: str  # 'exact' | 'dp'
    max_rows_per_party: int
    statistics: tuple[StatPlan, ...]
    privacy: dict | None = None
    sha256: str = field(default="", compare=False)
    partition: str = "horizontal"
    #: linked jobs: (key, case, rows or 0, join, base or "") of the spec's ``link``
    link: tuple = ()

    def to_dict(self) -> dict:
        """A JSON-able description of the plan (what the hash covers)."""
        data = asdict(self)
        data.pop("sha256")
        return json.loads(json.dumps(data, default=str))

    @property
    def vertical(self) -> bool:
        """True for a linked job (``partition: vertical``)."""
        return self.partition == "vertical"

    @property
    def charge(self) -> JobCharge | None:
        """What the job costs every party's ledger, typed (the ``privacy["charge"]`` block the
        DP layer seals into the plan); None in exact mode or for a plan made before it."""
        block = self.privacy or {}
        if block.get("charge") is None:
            return None
        return JobCharge.from_dict(block["charge"])

    @property
    def budget(self) -> PrivacyBudget | None:
        """The (epsilon, delta) guarantee the job claims (rho kept for zCDP), or None."""
        charge = self.charge
        return None if charge is None else charge.budget

    def describe(self, compute: tuple[str, ...] | list[str] = (),
                 owners: dict[str, str] | None = None) -> str:
        """A readable summary: what is computed locally, shared and revealed.

        ``compute`` names the compute-only parties (``role: compute`` in ``mpc.parties``):
        they hold no data and contribute zero partials."""
        lines = [f"plan {self.sha256[:16]} for {self.protocol!r} on dataset {self.dataset!r}, "
                 f"{len(self.parties)} parties ({', '.join(self.parties)}), mode {self.mode}"]
        if compute:
            t = (len(self.parties) - 1) // 2
            lines.append(f"  parties holding data: {', '.join(p for p in self.parties if p not in compute)}; "
                         f"compute only (no data, zero partials): {', '.join(compute)}"
                         + (f"; threshold {t}: " + ("no single party sees" if t == 1 else
                                                       f"no {t} parties together see")
                            + " another's partial aggregates or the DP noise" if t else ""))
        if self.vertical:
            key, case, rows, join, base = self.link
            lines.append(f"  linked on {key!r} (keys trimmed, NFKC, "
                         f"{'case-folded' if case == 'fold' else 'case kept'}); {join} join"
                         + (f" on {base!r}'s records" if join == "left" else "")
                         + (f"; every holder pads its keys to {rows} rows" if rows else
                            "; each holder's number of keys is shown to the others"))
            if owners:
                held: dict[str, list[str]] = {}
                for col, party in owners.items():
                    held.setdefault(party, []).append(col)
                for party in self.parties:
                    if party in held:
                        lines.append(f"  {party} holds: {', '.join(held[party])}")
        if len(self.parties) == 2:
            lines.append("  note: with 2 parties MPyC's threshold is 0, so each party sees the other's "
                         "partial aggregates (not its rows) and every intermediate value, DP noise "
                         "included; the job runs only if every party's policy.allow_two_party is "
                         "true; secrecy between parties takes at least 3 (a compute-only third will do)")
        for s in self.statistics:
            local = (f"Gram matrix of {len(s.terms)} terms" if s.gram else
                     f"{s.partial_size} count{'s' if s.partial_size > 1 else ''}")
            where = "local"
            if self.vertical:  # computed over the linked rows by secure inner products
                where = "over the linked rows, by secure inner products,"
            num = (f"up to {s.primes} x {REGRESSION_PRIME_BITS}-bit prime fields" if s.primes
                   else f"SecInt({s.secure_bits})")
            lines.append(f"  {s.name} ({s.kind}): {where} {local}; shared {s.partial_size} integers "
                         f"in {num}; reveals {s.reveals}")
        return "\n".join(lines)


def frac_bits_for(col: Column) -> int:
    """Fractional bits of a numeric column's grid: integers exact, reals to 2**-30 of the bound."""
    magnitude = max(abs(col.bounds[0]), abs(col.bounds[1]), 1e-300)
    exponent = math.frexp(magnitude)[1]  # magnitude <= 2**exponent
    if col.type == "integer":
        return min(0, GRID_BITS - exponent)
    return GRID_BITS - exponent


def _num_term(col: Column) -> Term:
    f = frac_bits_for(col)
    bound = math.ceil(math.ldexp(max(abs(col.bounds[0]), abs(col.bounds[1])), f))
    lo, hi = (int(round(math.ldexp(b, f))) for b in col.bounds)
    return Term("num", col.name, col.name, f, -1, max(bound, 1), lo, hi,
                float(col.bounds[0]), float(col.bounds[1]))


def _bits(x: int) -> int:
    return max(int(x).bit_length(), 1)


def _hadamard_bits(entries_bits: int, size: int) -> int:
    """log2 of Hadamard's bound on a size x size determinant with entries below 2**entries_bits."""
    if size <= 0:
        return 1  # the empty determinant is 1
    return math.ceil(size * (entries_bits + math.log2(size) / 2)) + 1


def _plan_statistic(spec: Spec, stat: Statistic, n_max: int) -> StatPlan:
    nb = _bits(n_max)
    if stat.kind == "count":
        return StatPlan(stat.name, "count", stat.used_columns(), partial_size=1,
                        secure_bits=nb + 2, reveals="the count")
    if stat.kind == "crosstab":
        rcol, ccol = spec.column(stat.rows), spec.column(stat.cols)
        shape = (len(rcol.levels), len(ccol.levels))
        return StatPlan(stat.name, "crosstab", (stat.rows, stat.cols), shape=shape,
                        labels=(rcol.levels, ccol.levels), min_count=stat.min_count,
                        partial_size=shape[0] * shape[1], secure_bits=nb + 2,
                        reveals="every cell count at or above min_count (others null)")
    if stat.kind == "histogram":
        return StatPlan(stat.name, "histogram", (stat.column,), edges=stat.bins,
                        shape=(len(stat.bins) - 1,), partial_size=len(stat.bins) - 1,
                        secure_bits=nb + 2, reveals="the bin counts")
    one = Term("one", "one")
    if stat.kind in ("sum", "mean", "variance"):
        term = _num_term(spec.column(stat.column))
        terms = (one, term)
        s_bits = _bits(n_max * term.bound)
        if stat.kind == "sum":
            bits, reveals = s_bits + 2, "the sum"
        elif stat.kind == "mean":
            bits, reveals = s_bits + nb + 2, "the mean (an exact rational)"
        else:
            bits, reveals = 2 * (s_bits + nb) + 2, "the sample variance (an exact rational)"
        return StatPlan(stat.name, stat.kind, (stat.column,), terms=terms, partial_size=3,
                        secure_bits=bits, reveals=reveals, sizes=(s_bits, nb))
    if stat.kind == "correlation":
        terms = (one,) + tuple(_num_term(spec.column(c)) for c in stat.columns)
        top = max(t.bound for t in terms)
        c_bits = _bits(2 * n_max * n_max * top * top)
        k = len(terms)
        return StatPlan(stat.name, "correlation", stat.columns, terms=terms,
                        partial_size=k * (k + 1) // 2, secure_bits=4 * c_bits + 4,
                        reveals="the correlation matrix (signed squares, exact rationals)",
                        sizes=(c_bits,))
    # regression
    terms = [one]
    for name in stat.features:
        col = spec.column(name)
        if col.numeric:
            terms.append(_num_term(col))
        else:
            terms.extend(Term("ind", f"{name}[{lvl}]", name, 0, i, 1)
                         for i, lvl in enumerate(col.levels) if i > 0)
    target = _num_term(spec.column(stat.target))
    terms.append(target)
    big_b, entry_bits, nb, need = regression_sizes(terms, stat.ridge, stat.intercept, n_max)
    primes = regression_fields_for(need)
    k = len(terms)
    return StatPlan(stat.name, "regression", stat.used_columns(), terms=tuple(terms),
                    ridge=stat.ridge, intercept=stat.intercept, partial_size=k * (k + 1) // 2,
                    secure_bits=need, primes=primes, sizes=(big_b, entry_bits, nb),
                    reveals="coefficients, standard errors, n and R^2 (solved inside the MPC)")


def regression_sizes(terms: list[Term] | tuple[Term, ...], ridge: Fraction, intercept: bool,
                     n: int) -> tuple[int, int, int, int]:
    """(Hadamard bits of the (d+1)-matrix, entry bits, bits of n, modulus bits needed) for n rows.

    Every revealed value of the exact regression is a rational whose numerator and
    denominator are below 2**largest; rational reconstruction needs a modulus above
    2**(2 * largest + 1), and 64 bits more are kept as margin. The plan proves it for the
    row limit; the secure step applies it again to the revealed n, and needs no more
    prime fields than that n requires. With d terms in A = X'X (E >= every entry of the
    (d+1)-matrix M = [[A, X'y], [y'X, y'y]], and H(k) Hadamard's bound on a k x k
    determinant of such entries), by Cramer's rule:
    coefficient_j = det(A_j) / det(A), with A_j = A with column j replaced by X'y, so < H(d) / H(d);
    rss = det(M) / det(A) (the Schur complement), and (A^-1)_jj = C_jj / det(A) with the
    cofactor C_jj < H(d - 1), so the squared standard error C_jj det(M) / (det(A)^2 dof) is
    < H(d - 1) H(d + 1) / (H(d)^2 n); R^2 = (det(A) tss - n det(M)) / (det(A) tss), tss < n E,
    so < 2 max(H(d) n E, n H(d + 1)) / (H(d) n E). Ridge keeps the looser bound it was planned with.
    """
    d = len(terms) - 1 - (0 if intercept else 1)
    top = max(t.bound for t in terms)
    ridge_entry = ridge.numerator * (1 << (2 * GRID_BITS)) if ridge else 0
    entry_bits = _bits(ridge.denominator * n * top * top + ridge_entry)
    nb = _bits(n)
    big_b = _hadamard_bits(entry_bits, d + 1)
    if ridge:
        largest = 4 * big_b + 2 * entry_bits + 4 * _bits(d) + nb + 4
    else:
        h_d, h_minor = _hadamard_bits(entry_bits, d), _hadamard_bits(entry_bits, d - 1)
        largest = max(h_d,                                  # coefficients
                      h_minor + big_b, 2 * h_d + nb,        # squared standard errors
                      max(h_d + nb + entry_bits, nb + big_b) + 1) + 2  # R^2 (+2: margin)
    return big_b, entry_bits, nb, 2 * largest + 64


def regression_fields_for(need_bits: int) -> int:
    """Prime fields whose CRT modulus has at least ``need_bits`` bits (8 bits a prime spare)."""
    return -(-need_bits // (REGRESSION_PRIME_BITS - 8))


def regression_fields(stat: StatPlan, n: int) -> int:
    """Prime fields the exact regression ``stat`` needs for n rows in all (at most the plan's)."""
    return min(stat.primes, regression_fields_for(regression_sizes(stat.terms, stat.ridge, stat.intercept, n)[3]))


def make_plan(spec: Spec, parties: list[str] | tuple[str, ...],
              max_rows_per_party: int = MAX_ROWS_PER_PARTY) -> Plan:
    """Derive the plan of ``spec`` over ``parties`` (exact mode; the DP layer adds noise plans)."""
    link: tuple = ()
    if spec.vertical:
        if len(parties) < 3:
            raise SpecError(f"partition: a linked (vertical) job needs at least 3 parties, found "
                            f"{len(parties)}: add a compute-only party (role: compute), so that no "
                            "single party sees the linkage")
        lk = spec.link
        if lk.join == "left" and lk.base not in parties:
            raise SpecError(f"link.base: {lk.base!r} is not one of the parties "
                            f"({', '.join(parties)})")
        link = (lk.key, lk.case, lk.rows or 0, lk.join, lk.base or "")
        # a linked record is one row of each holder: at most one holder's rows
        max_rows_per_party = min(max_rows_per_party, lk.rows or MAX_LINK_ROWS)
        n_max = max_rows_per_party
    else:
        n_max = len(parties) * max_rows_per_party
    stats = tuple(_plan_statistic(spec, s, n_max) for s in spec.statistics)
    mode = "exact" if spec.exact else "dp"
    if mode == "exact":
        for stat in stats:
            coarse = [t.column for t in stat.terms if t.kind == "num" and t.frac_bits < 0]
            if stat.kind == "regression" and stat.ridge and coarse:
                # its grid steps are powers of two above 1: the penalty would not be an integer
                raise SpecError(f"statistics.{stat.name}.ridge: an exact ridge regression needs every "
                                f"numeric column within +/-2^30; {coarse[0]!r} has wider bounds "
                                "(use ridge: 0, narrower bounds, or a privacy block)")
    plan = Plan(spec.name, spec.sha256, spec.dataset, tuple(parties), mode, max_rows_per_party, stats,
                partition=spec.partition, link=link)
    return seal(plan)


def assign_columns(spec: Spec, holdings: dict[str, tuple[str, ...] | None]) -> dict[str, str]:
    """The owner of every schema column of a linked job, from what each party declares it holds
    (``columns:`` of its dataset entry; None or empty for a party holding none).

    Raises SpecError, one line naming the column and the parties, for a column held by no
    party or by two, and for a declared column that is not in the schema."""
    owners: dict[str, str] = {}
    schema = [c.name for c in spec.schema]
    for party, held in holdings.items():
        for col in held or ():
            if spec.link is not None and col == spec.link.key:
                continue  # the contract's examples list the key too: it is no schema column
            if col not in schema:
                raise SpecError(f"party {party!r} declares column {col!r} (datasets.{spec.dataset}."
                                "columns), which is not in the spec's schema")
            if col in owners:
                raise SpecError(f"schema.{col}: held by two parties, {owners[col]!r} and {party!r}; "
                                "each column of a linked job has exactly one owner")
            owners[col] = party
    for col in schema:
        if col not in owners:
            raise SpecError(f"schema.{col}: held by no party (a holder lists it in "
                            f"datasets.{spec.dataset}.columns of its config)")
    return {c: owners[c] for c in schema}


def seal(plan: Plan) -> Plan:
    """Return ``plan`` with its sha256 filled in."""
    digest = hashlib.sha256(json.dumps(plan.to_dict(), sort_keys=True).encode()).hexdigest()
    return Plan(**{**{f: getattr(plan, f) for f in plan.__dataclass_fields__}, "sha256": digest})
