"""Runs a recipe: every method x seed into its own run directory, then the Table-1 summary."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tomli_w
import torch

from jadekit.build import DOMAINS, Resolved, build_model, parameter_counts
from jadekit.config import Method, Recipe, recipe_to_dict
from jadekit.data.base import ImageSet
from jadekit.data.prepare import DomainData, fingerprint, load_split, prepare_domain
from jadekit.data.sampler import PairedBatchSampler
from jadekit.engine.augment import random_shift
from jadekit.engine.evaluate import classification_metrics, predict_logits, to_float
from jadekit.engine.loop import Callback, LoopPlan, LoopState, fit, restore_best
from jadekit.engine.models import Batch, LossWeights
from jadekit.errors import Interrupted, JadekitError, PluginError, RunDirError, TrainingDiverged
from jadekit.io import append_jsonl, atomic_write_json, atomic_write_text, load_checkpoint, save_checkpoint, truncate_jsonl
from jadekit.provenance import versions
from jadekit.summary import write_summary

CHECKPOINT = "checkpoint.pt"
FINAL = "final.json"
METRICS = "metrics.jsonl"
log = logging.getLogger(__name__)


def run_dir_for(output_dir: Path, method: str, seed: int) -> Path:
    return Path(output_dir) / method / f"seed-{seed}"


def pick_device(requested: str) -> torch.device:
    """auto → CUDA, else MPS, else CPU; an explicit device must exist."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise JadekitError(f"train.device = '{requested}', but CUDA is not available here", hint="use device = 'auto' or 'cpu'.")
    if requested == "mps" and not torch.backends.mps.is_available():
        raise JadekitError("train.device = 'mps', but MPS is not available here", hint="use device = 'auto' or 'cpu'.")
    return torch.device(requested)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def recipe_fingerprint(recipe: Recipe) -> str:
    """Identity of what a run computes; the list of methods/seeds and where it is written do not count."""
    d = recipe_to_dict(recipe)
    for key in ("methods", "seeds", "output_dir"):
        d["experiment"].pop(key, None)
    d["train"].pop("device", None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


class DataCache:
    """Loads each dataset split once per process, shared by every method and seed."""

    def __init__(self, resolved: Resolved) -> None:
        self.resolved = resolved
        self._sets: dict[tuple[str, str], ImageSet] = {}

    def split(self, domain: str, split: str) -> ImageSet:
        key = (domain, split)
        if key not in self._sets:
            spec = getattr(self.resolved, domain)
            cfg = getattr(self.resolved.recipe, domain)
            self._sets[key] = load_split(spec.name, spec.adapter, spec.params, cfg, split, spec.info.image_shape)
        return self._sets[key]

    def domain(self, domain: str, seed: int) -> DomainData:
        cfg = getattr(self.resolved.recipe, domain)
        return prepare_domain(self.split(domain, "train"), self.split(domain, "test"), cfg, seed, domain)

    def fingerprints(self) -> dict[str, dict]:
        files = tuple(f for s in self._sets.values() for f in s.files)
        return fingerprint(tuple(dict.fromkeys(files)))


class MetricsWriter(Callback):
    """Appends loss terms and validation metrics to metrics.jsonl."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_log(self, step: int, terms: dict[str, float]) -> None:
        append_jsonl(self.path, {"step": step, "kind": "train", **terms})

    def on_validate(self, step: int, metrics: dict[str, float], improved: bool) -> None:
        append_jsonl(self.path, {"step": step, "kind": "val", **metrics, "improved": improved})


@dataclass
class Trainer:
    """Everything one run trains with; its state_dict is the checkpoint."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    sampler: PairedBatchSampler
    state: LoopState = field(default_factory=LoopState)

    def state_dict(self, recipe: Recipe) -> dict:
        rng = {"torch": torch.get_rng_state(), "python": _python_rng(), "numpy": _numpy_rng()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "sampler": self.sampler.state_dict(),
            "loop": self.state.state_dict(),
            "rng": rng,
            "recipe": recipe_to_dict(recipe),
        }

    def load_state_dict(self, ckpt: dict) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.sampler.load_state_dict(ckpt["sampler"])
        self.state = LoopState.from_state_dict(ckpt["loop"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        random.setstate(_to_tuple(ckpt["rng"]["python"]))
        np.random.set_state(tuple(ckpt["rng"]["numpy"][:1]) + (np.array(ckpt["rng"]["numpy"][1], dtype=np.uint32),)
                            + tuple(ckpt["rng"]["numpy"][2:]))
        if "cuda" in ckpt["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])


def _python_rng() -> list:
    v, internal, gauss = random.getstate()
    return [v, list(internal), gauss]


def _to_tuple(state: list) -> tuple:
    return (state[0], tuple(state[1]), state[2])


def _numpy_rng() -> list:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]


class Checkpointer(Callback):
    """Writes the trainer's full state at each checkpoint event."""

    def __init__(self, path: Path, trainer: Trainer, recipe: Recipe) -> None:
        self.path, self.trainer, self.recipe = path, trainer, recipe
        self.last_step: int | None = None  # step of the newest good checkpoint on disk

    def on_checkpoint(self, state: LoopState) -> None:
        self.trainer.state = state
        save_checkpoint(self.path, self.trainer.state_dict(self.recipe))
        self.last_step = state.step


def make_trainer(method: Method, resolved: Resolved, data: dict[str, DomainData], seed: int, device: torch.device) -> Trainer:
    """Fresh model, optimizer, schedule and sampler for one method and seed."""
    recipe = resolved.recipe
    t = recipe.train
    seed_everything(seed)
    model = build_checked_model(method, resolved).to(device)  # channels-last already
    if t.compile:  # compiles the whole training forward (all loss terms); weights and state_dict are unchanged
        model.loss_terms = torch.compile(model.loss_terms)
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    if t.lr_schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, t.steps) / t.steps)))
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    aux = data["auxiliary"]
    sampler = PairedBatchSampler(
        data["primary"].train_y.cpu(),
        aux.train_y.cpu() if model.uses_auxiliary else None,
        t.batch_size,
        t.auxiliary_batch_size or t.batch_size,
        seed,
    )
    return Trainer(model, optimizer, scheduler, sampler)


