"""The training loop: a plain function that emits events to callbacks."""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from jadekit.engine.models import Batch, LossWeights
from jadekit.errors import Interrupted, TrainingDiverged


@dataclass
class LoopState:
    """What the loop carries between steps; checkpointed whole for exact resume."""

    step: int = 0
    best_score: tuple[float, ...] | None = None  # (val accuracy, -val NLL, val balanced accuracy): higher is better
    best_step: int = -1
    best_model: dict[str, torch.Tensor] | None = None

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "best_score": list(self.best_score) if self.best_score else None,
            "best_step": self.best_step,
            "best_model": self.best_model,
        }

    @classmethod
    def from_state_dict(cls, d: dict) -> LoopState:
        score = d.get("best_score")
        return cls(d["step"], tuple(score) if score else None, d["best_step"], d.get("best_model"))


class Callback:
    """Receives loop events; override what you need (all default to nothing)."""

    def on_log(self, step: int, terms: dict[str, float]) -> None: ...

    def on_validate(self, step: int, metrics: dict[str, float], improved: bool) -> None: ...

    def on_checkpoint(self, state: LoopState) -> None: ...


@dataclass(frozen=True)
class LoopPlan:
    """How long to train and how often to log, validate and checkpoint."""

    steps: int
    eval_every: int
    checkpoint_every: int
    log_every: int = 1
    autocast_dtype: torch.dtype | None = None  # e.g. torch.bfloat16
    device_type: str = "cpu"
    select: str = "val_accuracy"  # weights kept: best "val_accuracy", "val_balanced_accuracy" (ties: NLL), best
    # "val_nll" (ties: accuracy), or "last"

    def better(self, score: tuple[float, ...], than: tuple[float, ...] | None) -> bool:
        """Whether weights validated at (accuracy, -NLL, balanced accuracy) replace the kept ones (always, for "last").

        A score without balanced accuracy (kept by jadekit 0.3, or from a `validate` that does not report it) counts
        as the lowest there.
        """
        if than is None or self.select == "last":
            return True
        order = {"val_accuracy": (0, 1), "val_nll": (1, 0), "val_balanced_accuracy": (2, 1)}[self.select]

        def key(s: tuple[float, ...]) -> tuple[float, ...]:
            return tuple(s[i] if i < len(s) else -math.inf for i in order)

        return key(score) > key(than)


@dataclass
class _Pending:
    """Loss values kept on the device between host syncs."""

    steps: list[int] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    draw_batch: Callable[[], Batch],
    weights_at: Callable[[int], LossWeights],
    validate: Callable[[], dict[str, float]],
    plan: LoopPlan,
    state: LoopState | None = None,
    callbacks: Sequence[Callback] = (),
    stop_requested: Callable[[], bool] = lambda: False,
) -> LoopState:
    """Train `model` from `state.step` to `plan.steps`, keeping the best validated weights.

    Raises:
        TrainingDiverged: a loss term became NaN/inf (names the term and the step).
        Interrupted: `stop_requested()` turned true; a checkpoint event was emitted first.
    """
    state = state or LoopState()
    names: list[str] | None = None
    pending = _Pending()

    def flush() -> None:
        if not pending.values:
            return
        rows = torch.stack(pending.values).float().tolist()  # the one host sync per window
        for step, row in zip(pending.steps, rows, strict=True):
            bad = [n for n, v in zip(names, row, strict=True) if not torch.isfinite(torch.tensor(v))]
            if bad:
                raise TrainingDiverged(
                    f"loss term '{bad[0]}' became {row[names.index(bad[0])]} at step {step}",
                    hint=_DIVERGED_HINT,
                )
        last = dict(zip(names, rows[-1], strict=True))
        for cb in callbacks:
            cb.on_log(pending.steps[-1], last)
        pending.steps.clear()
        pending.values.clear()

    autocast = (
        torch.autocast(plan.device_type, dtype=plan.autocast_dtype)
        if plan.autocast_dtype is not None
        else contextlib.nullcontext()
    )
    while state.step < plan.steps:
        model.train()
        batch = draw_batch()
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            terms = model.loss_terms(batch, weights_at(state.step))
        terms["total"].backward()
        optimizer.step()
        scheduler.step()
        state.step += 1
        names = names or list(terms)
        pending.steps.append(state.step)
        pending.values.append(torch.stack([t.detach().float() for t in terms.values()]))

        at_end = state.step == plan.steps
        validating = state.step % plan.eval_every == 0 or at_end
        checkpointing = state.step % plan.checkpoint_every == 0 or at_end
        stopping = stop_requested()
        if state.step % plan.log_every == 0 or validating or checkpointing or stopping:
            flush()
        if validating:
            metrics = validate()
            score = (metrics["accuracy"], -metrics["nll"])
            if "balanced_accuracy" in metrics:  # optional: a `validate` of one's own may not report it
                score += (metrics["balanced_accuracy"],)
            improved = plan.better(score, state.best_score)
            if improved:
                state.best_score, state.best_step = score, state.step
                state.best_model = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            for cb in callbacks:
                cb.on_validate(state.step, metrics, improved)
        if checkpointing or stopping:
            _check_weights(model, state.step)  # never checkpoint weights that are already broken
            for cb in callbacks:
                cb.on_checkpoint(state)
        if stopping and not at_end:
            raise Interrupted(f"stopped at step {state.step}; a checkpoint was written", hint="resume with --resume.")
    return state


def _check_weights(model: nn.Module, step: int) -> None:
    """Raise TrainingDiverged if any parameter is NaN/inf (finite losses can still give broken updates)."""
    bad = [name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        raise TrainingDiverged(
            f"parameter '{bad[0]}' became non-finite at step {step} (the loss terms were still finite)",
            hint=_DIVERGED_HINT,
        )


_DIVERGED_HINT = "lower train.lr, add loss.kl_warmup_steps (KL warm-up), or lower the weight of that term"


def restore_best(model: nn.Module, state: LoopState) -> None:
    """Load the best validated weights into `model` (no-op when nothing was validated)."""
    if state.best_model is not None:
        model.load_state_dict(copy.deepcopy(state.best_model))
