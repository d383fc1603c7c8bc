"""Typed per-kind views of one statistic of a :class:`~jointstats.Result`.

A job's result stays the contract's JSON object (``Result.results[name]`` is the plain dict
of docs/reference.md section 4); these frozen objects wrap one such dict and give it typed
attributes, a ``summary()`` block, ``to_dict()`` (the dict itself, copied), ``to_frame()``
(a pandas DataFrame), ``_repr_html_`` for notebooks and, for histograms and crosstabs,
``plot()`` (matplotlib, an optional extra). As with statsmodels' results, a regression has
``params``, ``bse``, ``conf_int()``, ``tvalues`` and ``pvalues`` (the last two in exact
mode only: under DP the intervals combine sampling error and noise, so no t statistic
applies).

``Result.stat(name)`` builds the right class from the statistic's ``kind``
(:func:`statistic_result`).
"""
from __future__ import annotations

import copy
import html
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

from jointstats.errors import JointStatsError

__all__ = [
    "StatisticResult", "ScalarResult", "CountResult", "SumResult", "MeanResult",
    "VarianceResult", "CorrelationResult", "CrosstabResult", "HistogramResult",
    "RegressionResult", "statistic_result", "PLOT_EXTRA",
]

#: What to install for ``plot()``.
PLOT_EXTRA = "pip install 'jointstats[plot]' (matplotlib)"


def _pyplot():
    """matplotlib.pyplot, or an ImportError saying how to get it."""
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError(f"plotting a result needs matplotlib, which is not installed: "
                          f"{PLOT_EXTRA}") from None
    return plt


@dataclass(frozen=True)
class StatisticResult:
    """One released statistic: its name in the spec and its result object (a dict)."""

    name: str
    data: Mapping[str, Any]
    kind: ClassVar[str] = ""

    @property
    def noise(self) -> dict | None:
        """The DP noise description (mechanism, share, scale, sd, ci95_halfwidth, dominates);
        None in exact mode."""
        return self.data.get("noise")

    @property
    def exact(self) -> bool:
        """True when the statistic was released without DP noise."""
        return not self.noise

    @property
    def noise_dominates(self) -> bool:
        """True when the DP noise makes the statistic uninformative (do not read it as a finding)."""
        return bool((self.noise or {}).get("dominates"))

    def to_dict(self) -> dict:
        """The statistic's result object of the contract (a deep copy)."""
        return copy.deepcopy(dict(self.data))

    def summary(self) -> str:
        """The statistic's block of ``Result.summary()``."""
        from jointstats.result import _format
        return "\n".join(_format(self.name, dict(self.data)))

    def to_frame(self):
        """A pandas DataFrame of the statistic (see each kind)."""
        raise NotImplementedError  # every kind below defines it

    def plot(self, ax=None):
        """Plot the statistic (histograms and crosstabs only)."""
        raise TypeError(f"statistic {self.name!r} is a {self.kind}; only histograms and "
                        f"crosstabs can be plotted")

    def _repr_html_(self) -> str:
        head = f"<b>{html.escape(self.name)}</b> [{html.escape(self.kind)}]"
        if self.noise_dominates:
            head += " <i>(the DP noise dominates this statistic)</i>"
        return f"<div>{head}{self.to_frame().to_html()}</div>"

    def __str__(self) -> str:
        return self.summary()


@dataclass(frozen=True)
class ScalarResult(StatisticResult):
    """A count, sum, mean or variance: one ``value``."""

    @property
    def value(self) -> float | int | None:
        """The released value (with DP noise in DP mode)."""
        return self.data.get("value")

    @property
    def ci95_halfwidth(self) -> float | None:
        """Half-width of the interval holding the DP noise 95% of the time (None: exact)."""
        return (self.noise or {}).get("ci95_halfwidth")

    @property
    def noise_interval(self) -> tuple[float, float] | None:
        """``value +/- ci95_halfwidth``: covers the noiseless value in about 95% of runs (DP only)."""
        half = self.ci95_halfwidth
        if half is None or self.value is None:
            return None
        return (self.value - half, self.value + half)

    def to_frame(self):
        """One row indexed by the statistic's name: kind, value and (DP) the noise interval."""
        import pandas as pd
        row: dict[str, Any] = {"kind": self.kind, "value": self.value}
        if not self.exact:
            lo, hi = self.noise_interval or (None, None)
            row.update({"ci95_halfwidth": self.ci95_halfwidth, "ci95_low": lo, "ci95_high": hi})
        return pd.DataFrame([row], index=pd.Index([self.name], name="statistic"))


