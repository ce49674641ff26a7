"""One run's training state: model, optimizer, schedule, sampler and RNGs; checkpoints and resume."""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from jadekit.build import Resolved, build_model
from jadekit.config import Method, Recipe, TrainConfig, recipe_to_dict
from jadekit.data.prepare import DomainData
from jadekit.data.sampler import PairedBatchSampler
from jadekit.engine.augment import random_rotate_scale, random_shift
from jadekit.engine.evaluate import predict_logits, to_float
from jadekit.engine.loop import Callback, LoopState
from jadekit.engine.models import Batch, LossWeights
from jadekit.errors import (
    JadekitError,
    PluginError,
    RunDirError,
    brief,
    first_line,
    is_out_of_memory,
    plugin_failure,
    raised_in,
)
from jadekit.io import append_jsonl, load_checkpoint, save_checkpoint, truncate_jsonl

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def state_dict(self, recipe: Recipe) -> dict:
        rng = {"torch": torch.get_rng_state(), "python": _python_rng(), "numpy": _numpy_rng()}
        if self.device.type == "cuda":  # the run's own GPU only: it may resume on another index, or fewer GPUs
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
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
        cuda = ckpt["rng"].get("cuda")
        if isinstance(cuda, list):  # jadekit <= 0.3 saved every GPU's state: take this device's, if it had one
            index = self.device.index if self.device.index is not None else 0
            cuda = cuda[index] if index < len(cuda) else None
        if cuda is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(cuda, self.device)


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
        model.loss_terms = compiled(model.loss_terms)
    # One fused kernel per step instead of a dozen multi-tensor ops (same update rule; supported on these devices).
    fused = device.type in ("cpu", "cuda", "mps")
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay, fused=fused)
    if t.lr_schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, t.steps) / t.steps)))
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    return Trainer(model, optimizer, scheduler, make_sampler(data, t, seed, model.uses_auxiliary), device=device)


def compiled(loss_terms: Callable) -> Callable:
    """`torch.compile(loss_terms)`, with a failure of the compiler backend (no C++ compiler, a Triton or
    toolchain error: an environment problem, raised at the first call) reported as a JadekitError."""
    fn = torch.compile(loss_terms)

    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except torch._dynamo.exc.BackendCompilerFailed as e:
            raise JadekitError(f"train.compile = true, but torch.compile could not build the training step: "
                               f"{type(e).__name__}: {first_line(e)}",
                               hint="set train.compile = false (the same training, uncompiled), or fix the compiler "
                                    "toolchain it names (a C++ compiler for CPU runs, Triton for GPU runs).") from None

    return run


def make_sampler(data: dict[str, DomainData], train: TrainConfig, seed: int, uses_auxiliary: bool = True) -> PairedBatchSampler:
    """The batch sampler `train` describes for one seed's data (raises DataError if the auxiliary data misses a class)."""
    return PairedBatchSampler(
        data["primary"].train_y.cpu(),
        data["auxiliary"].train_y.cpu() if uses_auxiliary else None,
        train.batch_size,
        train.auxiliary_batch_size or train.batch_size,
        seed,
        auxiliary_sampling=train.auxiliary_sampling,
        primary_sampling=train.primary_sampling,
    )


def batch_drawer(trainer: Trainer, p: DomainData, a: DomainData, train: TrainConfig) -> Callable[[], Batch]:
    """The loop's batch source: the sampler's next indices, augmented as `train.augment_*` says (the random draws
    come from the sampler's checkpointed generator, so resume stays exact)."""
    generator = trainer.sampler.generator
    rotate_scale_auxiliary = train.augment_rotate_scale_on == "both"

    def images(x: torch.Tensor, rotate_scale: bool = True) -> torch.Tensor:
        x = to_float(random_shift(x, train.augment_shift, generator))
        return random_rotate_scale(x, train.augment_rotate, train.augment_scale, generator) if rotate_scale else x

    def draw() -> Batch:
        pi, ai = trainer.sampler.next()
        pi = pi.to(p.train_x.device, non_blocking=True)
        if ai is None:
            return Batch(images(p.train_x[pi]), p.train_y[pi])
        ai = ai.to(a.train_x.device, non_blocking=True)
        x = images(p.train_x[pi])  # primary first: the generator's draws keep their order
        return Batch(x, p.train_y[pi], images(a.train_x[ai], rotate_scale_auxiliary), a.train_y[ai])

    return draw


def backbones(resolved: Resolved) -> tuple[object, object]:
    """The primary and auxiliary backbone plugins: the code `plugin_failure` looks for in a model's failure."""
    return resolved.primary.backbone, resolved.auxiliary.backbone


