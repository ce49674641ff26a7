"""`jadekit eval` and `jadekit report`: score trained runs on held-out data and show what they learned."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.markup import escape
from rich.table import Table

RunArg = Annotated[Path, typer.Argument(help="A run directory (<output_dir>/<method>/seed-<n>), or an output directory.")]
OneRunArg = Annotated[Path, typer.Argument(help="A run directory (<output_dir>/<method>/seed-<n>).")]
DeviceOpt = Annotated[str, typer.Option(help="auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:N or mps.")]


def register(app: typer.Typer) -> None:
    app.command("eval")(evaluate)
    app.command("report")(report)


def _num(v: float | None, digits: int = 4) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _print_result(r: dict, title: str) -> None:
    from jadekit.cli import out

    t = Table("metric", "value", title=f"{title}: {r['dataset']} {r['split']} ({r['domain']} encoder, n = {r['n']})")
    t.add_row("error (%)", _num(r["error"], 2))
    for k in ("accuracy", "balanced_accuracy", "macro_f1", "auroc", "ece", "nll"):
        t.add_row(k, _num(r[k]))
    for k, v in (r.get("elbo") or {}).items():
        t.add_row(f"elbo.{k}", _num(v, 3))
    group = r.get("per_group")
    if group and "error" in group:
        t.add_row(f"per group ({group['n_groups']}): error (%)", _num(group["error"], 2))
        for k in ("balanced_accuracy", "auroc"):
            t.add_row(f"per group: {k}", _num(group[k]))
    elif group:
        t.add_row(f"per group ({group['n_groups']})", f"undefined: {group['undefined']}")
    out.print(t)
    out.print(_confusion_table(r, "confusion matrix (rows: true class)"))
    if group and "confusion_matrix" in group:  # patients, say: what a clinician counts
        out.print(_confusion_table({**group, "class_names": r["class_names"]},
                                   f"confusion matrix per group ({group['n_groups']} groups, one prediction each)"))


def _confusion_table(r: dict, title: str) -> Table:
    names = r["class_names"]
    cm = Table("true \\ pred", *names, "acc", title=title)
    for name, row in zip(names, r["confusion_matrix"], strict=True):
        cm.add_row(name, *(str(v) for v in row), _num(r["per_class_accuracy"][name], 3))
    return cm


def _warn(message: str) -> None:
    from jadekit.cli import err

    err.print(f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)


def _weights_line(w: dict) -> str:
    from jadekit.evaluation import trained_steps

    done = "" if w["finished"] else f"; unfinished: {trained_steps(w)}"
    return f"weights of step {w['step']} ({w['selected']}){done}"


def evaluate(
    run_dir: RunArg,
    dataset: Annotated[str | None, typer.Option(help="Evaluate on this registered dataset instead of the run's test splits.")] = None,
    root: Annotated[Path | None, typer.Option(
        help="Data root of --dataset; else the run's own when it names the dataset the run trained on, "
             "else $JADEKIT_DATA, else ~/.cache/jadekit.")] = None,
    split: Annotated[str, typer.Option(help="Split of --dataset: train, test, or all (both: e.g. a whole cohort from "
                                            "another hospital).")] = "test",
    domain: Annotated[str, typer.Option(help="Encoder --dataset goes through: primary or auxiliary.")] = "primary",
    resize: Annotated[bool, typer.Option("--resize", help="Resize --dataset images to the encoder's input size.")] = False,
    param: Annotated[list[str] | None, typer.Option(
        "--param", help="Parameter of --dataset, e.g. path=scans (repeatable; over the recipe's params when it names "
                        "the dataset the run trained on).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a value of the run's recipe (repeatable).")] = None,
    include_unfinished: Annotated[bool, typer.Option(
        "--include-unfinished", help="Aggregate unfinished runs of an output directory too (left out by default).")] = False,
    device: DeviceOpt = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Evaluate a trained run (or every run of an output directory, aggregated into Table 1)."""
    from jadekit.cli import out, user_errors
    from jadekit.errors import JadekitError
    from jadekit.evaluation import describe_data, evaluate_path, progress_note, run_label, safe_json
    from jadekit.runner import pick_device

    with user_errors():
        if split not in ("train", "test", "all"):
            raise JadekitError(f"--split {split!r}: datasets have a train and a test split",
                               hint="use --split test (held-out images), --split train, or --split all (both); a run's "
                                    "validation images are drawn from its train split (their indices are in the run's "
                                    "indices.json).")
        if domain not in ("primary", "auxiliary"):
            raise JadekitError(f"--domain {domain!r}: expected primary or auxiliary", hint="use --domain primary or "
                               "--domain auxiliary (the auxiliary encoder exists in paired and jade runs only).")
        if dataset is None and (root is not None or resize or split != "test" or param):
            raise JadekitError("--root, --resize, --split and --param apply to --dataset only",
                               hint="add --dataset NAME, or use --set primary.root=... for the run's own data.")
        s: Literal["train", "test", "all"] = split  # type: ignore[assignment]
        result = evaluate_path(run_dir, dataset=dataset, root=root, split=s, domain=domain, resize=resize, overrides=set_,
                               params=param, device=pick_device(device, "--device"), include_unfinished=include_unfinished)
    records = result["records"] if result["kind"] == "summary" else [result]
    for rec in records:
        if not rec["weights"]["finished"] and result["kind"] == "run":
            _warn(f"{run_label(rec['run_dir'])} is unfinished: {_weights_line(rec['weights'])}")
        for note in rec["weights"]["checkpoint_notes"]:
            _warn(f"{run_label(rec['run_dir'])}: {note}")
        for r in rec["results"]:
            for note in r["notes"]:
                _warn(f"{run_label(rec['run_dir'])}, {r['dataset']} {r['split']}: {note}")
            if r["data"]["files_read_in_training"]:
                _warn(f"{run_label(rec['run_dir'])}: {r['data']['files_read_in_training']} of the {r['data']['n_files']} "
                      f"{r['dataset']} files scored are files its train splits were read from (provenance.json): "
                      "where they hold images it trained or validated on, these are not held-out scores")
            if r["data"]["same_files_as_training"] is False:
                _warn(f"{run_label(rec['run_dir'])}: the {r['dataset']} test files read under {r['data']['root']} are "
                      "not those the run was trained with (provenance.json): its scores here are not its final.json's")
    if result["kind"] == "summary" and result["unfinished"]:
        what = "included in" if include_unfinished else "left out of"
        _warn(f"unfinished runs {what} Table 1: {', '.join(progress_note(w) for w in result['unfinished'])}"
              + ("" if include_unfinished else " (pass --include-unfinished to aggregate them)"))
    if as_json:
        print(json.dumps(safe_json(result), indent=2))
        return
    if result["kind"] == "run":
        for r in result["results"]:
            _print_result(r, f"{result['method']} seed {result['seed']}")
            out.print(f"data: {describe_data(r['data'])}", highlight=False, soft_wrap=True)
        out.print(f"{_weights_line(result['weights'])}; written to {result['written_to']}", highlight=False)
        return
    for rec in records:
        for r in rec["results"]:
            group = r.get("per_group", {})
            per_group = f"per group error {_num(group['error'], 2)}%, " if "error" in group else ""
            out.print(f"{rec['method']} seed {rec['seed']} {r['dataset']} ({r['domain']}): error {_num(r['error'], 2)}%, "
                      f"balanced accuracy {_num(r['balanced_accuracy'], 3)}, macro-F1 {_num(r['macro_f1'], 3)}, "
                      f"AUROC {_num(r['auroc'], 3)}, ECE {_num(r['ece'], 3)}, {per_group}{_weights_line(rec['weights'])}",
                      highlight=False)
    out.print(result["markdown"], highlight=False, markup=False, soft_wrap=True)
    out.print(f"written to {', '.join(result['written_to'])} and each run's {Path(records[0]['written_to']).name}",
              highlight=False)


