"""The result of a job: the contract's JSON object, with a statsmodels-like summary.

``Result`` holds the JSON object of docs/reference.md section 4 unchanged; ``result.stat(name)``
gives one statistic as a typed per-kind object (jointstats.results_kinds), ``to_frame`` a
pandas DataFrame, ``plot`` a matplotlib chart of a histogram or crosstab, ``budget`` the
guarantee as a :class:`~jointstats.PrivacyBudget`.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jointstats.plan.accounting import PrivacyBudget
    from jointstats.results_kinds import StatisticResult


@dataclass(frozen=True)
class Result:
    """Revealed results of one job, exactly as every party received them."""

    protocol: str
    job_id: str
    spec_sha256: str
    parties: tuple[str, ...]
    privacy: dict | None
    results: dict[str, dict]
    extra: dict = field(default_factory=dict, compare=False)
    mpc: dict | None = None  # roles, threshold and who could see what (jointstats.engine.roles.mpc_block)
    #: purpose, analyst, each party's agreement, approvals, dataset fingerprint and signature
    #: (jointstats.engine.report); None for results made before provenance existed
    provenance: dict | None = None

    def to_dict(self) -> dict:
        """The contract's result object (docs/reference.md section 4)."""
        return {"protocol": self.protocol, "job_id": self.job_id, "spec_sha256": self.spec_sha256,
                "parties": list(self.parties), **({"mpc": self.mpc} if self.mpc is not None else {}),
                "privacy": self.privacy, "results": self.results,
                **({"provenance": self.provenance} if self.provenance is not None else {})}

    def to_json(self, indent: int | None = 2) -> str:
        """The contract's result JSON."""
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict) -> "Result":
        """Rebuild a Result from its JSON object."""
        return cls(data["protocol"], data["job_id"], data["spec_sha256"], tuple(data["parties"]),
                   data.get("privacy"), data["results"], mpc=data.get("mpc"),
                   provenance=data.get("provenance"))

    def __getitem__(self, name: str) -> dict:
        """The result object (dict) of statistic ``name``, as in the JSON."""
        return self.results[name]

    def stat(self, name: str) -> "StatisticResult":
        """Statistic ``name`` as its typed per-kind object (``RegressionResult``, ...);
        KeyError listing the statistics (and the closest name) if there is none."""
        from jointstats.results_kinds import statistic_result
        if name not in self.results:
            raise KeyError(_unknown(name, self.results))
        return statistic_result(name, self.results[name])

    @property
    def statistics(self) -> dict[str, "StatisticResult"]:
        """Every statistic as its typed per-kind object, in the spec's order."""
        from jointstats.results_kinds import statistic_result
        return {name: statistic_result(name, res) for name, res in self.results.items()}

    @property
    def budget(self) -> "PrivacyBudget | None":
        """The job's guarantee, exact, as every party's ledger charged it (with rho for zCDP
        jobs); None in exact mode. Results without an exact charge give the floats of
        ``privacy.guarantee`` (or of ``privacy``) instead."""
        from jointstats.plan.accounting import PrivacyBudget
        if not self.privacy:
            return None
        charge = self.privacy.get("charge")
        if charge:
            return PrivacyBudget.from_dict(charge)
        return PrivacyBudget.from_dict(self.privacy.get("guarantee") or self.privacy)

    def to_frame(self, name: str | None = None):
        """A pandas DataFrame: of statistic ``name`` (its kind's ``to_frame``), or without a
        name one row per count, sum, mean and variance (value and, under DP, the noise interval)."""
        import pandas as pd
        if name is not None:
            return self.stat(name).to_frame()
        frames = [s.to_frame() for s in self.statistics.values()
                  if s.kind in ("count", "sum", "mean", "variance")]
        if not frames:
            return pd.DataFrame(columns=["kind", "value"], index=pd.Index([], name="statistic"))
        return pd.concat(frames)

    def plot(self, name: str, ax=None):
        """Plot histogram or crosstab ``name`` with matplotlib (an optional extra); returns
        the Axes. TypeError for other kinds, ImportError saying what to install without it."""
        return self.stat(name).plot(ax=ax)

    def _repr_html_(self) -> str:
        """Notebook display: the header lines of ``summary()`` and a table per statistic."""
        import html
        head = self.summary().split("\n\n")[0]
        parts = [f"<pre>{html.escape(head)}</pre>"]
        parts.extend(s._repr_html_() for s in self.statistics.values())
        return "<div>" + "".join(parts) + "</div>"

    def summary(self) -> str:
        """A readable report: one block per statistic, regressions as a coefficient table."""
        lines = [f"{self.protocol}  (job {self.job_id}, parties: {', '.join(self.parties)})"]
        if self.privacy:
            p = self.privacy
            lines.append(f"privacy: epsilon={_num(p.get('epsilon'))} delta={_num(p.get('delta'))} "
                         f"mechanism={p.get('mechanism')} noise={p.get('noise', 'joint')}"
                         + (f"; {p['neighbours']}" if p.get("neighbours") else ""))
            g = p.get("guarantee")
            if g:
                lines.append(f"guarantee: ({_num(g.get('epsilon'))}, {_num(g.get('delta'), 3)})-DP, the samplers' "
                             "finite precision included" + (f"; rho={_num(p['rho'], 4)}" if p.get("rho") else ""))
            lines.append("+/- figures: 95% of the DP noise, in each statistic's units; a regression's std err "
                         "and interval include the sampling error too")
        else:
            lines.append("privacy: none (exact mode, consented by every party)")
        lines.extend(_mpc_lines(self.mpc))
        for name, res in self.results.items():
            lines.append("")
            lines.extend(_format(name, res))
        return "\n".join(lines)


