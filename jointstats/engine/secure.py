"""The secure step: combine the parties' secret-shared partials and reveal only the statistic.

Written against the MPyC runtime object ``rt`` passed in and the helpers of ``_mpc``
(this module does not import MPyC itself). Exact mode reveals each statistic as an exact rational (see ``_fields``); the
cost depends on the number of partials, never on the number of rows.
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import numpy as np

from jointstats.plan.fields import crt, inverse_mod, rational, rationals, regression_primes
from jointstats.errors import SingularError
from jointstats.plan.sealed import StatPlan, regression_fields


def upper_index(k: int) -> np.ndarray:
    """k x k matrix of positions into a row-major upper-triangle vector."""
    idx = np.zeros((k, k), dtype=int)
    pos = 0
    for i in range(k):
        for j in range(i, k):
            idx[i, j] = idx[j, i] = pos
            pos += 1
    return idx


def share_total(rt, sectype, values: list[int]):
    """Every party inputs its partial vector; the sum over parties, still secret."""
    arr = sectype.array(np.array(values, dtype=object))
    parts = rt.input(arr)
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total


def issue_masked(rt, x):
    """Start revealing x * r for a uniformly random secret r; returns (r, pending reveal).

    x * r is uniform when x != 0, so the only thing learnt is whether x is zero.
    """
    r = rt._np_randoms(type(x).sectype, x.size).reshape(x.shape)
    return r, rt.output(x * r)


def finish_masked(r, opened, field):
    """Secret 1/x from the revealed x * r, and which entries of x were zero."""
    values = np.array(_residues(opened, field.order), dtype=object)
    zero = values == 0
    safe = np.where(zero, 1, values)
    inv = field.array(np.array([pow(int(v), -1, field.order) for v in safe], dtype=object)
                      .reshape(r.shape))
    return r * inv, zero.reshape(r.shape)


async def masked_inverse(rt, x):
    """Secret 1/x (field inverse) of a secure array, and which entries were zero."""
    r, pending = issue_masked(rt, x)
    return finish_masked(r, await pending, type(x).sectype.field)


async def reveal_field(rt, x) -> list[int]:
    """Reveal a secure array as field elements (non-negative residues)."""
    return _residues(await rt.output(x), type(x).sectype.field.order)


def _residues(opened, order: int) -> list[int]:
    """Opened values (a field array, or signed ints for SecInt) as residues mod ``order``."""
    values = getattr(opened, "value", opened)
    return [int(v) % order for v in np.ravel(values)]


# ----------------------------------------------------------------------------- statistics


async def exact_statistic(rt, stat: StatPlan, partial: list[int], min_count: int | None) -> dict:
    """Run one statistic's secure step in exact mode and return its contract result entry."""
    if stat.kind == "regression":
        return await _regression(rt, stat, partial)
    secint = rt.SecInt(stat.secure_bits)
    total = share_total(rt, secint, partial)
    if stat.kind == "count":
        return {"kind": "count", "value": int(await rt.output(total[0]))}
    if stat.kind == "histogram":
        counts = await rt.output(total)
        return {"kind": "histogram", "edges": list(stat.edges), "counts": [int(c) for c in counts]}
    if stat.kind == "crosstab":
        return await _crosstab(rt, stat, total, min_count)
    if stat.kind in ("sum", "mean", "variance"):
        return await _moments(rt, stat, total)
    if stat.kind == "correlation":
        return await _correlation(rt, stat, total, partial)
    raise ValueError(f"unknown statistic kind {stat.kind}")


def suppression_threshold(stat: StatPlan, min_count: int) -> int:
    """``min_count`` as the secure comparison may use it: at most 2**(secure_bits - 2).

    MPyC's comparison in SecInt(l) is right only while both sides are below 2**(l - 2) (their
    difference must fit); every cell (plus its noise) is, by the plan. A larger min_count, from
    a spec or a peer's floor, would make the comparison return garbage and open every cell;
    clamped, it suppresses every cell, which is what it means.
    """
    return min(int(min_count), 1 << (stat.secure_bits - 2))