def build_checked_model(method: Method, resolved: Resolved) -> torch.nn.Module:
    """`build_model`, with a plugin's own failure or wrong return types reported as a PluginError."""
    names = f"backbones '{resolved.primary.backbone_name}' / '{resolved.auxiliary.backbone_name}'"
    try:
        model = build_model(method, resolved)
    except JadekitError:
        raise
    except Exception as e:  # a backbone bug must not surface as a traceback
        raise PluginError(f"building the '{method}' model failed in {names}: {type(e).__name__}: {e}",
                          hint="check model.*_backbone params, or fix the backbone plugin.") from None
    # nn.Module keeps non-module attributes in __dict__: a backbone that returned e.g. None or a tensor lands there.
    parts = ("primary_encoder", "auxiliary_encoder", "primary_decoder", "auxiliary_decoder")
    wrong = [f"{n} is {type(m).__name__}" for n, m in vars(model).items() if n in parts]
    if wrong:
        raise PluginError(f"{names} returned objects that are not torch.nn.Module: {', '.join(wrong)}",
                          hint="encoder() and decoder() must return torch.nn.Module instances (see docs/plugins.md).")
    return model


def _probe_model(method: Method, model: torch.nn.Module, data: dict[str, DomainData], resolved: Resolved) -> None:
    """Run one small real batch through the loss and the classifier, to catch shape/type bugs before any file is written."""
    recipe = resolved.recipe
    p, a = data["primary"], data["auxiliary"]
    n = min(4, len(p.train_y))
    y = p.train_y[:n]
    batch = Batch(to_float(p.train_x[:n]), y)
    if model.uses_auxiliary:  # same classes on both sides, so matching terms have pairs
        ai = torch.stack([torch.nonzero(a.train_y == c).flatten()[0] for c in y])
        batch = Batch(batch.x, y, to_float(a.train_x[ai]), a.train_y[ai])
    what = f"the '{method}' model (backbones '{resolved.primary.backbone_name}' / '{resolved.auxiliary.backbone_name}')"
    try:
        with torch.no_grad():
            terms = model.loss_terms(batch, loss_weights(recipe)(recipe.loss.kl_warmup_steps))
            logits = predict_logits(model, p.train_x[:n], "primary")
    except JadekitError:
        raise
    except Exception as e:
        raise PluginError(
            f"{what} cannot process primary images {tuple(p.train_x.shape[1:])} / auxiliary images {tuple(a.train_x.shape[1:])}: "
            f"{type(e).__name__}: {str(e)[:300]}",
            hint="pick a backbone that accepts this image size, set `resize` in the data table, or fix the backbone plugin.",
        ) from None
    if not isinstance(terms, dict) or not isinstance(terms.get("total"), torch.Tensor) or terms["total"].numel() != 1:
        raise PluginError(f"{what} returned loss terms without a scalar 'total'", hint="fix the backbone plugin.")
    if tuple(logits.shape) != (n, len(resolved.class_names)):
        raise PluginError(f"{what} returned logits of shape {tuple(logits.shape)} for {n} images, "
                          f"expected {(n, len(resolved.class_names))}",
                          hint="fix the backbone plugin: encoder() must map (B, C, H, W) to (B, out_dim).")