@dataclass(frozen=True)
class CountResult(ScalarResult):
    """Number of rows (where ``column`` is present, if the spec named one)."""

    kind: ClassVar[str] = "count"


@dataclass(frozen=True)
class SumResult(ScalarResult):
    """Sum of a numeric column (values clipped to its bounds)."""

    kind: ClassVar[str] = "sum"


@dataclass(frozen=True)
class MeanResult(ScalarResult):
    """Mean of a numeric column."""

    kind: ClassVar[str] = "mean"


@dataclass(frozen=True)
class VarianceResult(ScalarResult):
    """Sample variance (n - 1) of a numeric column."""

    kind: ClassVar[str] = "variance"


@dataclass(frozen=True)
class CorrelationResult(StatisticResult):
    """Pearson correlations of numeric columns over the rows complete in all of them."""

    kind: ClassVar[str] = "correlation"

    @property
    def columns(self) -> list[str]:
        """The columns, in the spec's order."""
        return list(self.data["columns"])

    @property
    def matrix(self) -> list[list[float | None]]:
        """The correlation matrix, rows and columns in the order of :attr:`columns`."""
        return [list(r) for r in self.data["matrix"]]

    def to_frame(self):
        """The matrix, indexed and labelled by column."""
        import pandas as pd
        return pd.DataFrame(self.matrix, index=pd.Index(self.columns), columns=self.columns,
                            dtype=float)


@dataclass(frozen=True)
class CrosstabResult(StatisticResult):
    """Counts of every (row level, column level) pair; suppressed cells are None."""

    kind: ClassVar[str] = "crosstab"

    @property
    def rows(self) -> list[str]:
        """The row column's levels."""
        return list(self.data["rows"])

    @property
    def cols(self) -> list[str]:
        """The column column's levels."""
        return list(self.data["cols"])

    @property
    def counts(self) -> list[list[int | None]]:
        """Cell counts by row then column; None for a cell suppressed by ``min_count``."""
        return [list(r) for r in self.data["counts"]]

    @property
    def min_count(self) -> int | None:
        """The suppression threshold applied (the spec's or the parties' highest floor)."""
        return self.data.get("min_count")

    def to_frame(self):
        """Levels of ``rows`` as the index, of ``cols`` as the columns; suppressed cells are
        missing (pandas' nullable ``Int64``)."""
        import pandas as pd
        return pd.DataFrame(self.counts, index=pd.Index(self.rows), columns=self.cols,
                            dtype="Int64")

    def plot(self, ax=None):
        """Grouped bars: one group per row level, one bar per column level (suppressed cells
        left out). Returns the matplotlib Axes."""
        plt = _pyplot()
        if ax is None:
            _, ax = plt.subplots()
        rows, cols, counts = self.rows, self.cols, self.counts
        width = 0.8 / max(len(cols), 1)
        for j, col in enumerate(cols):
            xs = [i + (j - (len(cols) - 1) / 2) * width for i in range(len(rows))]
            ys = [math.nan if row[j] is None else row[j] for row in counts]
            ax.bar(xs, ys, width=width, label=str(col))
        ax.set_xticks(range(len(rows)), [str(r) for r in rows])
        ax.set_ylabel("count")
        ax.set_title(self.name + (" (DP noise)" if not self.exact else ""))
        ax.legend()
        return ax


@dataclass(frozen=True)
class HistogramResult(StatisticResult):
    """Counts of a numeric column in bins ``[a, b)`` (the last one closed)."""

    kind: ClassVar[str] = "histogram"

    @property
    def edges(self) -> list[float]:
        """The bin edges, increasing."""
        return list(self.data["edges"])

    @property
    def counts(self) -> list[int]:
        """One count per bin."""
        return list(self.data["counts"])

    def to_frame(self):
        """One row per bin: ``low``, ``high`` and ``count``."""
        import pandas as pd
        e = self.edges
        return pd.DataFrame({"low": e[:-1], "high": e[1:], "count": self.counts})

    def plot(self, ax=None):
        """Bars over the bins (widths as the edges say). Returns the matplotlib Axes."""
        plt = _pyplot()
        if ax is None:
            _, ax = plt.subplots()
        e = self.edges
        ax.bar(e[:-1], self.counts, width=[b - a for a, b in zip(e, e[1:])], align="edge",
               edgecolor="black")
        ax.set_ylabel("count")
        ax.set_title(self.name + (" (DP noise)" if not self.exact else ""))
        return ax