def _unknown(name: str, names) -> str:
    """'no statistic X; the statistics are a, b (did you mean a?)'."""
    import difflib
    close = difflib.get_close_matches(str(name), list(names), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"no statistic {name!r}; the statistics are {', '.join(names)}{hint}"


def _mpc_lines(mpc: dict | None) -> list[str]:
    """Who held data and who only computed (when some party only computed), and what each
    party could see in a 2-party job (threshold 0)."""
    if not mpc:
        return []
    out = []
    if mpc.get("compute_parties"):
        out.append(f"parties holding data: {', '.join(mpc.get('data_parties', []))}; compute only "
                   f"(no data): {', '.join(mpc['compute_parties'])}; threshold {mpc.get('threshold')}")
    if mpc.get("threshold") == 0:
        out.append("WARNING: 2-party job (threshold 0, every party opted in): the parties are not "
                   "kept secret from each other")
        out.extend(f"  {who} could see: {what}" for who, what in (mpc.get("sees") or {}).items())
    if mpc.get("linkage"):  # a linked job: what the record linkage showed the parties
        out.append(f"linkage: {mpc['linkage']}")
    return out


def _num(v: Any, digits: int = 6) -> str:
    if v is None:
        return "null"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.{digits}g}"
    return str(v)


def _noise_note(res: dict) -> str:
    """'+/- h (95% DP noise)' for a scalar statistic, in its own units, and a plain warning
    when the noise dominates it."""
    noise = res.get("noise")
    if not noise:
        return ""
    half = noise.get("ci95_halfwidth")
    note = ""
    if isinstance(half, (int, float)):
        note = f"   +/- {_num(half, 3)} (95% of the DP noise, {noise.get('mechanism')})"
    elif half is not None:
        flat = [v for v in _flatten(half) if isinstance(v, (int, float)) and math.isfinite(v)]
        if flat:
            note = f"   +/- {_num(max(flat), 3)} at most (95% of the DP noise, {noise.get('mechanism')})"
    if noise.get("dominates"):
        note += "\n  WARNING: the DP noise dominates this statistic; do not read it as a finding"
    return note


def _value_text(res: dict) -> str:
    """A scalar value; under DP with as many decimals as its noise leaves meaningful."""
    value = res.get("value")
    half = (res.get("noise") or {}).get("ci95_halfwidth")
    if isinstance(value, float) and isinstance(half, (int, float)) and half > 0 and math.isfinite(half):
        return f"{value:.{max(0, 1 - math.floor(math.log10(half)))}f}"
    return _num(value, 10)