@contextlib.contextmanager
def plugin_code_failures(resolved: Resolved, what: Callable[[], str], kept: Callable[[], str] = lambda: "",
                         then: Callable[[], str] = lambda: "run the same command again") -> Iterator[None]:
    """Turn an exception from a model's forward pass (past the preflight batch: a rare batch, a later step, the test
    sets) into one clear error. Raised in a backbone plugin's own code: a PluginError naming the backbone, its file and
    line. Out of memory: a JadekitError saying so. Both add `kept()` (what survived). Anything else passes unchanged,
    to be reported as unexpected: raised only in jadekit's code (a built-in backbone's included) or torch's, it is
    not the plugin's bug."""
    try:
        yield
    except JadekitError:
        raise
    except Exception as e:
        survived = f"; {kept()}" if kept() else ""
        if is_out_of_memory(e):
            raise JadekitError(f"{what()}: out of memory: {brief(first_line(e, 100_000), 200)}{survived}",
                               hint="free memory (fewer runs or --jobs at once, other processes), or make the batch or "
                                    f"the model smaller; then {then()}.") from e
        for d in (resolved.primary, resolved.auxiliary):
            if type(d.backbone).__module__.split(".")[0] != "jadekit" and raised_in(e, d.backbone):
                raise PluginError(f"{what()}: backbone '{d.backbone_name}' raised {plugin_failure(e, d.backbone)}{survived}",
                                  hint=f"fix the plugin, then {then()}.") from e
        raise  # "unexpected", with its traceback under JADEKIT_DEBUG


def build_checked_model(method: Method, resolved: Resolved) -> torch.nn.Module:
    """`build_model`, with a plugin's own failure or wrong return types reported as a PluginError."""
    names = f"backbones '{resolved.primary.backbone_name}' / '{resolved.auxiliary.backbone_name}'"
    try:
        model = build_model(method, resolved)
    except JadekitError:
        raise
    except Exception as e:  # a backbone bug must not surface as a traceback
        if is_out_of_memory(e):
            raise JadekitError(f"the '{method}' model is too large for this machine's memory: {first_line(e, 200)}",
                               hint="lower model.classifier_hidden or model.latent_dim, or the backbones' params "
                                    "(`jadekit describe` prints each module's parameter count).") from None
        raise PluginError(f"building the '{method}' model failed in {names}: {plugin_failure(e, *backbones(resolved))}",
                          hint="check model.*_backbone params, or fix the backbone plugin.") from e
    # nn.Module keeps non-module attributes in __dict__: a backbone that returned e.g. None or a tensor lands there.
    parts = ("primary_encoder", "auxiliary_encoder", "primary_decoder", "auxiliary_decoder")
    wrong = [f"{n} is {type(m).__name__}" for n, m in vars(model).items() if n in parts]
    if wrong:
        raise PluginError(f"{names} returned objects that are not torch.nn.Module: {', '.join(wrong)}",
                          hint="encoder() and decoder() must return torch.nn.Module instances (see docs/plugins.md).")
    _check_output_shapes(method, model, resolved)
    return model


def _check_output_shapes(method: Method, model: torch.nn.Module, resolved: Resolved) -> None:
    """Each encoder and decoder, on two zero inputs of the size it was built for, must return the size asked of it:
    a backbone that ignores its `out_dim` or image shape is named here, not found later as a shape error mid-model.
    A copy runs, in eval mode, without gradients, on a forked RNG: nothing the training starts from changes (the
    weights, a layer that initialises itself on its first input, the random stream)."""
    m = resolved.recipe.model
    out_dim = 2 * m.latent_dim if method == "jade" else m.content_dim
    for domain in ("primary", "auxiliary"):
        spec = getattr(resolved, domain)
        shape = tuple(spec.info.image_shape)
        for role, x, expected in (("encoder", torch.zeros(2, *shape), (2, out_dim)),
                                  ("decoder", torch.zeros(2, m.latent_dim), (2, *shape))):
            module = getattr(model, f"{domain}_{role}", None)
            if module is None:
                continue
            try:
                with torch.no_grad(), torch.random.fork_rng(devices=[]):
                    y = copy.deepcopy(module).eval()(x)
            except Exception:  # e.g. an image size it cannot take: `probe_model` reports that with the data
                continue
            got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            if got != expected:
                asked = f"out_dim {out_dim}" if role == "encoder" else f"image shape {shape}"
                raise PluginError(
                    f"backbone '{spec.backbone_name}': the {domain} {role} returned {got} for an input of "
                    f"{tuple(x.shape)}, expected {expected} ({role}() was asked for {asked})",
                    hint=f"fix the backbone plugin: its {role} must use the size it is given, not a fixed one "
                         f"(`jadekit plugins check {spec.backbone_name}` checks it alone).")


