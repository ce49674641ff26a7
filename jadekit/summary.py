"""Table-1 summaries: test error per method as mean ± std over seeds, and per-seed differences between methods
(md, csv, json).

A standard deviation (and so a standard error) needs two values: with one seed it is undefined, stored as
null (JSON) or an empty cell (CSV) and shown as "–" in the markdown; n says how many values there were.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Iterable
from itertools import combinations
from pathlib import Path

from jadekit.io import atomic_write_json, atomic_write_text

ORDER = ("single", "paired", "jade")


def method_order(method: str) -> tuple[int, str]:
    """Sort key: the paper's methods in ORDER, then any other method by name."""
    return (ORDER.index(method) if method in ORDER else len(ORDER), method)


def mean_std(values: list[float]) -> dict[str, float | int | None]:
    """Mean, sample standard deviation (None for fewer than two values: undefined; NaN when a value is not finite)
    and count."""
    if not values:
        return {"mean": None, "std": None, "n": 0}
    if not all(math.isfinite(v) for v in values):  # e.g. an undefined AUROC: statistics.stdev cannot take NaN
        return {"mean": sum(values) / len(values), "std": math.nan if len(values) > 1 else None, "n": len(values)}
    std = statistics.stdev(values) if len(values) > 1 else None
    return {"mean": statistics.fmean(values), "std": std, "n": len(values)}


def summarize(finals: Iterable[dict]) -> list[dict]:
    """One row per method: primary and auxiliary test error (mean, std, n), the primary test set's balanced error
    (100 % minus its balanced accuracy: the error when every class counts the same; n = 0 for runs that did not
    record it) and the seeds."""
    by_method: dict[str, list[dict]] = {}
    for f in finals:
        by_method.setdefault(f["method"], []).append(f)
    rows = []
    for method in sorted(by_method, key=method_order):
        runs = by_method[method]
        aux = [r["auxiliary_test_error"] for r in runs if r.get("auxiliary_test_error") is not None]
        balanced = [100.0 - 100.0 * r["primary_test_balanced_accuracy"] for r in runs
                    if r.get("primary_test_balanced_accuracy") is not None]  # jadekit < 0.4 did not record it
        rows.append({
            "method": method,
            "primary_test_error": mean_std([r["primary_test_error"] for r in runs]),
            "primary_test_balanced_error": mean_std(balanced),
            "auxiliary_test_error": mean_std(aux),
            "seeds": sorted(r["seed"] for r in runs),
        })
    return rows


def seed_differences(finals: Iterable[dict]) -> list[dict]:
    """Primary test error of one method minus another's, seed by seed, for every pair sharing >= 2 seeds.

    Every method of a seed trains on the same drawn labelled subset, so the difference cancels that draw's
    luck: its mean ± standard error says whether a gap is beyond the seed noise (std: the differences'
    sample standard deviation). Later methods in ORDER come first (jade − paired, jade − single, paired − single).
    """
    errors: dict[str, dict[int, float]] = {}
    for f in finals:
        if f["primary_test_error"] is not None and math.isfinite(f["primary_test_error"]):
            errors.setdefault(f["method"], {})[f["seed"]] = f["primary_test_error"]
    methods = sorted(errors, key=method_order, reverse=True)
    rows = []
    for a, b in combinations(methods, 2):
        seeds = sorted(errors[a].keys() & errors[b].keys())
        if len(seeds) < 2:
            continue
        diffs = [errors[a][s] - errors[b][s] for s in seeds]
        stat = mean_std(diffs)
        rows.append({"methods": [a, b], "mean": stat["mean"], "std": stat["std"], "se": stat["std"] / math.sqrt(len(diffs)),
                     "won": sum(d < 0 for d in diffs), "tied": sum(d == 0 for d in diffs), "seeds": seeds})
    return rows


UNDEFINED = "–"  # a standard deviation of one value


def _balanced(row: dict) -> dict:
    """A row's primary balanced error; none in rows written before jadekit 0.4."""
    return row.get("primary_test_balanced_error") or mean_std([])


