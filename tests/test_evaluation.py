"""`jadekit eval` on run directories trained inside the test on tiny data in the real file formats."""

from __future__ import annotations

import csv
import io
import json
import shutil
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
import tomli_w
import torch
from pydantic import BaseModel
from typer.testing import CliRunner

from jadekit import registry
from jadekit.cli import app
from jadekit.data.base import DatasetInfo, ImageSet, NoParams
from jadekit.errors import DataError
from jadekit.evaluation import absent_class_notes

runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, write_bar_recipe) -> Path:
    """An output directory with one tiny run of each method (over `bar_data_root`)."""
    base = tmp_path_factory.mktemp("trained")
    recipe = write_bar_recipe(base / "tiny.toml", base / "runs")
    result = runner.invoke(app, ["run", str(recipe)])
    assert result.exit_code == 0, result.output
    return base / "runs"


def eval_json(*args: str) -> dict:
    result = runner.invoke(app, ["eval", *args, "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout, parse_constant=lambda c: pytest.fail(f"--json printed {c}, which is not JSON"))


def test_eval_jade_run_reports_every_metric_and_elbo(trained):
    run = trained / "jade" / "seed-0"
    out = eval_json(str(run))
    assert out["kind"] == "run" and out["method"] == "jade"
    by_domain = {r["domain"]: r for r in out["results"]}
    assert set(by_domain) == {"primary", "auxiliary"}
    final = json.loads((run / "final.json").read_text())
    assert by_domain["primary"]["error"] == pytest.approx(final["primary_test_error"], abs=1e-3)
    assert by_domain["auxiliary"]["error"] == pytest.approx(final["auxiliary_test_error"], abs=1e-3)
    p = by_domain["primary"]
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "ece", "nll", "per_class_accuracy", "confusion_matrix"):
        assert key in p
    assert p["n"] == 40 and sum(map(sum, p["confusion_matrix"])) == 40
    assert set(p["elbo"]) == {"recon", "kl", "ce", "neg_elbo"}
    assert Path(out["written_to"]).name.startswith("eval-recipe-test")


def test_eval_writes_each_images_prediction_beside_the_record(trained, tmp_path):
    """One CSV row per image scored: the error, balanced or per patient, can be recomputed (or thresholded) from it."""
    run = copy_runs(trained, tmp_path / "runs") / "jade" / "seed-0"
    record = eval_json(str(run))
    path = Path(record["predictions_written_to"])
    assert path.name == Path(record["written_to"]).stem + "-predictions.csv" and path.parent == run
    rows = list(csv.DictReader(path.open()))
    for result in record["results"]:
        mine = [r for r in rows if r["domain"] == result["domain"]]
        assert len(mine) == result["n"] and [int(r["index"]) for r in mine] == list(range(result["n"]))
        assert {r["split"] for r in mine} == {"test"}
        wrong = sum(r["label"] != r["predicted"] for r in mine)
        assert 100 * wrong / len(mine) == pytest.approx(result["error"])
        probs = [[float(v) for k, v in r.items() if k.startswith("p_")] for r in mine]
        assert all(abs(sum(p) - 1) < 1e-4 and len(p) == 10 for p in probs) and all(r["group"] == "" for r in mine)
    again = eval_json(str(run))  # a second evaluation keeps the first's files
    assert again["predictions_written_to"] != record["predictions_written_to"] and path.exists()
    summary = eval_json(str(run.parents[1]))
    assert all(Path(r["predictions_written_to"]).exists() for r in summary["records"])


def test_predictions_csv_quotes_class_names_and_numbers_each_split_from_zero():
    from jadekit.evaluation import predictions_csv

    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    record = {"results": [{"domain": "primary", "_predictions": (probs, torch.tensor([0, 1, 1]), torch.tensor([5, 6, 6]),
                                                                (("train", 1), ("test", 2)))}]}
    rows = list(csv.reader(io.StringIO(predictions_csv(record, ("benign, cyst", "tumour")))))
    assert rows[0] == ["domain", "split", "index", "group", "label", "predicted", "p_benign, cyst", "p_tumour"]
    assert [r[:6] for r in rows[1:]] == [["primary", "train", "0", "5", "benign, cyst", "benign, cyst"],
                                         ["primary", "test", "0", "6", "tumour", "tumour"],
                                         ["primary", "test", "1", "6", "tumour", "benign, cyst"]]
    assert "_predictions" not in record["results"][0]


def test_eval_never_overwrites(trained):
    run = trained / "single" / "seed-0"
    first = Path(eval_json(str(run))["written_to"])
    second = Path(eval_json(str(run))["written_to"])
    assert first != second and first.exists() and second.exists()
    assert "elbo" not in json.loads(first.read_text())["results"][0]


def test_eval_output_dir_aggregates_table_1(trained):
    out = eval_json(str(trained))
    assert out["kind"] == "summary"
    assert [r["method"] for r in out["rows"]] == ["single", "paired", "jade"]
    assert all(r["primary_test_error"]["n"] == 1 for r in out["rows"])
    assert out["rows"][0]["auxiliary_test_error"]["n"] == 0
    assert "| jade |" in out["markdown"]
    assert all(Path(p).exists() for p in out["written_to"])
    assert out["metrics"]["jade"]["auxiliary"]["macro_f1"]["n"] == 1
    others = out["markdown"].split("Every image, mean ± std over runs:")[1]  # every metric, per method and domain
    jade = next(r for r in out["records"] if r["method"] == "jade")["results"]
    row = f"| jade | auxiliary | {jade[1]['balanced_accuracy']:.2f} ± – | {jade[1]['macro_f1']:.2f} ± – |"
    assert jade[1]["domain"] == "auxiliary" and row in others, others
    assert others.index("| single | primary |") < others.index("| jade | primary |")
    balanced = next(r for r in out["rows"] if r["method"] == "jade")["primary_test_balanced_error"]
    assert balanced["n"] == 1 and balanced["mean"] == pytest.approx(100 - 100 * jade[0]["balanced_accuracy"])
    assert f"| jade | {jade[0]['error']:.2f} ± – | {balanced['mean']:.2f} ± – |" in out["markdown"]


def test_printed_tables_are_not_wrapped_when_piped(trained, tmp_path):
    """Not a terminal (a pipe, a file; here CliRunner's 80 columns): every Markdown table row stays on one line."""
    result = runner.invoke(app, ["eval", str(copy_runs(trained, tmp_path / "runs")), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    rows = [line for line in result.stdout.splitlines() if line.startswith("|")]
    assert len(rows) > 6 and all(row.endswith("|") for row in rows), rows
    assert any(len(row) > 80 for row in rows)  # long rows exist, and were not cut


def test_auxiliary_domain_over_an_output_dir_leaves_single_runs_out(trained, bar_data_root, tmp_path):
    out = copy_runs(trained, tmp_path / "runs")
    scored = eval_json(str(out), "--dataset", "mnist", "--root", str(bar_data_root), "--domain", "auxiliary")
    assert sorted(r["method"] for r in scored["records"]) == ["jade", "paired"]
    assert all(r["results"][0]["domain"] == "auxiliary" for r in scored["records"])
    shutil.rmtree(out / "paired"), shutil.rmtree(out / "jade")
    only_single = runner.invoke(app, ["eval", str(out), "--dataset", "mnist", "--root", str(bar_data_root),
                                      "--domain", "auxiliary"])
    assert only_single.exit_code == 2 and "holds only single runs" in only_single.output, only_single.output


def test_other_dataset_needs_explicit_resize(trained, bar_data_root):
    run = trained / "single" / "seed-0"
    root = str(bar_data_root)
    result = runner.invoke(app, ["eval", str(run), "--dataset", "mnist", "--root", root])
    assert result.exit_code == 2
    assert "(1, 28, 28)" in result.output and "(1, 16, 16)" in result.output and "--resize" in result.output
    assert "Traceback" not in result.output
    out = eval_json(str(run), "--dataset", "mnist", "--root", root, "--resize")
    assert out["results"][0]["dataset"] == "mnist" and out["results"][0]["n"] == 60
    assert Path(out["written_to"]).name == "eval-mnist-test.json"


def test_channel_mismatch_is_a_clear_error(trained):
    result = runner.invoke(app, ["eval", str(trained / "single" / "seed-0"), "--dataset", "svhn", "--resize"])
    assert result.exit_code == 2
    assert "3-channel" in result.output and "channels cannot be adapted" in result.output
    assert "fix: evaluate on 1-channel data" in result.output


def test_channel_mismatch_suggests_the_datasets_own_conversion(trained, fake_datasets):
    class Colour(BaseModel):
        channels: int = 3

    class Photos:
        Params = Colour

        def info(self, params):
            return DatasetInfo(tuple(str(d) for d in range(10)), (params.channels, 16, 16))

    fake_datasets(photos=Photos())
    result = runner.invoke(app, ["eval", str(trained / "single" / "seed-0"), "--dataset", "photos"])
    assert result.exit_code == 2 and "fix: pass --param channels=1" in result.output


def test_class_mismatch_is_a_clear_error(trained, fake_datasets):
    class Letters:
        Params = NoParams

        def info(self, params):
            return DatasetInfo(("a", "b"), (1, 16, 16))

    fake_datasets(letters=Letters())
    result = runner.invoke(app, ["eval", str(trained / "single" / "seed-0"), "--dataset", "letters"])
    assert result.exit_code == 2
    assert "classes ['a', 'b']" in result.output and "classes must match" in result.output
    fix = _fix(result.output)
    assert "evaluate on a dataset with the classes ['" in fix and "in this order" in fix and "--param" in fix
    assert "Traceback" not in result.output


def _fix(output: str) -> str:
    return next((line for line in output.splitlines() if line.startswith("fix: ")), "(no fix: line)")


def test_missing_run_dir(tmp_path):
    result = runner.invoke(app, ["eval", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "no such run directory" in result.output


def test_eval_of_a_file_says_what_eval_takes(trained, tmp_path):
    """`jadekit eval recipe.toml`: a file, not a run or output directory, naming the recipe's output directory."""
    recipe = tmp_path / "some_recipe.toml"
    recipe.write_text((trained / "single" / "seed-0" / "recipe.toml").read_text())  # output_dir = the trained runs
    for args in (["eval", str(recipe)], ["report", str(recipe)]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert f"{recipe} is a file (a recipe: `jadekit run` trains it), not a run or output directory" in result.output
        assert "no such run directory" not in result.output and "Traceback" not in result.output
        fix = _fix(result.output)
        assert "pass a run directory" in fix and f"experiment.output_dir, here {trained}" in fix
    other = tmp_path / "notes.txt"
    other.write_text("x")
    result = runner.invoke(app, ["eval", str(other)])
    assert result.exit_code == 2 and f"{other} is a file, not a run or output directory" in result.output
    assert "an output directory (the recipe's experiment.output_dir)" in _fix(result.output)


def test_report_out_that_is_a_file_is_named(trained):
    run = trained / "single" / "seed-0"
    checkpoint = run / "checkpoint.pt"
    before = checkpoint.read_bytes()
    for out, what in ((checkpoint, f"--out {checkpoint} is a file, not a directory"),
                      (checkpoint / "rep", f"--out {checkpoint / 'rep'} cannot be created: {checkpoint} is a file")):
        result = runner.invoke(app, ["report", str(run), "--out", str(out), "--device", "cpu"])
        assert result.exit_code == 2, result.output
        assert what in result.output and "pass --out with another path" in _fix(result.output)
        assert "output directory and data root" not in result.output and "Traceback" not in result.output
    assert checkpoint.read_bytes() == before


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs Linux's read-only /sys")
def test_report_unwritable_out_is_named(trained):
    result = runner.invoke(app, ["report", str(trained / "single" / "seed-0"), "--out", "/sys/jadekit-rep", "--device", "cpu"])
    assert result.exit_code == 2, result.output
    assert "--out /sys/jadekit-rep is not writable" in result.output and "pass --out with another path" in _fix(result.output)
    assert "output directory and data root" not in result.output and "Traceback" not in result.output


def test_torch_messages_are_cut_at_a_word(trained, tmp_path):
    """A truncated checkpoint: torch's long first line is cut at a sentence or word boundary, with an ellipsis."""
    run = tmp_path / "jade" / "seed-0"
    shutil.copytree(trained / "jade" / "seed-0", run)
    (run / "checkpoint.pt").write_bytes((trained / "jade" / "seed-0" / "checkpoint.pt").read_bytes()[:300])
    (run / "checkpoint.pt.prev").unlink(missing_ok=True)
    with pytest.raises(Exception) as torch_error:
        torch.load(run / "checkpoint.pt", weights_only=True)
    full = " ".join(str(torch_error.value).splitlines()[0].split())
    result = runner.invoke(app, ["eval", str(run)])
    assert result.exit_code == 2 and "unreadable" in result.output and "Traceback" not in result.output
    shown = result.output.split(f"{type(torch_error.value).__name__}: ", 1)[1].split("\n")[0]
    assert shown.endswith(")")
    shown = shown[:-1]
    assert len(full) > 200 and shown != full, full  # torch's message is long: this test is about cutting it
    kept = shown.removesuffix("…").rstrip()  # cut at a boundary of torch's text, marked with an ellipsis
    assert shown.endswith("…") and full.startswith(kept) and full[len(kept)] in " .;", shown


def test_brief_cuts_at_a_sentence_or_word():
    from jadekit.errors import brief

    assert brief("short", 300) == "short"
    assert brief("one\n  two", 300) == "one two"
    assert brief("\x1b[1mbold\x1b[0m text", 300) == "bold text"
    long = "First sentence here. " + "word " * 100
    assert brief(long, 60) == "First sentence here. word word word word word word word…"
    assert brief("A sentence that is long enough. More words follow it " * 3, 60) == "A sentence that is long enough …"
    assert len(brief("x" * 500, 100)) == 100


def test_directory_without_runs(tmp_path):
    result = runner.invoke(app, ["eval", str(tmp_path)])
    assert result.exit_code == 2 and "not a run directory" in result.output


def test_corrupt_checkpoint(trained, tmp_path):
    run = tmp_path / "jade" / "seed-0"
    shutil.copytree(trained / "jade" / "seed-0", run)
    (run / "checkpoint.pt").write_bytes(b"not a checkpoint")
    (run / "checkpoint.pt.prev").unlink(missing_ok=True)
    result = runner.invoke(app, ["eval", str(run)])
    assert result.exit_code == 2
    assert "checkpoint" in result.output and "unreadable" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("damage", [b"null", b"\xff", b'{"method": "sin', b'{"seed": 0}'])
def test_a_damaged_final_json_is_read_past(trained, tmp_path, damage):
    """The run is still scored: method and seed come from provenance.json, or from `<method>/seed-<n>`."""
    run = tmp_path / "paired" / "seed-0"
    shutil.copytree(trained / "paired" / "seed-0", run)
    expected = json.loads((run / "final.json").read_text())["primary_test_error"]
    (run / "final.json").write_bytes(damage)
    for provenance in (True, False):
        if not provenance:
            (run / "provenance.json").write_bytes(damage)
        scored = eval_json(str(run))
        assert scored["method"] == "paired" and scored["seed"] == 0
        assert scored["results"][0]["error"] == pytest.approx(expected)


def test_eval_says_when_the_test_files_are_not_those_the_run_was_trained_with(trained, tmp_path):
    run = tmp_path / "single" / "seed-0"
    shutil.copytree(trained / "single" / "seed-0", run)
    assert eval_json(str(run))["results"][0]["data"]["same_files_as_training"] is True
    provenance = json.loads((run / "provenance.json").read_text())
    for f in provenance["data_files"].values():  # as if the data had changed since training
        f["sha256"] = "0" * 64
    (run / "provenance.json").write_text(json.dumps(provenance))
    result = runner.invoke(app, ["eval", str(run), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "test files read under" in result.stderr and "not those the run was trained with" in result.stderr
    assert eval_json(str(run))["results"][0]["data"]["same_files_as_training"] is False


def test_recipe_edited_after_training(trained, tmp_path):
    run = tmp_path / "single" / "seed-0"
    shutil.copytree(trained / "single" / "seed-0", run)
    result = runner.invoke(app, ["eval", str(run), "--set", "model.classifier_hidden=[64]"])
    assert result.exit_code == 2 and "does not fit" in result.output
    assert "size mismatch" in result.output and "(32, " in result.output and "(64, " in result.output
    assert "model.classifier_hidden [32] in the checkpoint, [64] now" in result.output
    assert "another recipe or run directory" in result.output and "Traceback" not in result.output


def test_checkpoint_of_another_method_names_its_keys(trained, tmp_path):
    run = tmp_path / "single" / "seed-0"
    shutil.copytree(trained / "single" / "seed-0", run)
    for name in ("checkpoint.pt", "checkpoint.pt.prev"):
        shutil.copy(trained / "paired" / "seed-0" / name, run / name)
    result = runner.invoke(app, ["eval", str(run), "--device", "cpu"])
    assert result.exit_code == 2
    assert "unexpected key(s) (auxiliary_encoder." in result.output and "another recipe or run directory" in result.output


def copy_runs(trained: Path, to: Path) -> Path:
    """A copy of the trained output directory without its evaluations."""
    shutil.copytree(trained, to, ignore=shutil.ignore_patterns("eval-*"))
    return to


def make_unfinished(run: Path, steps: int = 400) -> None:
    """A run stopped early: its recipe asks for more steps than its checkpoint holds, and it has no final.json."""
    recipe = run / "recipe.toml"
    recipe.write_text(recipe.read_text().replace("\nsteps = 10\n", f"\nsteps = {steps}\n"))
    (run / "final.json").unlink()


def test_eval_records_the_weights_scored(trained):
    out = eval_json(str(trained / "jade" / "seed-0"))
    assert out["weights"] == {"step": 10, "selected": "best validated", "trained_steps": 10, "recipe_steps": 10,
                              "finished": True, "checkpoint_notes": []}
    assert json.loads(Path(out["written_to"]).read_text())["weights"]["step"] == 10


def test_unfinished_runs_are_left_out_of_table_1(trained, tmp_path):
    runs = copy_runs(trained, tmp_path / "runs")
    make_unfinished(runs / "jade" / "seed-0")
    result = runner.invoke(app, ["eval", str(runs), "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "warning: unfinished runs left out of Table 1: jade/seed-0 (step 10 of 400)" in result.stderr
    out = json.loads(result.stdout)
    assert [r["method"] for r in out["rows"]] == ["single", "paired"]
    assert out["unfinished"][0]["run_dir"] == str(runs / "jade" / "seed-0") and not out["unfinished"][0]["included"]
    assert "leaves out unfinished runs: jade/seed-0 (step 10 of 400)" in out["markdown"]
    assert not list((runs / "jade" / "seed-0").glob("eval-*"))

    out = eval_json(str(runs), "--include-unfinished")
    assert [r["method"] for r in out["rows"]] == ["single", "paired", "jade"]
    assert "includes unfinished runs: jade/seed-0 (step 10 of 400)" in out["markdown"]
    jade = next(r for r in out["records"] if r["method"] == "jade")
    assert jade["weights"]["finished"] is False and jade["weights"]["recipe_steps"] == 400


def test_run_without_checkpoint_is_left_out_and_all_unfinished_is_an_error(trained, tmp_path):
    runs = copy_runs(trained, tmp_path / "runs")
    for name in ("checkpoint.pt", "checkpoint.pt.prev"):
        (runs / "single" / "seed-0" / name).unlink()
    out = eval_json(str(runs), "--include-unfinished")
    assert [r["method"] for r in out["rows"]] == ["paired", "jade"]
    assert out["unfinished"] == [{"run_dir": str(runs / "single" / "seed-0"), "trained_steps": 0, "recipe_steps": 10,
                                  "included": False}]
    for method in ("paired", "jade"):
        make_unfinished(runs / method / "seed-0")
    result = runner.invoke(app, ["eval", str(runs), "--device", "cpu"])
    assert result.exit_code == 2 and "every run under" in result.output and "--include-unfinished" in result.output


def test_unfinished_single_run_is_scored_with_a_warning(trained, tmp_path):
    run = tmp_path / "jade" / "seed-0"
    shutil.copytree(trained / "jade" / "seed-0", run)
    make_unfinished(run)
    result = runner.invoke(app, ["eval", str(run), "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "jade/seed-0 is unfinished: weights of step 10 (best validated)" in result.stderr
    assert json.loads(result.stdout)["weights"]["finished"] is False


def test_held_out_records_say_what_data_was_used(trained, bar_data_root, tmp_path):
    runs = copy_runs(trained, tmp_path / "runs")
    root = str(bar_data_root)
    eval_json(str(runs / "single" / "seed-0"), "--dataset", "mnist", "--root", root, "--resize")  # eval-mnist-test.json
    out = eval_json(str(runs), "--dataset", "mnist", "--root", root, "--resize")
    names = [Path(p).name for p in out["written_to"]]
    assert names == ["eval-summary-mnist-test-2.md", "eval-summary-mnist-test-2.json"]
    assert [Path(r["written_to"]).name for r in out["records"]] == ["eval-mnist-test-2.json"] * 3
    assert out["run_files"] == [r["written_to"] for r in out["records"]]
    data = json.loads(Path(out["records"][0]["written_to"]).read_text())["results"][0]["data"]
    assert data["dataset"] == "mnist" and data["split"] == "test" and data["params"] == {}
    assert data["root"] == str(bar_data_root.resolve()) and data["resize"] == [16, 16]
    assert len(data["fingerprint"]) == 16 and data["n_files"] == 2
    assert out["data"] == [data]
    assert f"- data: mnist test split, params {{}}, root {data['root']}, resize 16x16, data fingerprint " in out["markdown"]


def usps_variant(change: Callable[[ImageSet], ImageSet]):
    """A dataset adapter that loads USPS and returns `change(split)`: patients added, a class taken out, ..."""
    usps = registry.datasets.load("usps")

    class Variant:
        Params = usps.Params

        def info(self, params):
            return usps.info(params)

        def load(self, root, split, params, download):
            return change(usps.load(root, split, params, download))

    return Variant()


def patients_of(group_of: Callable[[torch.Tensor], torch.Tensor]):
    """A dataset 'patients': USPS's images and labels, each image given a patient id `group_of(labels)`."""
    return usps_variant(lambda s: ImageSet(s.images, s.labels, s.class_names, s.files, group_of(s.labels)))


def test_split_all_scores_both_splits_and_files_read_in_training_are_flagged(trained, bar_data_root, tmp_path):
    run = copy_runs(trained, tmp_path / "runs") / "single" / "seed-0"
    usps = registry.datasets.load("usps")
    sizes = {s: len(usps.load(bar_data_root, s, NoParams(), False)) for s in ("train", "test")}
    both = eval_json(str(run), "--dataset", "usps", "--root", str(bar_data_root), "--split", "all")
    assert both["results"][0]["n"] == sizes["train"] + sizes["test"] and both["results"][0]["split"] == "all"
    assert Path(both["written_to"]).name == "eval-usps-all.json"
    data = both["results"][0]["data"]  # usps.bz2 (train) and usps.t.bz2 (test): the first is the run's train split's
    assert (data["files_read_in_training"], data["n_files"], data["same_files_as_training"]) == (1, 2, None)
    for split, warned in (("train", True), ("test", False)):  # its own test split again: held out, no warning
        shown = runner.invoke(app, ["eval", str(run), "--dataset", "usps", "--root", str(bar_data_root), "--split", split,
                                    "--device", "cpu"])
        said = " ".join(shown.stderr.split())
        assert shown.exit_code == 0, shown.output
        assert ("1 of the 1 usps files scored are files its train splits were read from" in said) == warned, said
    bad = runner.invoke(app, ["eval", str(run), "--dataset", "usps", "--root", str(bar_data_root), "--split", "every"])
    assert bad.exit_code == 2 and "--split all (both)" in " ".join(bad.output.split())


def test_data_missing_a_class_says_what_the_averages_mean(trained, bar_data_root, tmp_path, fake_datasets):
    """A cohort without any image of a class: balanced accuracy over the rest is not a perfect score in disguise."""
    def no_sevens(s: ImageSet) -> ImageSet:
        keep = s.labels != 7
        return ImageSet(s.images[keep], s.labels[keep], s.class_names, s.files, None)

    fake_datasets(**{"no-sevens": usps_variant(no_sevens)})
    run = copy_runs(trained, tmp_path / "runs") / "single" / "seed-0"
    result = runner.invoke(app, ["eval", str(run), "--dataset", "no-sevens", "--root", str(bar_data_root), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    said = " ".join(result.stderr.split())
    assert "class '7' has no image in this data: balanced accuracy averages the recall of the 9 class(es) present" in said
    assert eval_json(str(run))["results"][0]["notes"] == []  # the run's own test split has every class
    assert absent_class_notes(torch.tensor([0, 2]), ("a", "b", "c", "d"))[0].startswith("classes 'b', 'd' have no image")


@pytest.mark.parametrize("mixed", [False, True])
def test_data_with_patients_is_also_scored_one_prediction_per_patient(trained, bar_data_root, tmp_path, fake_datasets,
                                                                      mixed):
    """A dataset with groups (patients) gets `per_group` metrics: one prediction per patient from the mean probability
    of its images, in each record and as a table in the summary; patients whose images differ in class have none."""
    def three_per_class(y):
        return torch.arange(len(y)) % 3 if mixed else y * 10 + torch.arange(len(y)) % 3

    fake_datasets(patients=patients_of(three_per_class))
    runs = copy_runs(trained, tmp_path / "runs")
    out = eval_json(str(runs), "--dataset", "patients", "--root", str(bar_data_root))
    run = next(r for r in out["records"] if r["method"] == "jade")["run_dir"]
    group = json.loads(Path(eval_json(run, "--dataset", "patients", "--root", str(bar_data_root))["written_to"])
                       .read_text())["results"][0]["per_group"]
    if mixed:
        assert group == {"n_groups": 3, "undefined": "3 of 3 groups hold images of more than one class, so a group "
                                                     "has no single label"}
        assert "Per group" not in out["markdown"] and "per group" not in " ".join(out["metrics"]["jade"])
        assert "- no per-group scores for jade (primary): 3 of 3 groups hold images" in out["markdown"]
        shown = runner.invoke(app, ["eval", run, "--dataset", "patients", "--root", str(bar_data_root), "--device", "cpu"])
        assert "per group (3)" in shown.output and "undefined: 3 of 3 groups hold images of more" in shown.output
        return
    labels = registry.datasets.load("usps").load(bar_data_root, "test", NoParams(), False).labels
    assert group["n_groups"] == len(torch.unique(three_per_class(labels)))
    rows = list(csv.DictReader(open(eval_json(run, "--dataset", "patients", "--root", str(bar_data_root))
                                    ["predictions_written_to"])))
    names = registry.datasets.load("usps").info(NoParams()).class_names
    by_patient: dict[str, list] = {}
    for r in rows:  # one prediction per patient, from its images' mean probability: recomputed from the CSV
        by_patient.setdefault(r["group"], []).append(r)
    wrong = 0
    for images in by_patient.values():
        mean = [sum(float(r[f"p_{n}"]) for r in images) / len(images) for n in names]
        wrong += names[max(range(len(names)), key=mean.__getitem__)] != images[0]["label"]
    assert 100 * wrong / len(by_patient) == pytest.approx(group["error"])
    assert sum(map(sum, group["confusion_matrix"])) == group["n_groups"] == group["n"]
    assert out["metrics"]["jade"]["primary per group"]["error"]["n"] == 1
    table = out["markdown"].split("Per group of images")[1]
    assert f"| jade | primary | {group['n_groups']} |" in table
    assert table.index("| single |") < table.index("| paired |") < table.index("| jade |")  # Table 1's order
    shown = runner.invoke(app, ["eval", run, "--dataset", "patients", "--root", str(bar_data_root), "--device", "cpu"])
    assert f"per group ({group['n_groups']}): error (%)" in shown.output
    per_group_matrix = shown.output.split(f"confusion matrix per group ({group['n_groups']} groups")[1]
    counts = [int(v) for line in per_group_matrix.splitlines() for v in line.replace("│", " ").split()[1:-1]
              if v.isdigit() and line.strip().startswith("│")]  # each row's cells between the class name and "acc"
    assert sum(counts) == group["n_groups"]
    lines = runner.invoke(app, ["eval", str(runs), "--dataset", "patients", "--root", str(bar_data_root),
                                "--device", "cpu"]).output
    jade_line = " ".join(lines.split("jade seed 0 patients (primary): ")[1].split("weights of step")[0].split())
    jade = next(r for r in out["records"] if r["method"] == "jade")["results"][0]
    assert f"balanced accuracy {jade['balanced_accuracy']:.3f}" in jade_line
    assert f"per group error {group['error']:.2f}%" in jade_line


def test_nothing_is_written_when_one_run_fails(trained, tmp_path):
    runs = copy_runs(trained, tmp_path / "runs")
    for name in ("checkpoint.pt", "checkpoint.pt.prev"):  # single/seed-0 is evaluated last
        shutil.copy(runs / "paired" / "seed-0" / name, runs / "single" / "seed-0" / name)
    result = runner.invoke(app, ["eval", str(runs), "--device", "cpu"])
    assert result.exit_code == 2 and "does not fit" in result.output
    assert not list(runs.rglob("eval-*"))


def test_bad_split_and_device_say_how_to_fix_them(trained, monkeypatch):
    run = str(trained / "single" / "seed-0")
    result = runner.invoke(app, ["eval", run, "--dataset", "mnist", "--split", "val"])
    assert result.exit_code == 2 and "fix: use --split test" in result.output and "indices.json" in result.output
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    result = runner.invoke(app, ["eval", run, "--device", "cuda"])
    assert result.exit_code == 2 and "--device 'cuda': CUDA is not available" in result.output
    assert "fix: use --device auto" in result.output and "train.device" not in result.output
    for name in ("gpu", "auto:0", "cuda:\u00b2"):  # the names train.device takes, checked by the same rule
        result = runner.invoke(app, ["eval", run, "--device", name])
        assert result.exit_code == 2 and f"--device {name!r}: unknown device" in result.output
        assert "fix: use --device auto, cpu, cuda, cuda:N or mps." in result.output and "Traceback" not in result.output
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 2)
    result = runner.invoke(app, ["eval", run, "--device", "cuda:2"])
    assert result.exit_code == 2 and "--device 'cuda:2': this machine has 2 CUDA device(s), cuda:0 to cuda:1" in result.output
    assert "fix: use --device cuda (the first) or --device cuda:N with N below 2." in result.output


def test_dataset_params_are_validated_by_the_adapter(trained):
    result = runner.invoke(app, ["eval", str(trained / "single" / "seed-0"), "--dataset", "mnist", "--param", "colour=1"])
    assert result.exit_code == 2 and "--param colour: unknown parameter" in result.output
    assert "fix: it takes no parameters: leave --param out." in result.output  # mnist has none


def test_options_of_dataset_need_dataset(trained):
    result = runner.invoke(app, ["eval", str(trained / "single" / "seed-0"), "--resize"])
    assert result.exit_code == 2 and "apply to --dataset only" in result.output


def test_a_run_with_a_relative_data_root_is_evaluated_from_anywhere(write_tiny_recipe, bar_data_root, tmp_path,
                                                                    monkeypatch):
    shutil.copytree(bar_data_root, tmp_path / "project" / "data")
    recipe = write_tiny_recipe(tmp_path / "project" / "tiny.toml", "runs", bar_data_root,
                               experiment={"methods": ["single"]}, primary={"root": "data"}, auxiliary={"root": "data"},
                               model={"classifier_hidden": [32], "dropout": None}, train={"steps": 4, "batch_size": 16})
    monkeypatch.chdir(tmp_path / "project")
    trained = runner.invoke(app, ["run", str(recipe)])
    assert trained.exit_code == 0, trained.output
    run = tmp_path / "project" / "runs" / "single" / "seed-0"
    provenance = json.loads((run / "provenance.json").read_text())
    assert provenance["threads"] >= 1 and "jadekit_commit" in provenance["versions"]
    monkeypatch.chdir(tmp_path)  # elsewhere: the run's recipe.toml holds the data root as an absolute path
    result = eval_json(str(run))
    final = json.loads((run / "final.json").read_text())
    assert result["results"][0]["error"] == pytest.approx(final["primary_test_error"])


def test_weights_kept_by_select_last_are_labelled_so(write_tiny_recipe, bar_data_root, tmp_path):
    recipe = write_tiny_recipe(tmp_path / "tiny.toml", tmp_path / "runs", bar_data_root,
                               experiment={"methods": ["single"]}, model={"classifier_hidden": [32], "dropout": None},
                               train={"steps": 4, "batch_size": 16, "eval_every": 2, "select": "last"})
    assert runner.invoke(app, ["run", str(recipe)]).exit_code == 0
    weights = eval_json(str(tmp_path / "runs" / "single" / "seed-0"))["weights"]
    assert weights["selected"] == "last validated" and weights["step"] == 4


def test_a_run_whose_data_root_came_from_the_environment_is_evaluated_on_that_data(write_tiny_recipe, bar_data_root,
                                                                                    tmp_path, monkeypatch):
    """No `root` in the recipe: the run records the root $JADEKIT_DATA gave it, so `eval` reads the same files later,
    wherever $JADEKIT_DATA points then (and never looks for, or downloads, another copy)."""
    recipe = write_tiny_recipe(tmp_path / "tiny.toml", tmp_path / "runs", bar_data_root,
                               experiment={"methods": ["single"]}, primary={"root": None, "download": True},
                               auxiliary={"root": None, "download": True},
                               model={"classifier_hidden": [32], "dropout": None}, train={"steps": 4, "batch_size": 16})
    monkeypatch.setenv("JADEKIT_DATA", str(bar_data_root))
    trained = runner.invoke(app, ["run", str(recipe)])
    assert trained.exit_code == 0, trained.output
    run = tmp_path / "runs" / "single" / "seed-0"
    recorded = tomllib.loads((run / "recipe.toml").read_text())
    assert recorded["primary"]["root"] == recorded["auxiliary"]["root"] == str(bar_data_root.resolve())

    monkeypatch.setenv("JADEKIT_DATA", str(tmp_path / "nothing-here"))
    result = eval_json(str(run))
    final = json.loads((run / "final.json").read_text())
    assert result["results"][0]["error"] == pytest.approx(final["primary_test_error"])
    assert not (tmp_path / "nothing-here").exists()

    shutil.copytree(bar_data_root, tmp_path / "copy")  # the same data elsewhere: the same recipe, no note
    monkeypatch.setenv("JADEKIT_DATA", str(tmp_path / "copy"))
    same = runner.invoke(app, ["run", str(recipe)])
    assert same.exit_code == 0 and "finished earlier, skipped" in same.output and "another recipe" not in same.output
    monkeypatch.setenv("JADEKIT_DATA", str(bar_data_root))
    for domain in ("primary", "auxiliary"):  # as jadekit 0.4 wrote it: no root recorded; still the same run
        del recorded[domain]["root"]
    (run / "recipe.toml").write_text(tomli_w.dumps(recorded))
    again = runner.invoke(app, ["run", str(recipe)])
    assert again.exit_code == 0 and "finished earlier, skipped" in again.output, again.output
    assert "another recipe" not in again.output


def test_the_dataset_a_run_trained_on_starts_from_the_runs_own_root_and_params(trained, bar_data_root, tmp_path,
                                                                               monkeypatch, fake_datasets):
    """`--dataset` naming the dataset the encoder was trained on (say, another variant of it: `--param noise=80`) reads
    from the run's data root and starts from the recipe's params; another dataset starts from its own defaults."""
    from jadekit.evaluation import external_set, load_run

    monkeypatch.setenv("JADEKIT_DATA", str(tmp_path / "nothing-here"))
    run = trained / "single" / "seed-0"
    record = eval_json(str(run), "--dataset", "usps")["results"][0]  # no --root: the run's own, not $JADEKIT_DATA
    assert record["data"]["root"] == str(bar_data_root.resolve()) and record["n"] == 40

    usps = registry.datasets.load("usps")

    class Shift(BaseModel):
        shift: int = 0
        other: int = 0

    class Variants:  # usps with a parameter, as a plugin's dataset has
        Params = Shift

        def info(self, params):
            return usps.info(usps.Params())

        def load(self, root, split, params, download):
            return usps.load(root, split, usps.Params(), download)

    fake_datasets(usps=Variants(), variants=Variants())
    loaded = load_run(run, overrides=["primary.params.shift=3", "primary.params.other=1"])
    assert external_set(loaded, "usps").params == Shift(shift=3, other=1)
    assert external_set(loaded, "usps", params=["shift=5"]).params == Shift(shift=5, other=1)
    assert external_set(loaded, "variants", root=bar_data_root).params == Shift()
    with pytest.raises(DataError, match="not found") as err:
        external_set(loaded, "variants")  # another dataset: $JADEKIT_DATA, where nothing is
    assert err.value.hint.startswith("pass --root DIR") and "recipe" not in err.value.hint