async def _crosstab(rt, stat: StatPlan, total, min_count: int | None) -> dict:
    nr, nc = stat.shape
    if min_count:
        keep = total >= suppression_threshold(stat, min_count)  # one vectorized comparison
        shown = await rt.output(total * keep)
        cells = [int(v) if int(v) != 0 else None for v in shown]
    else:
        cells = [int(v) for v in await rt.output(total)]
    counts = [cells[i * nc:(i + 1) * nc] for i in range(nr)]
    return {"kind": "crosstab", "rows": list(stat.labels[0]), "cols": list(stat.labels[1]),
            "counts": counts, "min_count": min_count or 0}


async def _moments(rt, stat: StatPlan, total) -> dict:
    f = stat.terms[1].frac_bits
    n, s, ss = total[0:1], total[1:2], total[2:3]
    p = type(total).sectype.field.order
    s_bits, nb = stat.sizes
    if stat.kind == "sum":
        value = int((await rt.output(s))[0])
        return {"kind": "sum", "value": math.ldexp(value, -f)}
    if stat.kind == "mean":
        inv, zero = await masked_inverse(rt, n)
        if zero.all():
            return {"kind": "mean", "value": None}
        (value,) = await reveal_field(rt, s * inv)
        return {"kind": "mean", "value": float(rational(value, p, s_bits + 1, nb + 1) / 2 ** f)}
    den = n * (n - 1)
    inv, zero = await masked_inverse(rt, den)
    if zero.all():
        return {"kind": "variance", "value": None}
    (value,) = await reveal_field(rt, (n * ss - s * s) * inv)
    q = rational(value, p, 2 * s_bits + 1, 2 * nb + 1)
    return {"kind": "variance", "value": float(q / 2 ** (2 * f))}


def _covariances(total, d: int, idx: np.ndarray):
    """n * S - s s^T (d x d, flattened), from a moment partial [n, s, S] (upper triangle)."""
    n = total[0]
    s = total[idx[0, 1:]]
    ss = total[idx[1:, 1:]]
    return n * ss - _outer(s, d)


async def _correlation(rt, stat: StatPlan, total, partial: list[int]) -> dict:
    """Signed squared correlations c_ij |c_ij| / (c_ii c_jj), revealed as exact rationals.

    The sign of c_ij (revealed by the result anyway) is taken in a second, small SecInt of
    c_bits + 2 bits over the same partials: a comparison in the 4 c_bits-bit field of the
    ratio would cost about 4x the random bits, each 4x longer.
    """
    k = len(stat.terms)
    d = k - 1
    idx = upper_index(k)
    (c_bits,) = stat.sizes
    p = type(total).sectype.field.order
    pairs = [(i, j) for i in range(d) for j in range(i + 1, d)]
    small_cov = _covariances(share_total(rt, rt.SecInt(c_bits + 2), partial), d, idx)
    negative = _take(small_cov, pairs, d) < 0
    cov = _covariances(total, d, idx)
    cij = _take(cov, pairs, d)
    cii = _take(cov, [(i, i) for i, _ in pairs], d)
    cjj = _take(cov, [(j, j) for _, j in pairs], d)
    r, pending = issue_masked(rt, cii * cjj)
    sign_pending = rt.output(negative)
    inv, zero = finish_masked(r, await pending, type(total).sectype.field)
    # (revealing the sign bits here, rather than converting them into the big field, costs
    # nothing: the revealed signed squares carry the same signs)
    negative_values = [int(v) for v in await sign_pending]
    signs = np.array([-1 if v else 1 for v in negative_values], dtype=object)
    values = await reveal_field(rt, cij * cij * inv * signs)
    matrix = [[1.0 if i == j else None for j in range(d)] for i in range(d)]
    for (i, j), v, z in zip(pairs, values, zero):
        if z:
            matrix[i][j] = matrix[j][i] = None
            continue
        q = rational(v, p, 2 * c_bits + 1, 2 * c_bits + 1)
        r = math.copysign(math.sqrt(abs(q)), q)
        matrix[i][j] = matrix[j][i] = max(-1.0, min(1.0, r))
    for i in range(d):  # a constant column has no correlation with itself either
        if all(matrix[i][j] is None for j in range(d) if j != i):
            matrix[i][i] = None
    return {"kind": "correlation", "columns": list(stat.columns), "matrix": matrix}


def _outer(s, d: int):
    """Secure outer product s s^T flattened to a d x d secure array."""
    return s.reshape((d, 1)) * s.reshape((1, d))