def _opt(v: Any) -> Any:
    """A table cell: None for a missing value (pandas gives NaN)."""
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _p_text(v: Any) -> str:
    v = _opt(v)
    return "null" if v is None else ("<0.001" if v < 0.001 else f"{v:.3f}")


def _flatten(x):
    if isinstance(x, (list, tuple)):
        for v in x:
            yield from _flatten(v)
    else:
        yield x


def _format(name: str, res: dict) -> list[str]:
    kind = res.get("kind")
    if kind in ("count", "sum", "mean", "variance"):
        return [f"{name} [{kind}] = {_value_text(res)}{_noise_note(res)}"]
    if kind == "correlation":
        cols = res["columns"]
        width = max(8, *(len(c) for c in cols)) + 2
        out = [f"{name} [correlation]{_noise_note(res)}", " " * width + "".join(c.rjust(width) for c in cols)]
        for c, row in zip(cols, res["matrix"]):
            out.append(c.ljust(width) + "".join(_num(v, 4).rjust(width) for v in row))
        return out
    if kind == "crosstab":
        cols = res["cols"]
        width = max(8, *(len(str(c)) for c in cols + res["rows"])) + 2
        out = [f"{name} [crosstab]" + (f" min_count={res['min_count']}" if res.get("min_count") else "")
               + _noise_note(res), " " * width + "".join(str(c).rjust(width) for c in cols)]
        for r, row in zip(res["rows"], res["counts"]):
            out.append(str(r).ljust(width) + "".join(("-" if v is None else str(v)).rjust(width) for v in row))
        return out
    if kind == "histogram":
        edges = res["edges"]
        out = [f"{name} [histogram]{_noise_note(res)}"]
        for i, c in enumerate(res["counts"]):
            close = "]" if i == len(res["counts"]) - 1 else ")"
            out.append(f"  [{_num(edges[i])}, {_num(edges[i + 1])}{close}  {c}")
        return out
    if kind == "regression":
        from jointstats.results_kinds import RegressionResult
        reg = RegressionResult(name, res)
        noise = res.get("noise") or {}
        r2_half = noise.get("r_squared_ci95_halfwidth")
        head = (f"{name} [regression{' ridge=' + _num(res.get('ridge')) if res.get('ridge') else ''}]  "
                f"n{'~' if noise else '='}{res.get('n')}  R-squared={_num(res.get('r_squared'), 4)}"
                + (f" +/- {_num(r2_half, 2)}" if r2_half is not None else ""))
        width = max(12, *(len(t) for t in res["terms"])) + 2
        # exact: classical OLS errors, t and p from Student's t (as statsmodels); DP: the released
        # intervals (sampling error and noise), no t statistic
        table = reg.to_frame()
        fields = ["coef", "std_err"] + (["t", "p_value"] if reg.exact else []) + ["ci95_low", "ci95_high"]
        cols = ["coef", "std err"] + (["t", "P>|t|"] if reg.exact else []) + ["[0.025", "0.975]"]
        rule = width + 14 * len(cols)
        out = [head, "=" * rule, "".ljust(width) + "".join(c.rjust(14) for c in cols), "-" * rule]
        for term, row in zip(res["terms"], table[fields].itertuples(index=False)):
            cells = [_num(_opt(v), 4 if f == "t" else 6) if f != "p_value" else _p_text(v)
                     for f, v in zip(fields, row)]
            out.append(term.ljust(width) + "".join(c.rjust(14) for c in cells))
        out.append("=" * rule)
        if noise:
            out.append("std errors and intervals include the sampling error and the DP noise "
                       f"({noise.get('mechanism')}"
                       + (f", adaptive ridge {_num(noise['adaptive_ridge'], 3)}" if noise.get("adaptive_ridge") else "")
                       + ")")
            if noise.get("dominates"):
                out.append("WARNING: the DP noise dominates some coefficients; do not read them as findings")
        return out
    return [f"{name}: {json.dumps(res)}"]