def loss_weights(recipe: Recipe) -> Callable[[int], LossWeights]:
    """Step → loss weights, with both KL weights ramped up over `kl_warmup_steps`."""
    lc = recipe.loss

    def at(step: int) -> LossWeights:
        ramp = min(1.0, step / lc.kl_warmup_steps) if lc.kl_warmup_steps else 1.0
        return LossWeights(lc.reconstruction, lc.classification, lc.kl_prior * ramp, lc.kl_match * ramp,
                           lc.auxiliary, lc.likelihood, lc.match)

    return at


def evaluate_split(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, domain: str) -> dict[str, float]:
    return classification_metrics(predict_logits(model, x, domain), y)


def train_one(
    method: Method,
    seed: int,
    resolved: Resolved,
    cache: DataCache,
    run_dir: Path,
    device: torch.device,
    callbacks: Sequence[Callback] = (),
    stop_requested: Callable[[], bool] = lambda: False,
    on_resume: Callable[[int, list[str]], None] = lambda step, notes: None,
) -> dict:
    """Train (or resume) one method x seed and write its run directory; return its final metrics.

    Raises:
        TrainingDiverged: a loss became NaN/inf; the message names the term, the step and the kept checkpoint.
        Interrupted: `stop_requested()` turned true; a checkpoint was written first.
    """
    recipe = resolved.recipe
    t = recipe.train
    data = {d: cache.domain(d, seed).to(device) for d in DOMAINS}
    trainer = make_trainer(method, resolved, data, seed, device)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = run_dir / CHECKPOINT
    notes = resume_from_checkpoint(trainer, run_dir)
    if notes is None:
        notes = []
        atomic_write_text(run_dir / "recipe.toml", tomli_w.dumps(recipe_to_dict(recipe)))
        atomic_write_json(run_dir / "indices.json", {d: data[d].indices for d in DOMAINS})
        (run_dir / METRICS).unlink(missing_ok=True)
    else:
        notes += _apply_optimizer_settings(trainer, t.lr, t.weight_decay)
        on_resume(trainer.state.step, notes)

    p, a = data["primary"], data["auxiliary"]

    def images(x: torch.Tensor) -> torch.Tensor:  # offsets come from the checkpointed sampler generator
        return to_float(random_shift(x, t.augment_shift, trainer.sampler.generator))

    def draw_batch() -> Batch:
        pi, ai = trainer.sampler.next()
        pi = pi.to(device, non_blocking=True)
        if ai is None:
            return Batch(images(p.train_x[pi]), p.train_y[pi])
        ai = ai.to(device, non_blocking=True)
        return Batch(images(p.train_x[pi]), p.train_y[pi], images(a.train_x[ai]), a.train_y[ai])

    def validate() -> dict[str, float]:
        x, y = (p.val_x, p.val_y) if len(p.val_y) else (p.train_x, p.train_y)
        return evaluate_split(trainer.model, x, y, "primary")

    plan = LoopPlan(
        steps=t.steps,
        eval_every=t.eval_every,
        checkpoint_every=t.checkpoint_every or t.eval_every,
        log_every=1 if device.type == "cpu" else 25,
        autocast_dtype=torch.bfloat16 if t.precision == "bf16" else None,
        device_type=device.type,
    )
    started = time.perf_counter()
    start_step = trainer.state.step
    checkpointer = Checkpointer(ckpt_path, trainer, recipe)
    checkpointer.last_step = start_step if (ckpt_path.exists() or _prev(ckpt_path).exists()) else None
    all_callbacks = [MetricsWriter(run_dir / METRICS), checkpointer, *callbacks]
    where = f"{method} seed {seed}"
    try:
        state = fit(trainer.model, trainer.optimizer, trainer.scheduler, draw_batch, loss_weights(recipe), validate,
                    plan, trainer.state, all_callbacks, stop_requested)
    except TrainingDiverged as e:
        kept = (f"the last good checkpoint ({ckpt_path}, step {checkpointer.last_step}) is kept"
                if checkpointer.last_step is not None else "no checkpoint had been written yet")
        raise TrainingDiverged(f"{where}: {e.message}; {kept}", hint=e.hint) from None
    except Interrupted:
        raise Interrupted(f"{where}: stopped at step {checkpointer.last_step}; checkpoint written to {ckpt_path}",
                          hint="continue with `jadekit run RECIPE --resume` (or run the same recipe again).") from None
    elapsed = time.perf_counter() - started
    restore_best(trainer.model, state)

    final = {
        "method": method,
        "seed": seed,
        "primary_test_error": evaluate_split(trainer.model, p.test_x, p.test_y, "primary")["error"],
        "auxiliary_test_error": (
            evaluate_split(trainer.model, a.test_x, a.test_y, "auxiliary")["error"] if trainer.model.uses_auxiliary else None
        ),
        "primary_val_accuracy": state.best_score[0] if state.best_score else None,
        "best_step": state.best_step,
        "steps": state.step,
        "train_seconds_this_session": round(elapsed, 2),
        "steps_per_second": round((state.step - start_step) / elapsed, 2) if elapsed > 0 else None,
        "n_primary": {"train": len(p.train_y), "val": len(p.val_y), "test": len(p.test_y)},
        "n_auxiliary": {"train": len(a.train_y), "val": len(a.val_y), "test": len(a.test_y)},
        "parameters": parameter_counts(trainer.model),
        "resume_notes": notes,
    }
    atomic_write_json(run_dir / "provenance.json", {
        "recipe_fingerprint": recipe_fingerprint(recipe),
        "seed": seed,
        "method": method,
        "device": str(device),
        "versions": versions(resolved),
        "data_files": cache.fingerprints(),
    })
    atomic_write_json(run_dir / FINAL, final)
    return final


