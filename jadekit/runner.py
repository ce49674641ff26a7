"""Runs a recipe: every method x seed into its own run directory, then the Table-1 summary."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import tomli_w
import torch
from filelock import FileLock, Timeout
from pydantic import ValidationError

from jadekit.build import DOMAINS, Resolved, parameter_counts
from jadekit.config import DEVICE_NAMES, METHODS, Method, Recipe, changed_keys, is_device_name, recipe_to_dict
from jadekit.data.base import ImageSet
from jadekit.data.prepare import DomainData, fingerprint, load_split, prepare_domain
from jadekit.engine.evaluate import classification_metrics, predict_logits
from jadekit.engine.loop import Callback, LoopPlan, fit, restore_best
from jadekit.errors import (
    RESUME_HINT,
    DataError,
    Interrupted,
    JadekitError,
    MissingFilesError,
    RunDirError,
    TrainingDiverged,
)
from jadekit.io import atomic_write_json, atomic_write_text, read_json_object, refuse_file_as_output_dir
from jadekit.provenance import cpu_capability, versions
from jadekit.summary import write_summary
from jadekit.trainer import (
    CHECKPOINT,
    METRICS,
    Checkpointer,
    MetricsWriter,
    apply_optimizer_settings,
    batch_drawer,
    build_checked_model,
    check_checkpoint,
    has_checkpoint,
    loss_weights,
    make_sampler,
    make_trainer,
    plugin_code_failures,
    probe_model,
    resume_from_checkpoint,
)

FINAL = "final.json"
PROVENANCE = "provenance.json"
TRAINING_LOCK = ".training.lock"  # held by the process training a run (0 bytes, left in place)


def run_dir_for(output_dir: Path, method: str, seed: int) -> Path:
    return Path(output_dir) / method / f"seed-{seed}"


def pick_device(requested: str, setting: str = "train.device") -> torch.device:
    """auto → CUDA, else MPS, else CPU; an explicit device must exist. Errors name `setting` (the recipe key, or a
    CLI option such as `--device`) and say how to set it instead."""
    choose = _device_hint(setting, "auto", "(CUDA, else MPS, else CPU)", "cpu")
    if not is_device_name(requested):
        names = DEVICE_NAMES.replace("use ", f"use {setting} " if setting.startswith("--") else f"set {setting} to ", 1)
        raise JadekitError(f"{setting} {requested!r}: unknown device", hint=f"{names}.")
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise JadekitError(f"{setting} {requested!r}: CUDA is not available on this machine", hint=choose)
    if requested.startswith("cuda:") and int(requested[5:]) >= (n := torch.cuda.device_count()):
        raise JadekitError(f"{setting} {requested!r}: this machine has {n} CUDA device(s), cuda:0 to cuda:{n - 1}",
                           hint=_device_hint(setting, "cuda", "(the first)", "cuda:N", f" with N below {n}"))
    if requested == "mps" and not torch.backends.mps.is_available():
        raise JadekitError(f"{setting} {requested!r}: MPS is not available on this machine", hint=choose)
    return torch.device(requested)


def _device_hint(setting: str, first: str, note: str, second: str, tail: str = "") -> str:
    """'use --device X (note) or --device Y…' for a CLI option, 'set key = "X" (note) or "Y"…' for a recipe key."""
    if setting.startswith("--"):
        return f"use {setting} {first} {note} or {setting} {second}{tail}."
    return f'set {setting} = "{first}" {note} or "{second}"{tail}.'


_WHICH_RUNS = ("methods", "seeds", "output_dir")  # experiment keys: which runs, and where they are written
_WHERE_RUN = ("device", "threads")  # train keys: where they run (like `--jobs`, only the last bits change)


def _identity(recipe: Recipe) -> dict:
    """What a run computes: the recipe less `_WHICH_RUNS` and `_WHERE_RUN`."""
    d = recipe_to_dict(recipe)
    for key in _WHICH_RUNS:
        d["experiment"].pop(key, None)
    for key in _WHERE_RUN:
        d["train"].pop(key, None)
    return d


def _identity_now(old: dict, recipe: Recipe) -> dict:
    """An identity recorded by an earlier jadekit (a marker's `recipe`), as this version computes it: keys added
    since take their defaults, so a new option left at its default is no change (this assumes defaults never change
    meaning: a release that changes one must treat it as a change). One this version cannot read is returned less
    the keys `_identity` leaves out."""
    unrecorded = {k: v for k, v in recipe_to_dict(recipe)["experiment"].items() if k in _WHICH_RUNS}
    experiment, train = old.get("experiment"), old.get("train")
    if not isinstance(experiment, dict) or not isinstance(train, dict):
        return old
    train = {k: v for k, v in train.items() if k not in _WHERE_RUN}  # threads: recorded until jadekit 0.3
    try:
        return _identity(Recipe.model_validate({**old, "experiment": {**experiment, **unrecorded}, "train": train}))
    except ValidationError:
        return {**old, "train": train}


def recipe_fingerprint(recipe: Recipe) -> str:
    """Identity of what a run computes (`_identity`), as a short hash."""
    return hashlib.sha256(json.dumps(_identity(recipe), sort_keys=True).encode()).hexdigest()[:16]


def recipe_changes(old: dict, new: dict, limit: int = 4) -> str:
    """'train.steps 400 -> 30, ...': the keys two recipe identities differ in (first `limit`)."""
    changes = changed_keys(old, new)
    shown = [f"{k} {json.dumps(a)} -> {json.dumps(b)}" for k, a, b in changes[:limit]]
    return ", ".join(shown) + (f" and {len(changes) - limit} more" if len(changes) > limit else "")


def run_recipe_dict(recipe: Recipe) -> dict:
    """The recipe as a run directory keeps it: each data root as the run resolved it (a relative `root`, or one taken
    from $JADEKIT_DATA or the default, made absolute), so `jadekit eval` reads the same files from anywhere."""
    d = recipe_to_dict(recipe)
    for domain in DOMAINS:
        d[domain]["root"] = str(getattr(recipe, domain).data_root().resolve())
    return d


class DataCache:
    """Loads each dataset split once per process, shared by every method and seed."""

    def __init__(self, resolved: Resolved) -> None:
        self.resolved = resolved
        self._sets: dict[tuple[str, str], ImageSet] = {}
        self._hashes: dict[str, dict] = {}

    def split(self, domain: str, split: str) -> ImageSet:
        key = (domain, split)
        if key not in self._sets:
            spec = getattr(self.resolved, domain)
            cfg = getattr(self.resolved.recipe, domain)
            self._sets[key] = load_split(spec.name, spec.adapter, spec.params, cfg, split, spec.info.image_shape,
                                          spec.info.class_names)
        return self._sets[key]

    def domain(self, domain: str, seed: int) -> DomainData:
        cfg = getattr(self.resolved.recipe, domain)
        return prepare_domain(self.split(domain, "train"), self.split(domain, "test"), cfg, seed, domain)

    def train_hashes(self) -> list[str]:
        """SHA-256 of every file the train splits (labelled subsets and validation images) were read from."""
        files = self.fingerprints()
        return sorted({files[str(f)]["sha256"] for (_, split), s in self._sets.items() if split == "train" for f in s.files})

    def fingerprints(self) -> dict[str, dict]:
        """SHA-256 and size of every file read so far (each file hashed once per process)."""
        files = tuple(dict.fromkeys(f for s in self._sets.values() for f in s.files))
        missing = tuple(f for f in files if str(f) not in self._hashes)
        self._hashes |= fingerprint(missing) if missing else {}
        return {str(f): self._hashes[str(f)] for f in files}


def evaluate_split(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, domain: str) -> dict[str, float]:
    return classification_metrics(predict_logits(model, x, domain), y)


def _check_same_data(run_dir: Path, files: dict[str, dict]) -> None:
    """A resumed run must read the data files it started on: a file at the same path with another SHA-256 than its
    provenance.json records is refused (files it no longer reads, or a moved data root, are not compared)."""
    recorded = read_json_object(run_dir / PROVENANCE).get("data_files")
    try:
        before = {f: v["sha256"] for f, v in recorded.items()}
    except (KeyError, TypeError, AttributeError):
        return  # an older (provenance written at the end) or damaged run directory: nothing to compare with
    changed = sorted(Path(f).name for f in before.keys() & files.keys() if before[f] != files[f]["sha256"])
    if changed:
        shown = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
        raise RunDirError(f"{run_dir} started training on other contents of {shown} than the data root holds now "
                          "(SHA-256 differs from its provenance.json)",
                          hint="restore the files it was trained on; if they hold the same data (re-compressed, say), "
                               "delete that run's provenance.json to accept them; or run with --force to start again.")


def _where_it_ran_before(run_dir: Path, device: torch.device) -> list[str]:
    """A note when a run resumes on another device, CPU thread count or CPU kernel set (AVX2, AVX512, ...) than its
    provenance.json records: its float sums, hence the last bits of its weights, then differ from an uninterrupted
    run's (`--jobs` splits the threads; each kernel set rounds its own way)."""
    before = read_json_object(run_dir / PROVENANCE)
    try:
        was = (str(before["device"]), int(before["threads"]))
    except (KeyError, TypeError, ValueError):
        return []
    now = (str(device), torch.get_num_threads())
    if device.type != "cpu" and was[0].split(":")[0] == device.type:  # another GPU index (--jobs spreads them): same
        return []                                                     # arithmetic; threads only shape CPU sums
    rounding = "the result equals an uninterrupted run's up to float rounding, not bit for bit"
    if was != now:
        return [f"resumed on {now[0]} with {now[1]} CPU thread(s), where it ran on {was[0]} with {was[1]}: {rounding} "
                "(set train.threads to keep them equal)"]
    versions_before = before.get("versions")
    kernels, kernels_now = versions_before.get("cpu_capability") if isinstance(versions_before, dict) else None, cpu_capability()
    if device.type == "cpu" and isinstance(kernels, str) and kernels_now is not None and kernels != kernels_now:
        return [f"resumed on a CPU with {kernels_now} kernels, where it ran with {kernels}: {rounding}"]
    return []


def _check_same_draw(run_dir: Path, drawn: dict) -> None:
    """A resumed run must train on the labelled subset it started with (indices.json), not a new draw."""
    try:
        recorded = json.loads((run_dir / "indices.json").read_text())
    except (OSError, ValueError):
        return  # an older or damaged run directory: nothing to compare with
    if recorded != drawn:
        raise RunDirError(f"{run_dir} was trained on another labelled subset than this recipe draws now "
                          "(indices.json differs: the data, the recipe's data tables or jadekit's draw changed)",
                          hint="run with --force to start again on the new draw, or restore the data and versions "
                               "it was trained with (provenance.json).")


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
        RunDirError: another process is training this run (it holds the run directory's lock).
        TrainingDiverged: a loss became NaN/inf; the message names the term, the step and the kept checkpoint.
        Interrupted: `stop_requested()` turned true; a checkpoint was written first.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    with _training_lock(run_dir):
        return _train(method, seed, resolved, cache, run_dir, device, callbacks, stop_requested, on_resume)


@contextlib.contextmanager
def _training_lock(run_dir: Path) -> Iterator[None]:
    """Hold `run_dir`'s lock (released by the OS if this process dies), or raise RunDirError if another process does."""
    lock = FileLock(run_dir / TRAINING_LOCK, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise RunDirError(f"{run_dir} is being trained by another jadekit process right now",
                          hint="let that process finish, or stop it and run again: two processes training one run "
                               "would interleave its checkpoints and metrics.") from None
    except OSError:  # a file system without locks (some network mounts), or another user's lock file: as before locks
        yield
        return
    try:
        yield
    finally:
        lock.release()


def _train(method: Method, seed: int, resolved: Resolved, cache: DataCache, run_dir: Path, device: torch.device,
           callbacks: Sequence[Callback], stop_requested: Callable[[], bool],
           on_resume: Callable[[int, list[str]], None]) -> dict:
    recipe = resolved.recipe
    t = recipe.train
    data = {d: cache.domain(d, seed).to(device) for d in DOMAINS}
    trainer = make_trainer(method, resolved, data, seed, device)
    ckpt_path = run_dir / CHECKPOINT
    notes = resume_from_checkpoint(trainer, run_dir)
    atomic_write_text(run_dir / "recipe.toml", tomli_w.dumps(run_recipe_dict(recipe)))  # on resume: what trains it on
    if notes is None:
        notes = []
        atomic_write_json(run_dir / "indices.json", {d: data[d].indices for d in DOMAINS})
        (run_dir / METRICS).unlink(missing_ok=True)
    else:
        notes += apply_optimizer_settings(trainer, t.lr, t.weight_decay)
        if not (run_dir / "indices.json").exists():  # deleted: the draw is the seed's, and the data is checked
            atomic_write_json(run_dir / "indices.json", {d: data[d].indices for d in DOMAINS})
            notes.append(f"{run_dir / 'indices.json'} was missing: rewritten from this recipe's draw for seed {seed}")
        notes += _where_it_ran_before(run_dir, device)
        on_resume(trainer.state.step, notes)
    provenance = {
        "recipe_fingerprint": recipe_fingerprint(recipe),
        "seed": seed,
        "method": method,
        "device": str(device),
        "threads": torch.get_num_threads(),  # float sums, hence the last bits of the weights, depend on it on CPU
        "versions": versions(resolved),
        "data_files": cache.fingerprints(),
        "train_files": cache.train_hashes(),  # what `jadekit eval` warns about scoring again
    }
    atomic_write_json(run_dir / PROVENANCE, provenance)  # from the start: a resume checks the data against it

    p, a = data["primary"], data["auxiliary"]

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
        select=t.select,
    )
    started = time.perf_counter()
    start_step = trainer.state.step
    checkpointer = Checkpointer(ckpt_path, trainer, recipe)
    checkpointer.last_step = start_step if has_checkpoint(run_dir) else None
    all_callbacks = [MetricsWriter(run_dir / METRICS), checkpointer, *callbacks]
    where = f"{method} seed {seed}"

    def kept() -> str:
        return (f"the last good checkpoint ({ckpt_path}, step {checkpointer.last_step}) is kept"
                if checkpointer.last_step is not None else "no checkpoint had been written yet")

    def rerun() -> str:
        return ("run the same command again: it continues from that checkpoint" if checkpointer.last_step is not None
                else "run again")

    try:
        with plugin_code_failures(resolved, lambda: f"{where}: training stopped after step {trainer.state.step}", kept,
                                  rerun):
            state = fit(trainer.model, trainer.optimizer, trainer.scheduler, batch_drawer(trainer, p, a, t),
                        loss_weights(recipe), validate,
                        plan, trainer.state, all_callbacks, stop_requested)
    except TrainingDiverged as e:
        then = ("then rerun with --resume: it continues from that checkpoint" if checkpointer.last_step is not None
                else "then rerun with --resume: the run starts over with the changed recipe")
        raise TrainingDiverged(f"{where}: {e.message}; {kept()}", hint=f"{e.hint}; {then}.") from None
    except Interrupted:
        raise Interrupted(f"{where}: stopped at step {checkpointer.last_step}; checkpoint written to {ckpt_path}",
                          hint=RESUME_HINT) from None
    elapsed = time.perf_counter() - started
    restore_best(trainer.model, state)

    with plugin_code_failures(resolved, lambda: f"{where}: evaluating on the test sets failed", kept, rerun):
        primary_test = evaluate_split(trainer.model, p.test_x, p.test_y, "primary")
        auxiliary_test = (evaluate_split(trainer.model, a.test_x, a.test_y, "auxiliary") if trainer.model.uses_auxiliary
                          else {})
    final = {
        "method": method,
        "seed": seed,
        "primary_test_error": primary_test["error"],
        "auxiliary_test_error": auxiliary_test.get("error"),
        "primary_test_balanced_accuracy": primary_test["balanced_accuracy"],
        "auxiliary_test_balanced_accuracy": auxiliary_test.get("balanced_accuracy"),
        "primary_val_accuracy": state.best_score[0] if state.best_score else None,
        "primary_val_balanced_accuracy": state.best_score[2] if state.best_score and len(state.best_score) > 2 else None,
        "best_step": state.best_step,
        "steps": state.step,
        "train_seconds_this_session": round(elapsed, 2),
        "steps_per_second": round((state.step - start_step) / elapsed, 2) if elapsed > 0 else None,
        "n_primary": {"train": len(p.train_y), "val": len(p.val_y), "test": len(p.test_y)},
        "n_auxiliary": {"train": len(a.train_y), "val": len(a.val_y), "test": len(a.test_y)},
        "parameters": parameter_counts(trainer.model),
        "resume_notes": notes,
    }
    atomic_write_json(run_dir / FINAL, final)
    return final


def check_output_dir(recipe: Recipe, resume: bool, force: bool, claim: bool = True) -> None:
    """Refuse to mix runs of a different recipe into an existing output directory, then claim it.

    Args:
        claim: also write the directory's marker (and with `force`, discard old runs); when False only check.
    """
    out = Path(recipe.experiment.output_dir)
    marker = out / "jadekit-output.json"
    fp = recipe_fingerprint(recipe)
    refuse_file_as_output_dir(out, "experiment.output_dir", "pick another experiment.output_dir.")
    if marker.exists():
        existing = read_json_object(marker)
        if not existing and not (resume or force):
            raise RunDirError(f"{marker} is damaged or unreadable (it names no recipe), so the recipe its runs belong to "
                              "is unknown",
                              hint="pass --resume to continue its runs with this recipe (each run's checkpoint is still "
                                   "checked against it), --force to discard them, or pick another experiment.output_dir.")
        if existing.get("recipe_fingerprint") != fp and not (resume or force):
            recorded = existing.get("recipe")
            if not isinstance(recorded, dict):
                changes = f"fingerprint {existing.get('recipe_fingerprint')}, this recipe {fp}"
            else:  # recorded by another jadekit version, or really another recipe
                old = _identity_now(recorded, recipe)
                changes = recipe_changes(old, _identity(recipe)) if old != _identity(recipe) else None
        else:
            changes = None
        if changes is not None:
            raise RunDirError(
                f"{out} holds runs of a different recipe ({changes})",
                hint="pick another experiment.output_dir, pass --resume to continue them with this recipe, "
                "or --force to discard them.",
            )
    elif out.exists() and any(not _is_marker_in_flight(p, marker) for p in out.iterdir()) and not force:
        raise RunDirError(
            f"{out} exists and is not a jadekit output directory", hint="pick another experiment.output_dir, or pass --force."
        )
    if not claim:
        return
    try:
        if force:
            _discard_runs(out)
        atomic_write_json(marker, {"recipe_fingerprint": fp, "experiment": recipe.experiment.name,
                                   "recipe": _identity(recipe)})
    except OSError as e:
        raise RunDirError(f"cannot write to output directory {out}: {e.strerror}", hint="choose a writable output_dir.") from None


def _discard_runs(out: Path) -> None:
    """`--force`: delete the run directories under `out` (`<method>/seed-<n>` holding a run's files), nothing else:
    a folder of the user's that happens to be called `jade` (with `output_dir = "."`, say) is left alone. Every run's
    lock is taken first, so a run another process is training stops the whole discard before anything is deleted."""
    run_files = (CHECKPOINT, METRICS, FINAL, "recipe.toml", "indices.json")
    folders = [out / m for m in METHODS if (out / m).is_dir() and not (out / m).is_symlink()]
    runs = [run for folder in folders for run in sorted(folder.iterdir())
            if re.fullmatch(r"seed-\d+", run.name) and run.is_dir() and not run.is_symlink()
            and any((run / f).exists() for f in run_files)]
    with contextlib.ExitStack() as locks:
        for run in runs:
            locks.enter_context(_training_lock(run))
        if os.name == "nt":  # Windows cannot delete an open file: release first
            locks.close()
        for run in runs:
            shutil.rmtree(run)
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when nothing else is in it


def _is_marker_in_flight(path: Path, marker: Path) -> bool:
    """A sibling process's marker, mid atomic write: seeds started in parallel claim one directory together."""
    return path.name.startswith(f".{marker.name}.") and path.name.endswith(".tmp")


@dataclass(frozen=True)
class RunEvents:
    """Hooks the CLI passes in to show progress (the runner itself never prints)."""

    callbacks_for: Callable[[Method, int, int], Sequence[Callback]] = lambda method, seed, steps: ()
    on_resume: Callable[[Method, int, int, list[str]], None] = lambda method, seed, step, notes: None
    on_skip: Callable[[Method, int, dict, list[str]], None] = lambda method, seed, final, notes: None
    on_done: Callable[[Method, int, dict], None] = lambda method, seed, final: None


def run_recipe(
    resolved: Resolved,
    resume: bool = False,
    force: bool = False,
    events: RunEvents = RunEvents(),
    stop_requested: Callable[[], bool] = lambda: False,
    jobs: int = 1,
) -> list[dict]:
    """Run every method x seed (skipping finished runs), then write the summary.

    Args:
        jobs: train this many runs at a time, each in its own worker process (`jadekit.parallel`).
    """
    recipe = resolved.recipe
    if force and resume:
        raise RunDirError("--force and --resume ask for opposite things",
                          hint="--resume continues the runs in the output directory, --force discards them: pass one.")
    # Everything that can be wrong with the input is checked before the output directory is touched.
    device = pick_device(recipe.train.device)
    check_output_dir(recipe, resume, force, claim=False)
    if recipe.train.threads:
        torch.set_num_threads(recipe.train.threads)
    cache = DataCache(resolved)
    preflight(resolved, cache)
    runs = [(method, seed) for method in recipe.experiment.methods for seed in recipe.experiment.seeds]
    finals: dict[tuple[Method, int], dict] = {}
    skip_notes: dict[tuple[Method, int], list[str]] = {}
    as_recorded = _identity(Recipe.model_validate(run_recipe_dict(recipe)))  # data roots as run directories keep them
    for method, seed in runs if not force else ():  # --force discards every run when it claims the directory
        run_dir = run_dir_for(recipe.experiment.output_dir, method, seed)
        final = _finished(run_dir / FINAL, recipe.train.steps)
        if final is not None:
            finals[(method, seed)] = final
            changes = _trained_otherwise(run_dir, as_recorded, [d for d in DOMAINS if getattr(recipe, d).root is None])
            skip_notes[(method, seed)] = [] if changes is None else [
                f"it was trained with another recipe ({changes}): kept as trained (its recipe.toml says how) and "
                "counted in the summary; --force retrains every run with this recipe"]
        elif run_dir.is_dir():
            if (run_dir / TRAINING_LOCK).exists():  # absent: nobody trains it (and the probe adds no file)
                with _training_lock(run_dir):  # one another process is training is refused before anything is claimed
                    pass
            if has_checkpoint(run_dir):  # one that cannot resume fails here, not mid-study
                data = {d: cache.domain(d, seed) for d in DOMAINS}
                check_checkpoint(method, resolved, run_dir, data, seed)
                _check_same_draw(run_dir, {d: data[d].indices for d in DOMAINS})
                _check_same_data(run_dir, cache.fingerprints())
    check_output_dir(recipe, resume, force)
    for (method, seed), final in finals.items():
        events.on_skip(method, seed, final, skip_notes[(method, seed)])
    pending = [run for run in runs if run not in finals]
    if jobs > 1 and len(pending) > 1:
        from jadekit.parallel import train_in_workers

        finals |= train_in_workers(recipe, pending, jobs, device, events, stop_requested)
    else:
        for i, (method, seed) in enumerate(pending):
            if stop_requested():  # e.g. Ctrl-C during the last run's test evaluation: the next does not start
                raise Interrupted(f"stopped before {method} seed {seed}: {len(pending) - i} run(s) not started",
                                  hint=RESUME_HINT)
            run_dir = run_dir_for(recipe.experiment.output_dir, method, seed)
            final = train_one(method, seed, resolved, cache, run_dir, device,
                              events.callbacks_for(method, seed, recipe.train.steps), stop_requested,
                              on_resume=lambda step, notes, m=method, s=seed: events.on_resume(m, s, step, notes))
            events.on_done(method, seed, final)
            finals[(method, seed)] = final
    ordered = [finals[run] for run in runs]
    write_summary(Path(recipe.experiment.output_dir), ordered, recipe.experiment.name)
    return ordered


def _trained_otherwise(run_dir: Path, as_recorded: dict, unset_roots: list[str]) -> str | None:
    """What a finished run's own recipe.toml differs in from this recipe's identity `as_recorded` (data roots made
    absolute, as a run directory keeps them): 'train.lr 0.001 -> 0.01', or None when it is the same run (or its
    recipe.toml cannot be read: an older or damaged run directory). The roots of `unset_roots` (domains whose root
    the recipe leaves to $JADEKIT_DATA) are not compared: a copy of the data elsewhere is the same recipe."""
    try:
        trained = Recipe.model_validate(tomllib.loads((run_dir / "recipe.toml").read_text(encoding="utf-8")))
    except (OSError, ValueError):  # TOMLDecodeError, pydantic's ValidationError and UnicodeDecodeError are ValueErrors
        return None
    old = _identity(trained)
    for domain in DOMAINS:  # jadekit <= 0.4 recorded no root when it came from $JADEKIT_DATA or the default
        if old[domain].get("root") is None or domain in unset_roots:
            old[domain]["root"] = as_recorded[domain]["root"]
    return None if old == as_recorded else recipe_changes(old, as_recorded)


def _finished(path: Path, steps: int) -> dict | None:
    """The final metrics of a finished run, or None (absent, unreadable, or from a shorter run)."""
    final = read_json_object(path)
    return final if final.get("steps") == steps else None


_MISSING_FILES_HINT = ("put the missing files at the paths listed, under one data root (`root = \"...\"` in the recipe's "
                       "[primary] / [auxiliary] table or `--set primary.root=...`; else the environment variable "
                       "JADEKIT_DATA), or let them download "
                       "(`download = true` in that table, and an internet connection)")


def load_every_split(cache: DataCache) -> None:
    """Load both splits of both datasets; missing or damaged files are reported together, not one per run."""
    problems: list[DataError] = []
    for domain in DOMAINS:
        for split in ("train", "test"):
            try:
                cache.split(domain, split)
            except DataError as e:
                if all(e.message != seen.message for seen in problems):  # both splits of one file list fail alike
                    problems.append(e)
    if len(problems) == 1:
        raise problems[0]
    if problems:
        missing = [e for e in problems if isinstance(e, MissingFilesError)]  # each names its own layout: say it once
        hints = ([_MISSING_FILES_HINT] if missing else []) + list(dict.fromkeys(
            e.hint for e in problems if e.hint and e not in missing))
        raise DataError(f"{len(problems)} data problems:\n" + "\n".join(e.message for e in problems),
                        hint="; ".join(hints) or None)


def preflight(resolved: Resolved, cache: DataCache) -> None:
    """Load every split, draw every seed's subsets and build and probe every model: all input errors surface here."""
    recipe = resolved.recipe
    t = recipe.train
    load_every_split(cache)
    data = {}
    for seed in recipe.experiment.seeds:
        data = {d: cache.domain(d, seed) for d in DOMAINS}
        if set(recipe.experiment.methods) - {"single"}:  # the sampler checks the auxiliary data covers every class
            make_sampler(data, t, seed)
    for method in recipe.experiment.methods:
        model = build_checked_model(method, resolved)
        probe_model(method, model, data, resolved)
