"""Run directories → evaluations: reload a trained model, score it on held-out data, aggregate seeds."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import BaseModel, ValidationError
from torch import nn

from jadekit import registry
from jadekit.build import DOMAINS, Resolved, build_model, resolve
from jadekit.config import METHODS, DataConfig, Method, apply_overrides, format_validation_error, load_recipe
from jadekit.data.base import ImageSet, Split
from jadekit.data.prepare import load_split
from jadekit.engine.evaluate import predict_logits, to_float
from jadekit.errors import DataError, RecipeError, RunDirError, first_line
from jadekit.io import atomic_write_json, atomic_write_text, load_checkpoint
from jadekit.metrics import classification_report
from jadekit.summary import mean_std, seed_differences, summarize, to_markdown
from jadekit.trainer import CHECKPOINT

RECIPE_FILE = "recipe.toml"
OWN = "recipe"  # dataset label of an evaluation on the recipe's own test splits


@dataclass(frozen=True)
class LoadedRun:
    """A trained model rebuilt from its run directory (best validated weights, eval mode)."""

    run_dir: Path
    method: Method
    seed: int | None
    resolved: Resolved
    model: nn.Module
    device: torch.device


def _run_identity(run_dir: Path) -> tuple[str | None, int | None]:
    """Method and seed from final.json / provenance.json, else from `<method>/seed-<n>`."""
    for name in ("final.json", "provenance.json"):
        try:
            d = json.loads((run_dir / name).read_text())
            return d.get("method"), d.get("seed")
        except (OSError, json.JSONDecodeError):
            continue
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
    if not run_dir.is_dir():
        raise RunDirError(f"no such run directory: {run_dir}", hint="pass a `<output_dir>/<method>/seed-<n>` directory.")
    if not is_run_dir(run_dir):
        raise RunDirError(f"{run_dir} is not a run directory (no {RECIPE_FILE})",
                          hint="pass a `<output_dir>/<method>/seed-<n>` directory, or an output directory holding several.")
    resolved = resolve(load_recipe(run_dir / RECIPE_FILE, overrides), source=str(run_dir / RECIPE_FILE))
    method, seed = _run_identity(run_dir)
    if method not in METHODS:
        raise RunDirError(f"cannot tell which method {run_dir} trained (got {method!r})",
                          hint="keep the `<method>/seed-<n>` layout or the run's final.json.")
    state, _ = load_checkpoint(run_dir / CHECKPOINT)
    model = build_model(method, resolved)
    weights = (state.get("loop") or {}).get("best_model") or state.get("model")
    try:
        model.load_state_dict(weights)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise RunDirError(f"checkpoint of {run_dir} does not fit its recipe's {method} model: {first_line(e)}",
                          hint="the recipe.toml was edited after training (provenance.json names the jadekit and plugin "
                               "versions that trained it); restore the recipe, or train again.") from None
    device = torch.device(device)
    return LoadedRun(run_dir, method, seed, resolved, model.to(device).eval(), device)


@dataclass(frozen=True)
class EvalSet:
    """Held-out images and the encoder (domain) they go through."""

    dataset: str
    split: str
    domain: str
    data: ImageSet


def own_test_sets(run: LoadedRun) -> list[EvalSet]:
    """The recipe's test splits, one per domain the model has an encoder for."""
    domains = DOMAINS if run.model.uses_auxiliary else ("primary",)
    sets = []
    for d in domains:
        spec, cfg = getattr(run.resolved, d), getattr(run.resolved.recipe, d)
        data = load_split(spec.name, spec.adapter, spec.params, cfg, "test", spec.info.image_shape)
        sets.append(EvalSet(spec.name, "test", d, data))
    return sets


def dataset_params(adapter, items: list[str] | None) -> BaseModel:
    """Validate `key=value` items (TOML values, dotted keys nest) against an adapter's own params model."""
    raw = apply_overrides({}, items or [])
    try:
        return adapter.Params.model_validate(raw)
    except ValidationError as e:
        raise RecipeError(format_validation_error(e, prefix="--param")) from None


def external_set(run: LoadedRun, name: str, root: Path | None = None, split: Split = "test", domain: str = "primary",
                 resize: bool = False, params: list[str] | None = None) -> EvalSet:
    """A split of any registered dataset, checked against the trained encoder of `domain`.

    Raises:
        DataError: its classes differ from the run's, or its image shape does not fit the encoder
            (spatial size is only adapted when `resize` is set; channels never are).
    """
    if domain not in DOMAINS or (domain == "auxiliary" and not run.model.uses_auxiliary):
        raise DataError(f"the {run.method} model has no {domain} encoder", hint="use --domain primary.")
    adapter = registry.datasets.load(name)
    p = dataset_params(adapter, params)
    try:
        info = adapter.info(p)
    except Exception as e:  # a plugin bug must not surface as a traceback
        raise DataError(f"dataset '{name}' failed to describe itself: {type(e).__name__}: {e}") from None
    if info.class_names != run.resolved.class_names:
        raise DataError(f"dataset '{name}' has classes {list(info.class_names)}, but the run was trained on "
                        f"{list(run.resolved.class_names)}; classes must match in number and order")
    want = getattr(run.resolved, domain).info.image_shape
    have = info.image_shape
    if have[0] != want[0]:
        raise DataError(f"dataset '{name}' has {have[0]}-channel images {have}, but the {domain} encoder takes {want}; "
                        "channels cannot be adapted")
    if have != want and not resize:
        raise DataError(f"dataset '{name}' has images of shape {have}, but the {domain} encoder was trained on {want}",
                        hint=f"pass --resize to resize them to {want[1]}x{want[2]} (bilinear, antialiased).")
    cfg = DataConfig(dataset=name, root=root, download=False, resize=want[1:] if have != want else None)
    return EvalSet(name, split, domain, load_split(name, adapter, p, cfg, split, want))


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


