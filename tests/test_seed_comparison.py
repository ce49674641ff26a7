"""benchmarks/seed_comparison.py: per-seed differences across merged output dirs, and its refusals."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "seed_comparison.py"


def write_final(out: Path, method: str, seed: int, primary: float, auxiliary: float | None = None) -> None:
    run = out / method / f"seed-{seed}"
    run.mkdir(parents=True)
    final = {"method": method, "seed": seed, "primary_test_error": primary, "auxiliary_test_error": auxiliary}
    (run / "final.json").write_text(json.dumps(final))


def compare(*dirs: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, dirs)], capture_output=True, text=True)


def test_merges_dirs_and_differences_methods_seed_by_seed(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    for seed, (jade, single) in enumerate([(4.0, 5.0), (6.0, 5.0)]):
        write_final(first, "jade", seed, jade, 1.0)
        write_final(first, "single", seed, single)
    write_final(second, "jade", 2, 3.0, 1.5)
    write_final(second, "single", 2, 6.0)
    result = compare(first, second)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("jade") and "4.33 ±" in lines[0] and "n = 3" in lines[0] and "auxiliary 1.17" in lines[0]
    # differences -1, +1, -3: mean -1.00, std 2, SE 2 / sqrt(3)
    assert lines[-1] == "jade - single: -1.00 ± SE 1.15 over 3 seeds; jade lower on 2"


def test_a_seed_in_two_dirs_and_an_empty_dir_are_refused(tmp_path):
    for d in ("a", "b"):
        write_final(tmp_path / d, "jade", 0, 4.0)
    twice = compare(tmp_path / "a", tmp_path / "b")
    assert twice.returncode != 0 and "jade seed 0 appears twice" in twice.stderr and "Traceback" not in twice.stderr
    empty = compare(tmp_path / "none")
    assert empty.returncode != 0 and "no finished runs" in empty.stderr