def report(
    run_dir: OneRunArg,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Where to write the report; default RUN_DIR/report.")] = None,
    samples: Annotated[int, typer.Option(min=20, help="Test images per dataset used for latents, probes and PCA.")] = 1000,
    device: DeviceOpt = "auto",
) -> None:
    """Write a report (Markdown + PNGs + one self-contained HTML) of what a run learned."""
    from jadekit.cli import out, user_errors
    from jadekit.evaluation import run_label
    from jadekit.io import output_dir_error, refuse_file_as_output_dir, touches
    from jadekit.report import build_report
    from jadekit.runner import pick_device

    target, option = (out_dir, "--out") if out_dir is not None else (run_dir / "report", "the report directory")
    hint = ("pass --out with another path: a directory you can write to" if out_dir is not None else
            "pass --out with a directory you can write to") + " (the report's files go into it)."
    with user_errors():
        if out_dir is not None:  # a file in the way: said before the run is loaded and scored
            refuse_file_as_output_dir(out_dir, option, hint)
        try:
            rep = build_report(run_dir, out_dir, device=pick_device(device, "--device"), max_samples=samples)
        except OSError as e:
            if not touches(e, target):
                raise
            raise output_dir_error(target, option, hint, e) from None
    if not rep.weights["finished"]:
        _warn(f"{run_label(run_dir)} is unfinished: {_weights_line(rep.weights)}")
    for name, p in rep.probes.items():
        out.print(f"probe {name}: {p['accuracy']:.3f} (chance {p['chance']:.3f})", highlight=False)
    out.print(f"{len(rep.figures)} figures; written to {rep.html} and {rep.markdown}", highlight=False)