def fmt(stat: dict) -> str:
    """`29.08 ± 0.92`, `29.08 ± –` for one value (no std), or `-` when there is nothing to show."""
    if stat["mean"] is None:
        return "-"
    return f"{stat['mean']:.2f} ± {UNDEFINED if stat['std'] is None else format(stat['std'], '.2f')}"


def to_markdown(rows: list[dict], title: str, differences: list[dict] | None = None) -> str:
    """Table 1 (a balanced-error column when any run recorded one, with its n where that is fewer runs) and, if
    given, the per-seed differences."""
    balanced = any(_balanced(r)["n"] for r in rows)
    lines = [
        f"# {title}: test error (%)",
        "",
        "| method | primary test error |" + (" primary balanced error |" if balanced else "") + " auxiliary test error | n |",
        "| --- | --- |" + (" --- |" if balanced else "") + " --- | --- |",
    ]
    for r in rows:
        cells = [r["method"], fmt(r["primary_test_error"])]
        b = _balanced(r)
        cells += [fmt(b) + (f" (n = {b['n']})" if 0 < b["n"] != r["primary_test_error"]["n"] else "")] if balanced else []
        cells += [fmt(r["auxiliary_test_error"]), str(r["primary_test_error"]["n"])]
        lines.append("| " + " | ".join(cells) + " |")
    if differences:
        lines += [
            "",
            "Per-seed differences of the primary test error (each seed's methods share one labelled draw):",
            "",
            "| methods | mean difference ± standard error | seeds won by the first | n |",
            "| --- | --- | --- | --- |",
        ]
        for d in differences:
            tied = f", {d['tied']} tied" if d["tied"] else ""
            lines.append(f"| {d['methods'][0]} − {d['methods'][1]} | {d['mean']:+.2f} ± {d['se']:.2f} "
                         f"| {d['won']}{tied} | {len(d['seeds'])} |")
    return "\n".join(lines) + "\n"


def summary_markdown(finals: Iterable[dict], title: str) -> str:
    """The markdown summary of finished runs: Table 1 and the per-seed differences."""
    finals = list(finals)
    return to_markdown(summarize(finals), title, seed_differences(finals))


CSV_COLUMNS = ("method", "primary_error_mean", "primary_error_std", "auxiliary_error_mean", "auxiliary_error_std", "n",
               "primary_balanced_error_mean", "primary_balanced_error_std", "primary_balanced_error_n")
DIFFERENCE_COLUMNS = ("method", "minus", "n", "primary_error_mean", "primary_error_std", "primary_error_se",
                      "seeds_won", "seeds_tied")


def to_csv(rows: list[dict]) -> str:
    """One row per method: its test errors' mean, std and n (seeds), then the primary balanced error's mean, std and
    n (runs that recorded it); undefined values (a std of one seed, no auxiliary or balanced error) are empty cells."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in rows:
        p, a, b = r["primary_test_error"], r["auxiliary_test_error"], _balanced(r)
        w.writerow([r["method"], p["mean"], p["std"], a["mean"], a["std"], p["n"], b["mean"], b["std"], b["n"]])
    return buf.getvalue()


def differences_csv(differences: list[dict]) -> str:
    """One row per pair of methods: the primary test error of `method` minus that of `minus` over their n shared
    seeds, as mean, std and standard error, and the seeds `method` won (lower error) and tied."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(DIFFERENCE_COLUMNS)
    for d in differences:
        a, b = d["methods"]
        w.writerow([a, b, len(d["seeds"]), d["mean"], d["std"], d["se"], d["won"], d["tied"]])
    return buf.getvalue()


def write_summary(out_dir: Path, finals: Iterable[dict], title: str) -> list[dict]:
    """Write summary.md, summary.csv (per method), summary-differences.csv (per pair of methods) and summary.json
    into `out_dir`; return the rows."""
    finals = list(finals)
    rows, differences = summarize(finals), seed_differences(finals)
    atomic_write_text(out_dir / "summary.md", to_markdown(rows, title, differences))
    atomic_write_text(out_dir / "summary.csv", to_csv(rows))
    atomic_write_text(out_dir / "summary-differences.csv", differences_csv(differences))
    atomic_write_json(out_dir / "summary.json", {"title": title, "rows": rows, "differences": differences})
    return rows
