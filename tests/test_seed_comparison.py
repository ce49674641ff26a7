"""Per-seed differences between methods (jadekit.summary) and the dir-merging benchmark built on them."""

import csv
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

from jadekit.summary import mean_std, seed_differences, summarize, to_csv, to_markdown, write_summary

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "seed_comparison.py"


def final(method: str, seed: int, primary: float, auxiliary: float | None = None) -> dict:
    return {"method": method, "seed": seed, "primary_test_error": primary, "auxiliary_test_error": auxiliary}


def test_differences_pair_methods_seed_by_seed_and_count_wins():
    finals = [final("single", 0, 5.0), final("single", 1, 5.0), final("single", 2, 6.0), final("single", 3, 9.0),
              final("jade", 0, 4.0), final("jade", 1, 6.0), final("jade", 2, 3.0), final("jade", 3, 9.0),
              final("paired", 0, 7.0)]  # paired shares one seed only: no pair with it
    (row,) = seed_differences(finals)
    assert row["methods"] == ["jade", "single"] and row["seeds"] == [0, 1, 2, 3]
    diffs = [-1.0, 1.0, -3.0, 0.0]
    assert math.isclose(row["mean"], -0.75)
    sd = math.sqrt(sum((d + 0.75) ** 2 for d in diffs) / 3)
    assert math.isclose(row["se"], sd / 2)
    assert row["won"] == 2 and row["tied"] == 1
    md = to_markdown(summarize(finals), "t", seed_differences(finals))
    assert "| jade − single | -0.75 ± 0.85 | 2, 1 tied | 4 |" in md


def test_runs_without_a_primary_error_are_left_out():
    finals = [final("jade", s, v) for s, v in enumerate([1.0, math.nan, 2.0])]
    finals += [final("single", s, 3.0) for s in range(3)]
    (row,) = seed_differences(finals)
    assert row["seeds"] == [0, 2] and math.isclose(row["mean"], -1.5)


def write_final(out: Path, method: str, seed: int, primary: float, auxiliary: float | None = None) -> None:
    run = out / method / f"seed-{seed}"
    run.mkdir(parents=True)
    (run / "final.json").write_text(json.dumps(final(method, seed, primary, auxiliary)))


def compare(*dirs: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, dirs)], capture_output=True, text=True)


