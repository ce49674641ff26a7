"""Run directories → evaluations: reload a trained model, score it on held-out data, aggregate seeds."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ValidationError
from torch import nn

from jadekit import registry
from jadekit.build import DOMAINS, Resolved, resolve
from jadekit.config import (
    METHODS,
    DataConfig,
    Method,
    apply_overrides,
    changed_keys,
    format_validation_error,
    load_recipe,
    parameters_hint,
    recipe_to_dict,
)
from jadekit.data.base import ImageSet, Split
from jadekit.data.prepare import fingerprint, load_split
from jadekit.engine.evaluate import predict_logits, to_float
from jadekit.errors import DataError, MissingFilesError, RecipeError, RunDirError, brief, first_line, plugin_failure
from jadekit.io import atomic_write_json, atomic_write_text, load_checkpoint, read_json_object
from jadekit.metrics import classification_report, group_report
from jadekit.summary import fmt, mean_std, method_order, seed_differences, summarize, to_markdown
from jadekit.trainer import CHECKPOINT, build_checked_model, has_checkpoint, plugin_code_failures

EvalSplit = Literal["train", "test", "all"]  # "all": both splits of a --dataset, e.g. a whole outside cohort
RECIPE_FILE = "recipe.toml"
OWN = "recipe"  # dataset label of an evaluation on the recipe's own test splits


@dataclass(frozen=True)
class LoadedRun:
    """A trained model rebuilt from its run directory (the weights `train.select` kept, eval mode).

    Attributes:
        weights: which weights were loaded: `step` (of those weights), `selected` ("best validated", "last validated"
            with `train.select = "last"`, or "last" when nothing was validated),
            `trained_steps` (the checkpoint's step), `recipe_steps`, `finished` and `checkpoint_notes`
            (problems met loading the checkpoint, e.g. a fallback to `checkpoint.pt.prev`).
    """

    run_dir: Path
    method: Method
    seed: int | None
    resolved: Resolved
    model: nn.Module
    device: torch.device
    weights: dict


def _run_identity(run_dir: Path) -> tuple[str | None, int | None]:
    """Method and seed from final.json / provenance.json, else from `<method>/seed-<n>`."""
    for name in ("final.json", "provenance.json"):  # a damaged one is skipped
        d = read_json_object(run_dir / name)
        if d.get("method") is not None:
            return d["method"], d.get("seed")
    seed = run_dir.name.removeprefix("seed-")
    return run_dir.parent.name, int(seed) if seed.isdigit() else None


def is_run_dir(path: Path) -> bool:
    return (Path(path) / RECIPE_FILE).is_file()


def find_runs(path: Path) -> list[Path]:
    """Run directories under an output directory (`<out>/<method>/seed-<n>/`), sorted."""
    return sorted(p.parent for p in Path(path).glob(f"*/seed-*/{RECIPE_FILE}"))


def load_run(run_dir: Path, overrides: list[str] | None = None, device: torch.device | str = "cpu") -> LoadedRun:
    """Rebuild a run's model from recipe.toml and load its best weights from the checkpoint.

    Raises:
        RunDirError: the directory, its recipe or its checkpoint is missing or unusable.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        recipe = " (a recipe: `jadekit run` trains it)" if run_dir.suffix == ".toml" else ""
        raise RunDirError(f"{run_dir} is a file{recipe}, not a run or output directory",
                          hint="pass a run directory (`<output_dir>/<method>/seed-<n>`) or an output directory (the "
                               f"recipe's experiment.output_dir{_output_dir_of(run_dir)}): `jadekit eval` takes either, "
                               "`jadekit report` a run directory.")
    if not run_dir.is_dir():
        raise RunDirError(f"no such run directory: {run_dir}", hint="pass a `<output_dir>/<method>/seed-<n>` directory.")
    if not is_run_dir(run_dir):
        runs = find_runs(run_dir)
        raise RunDirError(f"{run_dir} is not a run directory (no {RECIPE_FILE})"
                          + (f" but an output directory of {len(runs)} runs" if runs else ""),
                          hint=f"pass one of its runs, e.g. {runs[0]}." if runs else
                          "pass a `<output_dir>/<method>/seed-<n>` directory (`jadekit eval` also takes an output directory).")
    resolved = resolve(load_recipe(run_dir / RECIPE_FILE, overrides), source=str(run_dir / RECIPE_FILE))
    method, seed = _run_identity(run_dir)
    if method not in METHODS:
        raise RunDirError(f"cannot tell which method {run_dir} trained (got {method!r})",
                          hint="keep the `<method>/seed-<n>` layout or the run's final.json.")
    state, notes = load_checkpoint(run_dir / CHECKPOINT)
    model = build_checked_model(method, resolved)
    loop = state.get("loop") or {}
    weights = loop.get("best_model") or state.get("model")
    try:
        problem = state_mismatch(model, weights)
        if problem is None:
            model.load_state_dict(weights)
    except (RuntimeError, TypeError, AttributeError) as e:
        problem = brief(first_line(e, 100_000), 300)
    if problem is not None:
        raise RunDirError(f"checkpoint of {run_dir} does not fit its recipe's {method} model: {problem}",
                          hint=mismatch_hint(state.get("recipe"), recipe_to_dict(resolved.recipe))) from None
    steps, trained, best = resolved.recipe.train.steps, loop.get("step"), loop.get("best_model") is not None
    kept = "last validated" if resolved.recipe.train.select == "last" else "best validated"
    info = {"step": loop.get("best_step") if best else trained, "selected": kept if best else "last",
            "trained_steps": trained, "recipe_steps": steps, "finished": isinstance(trained, int) and trained >= steps,
            "checkpoint_notes": notes}
    device = torch.device(device)
    return LoadedRun(run_dir, method, seed, resolved, model.to(device).eval(), device, info)


def _output_dir_of(recipe: Path) -> str:
    """`, here <dir>` when `recipe` is a readable recipe whose output directory holds runs (else "")."""
    try:
        out = Path(load_recipe(recipe).experiment.output_dir)
    except Exception:  # not a recipe, or a broken one: the hint then names the key only
        return ""
    return f", here {out}" if find_runs(out) else ""


def _first(keys: list[str], n: int = 2) -> str:
    return ", ".join(keys[:n]) + (", ..." if len(keys) > n else "")


def state_mismatch(model: nn.Module, weights: object) -> str | None:
    """Why `weights` cannot load into `model` (missing/unexpected keys, the first size mismatch), or None."""
    if not isinstance(weights, dict):
        return f"it holds no model weights (found {type(weights).__name__})"
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    sizes = [f"{k} is {tuple(weights[k].shape)} in the checkpoint, {tuple(v.shape)} in the model" for k, v in own.items()
             if k in weights and tuple(getattr(weights[k], "shape", ())) != tuple(v.shape)]
    parts = [f"{len(keys)} {what} key(s) ({_first(keys)})" for what, keys in (("missing", missing), ("unexpected", unexpected))
             if keys]
    if sizes:
        parts.append(f"{len(sizes)} size mismatch(es), first: {sizes[0]}")
    return "; ".join(parts) or None


def mismatch_hint(trained: object, now: dict) -> str:
    """The fix for weights that do not fit: name the model/data settings the checkpoint's own recipe differs in."""
    causes = ("the checkpoint comes from another recipe or run directory, or recipe.toml was edited (or overridden "
              "with --set) after training")
    fix = "put the run's own recipe.toml and checkpoint.pt together, or train again."
    if not isinstance(trained, dict):
        return f"{causes}; {fix}"
    changes = [c for c in changed_keys(trained, now)
               if c[0].split(".")[0] in ("model", *DOMAINS) and not c[0].endswith((".root", ".download"))]
    if not changes:
        return f"{causes} (provenance.json names the jadekit and plugin versions that trained it); {fix}"
    shown = ", ".join(f"{k} {json.dumps(a, default=str)} in the checkpoint, {json.dumps(b, default=str)} now"
                      for k, a, b in changes[:2])
    return f"{causes}: {shown}{' and more' if len(changes) > 2 else ''}; {fix}"


@dataclass(frozen=True)
class EvalSet:
    """Held-out images, the encoder (domain) they go through, and where they came from."""

    dataset: str
    split: str
    domain: str
    data: ImageSet
    params: BaseModel
    cfg: DataConfig
    own: bool = False  # the run's own test split (else a --dataset)
    parts: tuple[tuple[str, int], ...] = ()  # --split all: (split, images) in the order joined


def own_test_sets(run: LoadedRun) -> list[EvalSet]:
    """The recipe's test splits, one per domain the model has an encoder for."""
    domains = DOMAINS if run.model.uses_auxiliary else ("primary",)
    sets = []
    for d in domains:
        spec, cfg = getattr(run.resolved, d), getattr(run.resolved.recipe, d)
        data = load_split(spec.name, spec.adapter, spec.params, cfg, "test", spec.info.image_shape, spec.info.class_names)
        sets.append(EvalSet(spec.name, "test", d, data, spec.params, cfg, own=True))
    return sets


def dataset_params(adapter, items: list[str] | None, base: dict | None = None) -> BaseModel:
    """Validate `key=value` items (TOML values, dotted keys nest), over `base`, against an adapter's own params model."""
    raw = apply_overrides(base or {}, items or [], option="--param")
    try:
        return adapter.Params.model_validate(raw)
    except ValidationError as e:
        raise RecipeError(format_validation_error(e, prefix="--param"), hint=parameters_hint(adapter.Params, "--param")) from None


def external_set(run: LoadedRun, name: str, root: Path | None = None, split: EvalSplit = "test", domain: str = "primary",
                 resize: bool = False, params: list[str] | None = None) -> EvalSet:
    """A split of any registered dataset, checked against the trained encoder of `domain`. The dataset the run trained
    that encoder on starts from the run's own params and data root (`params` and `root` override them).

    Raises:
        DataError: its classes differ from the run's, or its image shape does not fit the encoder
            (spatial size is only adapted when `resize` is set; channels never are).
    """
    if domain not in DOMAINS or (domain == "auxiliary" and not run.model.uses_auxiliary):
        raise DataError(f"the {run.method} model has no {domain} encoder", hint="use --domain primary.")
    adapter = registry.datasets.load(name)
    trained_on = getattr(run.resolved.recipe, domain)
    own = name == trained_on.dataset
    p = dataset_params(adapter, params, trained_on.params if own else None)
    if root is None and own:
        root = trained_on.root
    try:
        info = adapter.info(p)
    except Exception as e:  # a plugin bug must not surface as a traceback
        raise DataError(f"dataset '{name}' failed to describe itself: {plugin_failure(e, adapter)}") from e
    if info.class_names != run.resolved.class_names:
        raise DataError(f"dataset '{name}' has classes {list(info.class_names)}, but the run was trained on "
                        f"{list(run.resolved.class_names)}; classes must match in number and order",
                        hint=f"evaluate on a dataset with the classes {list(run.resolved.class_names)} in this order "
                             f"(if '{name}' has a parameter that picks or orders its classes, set it with --param), or "
                             f"evaluate a run trained on '{name}'s classes.")
    want = getattr(run.resolved, domain).info.image_shape
    have = info.image_shape
    if have[0] != want[0]:
        converts = "channels" in getattr(adapter.Params, "model_fields", {})
        raise DataError(f"dataset '{name}' has {have[0]}-channel images {have}, but the {domain} encoder takes {want}; "
                        "channels cannot be adapted",
                        hint=f"pass --param channels={want[0]} to have '{name}' convert its images." if converts else
                        f"evaluate on {want[0]}-channel data, or evaluate a run trained on {have[0]}-channel images.")
    if have != want and not resize:
        raise DataError(f"dataset '{name}' has images of shape {have}, but the {domain} encoder was trained on {want}",
                        hint=f"pass --resize to resize them to {want[1]}x{want[2]} (bilinear, antialiased).")
    cfg = DataConfig(dataset=name, root=root, download=False, resize=want[1:] if have != want else None)
    try:
        splits: tuple[Split, ...] = ("train", "test") if split == "all" else (split,)
        loaded = [load_split(name, adapter, p, cfg, s, want, info.class_names) for s in splits]
        data = joined(loaded)
    except DataError as e:  # the recipe's fixes (a `root`, `download = true`) are not eval's
        where = (f"`jadekit eval` reads --dataset from --root (here {cfg.data_root()}) and never downloads; "
                 f"`jadekit plugins check {name} --root DIR --download` fetches what a dataset can download.")
        if isinstance(e, MissingFilesError):
            raise DataError(e.message, hint=f"pass --root DIR, the folder that holds them: {where}") from e
        recipe_fix = not e.hint or any(w in e.hint for w in ("download", "root"))  # a plugin's own "files missing"
        raise DataError(e.message, hint=(f"{e.hint} (if files are missing: {where})" if e.hint else where)
                        if recipe_fix else e.hint) from e
    return EvalSet(name, split, domain, data, p, cfg, parts=tuple((s, len(d)) for s, d in zip(splits, loaded, strict=True)))


def joined(sets: list[ImageSet]) -> ImageSet:
    """Splits of one dataset as one set (their group ids are disjoint by the adapter contract)."""
    if len(sets) == 1:
        return sets[0]
    groups = None if any(s.groups is None for s in sets) else torch.cat([s.groups for s in sets])
    return ImageSet(torch.cat([s.images for s in sets]), torch.cat([s.labels for s in sets]), sets[0].class_names,
                    tuple(f for s in sets for f in s.files), groups)


def data_record(s: EvalSet, trained_on: set[str] | None = None) -> dict:
    """What was evaluated: dataset, split, its params, data root, resize and the fingerprint of the files read; with
    `trained_on` (the SHA-256 of every data file the run's provenance.json lists), `same_files_as_training`: whether
    each file read is one of them (None when unknown)."""
    files = fingerprint(tuple(dict.fromkeys(s.data.files)))
    digest = hashlib.sha256("".join(sorted(f["sha256"] for f in files.values())).encode()).hexdigest()[:16]
    seen = None if trained_on is None or not files else sum(f["sha256"] in trained_on for f in files.values())
    return {"dataset": s.dataset, "split": s.split, "params": s.params.model_dump(mode="json"),
            "root": str(s.cfg.data_root().resolve()), "resize": list(s.cfg.resize) if s.cfg.resize else None,
            "fingerprint": digest if files else None, "n_files": len(files),  # not per file: one hash per image is large
            "same_files_as_training": (seen == len(files)) if s.own and seen is not None else None,
            "files_read_in_training": None if s.own else seen}


def trained_files(run_dir: Path) -> set[str] | None:
    """The SHA-256 of each data file a run's provenance.json says it read, test splits included (None when it
    records none)."""
    files = read_json_object(Path(run_dir) / "provenance.json").get("data_files")
    if not isinstance(files, dict):
        return None
    return {f["sha256"] for f in files.values() if isinstance(f, dict) and isinstance(f.get("sha256"), str)} or None


def train_split_files(run_dir: Path) -> set[str] | None:
    """The SHA-256 of each file a run's train splits were read from (provenance.json's `train_files`, written since
    jadekit 0.4.1; None for older runs)."""
    files = read_json_object(Path(run_dir) / "provenance.json").get("train_files")
    return {h for h in files if isinstance(h, str)} if isinstance(files, list) else None


@torch.inference_mode()
def elbo_terms(run: LoadedRun, images: torch.Tensor, labels: torch.Tensor, domain: str, batch_size: int = 512) -> dict[str, float]:
    """Jade's per-sample ELBO terms on a split (eval mode, z = posterior mean), averaged."""
    likelihood = run.resolved.recipe.loss.likelihood
    totals: dict[str, float] = {"recon": 0.0, "kl": 0.0, "ce": 0.0}
    for i in range(0, len(labels), batch_size):
        x = to_float(images[i : i + batch_size].to(run.device))
        y = labels[i : i + batch_size].to(run.device)
        t = run.model.elbo_terms(x, y, domain, likelihood)
        for k in totals:
            totals[k] += t[k].item() * len(y)
    n = max(len(labels), 1)
    out = {k: v / n for k, v in totals.items()}
    out["neg_elbo"] = out["recon"] + out["kl"]
    return out


def evaluate_set(run: LoadedRun, s: EvalSet, trained_on: set[str] | None = None) -> dict:
    """Every metric of `jadekit.metrics` (and the ELBO terms for jade) on one set, with what the set was; for data
    with groups (patients) also `per_group`: the same metrics of one prediction per group."""
    with plugin_code_failures(run.resolved, lambda: f"scoring {s.dataset} ({s.split}) with {run.run_dir}"):
        logits = predict_logits(run.model, s.data.images.to(run.device), s.domain)  # type: ignore[arg-type]
    names = run.resolved.class_names
    result = {"dataset": s.dataset, "split": s.split, "domain": s.domain, "data": data_record(s, trained_on),
              **classification_report(logits.cpu(), s.data.labels, names)}
    result["notes"] = absent_class_notes(s.data.labels, names)
    parts = s.parts or ((s.split, len(s.data)),)
    result["_predictions"] = (logits.cpu().float().softmax(1), s.data.labels, s.data.groups, parts)  # predictions_csv
    if s.data.groups is not None:  # e.g. patients: one prediction each, from the mean probability of its images
        result["per_group"] = group_report(logits.cpu(), s.data.labels, s.data.groups, names)
    if run.method == "jade":
        with plugin_code_failures(run.resolved, lambda: f"scoring {s.dataset} ({s.split}) with {run.run_dir}"):
            result["elbo"] = elbo_terms(run, s.data.images, s.data.labels, s.domain)
    return result


def absent_class_notes(labels: torch.Tensor, names: tuple[str, ...]) -> list[str]:
    """What the class-averaged metrics mean when some classes have no image in the data scored (else [])."""
    present = set(labels.unique().tolist())
    absent = [f"'{n}'" for c, n in enumerate(names) if c not in present]
    if not absent:
        return []
    which = f"class {absent[0]} has" if len(absent) == 1 else f"classes {', '.join(absent)} have"
    return [f"{which} no image in this data: balanced accuracy averages the recall of the "
            f"{len(present)} class(es) present, AUROC leaves {'it' if len(absent) == 1 else 'them'} out (undefined with "
            "one class left), and macro-F1 counts an absent class only where it was predicted"]


def free_suffix(paths: list[Path]) -> str:
    """"" when none of `paths` exists, else the first "-N" (N >= 2) that names no existing file for any of them."""
    suffix, n = "", 2
    while any(p.with_name(f"{p.stem}{suffix}{p.suffix}").exists() for p in paths):
        suffix, n = f"-{n}", n + 1
    return suffix


def score_run(run: LoadedRun, dataset: str | None = None, root: Path | None = None, split: EvalSplit = "test",
              domain: str = "primary", resize: bool = False, params: list[str] | None = None) -> dict:
    """The evaluation record of a loaded run: its own test splits, or a split of `dataset`."""
    sets = own_test_sets(run) if dataset is None else [external_set(run, dataset, root, split, domain, resize, params)]
    # own test splits: still the files it was tested on? a --dataset: any file its train splits were read from?
    trained_on = trained_files(run.run_dir) if dataset is None else train_split_files(run.run_dir)
    return {"run_dir": str(run.run_dir), "experiment": run.resolved.recipe.experiment.name, "method": run.method,
            "seed": run.seed, "weights": run.weights, "results": [evaluate_set(run, s, trained_on) for s in sets]}


def predictions_csv(record: dict, names: tuple[str, ...]) -> str:
    """One row per image scored (taken out of `record`): domain, split, its index in that split as loaded, group (e.g.
    patient; empty without), label, predicted class and each class's probability."""
    text = io.StringIO()
    rows = csv.writer(text, lineterminator="\n")
    rows.writerow(["domain", "split", "index", "group", "label", "predicted", *(f"p_{n}" for n in names)])
    for r in record["results"]:
        probs, labels, groups, parts = r.pop("_predictions")
        predicted = probs.argmax(1)
        splits = [(split, i) for split, n in parts for i in range(n)]
        for k, (split, i) in enumerate(splits):
            rows.writerow([r["domain"], split, i, "" if groups is None else int(groups[k]), names[int(labels[k])],
                           names[int(predicted[k])], *(f"{float(v):.6g}" for v in probs[k])])
    return text.getvalue()


def _csv_path(json_path: Path) -> Path:
    return json_path.with_name(f"{json_path.stem}-predictions.csv")


def _record_path(run_dir: Path, dataset: str | None, split: str, suffix: str = ".json") -> Path:
    return Path(run_dir) / f"eval-{dataset or OWN}-{split}{suffix}"


def evaluate_run(run_dir: Path, dataset: str | None = None, root: Path | None = None, split: EvalSplit = "test",
                 domain: str = "primary", resize: bool = False, overrides: list[str] | None = None,
                 params: list[str] | None = None, device: torch.device | str = "cpu", write: bool = True) -> dict:
    """Evaluate one run directory and write `eval-<dataset>-<split>[-N].json` into it, and beside it
    `...-predictions.csv` (`predictions_csv`)."""
    run = load_run(run_dir, overrides, device)
    record = score_run(run, dataset, root, split, domain, resize, params)
    rows = predictions_csv(record, run.resolved.class_names)
    if write:
        path = _record_path(run_dir, dataset, split)
        path = path.with_name(f"{path.stem}{free_suffix([path, _csv_path(path)])}.json")
        record["predictions_written_to"] = str(_csv_path(path))
        atomic_write_text(_csv_path(path), rows)
        atomic_write_json(path, safe_json(record))
        record["written_to"] = str(path)
    return record


METRICS = ("error", "accuracy", "balanced_accuracy", "macro_f1", "auroc", "ece", "nll")


def aggregate(records: list[dict]) -> dict:
    """Table-1 rows (summary.py) plus mean ± std of every metric per method and domain (and per group of images,
    `<domain> per group`, where the data has groups)."""
    finals, by_method = [], {}

    def collect(method: str, key: str, values: dict, names: tuple[str, ...]) -> None:
        slot = by_method.setdefault(method, {}).setdefault(key, {m: [] for m in names})
        for m in names:
            slot[m].append(values[m])

    for r in records:
        res = {x["domain"]: x for x in r["results"]}
        finals.append({"method": r["method"], "seed": r["seed"],
                       "primary_test_error": res["primary"]["error"] if "primary" in res else math.nan,
                       "primary_test_balanced_accuracy": res["primary"]["balanced_accuracy"] if "primary" in res else None,
                       "auxiliary_test_error": res["auxiliary"]["error"] if "auxiliary" in res else None})
        for domain, x in res.items():
            collect(r["method"], domain, x, METRICS)
            if "error" in x.get("per_group", {}):
                collect(r["method"], f"{domain} per group", x["per_group"], (*METRICS, "n_groups"))
    detail = {m: {d: {k: mean_std(v) for k, v in metrics.items()} for d, metrics in doms.items()} for m, doms in by_method.items()}
    return {"rows": summarize(finals), "differences": seed_differences(finals), "metrics": detail}


def run_label(run_dir: str | Path) -> str:
    """`<method>/seed-<n>` of a run directory."""
    return f"{Path(run_dir).parent.name}/{Path(run_dir).name}"


def trained_steps(w: dict) -> str:
    """`trained 22 of 400 steps`, from `LoadedRun.weights`."""
    return f"trained {w['trained_steps']} of {w['recipe_steps']} steps"


def progress_note(w: dict) -> str:
    """`jade/seed-1 (step 22 of 400)` of an unfinished run's entry."""
    return f"{run_label(w['run_dir'])} (step {w['trained_steps']} of {w['recipe_steps']})"


def describe_data(d: dict) -> str:
    """One line of a summary's header: what an evaluation's data was."""
    resize = f"{d['resize'][0]}x{d['resize'][1]}" if d["resize"] else "none"
    return (f"{d['dataset']} {d['split']} split, params {json.dumps(d['params'])}, root {d['root']}, resize {resize}, "
            f"data fingerprint {d['fingerprint'] or 'unavailable (the dataset lists no files)'}")


def distinct_data(records: list[dict]) -> list[dict]:
    """The different data records (`data_record`) of a list of evaluations, in order."""
    return list({json.dumps(x["data"], sort_keys=True): x["data"] for r in records for x in r["results"]}.values())


def _header(records: list[dict], unfinished: list[dict], included: bool) -> list[str]:
    """The summary's lines under its title: the data evaluated and the unfinished runs."""
    lines = [f"- data: {describe_data(d)}" for d in distinct_data(records)]
    if unfinished:
        what = "includes" if included else "leaves out"
        lines.append(f"- {what} unfinished runs: {', '.join(progress_note(w) for w in unfinished)}")
    return lines


def _metric_tables(detail: dict, records: list[dict]) -> list[str]:
    """Markdown lines under Table 1: the other metrics per method and domain, then the per-group (patient) ones
    (`aggregate(...)["metrics"]`), and where per-group scores are undefined, why."""
    methods = sorted(detail, key=method_order)
    lines = ["", "Every image, mean ± std over runs:", "",
             "| method | domain | balanced accuracy | macro-F1 | AUROC | ECE | NLL | n |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {method} | {domain} | {fmt(m['balanced_accuracy'])} | {fmt(m['macro_f1'])} | {fmt(m['auroc'])} "
              f"| {fmt(m['ece'])} | {fmt(m['nll'])} | {m['error']['n']} |"
              for method in methods for domain, m in detail[method].items() if not domain.endswith(" per group")]
    groups = [(method, domain.removesuffix(" per group"), m) for method in methods
              for domain, m in detail[method].items() if domain.endswith(" per group")]
    if groups:
        lines += ["", "Per group of images (e.g. per patient; one prediction each, from the mean probability of its "
                  "images), mean ± std over runs:", "",
                  "| method | domain | groups | error (%) | balanced accuracy | AUROC | n |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {method} | {domain} | {m['n_groups']['mean']:g} | {fmt(m['error'])} "
                  f"| {fmt(m['balanced_accuracy'])} | {fmt(m['auroc'])} | {m['error']['n']} |"
                  for method, domain, m in groups]
    undefined = {f"- no per-group scores for {r['method']} ({x['domain']}): {x['per_group']['undefined']}": None
                 for r in sorted(records, key=lambda r: method_order(r["method"]))
                 for x in r["results"] if "undefined" in x.get("per_group", {})}
    return lines + ([""] if undefined else []) + list(undefined)


def evaluate_output_dir(out_dir: Path, title: str | None = None, include_unfinished: bool = False,
                        overrides: list[str] | None = None, device: torch.device | str = "cpu", **data) -> dict:
    """Evaluate every run under an output directory and write the aggregated Table 1 next to them.

    Unfinished runs (checkpoint step below the recipe's steps, or no checkpoint yet) are left out
    unless `include_unfinished` (runs without a checkpoint always are); the summary names them. Through the auxiliary
    encoder (`domain="auxiliary"`), the `single` runs, which have none, are left out.
    Every run is evaluated before anything is written; the per-run files and the summary share one suffix.
    """
    out_dir = Path(out_dir)
    runs = find_runs(out_dir)
    if not runs:
        raise RunDirError(f"{out_dir} holds no run directories (`<method>/seed-<n>/{RECIPE_FILE}`)",
                          hint="pass a run directory or the experiment's output_dir.")
    records, rows, unfinished = [], [], []  # rows: each record's predictions_csv
    if data.get("domain") == "auxiliary":  # through the auxiliary encoder: single runs have none
        runs = [d for d in runs if _run_identity(d)[0] != "single"]
        if not runs:
            raise RunDirError(f"{out_dir} holds only single runs, which have no auxiliary encoder",
                              hint="use --domain primary, or evaluate an output directory with paired or jade runs.")
    for d in runs:
        if not has_checkpoint(d):
            steps = load_recipe(d / RECIPE_FILE, overrides).train.steps
            unfinished.append({"run_dir": str(d), "trained_steps": 0, "recipe_steps": steps, "included": False})
            continue
        run = load_run(d, overrides, device)
        if not run.weights["finished"]:
            unfinished.append({"run_dir": str(d), **run.weights, "included": include_unfinished})
            if not include_unfinished:
                continue
        records.append(score_run(run, **data))
        rows.append(predictions_csv(records[-1], run.resolved.class_names))
    if not records:
        raise RunDirError(f"every run under {out_dir} is unfinished: {', '.join(progress_note(w) for w in unfinished)}",
                          hint="finish them by running the same `jadekit run RECIPE` again (add --resume if the recipe changed), or "
                               "pass --include-unfinished "
                               "(runs without a checkpoint have nothing to evaluate).")
    dataset, split = data.get("dataset"), data.get("split", "test")
    md_path = _record_path(out_dir, f"summary-{dataset or OWN}", split, ".md")
    json_paths = [_record_path(r["run_dir"], dataset, split) for r in records]
    suffix = free_suffix([md_path, md_path.with_suffix(".json"), *json_paths, *map(_csv_path, json_paths)])
    for r, path in zip(records, json_paths, strict=True):
        r["written_to"] = str(path.with_name(f"{path.stem}{suffix}.json"))
        r["predictions_written_to"] = str(_csv_path(Path(r["written_to"])))
    agg = aggregate(records)
    markdown = to_markdown(agg["rows"], title or records[0]["experiment"], agg["differences"])
    title_line, rest = markdown.split("\n", 1)
    markdown = "\n".join([title_line, "", *_header(records, unfinished, include_unfinished), rest])
    markdown = markdown.rstrip("\n") + "\n" + "\n".join(_metric_tables(agg["metrics"], records)) + "\n"
    md_path = md_path.with_name(f"{md_path.stem}{suffix}.md")
    summary = {"runs": [r["run_dir"] for r in records], "run_files": [r["written_to"] for r in records],
               "data": distinct_data(records), "unfinished": unfinished, **agg, "markdown": markdown}
    for r, csv_text in zip(records, rows, strict=True):
        atomic_write_text(Path(r["predictions_written_to"]), csv_text)
        atomic_write_json(Path(r["written_to"]), safe_json({k: v for k, v in r.items() if k != "written_to"}))
    atomic_write_text(md_path, markdown)
    atomic_write_json(md_path.with_suffix(".json"), safe_json(summary))
    return {**summary, "records": records, "written_to": [str(md_path), str(md_path.with_suffix(".json"))]}


def evaluate_path(path: Path, include_unfinished: bool = False, **kwargs) -> dict:
    """A run directory → its evaluation; an output directory → every run's plus the summary."""
    path = Path(path)
    if path.is_dir() and not is_run_dir(path) and find_runs(path):
        return {"kind": "summary", **evaluate_output_dir(path, include_unfinished=include_unfinished, **kwargs)}
    return {"kind": "run", **evaluate_run(path, **kwargs)}


def safe_json(obj):
    """NaN → None, so `--json` output is strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: safe_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [safe_json(v) for v in obj]
    return obj
