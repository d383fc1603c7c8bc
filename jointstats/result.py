"""The result of a job: the contract's JSON object, with a statsmodels-like summary."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any


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
    mpc: dict | None = None  # roles, threshold and who could see what (jointstats._roles.mpc_block)

    def to_dict(self) -> dict:
        """The contract's result object (docs/reference.md section 4)."""
        return {"protocol": self.protocol, "job_id": self.job_id, "spec_sha256": self.spec_sha256,
                "parties": list(self.parties), **({"mpc": self.mpc} if self.mpc is not None else {}),
                "privacy": self.privacy, "results": self.results}

    def to_json(self, indent: int | None = 2) -> str:
        """The contract's result JSON."""
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict) -> "Result":
        """Rebuild a Result from its JSON object."""
        return cls(data["protocol"], data["job_id"], data["spec_sha256"], tuple(data["parties"]),
                   data.get("privacy"), data["results"], mpc=data.get("mpc"))

    def __getitem__(self, name: str) -> dict:
        return self.results[name]

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
        noise = res.get("noise") or {}
        r2_half = noise.get("r_squared_ci95_halfwidth")
        head = (f"{name} [regression{' ridge=' + _num(res.get('ridge')) if res.get('ridge') else ''}]  "
                f"n{'~' if noise else '='}{res.get('n')}  R-squared={_num(res.get('r_squared'), 4)}"
                + (f" +/- {_num(r2_half, 2)}" if r2_half is not None else ""))
        width = max(12, *(len(t) for t in res["terms"])) + 2
        conf = res.get("conf_int")
        cols = ["coef", "std err"] + (["[0.025", "0.975]"] if conf else ["t"])
        rule = width + 14 * len(cols)
        out = [head, "=" * rule, "".ljust(width) + "".join(c.rjust(14) for c in cols), "-" * rule]
        for i, (t, c, s) in enumerate(zip(res["terms"], res["coefficients"], res["std_errors"])):
            if conf:
                extra = [_num(conf[i][0], 6), _num(conf[i][1], 6)]
            else:
                extra = [_num(c / s if (s not in (None, 0) and c is not None) else None, 4)]
            out.append(t.ljust(width) + "".join(v.rjust(14) for v in [_num(c, 6), _num(s, 6)] + extra))
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