@dataclass(frozen=True)
class RegressionResult(StatisticResult):
    """An OLS or ridge regression: coefficients by term, standard errors, 95% intervals.

    Exact mode: the classical OLS standard errors; intervals and p-values from Student's t
    with ``n - len(terms)`` degrees of freedom, as statsmodels' OLS gives them. DP mode: the
    released ``conf_int`` (sampling error and DP noise combined); no t statistics or
    p-values (the noise is not Student-t distributed).
    """

    kind: ClassVar[str] = "regression"

    @property
    def terms(self) -> list[str]:
        """Term names: ``intercept``, numeric features, ``column[level]`` indicators."""
        return list(self.data["terms"])

    @property
    def params(self):
        """Coefficients as a pandas Series indexed by term."""
        import pandas as pd
        return pd.Series(self.data["coefficients"], index=self.terms, dtype=float, name="coef")

    @property
    def bse(self):
        """Standard errors as a pandas Series indexed by term."""
        import pandas as pd
        return pd.Series(self.data["std_errors"], index=self.terms, dtype=float, name="std_err")

    @property
    def nobs(self) -> int | float | None:
        """Rows used (approximate under DP)."""
        return self.data.get("n")

    @property
    def rsquared(self) -> float | None:
        """R-squared (None when the DP noise leaves no meaningful residual sum of squares)."""
        return self.data.get("r_squared")

    @property
    def df_resid(self) -> int | None:
        """Residual degrees of freedom ``n - len(terms)`` (exact mode only)."""
        n = self.nobs
        if not self.exact or n is None:
            return None
        return int(n) - len(self.terms)

    def _t_quantile(self, alpha: float) -> float:
        from scipy import stats
        df = self.df_resid
        if df is None or df <= 0:
            return math.nan
        return float(stats.t.ppf(1 - alpha / 2, df))

    @property
    def tvalues(self):
        """coef / std err (exact mode; None under DP)."""
        if not self.exact:
            return None
        return (self.params / self.bse).rename("t")

    @property
    def pvalues(self):
        """Two-sided p-values of coef = 0 from Student's t (exact mode; None under DP)."""
        if not self.exact:
            return None
        from scipy import stats
        df = self.df_resid
        t = self.tvalues
        if df is None or df <= 0:
            return t * math.nan
        return t.abs().apply(lambda v: float(2 * stats.t.sf(v, df))).rename("p_value")

    def conf_int(self, alpha: float = 0.05):
        """Intervals as a DataFrame with columns ``low`` and ``high``.

        DP mode: the released 95% intervals (only ``alpha = 0.05``). Exact mode:
        ``coef +/- t(1 - alpha/2, n - k) * std err``."""
        import pandas as pd
        if not 0 < alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), found {alpha!r}")
        if not self.exact:
            if alpha != 0.05:
                raise ValueError("a DP regression carries 95% intervals only (alpha 0.05)")
            ci = self.data.get("conf_int") or [[None, None]] * len(self.terms)
            return pd.DataFrame(ci, index=self.terms, columns=["low", "high"], dtype=float)
        q = self._t_quantile(alpha)
        params, bse = self.params, self.bse
        return pd.DataFrame({"low": params - q * bse, "high": params + q * bse})

    def to_frame(self):
        """The coefficient table, one row per term: ``coef``, ``std_err``, ``ci95_low``,
        ``ci95_high`` and, in exact mode, ``t`` and ``p_value``."""
        import pandas as pd
        ci = self.conf_int()
        frame = pd.DataFrame({"coef": self.params, "std_err": self.bse,
                              "ci95_low": ci["low"], "ci95_high": ci["high"]})
        if self.exact:
            frame["t"] = self.tvalues
            frame["p_value"] = self.pvalues
        frame.index.name = "term"
        return frame


_KINDS: dict[str, type[StatisticResult]] = {
    cls.kind: cls for cls in (CountResult, SumResult, MeanResult, VarianceResult,
                              CorrelationResult, CrosstabResult, HistogramResult,
                              RegressionResult)
}


def statistic_result(name: str, data: Mapping[str, Any]) -> StatisticResult:
    """The typed view of the statistic ``name`` (its class chosen by ``data["kind"]``)."""
    if not isinstance(data, Mapping):
        raise JointStatsError(f"results.{name}: expected a result object, found "
                              f"{type(data).__name__}")
    cls = _KINDS.get(data.get("kind"))
    if cls is None:
        raise JointStatsError(f"results.{name}.kind: unknown kind {data.get('kind')!r}; "
                              f"expected one of {', '.join(_KINDS)}")
    return cls(name, data)