def _take(matrix, pairs: list[tuple[int, int]], d: int):
    flat = matrix.reshape((d * d,))
    return flat[np.array([i * d + j for i, j in pairs], dtype=int)]


# ----------------------------------------------------------------------------- regression


class _FieldRun:
    """One prime field's share of the exact regression (see ``_regression``).

    Three steps, each started for every field before any field's next one is awaited:
    ``__init__`` shares the partials, opens R A and forms R b; ``solve`` inverts the
    revealed R A, forms the coefficients and the residual sum of squares, and opens the
    masked total sum of squares; ``finish`` opens the coefficients, squared standard errors
    and R^2 together. Products that are only opened are opened from the local products of
    the shares (``_mpc.open_local``: no resharing). Four rounds in all: the input, R A,
    rss with the masked tss, the result.
    """

    def __init__(self, rt, stat: StatPlan, partial: list[int], prime: int):
        """Share the partials; start opening R A; form R b."""
        from jointstats.mpc.runtime import open_local
        self.rt, self.stat, self.prime = rt, stat, prime
        self.secfld = secfld = rt.SecFld(modulus=prime)  # (order= would factor it first)
        field = secfld.field
        k = len(stat.terms)
        y = k - 1
        z = list(range(0 if stat.intercept else 1, k - 1))
        self.d = d = len(z)
        idx = upper_index(k)
        total = share_total(rt, secfld, partial)
        self.gram = total[idx[np.ix_(z, z)]]
        self.gzy = total[idx[z, y]]
        self.yty = total[idx[y, y]:idx[y, y] + 1]
        self.n = total[0:1]
        self.q = q = stat.ridge.denominator
        if stat.ridge:
            penalty = np.zeros((d, d), dtype=object)
            for a, j in enumerate(z):
                term = stat.terms[j]
                if term.kind != "one":
                    penalty[a, a] = stat.ridge.numerator << (2 * term.frac_bits)
            a_mat = self.gram * q + field.array(penalty)
        else:
            a_mat = self.gram
        self.rand = rt._np_randoms(secfld, d * d).reshape((d, d))
        self.masked = open_local(rt, _matmul, [self.rand, a_mat])  # uniform over GL_d(p): hides A
        # A^-1 b = (R A)^-1 (R b): with R b formed now, the coefficients cost no round later
        self.rand_b = self.rand @ (self.gzy * q if stat.ridge else self.gzy)
        if stat.intercept:
            # n / tss = (G2^-1)[1][1] for G2 = [[n, sum y], [sum y, y'y]] (det G2 = tss): masked
            # like A, R2 G2 is uniform over GL_2(p); when tss = 0 (y constant) it shows the
            # mean of y, which the intercept reveals anyway (it is opened only if A is regular)
            self.rand2 = rt._np_randoms(secfld, 4).reshape((2, 2))
            self.g2 = total[idx[np.ix_([0, y], [0, y])]]
        else:
            self.rand2 = rt._np_randoms(secfld, 1)  # 1 / y'y = r / (y'y r)

    def solve(self, u, n_value: int) -> None:
        """From the revealed R A: the coefficients and rss (secret); start opening the masked tss."""
        from jointstats.mpc.runtime import open_local
        u_inv = _opened_inverse(u, self.secfld.field, self.d)
        if u_inv is None:
            raise SingularError(f"statistics.{self.stat.name}: the regression is singular "
                                "(collinear terms, or fewer rows than terms)")
        self.u_inv = u_inv
        self.beta = beta = u_inv @ self.rand_b
        d, gzy, gram, yty = self.d, self.gzy, self.gram, self.yty
        if self.stat.ridge:
            self.rss = yty - 2 * (beta * gzy).sum() + (beta * (gram @ beta)).sum()
        else:  # one inner product: one value reshared
            self.rss = yty - (beta.reshape((1, d)) @ gzy.reshape((d, 1))).reshape((1,))
        self.n_value = n_value
        if self.stat.intercept:
            self.tss_masked = open_local(self.rt, _matmul, [self.rand2, self.g2])
        else:
            self.tss_masked = open_local(self.rt, _multiply, [self.yty, self.rand2])

    def finish(self, tss_opened):
        """Start opening the coefficients, the squared standard errors and R^2.

        Returns (pending opening, has standard errors, has R^2)."""
        from jointstats.mpc.runtime import open_local
        rt, stat, prime, d, q = self.rt, self.stat, self.prime, self.d, self.q
        field = self.secfld.field
        u_inv, rss, n_value = self.u_inv, self.rss, self.n_value
        operands = [self.beta]
        has_se = n_value - d > 0
        if has_se:
            if stat.ridge:
                a_inv = u_inv @ self.rand
                diag = ((a_inv @ self.gram) * a_inv.T).sum(axis=1) * (q * q)
            else:  # only the diagonal of A^-1 = U^-1 R: d^2 products, not d^3
                diag = (self.rand.T * u_inv).sum(axis=1)
            operands += [diag * pow((n_value - d) % prime, -1, prime), rss]
        if stat.intercept:
            g2_inv = _opened_inverse(tss_opened, field, 2)
            has_r2 = g2_inv is not None
            if has_r2:
                operands += [rss, (g2_inv @ self.rand2)[1, 1:2]]  # rss * n / tss
        else:
            inv, zero = finish_masked(self.rand2, tss_opened, field)
            has_r2 = not zero[0]
            if has_r2:
                operands += [rss, inv]  # rss / y'y

        def result(beta, *rest):
            parts = [beta.value]
            if has_se:
                parts.append((rest[0] * rest[1]).value)  # diag(A^-1) rss / dof
            if has_r2:
                parts.append((1 - rest[-2] * rest[-1]).value)
            return field.array(np.concatenate(parts), check=False)
        return open_local(rt, result, operands), has_se, has_r2