def test_benchmark_merges_dirs_into_one_summary(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    for seed, (jade, single) in enumerate([(4.0, 5.0), (6.0, 5.0)]):
        write_final(first, "jade", seed, jade, 1.0)
        write_final(first, "single", seed, single)
    write_final(second, "jade", 2, 3.0, 1.5)
    write_final(second, "single", 2, 6.0)
    result = compare(first, second)
    assert result.returncode == 0, result.stderr
    assert "| jade | 4.33 ± 1.53 | 1.17 ± 0.29 | 3 |" in result.stdout
    # differences -1, +1, -3: mean -1.00, std 2, SE 2 / sqrt(3)
    assert "| jade − single | -1.00 ± 1.15 | 2 | 3 |" in result.stdout


def test_benchmark_refuses_a_seed_in_two_dirs_and_an_empty_dir(tmp_path):
    for d in ("a", "b"):
        write_final(tmp_path / d, "jade", 0, 4.0)
    twice = compare(tmp_path / "a", tmp_path / "b")
    assert twice.returncode != 0 and "jade seed 0 appears twice" in twice.stderr and "Traceback" not in twice.stderr
    empty = compare(tmp_path / "none")
    assert empty.returncode != 0 and "no finished runs" in empty.stderr


def test_write_summary_records_the_differences(tmp_path):
    finals = [final(m, s, e) for m, errs in (("paired", [3.0, 4.0]), ("jade", [2.0, 4.5])) for s, e in enumerate(errs)]
    write_summary(tmp_path, finals, "study")
    (row,) = json.loads((tmp_path / "summary.json").read_text())["differences"]
    assert row["methods"] == ["jade", "paired"] and row["won"] == 1 and math.isclose(row["mean"], -0.25)
    assert "| jade − paired | -0.25 ± 0.75 | 1 | 2 |" in (tmp_path / "summary.md").read_text()


def test_an_undefined_value_makes_the_statistic_undefined_instead_of_crashing():
    """An AUROC of NaN (one class in a test set) or an infinite NLL among several runs: mean NaN/inf, std NaN."""
    nan_stat = mean_std([0.9, math.nan])
    assert math.isnan(nan_stat["mean"]) and math.isnan(nan_stat["std"]) and nan_stat["n"] == 2
    inf_stat = mean_std([1.0, math.inf, 2.0])
    assert inf_stat["mean"] == math.inf and math.isnan(inf_stat["std"]) and inf_stat["n"] == 3
    assert mean_std([math.nan])["std"] is None


def test_one_seed_has_no_std():
    assert mean_std([4.0]) == {"mean": 4.0, "std": None, "n": 1}
    assert mean_std([]) == {"mean": None, "std": None, "n": 0}
    finals = [final("single", 0, 5.0), final("jade", 0, 4.0, 1.25), final("jade", 1, 6.0, 1.75)]
    rows = {r["method"]: r for r in summarize(finals)}
    assert rows["single"]["primary_test_error"] == {"mean": 5.0, "std": None, "n": 1}
    md = to_markdown(list(rows.values()), "t")
    assert "| single | 5.00 ± – | - | 1 |" in md
    assert "| jade | 5.00 ± 1.41 | 1.50 ± 0.35 | 2 |" in md


def test_one_seed_std_is_null_in_json_and_empty_in_csv(tmp_path):
    write_summary(tmp_path, [final("single", 0, 5.0), final("jade", 0, 4.0, 1.5)], "one seed")
    summary = json.loads((tmp_path / "summary.json").read_text())
    jade = next(r for r in summary["rows"] if r["method"] == "jade")
    assert jade["primary_test_error"] == {"mean": 4.0, "std": None, "n": 1}
    assert jade["auxiliary_test_error"] == {"mean": 1.5, "std": None, "n": 1}
    assert summary["differences"] == []
    table = {r["method"]: r for r in csv.DictReader((tmp_path / "summary.csv").open())}
    assert table["jade"]["primary_error_mean"] == "4.0" and table["jade"]["n"] == "1"
    assert table["jade"]["primary_error_std"] == "" and table["jade"]["auxiliary_error_std"] == ""
    assert table["single"]["auxiliary_error_mean"] == ""
    assert "| jade | 4.00 ± – | 1.50 ± – | 1 |" in (tmp_path / "summary.md").read_text()


def test_the_balanced_error_is_shown_when_runs_recorded_it(tmp_path):
    """Imbalanced test sets (a rare diagnosis) need the error where every class counts the same, next to the error."""
    finals = [{**final("jade", s, e), "primary_test_balanced_accuracy": b} for s, e, b in [(0, 4.0, 0.9), (1, 6.0, 0.8)]]
    finals.append(final("single", 0, 5.0))  # recorded by jadekit 0.3: no balanced accuracy
    finals += [{**final("paired", 0, 5.0), "primary_test_balanced_accuracy": 0.75}, final("paired", 1, 7.0)]
    write_summary(tmp_path, finals, "imbalanced")
    md = (tmp_path / "summary.md").read_text()
    assert "| method | primary test error | primary balanced error | auxiliary test error | n |" in md
    assert "| jade | 5.00 ± 1.41 | 15.00 ± 7.07 | - | 2 |" in md and "| single | 5.00 ± – | - | - | 1 |" in md
    assert "| paired | 6.00 ± 1.41 | 25.00 ± – (n = 1) | - | 2 |" in md  # a mean over fewer runs says so
    table = {r["method"]: r for r in csv.DictReader((tmp_path / "summary.csv").open())}
    assert table["jade"]["primary_balanced_error_mean"] == "15.0" and table["jade"]["primary_balanced_error_n"] == "2"
    assert table["paired"]["primary_balanced_error_n"] == "1" and table["paired"]["n"] == "2"
    assert table["single"]["primary_balanced_error_mean"] == "" and table["single"]["primary_balanced_error_n"] == "0"
    rows = {r["method"]: r for r in json.loads((tmp_path / "summary.json").read_text())["rows"]}
    assert rows["single"]["primary_test_balanced_error"] == {"mean": None, "std": None, "n": 0}
    assert "balanced" not in to_markdown(summarize([final("jade", 0, 4.0)]), "old runs")


def test_csvs_carry_the_methods_and_the_per_seed_differences(tmp_path):
    errs = {"single": [5.0, 6.0, 9.0], "paired": [4.5, 6.0, 7.0], "jade": [4.0, 6.0, 3.0]}
    finals = [final(m, s, e, None if m == "single" else 1.0) for m, es in errs.items() for s, e in enumerate(es)]
    write_summary(tmp_path, finals, "study")
    methods = list(csv.DictReader((tmp_path / "summary.csv").open()))
    assert [r["method"] for r in methods] == list(errs)  # one row per method, nothing else: safe to key by method
    assert [float(r["primary_error_mean"]) for r in methods] == [statistics.fmean(e) for e in errs.values()]
    table = list(csv.DictReader((tmp_path / "summary-differences.csv").open()))
    assert [(r["method"], r["minus"]) for r in table] == [("jade", "paired"), ("jade", "single"), ("paired", "single")]
    jade_single = table[1]  # differences -1, 0, -6
    assert float(jade_single["primary_error_mean"]) == -7 / 3 and jade_single["n"] == "3"
    assert math.isclose(float(jade_single["primary_error_std"]), statistics.stdev([-1.0, 0.0, -6.0]))
    assert math.isclose(float(jade_single["primary_error_se"]), statistics.stdev([-1.0, 0.0, -6.0]) / math.sqrt(3))
    assert (jade_single["seeds_won"], jade_single["seeds_tied"]) == ("2", "1")
    (diff,) = [d for d in json.loads((tmp_path / "summary.json").read_text())["differences"] if d["methods"] == ["jade", "single"]]
    assert math.isclose(diff["std"], statistics.stdev([-1.0, 0.0, -6.0]))
    assert to_csv(summarize(finals)) == (tmp_path / "summary.csv").read_text()


def test_benchmark_shows_one_seed_without_a_std(tmp_path):
    write_final(tmp_path / "a", "jade", 0, 4.0, 1.0)
    write_final(tmp_path / "a", "single", 0, 5.0)
    result = compare(tmp_path / "a")
    assert result.returncode == 0, result.stderr
    assert "| jade | 4.00 ± – | 1.00 ± – | 1 |" in result.stdout and "| single | 5.00 ± – | - | 1 |" in result.stdout
    assert "differences" not in result.stdout