def probe_model(method: Method, model: torch.nn.Module, data: dict[str, DomainData], resolved: Resolved) -> None:
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
            f"{plugin_failure(e, *backbones(resolved))}",
            hint="pick a backbone that accepts this image size, set `resize` in the data table, or fix the backbone plugin.",
        ) from e
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
                           lc.auxiliary, lc.likelihood, lc.match, lc.match_gradient)

    return at


def previous_checkpoint(path: Path) -> Path:
    return path.with_suffix(path.suffix + ".prev")


def has_checkpoint(run_dir: Path) -> bool:
    """Whether a run directory holds a checkpoint to resume or evaluate (the newest, or its `.prev`)."""
    ckpt_path = Path(run_dir) / CHECKPOINT
    return ckpt_path.exists() or previous_checkpoint(ckpt_path).exists()


_MISMATCH = (KeyError, RuntimeError, ValueError, TypeError, IndexError)  # what loading a foreign state raises


def _mismatch(run_dir: Path, e: Exception) -> RunDirError:
    detail = brief(str(e), 300)  # torch's load_state_dict message spans several lines: cut at a word
    return RunDirError(f"checkpoint in {run_dir} does not fit this recipe's model or data ({type(e).__name__}: {detail})",
                       hint="run with --force to discard it and start again, or restore the recipe it was trained with.")


def check_checkpoint(method: Method, resolved: Resolved, run_dir: Path, data: dict[str, DomainData], seed: int) -> bool:
    """Raise RunDirError unless `run_dir`'s checkpoint (if any) can be resumed by this recipe; True if there is one.

    Loads it into a fresh trainer on the CPU (model, optimizer, schedule, sampler, loop state, RNGs) and checks the run
    is not past `train.steps`. The runner calls this for every unfinished run before it changes the output directory,
    so a checkpoint this recipe cannot resume is refused with nothing written.
    """
    if not has_checkpoint(run_dir):
        return False
    ckpt, _ = load_checkpoint(run_dir / CHECKPOINT)
    try:
        step, steps = ckpt["loop"]["step"], resolved.recipe.train.steps
        make_trainer(method, resolved, data, seed, torch.device("cpu")).load_state_dict(ckpt)
    except _MISMATCH as e:
        raise _mismatch(run_dir, e) from None
    if step > steps:
        raise RunDirError(f"the checkpoint in {run_dir} is at step {step}, past this recipe's train.steps = {steps}",
                          hint="raise train.steps to continue it, or pass --force to discard it and start again.")
    return True


def resume_from_checkpoint(trainer: Trainer, run_dir: Path) -> list[str] | None:
    """Load a run directory's checkpoint into `trainer`; None when there is nothing to resume.

    A damaged newest checkpoint is moved aside to `checkpoint.pt.corrupt` (so the next save does not
    rotate it over the good `.prev`), and metrics recorded after the checkpoint's step are dropped:
    those steps run again, so every step appears exactly once in metrics.jsonl.

    Returns:
        Notes on what was met (a damaged file and the fallback used); empty when all was well.
    """
    if not has_checkpoint(run_dir):
        return None
    ckpt_path = run_dir / CHECKPOINT
    ckpt, notes = load_checkpoint(ckpt_path)
    if notes and ckpt_path.exists():
        os.replace(ckpt_path, ckpt_path.with_suffix(".pt.corrupt"))
    if notes:  # returned to the caller, which shows them (logging them too printed each twice)
        notes.append(f"resumed from the previous checkpoint {previous_checkpoint(ckpt_path)}")
    try:
        trainer.load_state_dict(ckpt)
    except _MISMATCH as e:
        raise _mismatch(run_dir, e) from None
    step = trainer.state.step
    dropped, damaged = truncate_jsonl(run_dir / METRICS, lambda r: isinstance(r.get("step"), int) and r["step"] <= step)
    if dropped:
        log.info("dropped %d metric records past step %d (they are recomputed)", dropped, step)
    if damaged:
        notes.append(f"{run_dir / METRICS}: {damaged} damaged line(s) before its last, dropped: those records are lost")
    return notes


def apply_optimizer_settings(trainer: Trainer, lr: float, weight_decay: float) -> list[str]:
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