def _prev(path: Path) -> Path:
    return path.with_suffix(path.suffix + ".prev")


def resume_from_checkpoint(trainer: Trainer, run_dir: Path) -> list[str] | None:
    """Load a run directory's checkpoint into `trainer`; None when there is nothing to resume.

    A damaged newest checkpoint is moved aside to `checkpoint.pt.corrupt` (so the next save does not
    rotate it over the good `.prev`), and metrics recorded after the checkpoint's step are dropped:
    those steps run again, so every step appears exactly once in metrics.jsonl.

    Returns:
        Notes on what was met (a damaged file and the fallback used); empty when all was well.
    """
    ckpt_path = run_dir / CHECKPOINT
    if not (ckpt_path.exists() or _prev(ckpt_path).exists()):
        return None
    ckpt, notes = load_checkpoint(ckpt_path)
    if notes and ckpt_path.exists():
        os.replace(ckpt_path, ckpt_path.with_suffix(".pt.corrupt"))
    if notes:
        notes.append(f"resumed from the previous checkpoint {_prev(ckpt_path)}")
        for n in notes:
            log.warning(n)
    try:
        trainer.load_state_dict(ckpt)
    except (KeyError, RuntimeError, ValueError, TypeError, IndexError) as e:
        raise RunDirError(
            f"checkpoint in {run_dir} does not fit this recipe's model or data ({type(e).__name__}: {str(e)[:300]})",
            hint="run with --force to discard it and start again, or restore the recipe it was trained with.",
        ) from None
    step = trainer.state.step
    dropped = truncate_jsonl(run_dir / METRICS, lambda r: isinstance(r.get("step"), int) and r["step"] <= step)
    if dropped:
        log.info("dropped %d metric records past step %d (they are recomputed)", dropped, step)
    return notes


def _apply_optimizer_settings(trainer: Trainer, lr: float, weight_decay: float) -> list[str]:
    """Let a resumed run take the recipe's lr and weight decay (the optimizer state would restore the old ones).

    Without this, "lower train.lr and --resume" after a divergence would silently keep the old rate.
    Unchanged settings leave every value untouched, so an ordinary resume stays bit-exact.
    """
    sched, groups = trainer.scheduler, trainer.optimizer.param_groups
    old_lr = sched.base_lrs[0] if sched.base_lrs else lr
    old_wd = groups[0].get("weight_decay", weight_decay) if groups else weight_decay
    if old_lr == lr and old_wd == weight_decay:
        return []
    sched.base_lrs = [lr for _ in sched.base_lrs]
    for g, factor in zip(groups, sched.lr_lambdas, strict=True):
        g["initial_lr"], g["weight_decay"] = lr, weight_decay
        g["lr"] = lr * factor(sched.last_epoch)
    sched._last_lr = [g["lr"] for g in groups]
    return [f"resumed with train.lr {old_lr:g} -> {lr:g}, train.weight_decay {old_wd:g} -> {weight_decay:g}"]


def _read_marker(marker: Path) -> str | None:
    try:
        return json.loads(marker.read_text()).get("recipe_fingerprint")
    except (OSError, ValueError, AttributeError):
        return None