def evaluate_set(run: LoadedRun, s: EvalSet) -> dict:
    """Every metric of `jadekit.metrics` (and the ELBO terms for jade) on one set."""
    logits = predict_logits(run.model, s.data.images.to(run.device), s.domain)  # type: ignore[arg-type]
    result = {"dataset": s.dataset, "split": s.split, "domain": s.domain,
              **classification_report(logits.cpu(), s.data.labels, run.resolved.class_names)}
    if run.method == "jade":
        result["elbo"] = elbo_terms(run, s.data.images, s.data.labels, s.domain)
    return result


def unused_path(directory: Path, stem: str, suffix: str = ".json") -> Path:
    """`<stem><suffix>`, else `<stem>-2<suffix>`, `-3`, ...: never an existing file."""
    path, n = directory / f"{stem}{suffix}", 2
    while path.exists():
        path, n = directory / f"{stem}-{n}{suffix}", n + 1
    return path


def evaluate_run(run_dir: Path, dataset: str | None = None, root: Path | None = None, split: Split = "test",
                 domain: str = "primary", resize: bool = False, overrides: list[str] | None = None,
                 params: list[str] | None = None, device: torch.device | str = "cpu", write: bool = True) -> dict:
    """Evaluate one run directory and write `eval-<dataset>-<split>[-N].json` into it."""
    run = load_run(run_dir, overrides, device)
    sets = own_test_sets(run) if dataset is None else [external_set(run, dataset, root, split, domain, resize, params)]
    record = {"run_dir": str(run.run_dir), "experiment": run.resolved.recipe.experiment.name, "method": run.method, "seed": run.seed,
              "results": [evaluate_set(run, s) for s in sets]}
    if write:
        path = unused_path(run.run_dir, f"eval-{dataset or OWN}-{split}")
        atomic_write_json(path, safe_json(record))
        record["written_to"] = str(path)
    return record


METRICS = ("error", "accuracy", "balanced_accuracy", "macro_f1", "ece", "nll")


def aggregate(records: list[dict]) -> dict:
    """Table-1 rows (summary.py) plus mean ± std of every metric per method and domain."""
    finals, by_method = [], {}
    for r in records:
        res = {x["domain"]: x for x in r["results"]}
        finals.append({"method": r["method"], "seed": r["seed"],
                       "primary_test_error": res["primary"]["error"] if "primary" in res else math.nan,
                       "auxiliary_test_error": res["auxiliary"]["error"] if "auxiliary" in res else None})
        for domain, x in res.items():
            slot = by_method.setdefault(r["method"], {}).setdefault(domain, {m: [] for m in METRICS})
            for m in METRICS:
                slot[m].append(x[m])
    detail = {m: {d: {k: mean_std(v) for k, v in metrics.items()} for d, metrics in doms.items()} for m, doms in by_method.items()}
    return {"rows": summarize(finals), "differences": seed_differences(finals), "metrics": detail}


def evaluate_output_dir(out_dir: Path, title: str | None = None, **kwargs) -> dict:
    """Evaluate every run under an output directory and write the aggregated Table 1 next to them."""
    out_dir = Path(out_dir)
    runs = find_runs(out_dir)
    if not runs:
        raise RunDirError(f"{out_dir} holds no run directories (`<method>/seed-<n>/{RECIPE_FILE}`)",
                          hint="pass a run directory or the experiment's output_dir.")
    records = [evaluate_run(r, **kwargs) for r in runs]
    agg = aggregate(records)
    stem = f"eval-summary-{kwargs.get('dataset') or OWN}-{kwargs.get('split', 'test')}"
    md_path = unused_path(out_dir, stem, ".md")
    markdown = to_markdown(agg["rows"], title or records[0]["experiment"], agg["differences"])
    atomic_write_text(md_path, markdown)
    json_path = md_path.with_suffix(".json")
    summary = {"runs": [r["run_dir"] for r in records], **agg, "markdown": markdown}
    atomic_write_json(json_path, safe_json(summary))
    return {**summary, "records": records, "written_to": [str(md_path), str(json_path)]}


def evaluate_path(path: Path, **kwargs) -> dict:
    """A run directory → its evaluation; an output directory → every run's plus the summary."""
    path = Path(path)
    if path.is_dir() and not is_run_dir(path) and find_runs(path):
        return {"kind": "summary", **evaluate_output_dir(path, **kwargs)}
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