def _matmul(a, b):
    return a @ b


def _multiply(a, b):
    return a * b


def _opened_inverse(opened, field, k: int):
    """(R M)^-1 of a revealed k x k product R M, as a public field array; None if singular.

    Times the secret mask R it is the secret M^-1 = (R M)^-1 R, at no extra round."""
    values = np.array(_residues(opened, field.order), dtype=object).reshape((k, k)).tolist()
    inv = inverse_mod(values, field.order)
    return None if inv is None else field.array(np.array(inv, dtype=object))


async def _regression(rt, stat: StatPlan, partial: list[int]) -> dict:
    """Exact OLS/ridge solved inside the MPC over CRT-combined 2048-bit prime fields.

    The fields that any n needs are issued at once, together with the reveal of n (which
    is part of the result); the plan's bound applied to that n decides how many more, if
    any. Every field's step is issued before any field's next step is awaited, so the
    fields share their round trips: six rounds, whatever the number of primes.
    """
    primes = regression_primes(stat.primes)
    fields = [_FieldRun(rt, stat, partial, p) for p in primes[:regression_fields(stat, 1)]]
    n_value = int(_residues(await rt.output(fields[0].n), primes[0])[0])
    fields += [_FieldRun(rt, stat, partial, p) for p in primes[len(fields):regression_fields(stat, n_value)]]
    primes = [f.prime for f in fields]
    for f, u in zip(fields, [await f.masked for f in fields]):
        f.solve(u, n_value)
    finals = [f.finish(t) for f, t in zip(fields, [await f.tss_masked for f in fields])]
    # n, d and whether there are standard errors and R^2 are the same in every field
    d, (_, has_se, has_r2) = fields[0].d, finals[0]
    residues = [_residues(await pending, f.prime) for f, (pending, _, _) in zip(fields, finals)]
    combined = [crt(list(column), primes) for column in zip(*residues)]
    modulus = combined[0][1]
    half = (math.isqrt(modulus // 2) - 1).bit_length() - 1
    fracs = rationals([x for x, _ in combined], modulus, half, half)
    z_terms = [t for t in stat.terms[:-1] if stat.intercept or t.kind != "one"]
    fy = stat.terms[-1].frac_bits
    coef = [float(fracs[j] * Fraction(2) ** (t.frac_bits - fy)) for j, t in enumerate(z_terms)]
    pos = d
    if has_se:
        se = [math.sqrt(max(float(fracs[pos + j]), 0.0)) * 2.0 ** (t.frac_bits - fy)
              for j, t in enumerate(z_terms)]
        pos += d
    else:
        se = [None] * d
    r2 = float(fracs[pos]) if has_r2 else None
    return {"kind": "regression", "terms": [t.name if t.kind != "one" else "intercept" for t in z_terms],
            "coefficients": coef, "std_errors": se, "n": n_value, "r_squared": r2,
            "ridge": float(stat.ridge)}