def check_output_dir(recipe: Recipe, resume: bool, force: bool, claim: bool = True) -> None:
    """Refuse to mix runs of a different recipe into an existing output directory, then claim it.

    Args:
        claim: also write the directory's marker (and with `force`, discard old runs); when False only check.
    """
    out = Path(recipe.experiment.output_dir)
    marker = out / "jadekit-output.json"
    fp = recipe_fingerprint(recipe)
    if out.exists() and not out.is_dir():
        raise RunDirError(f"output directory {out} is a file, not a directory", hint="pick another experiment.output_dir.")
    if any(p.exists() and not p.is_dir() for p in out.parents):
        raise RunDirError(f"cannot create output directory {out}: a parent path is a file, not a directory",
                          hint="pick another experiment.output_dir.")
    if marker.exists():
        existing = _read_marker(marker)
        if existing != fp and not (resume or force):
            raise RunDirError(
                f"{out} holds runs of a different recipe (fingerprint {existing}, this recipe {fp})",
                hint="pick another experiment.output_dir, pass --resume to continue them with this recipe, "
                "or --force to discard them.",
            )
    elif out.exists() and any(out.iterdir()) and not force:
        raise RunDirError(
            f"{out} exists and is not a jadekit output directory", hint="pick another experiment.output_dir, or pass --force."
        )
    if not claim:
        return
    try:
        if force:
            for method in ("single", "paired", "jade"):
                shutil.rmtree(out / method, ignore_errors=True)
        atomic_write_json(marker, {"recipe_fingerprint": fp, "experiment": recipe.experiment.name})
    except OSError as e:
        raise RunDirError(f"cannot write to output directory {out}: {e.strerror}", hint="choose a writable output_dir.") from None


@dataclass(frozen=True)
class RunEvents:
    """Hooks the CLI passes in to show progress (the runner itself never prints)."""

    callbacks_for: Callable[[Method, int, int], Sequence[Callback]] = lambda method, seed, start: ()
    on_resume: Callable[[Method, int, int, list[str]], None] = lambda method, seed, step, notes: None
    on_skip: Callable[[Method, int, dict], None] = lambda method, seed, final: None
    on_done: Callable[[Method, int, dict], None] = lambda method, seed, final: None


def run_recipe(
    resolved: Resolved,
    resume: bool = False,
    force: bool = False,
    events: RunEvents = RunEvents(),
    stop_requested: Callable[[], bool] = lambda: False,
) -> list[dict]:
    """Run every method x seed (skipping finished runs), then write the summary."""
    recipe = resolved.recipe
    # Everything that can be wrong with the input is checked before the output directory is touched.
    device = pick_device(recipe.train.device)
    check_output_dir(recipe, resume, force, claim=False)
    if recipe.train.threads:
        torch.set_num_threads(recipe.train.threads)
    cache = DataCache(resolved)
    preflight(resolved, cache)
    check_output_dir(recipe, resume, force)
    finals = []
    for method in recipe.experiment.methods:
        for seed in recipe.experiment.seeds:
            run_dir = run_dir_for(recipe.experiment.output_dir, method, seed)
            final = _finished(run_dir / FINAL, recipe.train.steps)
            if final is not None:
                events.on_skip(method, seed, final)
                finals.append(final)
                continue
            final = train_one(method, seed, resolved, cache, run_dir, device,
                              events.callbacks_for(method, seed, recipe.train.steps), stop_requested,
                              on_resume=lambda step, notes, m=method, s=seed: events.on_resume(m, s, step, notes))
            events.on_done(method, seed, final)
            finals.append(final)
    write_summary(Path(recipe.experiment.output_dir), finals, recipe.experiment.name)
    return finals


def _finished(path: Path, steps: int) -> dict | None:
    """The final metrics of a finished run, or None (absent, unreadable, or from a shorter run)."""
    try:
        final = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return final if isinstance(final, dict) and final.get("steps") == steps else None


def preflight(resolved: Resolved, cache: DataCache) -> None:
    """Load every split, draw every seed's subsets and build and probe every model: all input errors surface here."""
    recipe = resolved.recipe
    t = recipe.train
    data = {}
    for seed in recipe.experiment.seeds:
        data = {d: cache.domain(d, seed) for d in DOMAINS}
        if set(recipe.experiment.methods) - {"single"}:  # the sampler checks the auxiliary data covers every class
            PairedBatchSampler(data["primary"].train_y, data["auxiliary"].train_y, t.batch_size,
                               t.auxiliary_batch_size or t.batch_size, seed)
    for method in recipe.experiment.methods:
        model = build_checked_model(method, resolved)
        _probe_model(method, model, data, resolved)
