"""Baseline (a): pooled plaintext. All parties' files loaded into one process and analysed in the clear.

Run as its own process (``python -m bench.pooled --spec headline --d 10 --impl pandas FILE...``)
so that its memory and start-up are its own; prints one JSON object:
``import_seconds`` (numpy/pandas/statsmodels imports), ``load_seconds`` (reading and
concatenating every file), ``compute_seconds`` (every statistic of the spec), ``peak_rss_kb``.

Two implementations of the same statistics:

* ``pandas``: what an analyst would write: ``pd.read_parquet``/``pd.read_csv`` + ``pd.concat``,
  pandas for moments and ``pd.crosstab``, ``np.histogram``, ``np.corrcoef`` and
  ``statsmodels.OLS(...).fit()`` (coefficients, classical standard errors, R^2);
* ``numpy``: the fastest plain approach we know: pyarrow straight to numpy (with the same
  Arrow allocator as our parties), ``np.bincount`` for tables, and the regression from the
  normal equations (X^T X in BLAS, ``np.linalg.solve``), standard errors and R^2 included.

The benchmark's figure of merit uses the faster of the two.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

T0 = time.perf_counter()


def _load_pandas(files, columns):
    import pandas as pd
    frames = []
    for f in files:
        if f.endswith(".csv"):
            frames.append(pd.read_csv(f, usecols=columns))
        else:
            frames.append(pd.read_parquet(f, columns=columns))
    return pd.concat(frames, ignore_index=True)


def _load_numpy(files, numeric, categorical):
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq
    tables = []
    for f in files:
        cols = numeric + [c for c, _ in categorical]
        if f.endswith(".csv"):
            tables.append(pacsv.read_csv(f, convert_options=pacsv.ConvertOptions(include_columns=cols)))
        else:
            tables.append(pq.read_table(f, columns=cols))
    table = pa.concat_tables(tables)
    out = {c: table.column(c).to_numpy() for c in numeric}
    for c, levels in categorical:
        out[c] = pc.index_in(table.column(c), value_set=pa.array(levels)).to_numpy(zero_copy_only=False)
    return out


def _ols_numpy(X, y):
    import numpy as np
    n, k = X.shape
    xtx = X.T @ X
    xty = X.T @ y
    beta = np.linalg.solve(xtx, xty)
    rss = float(y @ y - beta @ xty)
    se = np.sqrt(np.diag(np.linalg.inv(xtx)) * rss / (n - k))
    tss = float(((y - y.mean()) ** 2).sum())
    return beta, se, 1 - rss / tss


def headline_pandas(files, d, only_regression=False, **_):
    import numpy as np
    import statsmodels.api as sm
    feats = [f"x{j}" for j in range(1, d + 1)]
    cols = feats + ["y"] if only_regression else sorted(set(feats + ["y", "visits", "smoker", "region", "x1", "x2"]))
    t = time.perf_counter()
    df = _load_pandas(files, cols)
    load = time.perf_counter() - t
    t = time.perf_counter()
    out = {}
    if not only_regression:
        out["n"] = len(df)
        out["visits_sum"] = int(df["visits"].sum())
        out["mean_x1"] = float(df["x1"].mean())
        out["var_y"] = float(df["y"].var())
        corr_cols = ["x1", "x2", "y", "visits"] if d > 1 else ["x1", "y", "visits"]
        out["corr"] = df[corr_cols].corr().to_numpy().tolist()
        import pandas as pd
        tab = pd.crosstab(pd.Categorical(df["smoker"], categories=["no", "yes"]),
                          pd.Categorical(df["region"], categories=["north", "south", "east", "west"]),
                          dropna=False)
        out["smoking"] = tab.to_numpy().tolist()
        out["x1_hist"] = np.histogram(df["x1"].to_numpy(), bins=[-8, -3, -1.5, 0, 1.5, 3, 8])[0].tolist()
    model = sm.OLS(df["y"].to_numpy(), sm.add_constant(df[feats].to_numpy(), has_constant="add")).fit()
    out["model"] = {"coefficients": model.params.tolist(), "std_errors": model.bse.tolist(),
                    "r_squared": float(model.rsquared), "n": int(model.nobs)}
    return load, time.perf_counter() - t, out


def headline_numpy(files, d, only_regression=False, **_):
    import numpy as np
    feats = [f"x{j}" for j in range(1, d + 1)]
    numeric = feats + ["y"] if only_regression else sorted(set(feats + ["y", "visits", "x1", "x2"]))
    cat = [] if only_regression else [("smoker", ["no", "yes"]), ("region", ["north", "south", "east", "west"])]
    t = time.perf_counter()
    data = _load_numpy(files, numeric, cat)
    load = time.perf_counter() - t
    t = time.perf_counter()
    out = {}
    if not only_regression:
        n = len(data["x1"])
        out["n"] = n
        out["visits_sum"] = int(data["visits"].sum())
        out["mean_x1"] = float(data["x1"].mean())
        out["var_y"] = float(data["y"].var(ddof=1))
        corr_cols = ["x1", "x2", "y", "visits"] if d > 1 else ["x1", "y", "visits"]
        out["corr"] = np.corrcoef(np.vstack([data[c] for c in corr_cols])).tolist()
        out["smoking"] = np.bincount(data["smoker"] * 4 + data["region"], minlength=8).reshape(2, 4).tolist()
        out["x1_hist"] = np.histogram(data["x1"], bins=[-8, -3, -1.5, 0, 1.5, 3, 8])[0].tolist()
    X = np.empty((len(data["y"]), d + 1))
    X[:, 0] = 1.0
    for j, f in enumerate(feats):
        X[:, j + 1] = data[f]
    beta, se, r2 = _ols_numpy(X, data["y"])
    out["model"] = {"coefficients": beta.tolist(), "std_errors": se.tolist(), "r_squared": r2, "n": len(X)}
    return load, time.perf_counter() - t, out


def crosstab_pandas(files, k, **_):
    import pandas as pd
    t = time.perf_counter()
    df = _load_pandas(files, ["r", "c"])
    load = time.perf_counter() - t
    t = time.perf_counter()
    levels = [f"l{i}" for i in range(k)]
    tab = pd.crosstab(pd.Categorical(df["r"], categories=levels), pd.Categorical(df["c"], categories=levels),
                      dropna=False)
    counts = tab.to_numpy()
    shown = [[int(v) if v >= 5 else None for v in row] for row in counts]
    return load, time.perf_counter() - t, {"table": shown}


def crosstab_numpy(files, k, **_):
    import numpy as np
    levels = [f"l{i}" for i in range(k)]
    t = time.perf_counter()
    data = _load_numpy(files, [], [("r", levels), ("c", levels)])
    load = time.perf_counter() - t
    t = time.perf_counter()
    counts = np.bincount(data["r"].astype(np.int64) * k + data["c"], minlength=k * k).reshape(k, k)
    shown = [[int(v) if v >= 5 else None for v in row] for row in counts]
    return load, time.perf_counter() - t, {"table": shown}


def count_any(files, **_):
    import pyarrow.parquet as pq
    t = time.perf_counter()
    n = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    return time.perf_counter() - t, 0.0, {"n": n}


IMPLS = {("headline", "pandas"): headline_pandas, ("headline", "numpy"): headline_numpy,
         ("regression", "pandas"): lambda files, d, **kw: headline_pandas(files, d, only_regression=True),
         ("regression", "numpy"): lambda files, d, **kw: headline_numpy(files, d, only_regression=True),
         ("crosstab", "pandas"): crosstab_pandas, ("crosstab", "numpy"): crosstab_numpy,
         ("count", "pandas"): count_any, ("count", "numpy"): count_any}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.pooled")
    ap.add_argument("--spec", required=True, choices=sorted({s for s, _ in IMPLS}))
    ap.add_argument("--impl", default="pandas", choices=["pandas", "numpy"])
    ap.add_argument("--d", type=int, default=10)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("files", nargs="+")
    args = ap.parse_args(argv)
    t = time.perf_counter()
    import numpy  # noqa: F401
    import pandas  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    if args.impl == "numpy":  # the lean baseline gets the Arrow allocator our parties use
        from jointstats.engine.party import _configure_arrow
        _configure_arrow()
    if args.impl == "pandas" and args.spec in ("headline", "regression"):
        import statsmodels.api  # noqa: F401
    imports = time.perf_counter() - t
    load, compute, out = IMPLS[(args.spec, args.impl)](args.files, d=args.d, k=args.k)
    process, cpu = time.perf_counter() - T0, time.process_time()
    # the parties' own VmHWM reader, imported after the timings (its imports are not the baseline's;
    # the data is freed by now, so they do not raise the peak either)
    from jointstats.engine.party import _peak_rss_kb
    json.dump({"import_seconds": imports, "load_seconds": load, "compute_seconds": compute,
               "process_seconds": process,
               "peak_rss_kb": _peak_rss_kb(),
               "cpu_seconds": cpu, "result": out}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
