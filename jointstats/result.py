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

    def to_dict(self) -> dict:
        """The contract's result object (CONTRACT.md section 4)."""
        return {"protocol": self.protocol, "job_id": self.job_id, "spec_sha256": self.spec_sha256,
                "parties": list(self.parties), "privacy": self.privacy, "results": self.results}

    def to_json(self, indent: int | None = 2) -> str:
        """The contract's result JSON."""
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict) -> "Result":
        """Rebuild a Result from its JSON object."""
        return cls(data["protocol"], data["job_id"], data["spec_sha256"], tuple(data["parties"]),
                   data.get("privacy"), data["results"])

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
        else:
            lines.append("privacy: none (exact mode, consented by every party)")
        for name, res in self.results.items():
            lines.append("")
            lines.extend(_format(name, res))
        return "\n".join(lines)


def _num(v: Any, digits: int = 6) -> str:
    if v is None:
        return "null"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.{digits}g}"
    return str(v)


def _noise_note(res: dict) -> str:
    noise = res.get("noise")
    if not noise:
        return ""
    half = noise.get("ci95_halfwidth")
    return f"   (noise: {noise.get('mechanism')}, 95% of noise within +/-{_num(half, 4)})" if half is not None else ""


def _format(name: str, res: dict) -> list[str]:
    kind = res.get("kind")
    if kind in ("count", "sum", "mean", "variance"):
        return [f"{name} [{kind}] = {_num(res.get('value'), 10)}{_noise_note(res)}"]
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
        head = (f"{name} [regression{' ridge=' + _num(res.get('ridge')) if res.get('ridge') else ''}]  "
                f"n={res.get('n')}  R-squared={_num(res.get('r_squared'), 4)}{_noise_note(res)}")
        width = max(12, *(len(t) for t in res["terms"])) + 2
        out = [head, "=" * (width + 42),
               "".ljust(width) + "coef".rjust(14) + "std err".rjust(14) + "t".rjust(14), "-" * (width + 42)]
        for t, c, s in zip(res["terms"], res["coefficients"], res["std_errors"]):
            tval = c / s if (s not in (None, 0) and c is not None) else None
            out.append(t.ljust(width) + _num(c, 6).rjust(14) + _num(s, 6).rjust(14) + _num(tval, 4).rjust(14))
        out.append("=" * (width + 42))
        return out
    return [f"{name}: {json.dumps(res)}"]
