"""`jadekit run --jobs N`: a recipe's runs N at a time, each (method, seed) in a worker process.

These models are small: one run leaves most of a many-core CPU or a GPU idle, so several runs
side by side finish a study sooner than one run with every thread. Each worker keeps its own
data cache and trains one run after another; the parent relays progress to the CLI's
callbacks, and on Ctrl-C, SIGTERM or a failed run tells every worker to checkpoint and stop.
A run trains exactly as it would alone with the same device and thread count.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import queue
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from time import monotonic, sleep
from typing import TYPE_CHECKING, Any

import torch

from jadekit.engine.loop import Callback
from jadekit.errors import RESUME_HINT, Interrupted, JadekitError, first_line

if TYPE_CHECKING:
    from jadekit.config import Method, Recipe
    from jadekit.runner import RunEvents

LONGEST_FIRST = ("jade", "paired", "single")  # two VAEs, two encoders, one encoder
RELAY_SECONDS = 0.25  # a worker forwards training progress at most this often per run
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}

_worker: dict[str, Any] = {}  # the state of this process when it is a worker (set by _start_worker)


class StopOnSignal:
    """Handler for `STOP_SIGNALS`, in the CLI and in each worker: the first signal sets `requested` (the run
    checkpoints and stops after its current step); a second Ctrl-C aborts at once with KeyboardInterrupt."""

    def __init__(self, on_first: Callable[[], None] = lambda: None) -> None:
        self.requested = False
        self._on_first = on_first

    def __call__(self, signum: int, frame: object) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self._on_first()


def worker_devices(device: torch.device, jobs: int) -> list[str]:
    """One device name per worker: a plain `cuda` spreads the workers over every visible GPU."""
    if device.type == "cuda" and device.index is None and torch.cuda.device_count() > 1:
        return [f"cuda:{i % torch.cuda.device_count()}" for i in range(jobs)]
    return [str(device)] * jobs


def train_in_workers(
    recipe: Recipe,
    pending: Sequence[tuple[Method, int]],
    jobs: int,
    device: torch.device,
    events: RunEvents,
    stop_requested: Callable[[], bool],
) -> dict[tuple[Method, int], dict]:
    """Train `pending` runs, `jobs` at a time; return each run's final metrics.

    Raises:
        JadekitError: the first run that failed, after the others checkpointed and stopped.
        Interrupted: `stop_requested()` turned true; every started run wrote a checkpoint first.
    """
    jobs = min(jobs, len(pending))
    context = multiprocessing.get_context("spawn")  # CUDA cannot be used in forked children
    messages, stop, slots = context.Queue(), context.Event(), context.Queue()
    for slot in range(jobs):
        slots.put(slot)
    threads = recipe.train.threads or max(1, torch.get_num_threads() // jobs)
    todo = sorted(pending, key=lambda run: LONGEST_FIRST.index(run[0]))  # no worker idles while a long run ends
    running: dict[Future, tuple[Method, int]] = {}
    callbacks: dict[tuple[Method, int], Sequence[Callback]] = {}
    finals: dict[tuple[Method, int], dict] = {}
    stopped: list[str] = []
    failures: list[BaseException] = []
    lost: list[str] = []  # runs in flight when a worker process died: the pool fails them all
    worker_died = False
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_start_worker,
                             initargs=(recipe, slots, worker_devices(device, jobs), threads, stop, messages)) as pool:
        try:
            while todo or running:
                if stop_requested():
                    stop.set()
                with _signals_blocked():  # a worker starting up (importing torch) cannot take a Ctrl-C yet
                    while todo and len(running) < jobs and not stop.is_set():
                        try:
                            future = pool.submit(_train, *todo[0])
                        except BrokenProcessPool:  # a worker died since the last look (its run's future says which)
                            worker_died = True
                            stop.set()
                            break
                        method, seed = running[future] = todo.pop(0)
                        callbacks[(method, seed)] = events.callbacks_for(method, seed, recipe.train.steps)
                if not running:
                    break
                done, _ = wait(running, timeout=RELAY_SECONDS, return_when=FIRST_COMPLETED)
                _relay(messages, callbacks, events)
                for future in done:
                    method, seed = running.pop(future)
                    try:
                        finals[(method, seed)] = final = future.result()
                    except Interrupted as e:  # also a signal to this worker alone: the whole study stops
                        stopped.append(e.message)
                        stop.set()
                    except BrokenProcessPool:
                        lost.append(f"{method} seed {seed}")
                        worker_died = True
                        stop.set()
                    except BaseException as e:  # noqa: BLE001 - re-raised below, once the other workers have stopped
                        failures.append(e)
                        stop.set()
                    else:
                        events.on_done(method, seed, final)
        finally:
            stop.set()  # also on a second Ctrl-C (KeyboardInterrupt here): the workers checkpoint and stop
    _relay(messages, callbacks, events)
    others = sorted(stopped + [f"{run}: its worker process died; its last checkpoint is kept" for run in lost])
    others += [first_line(e) for e in failures[1:]] + ([f"{len(todo)} run(s) not started"] if todo else [])
    if failures:
        if others and isinstance(failures[0], JadekitError):  # the failure's own message, then what became of the rest
            failures[0].message += "\nthe other runs:\n" + "\n".join(f"  {line}" for line in others)
        raise failures[0]
    if worker_died and not stop_requested():
        raise JadekitError("a worker process died (killed, e.g. for lack of memory)"
                           + (f" while training {', '.join(sorted(lost))}" if lost else ""),
                           hint="finished runs and checkpoints are kept: run the recipe again, with fewer --jobs.")
    if others:
        raise Interrupted("stopped:\n" + "\n".join(f"  {line}" for line in others), hint=RESUME_HINT)
    return finals


@contextmanager
def _signals_blocked() -> Iterator[None]:
    """Hold SIGINT/SIGTERM back while workers are spawned: they inherit the mask and take the signals once
    their handlers are in place (`_start_worker`), instead of dying with a traceback mid-import."""
    if not hasattr(signal, "pthread_sigmask"):  # Windows
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _relay(messages, callbacks: dict[tuple[Method, int], Sequence[Callback]], events: RunEvents) -> None:
    """Hand every event the workers sent so far to the parent's callbacks."""
    while True:
        try:
            kind, method, seed, *args = messages.get_nowait()
        except queue.Empty:
            return
        if kind == "resume":
            events.on_resume(method, seed, *args)
            continue
        for callback in callbacks.get((method, seed), ()):
            getattr(callback, kind)(*args)


class _Forwarder(Callback):
    """A worker's callback: sends the run's progress to the parent, training steps at most every RELAY_SECONDS."""

    def __init__(self, messages, method: Method, seed: int, steps: int) -> None:
        self.messages, self.method, self.seed, self.steps = messages, method, seed, steps
        self.last = 0.0

    def on_log(self, step: int, terms: dict[str, float]) -> None:
        now = monotonic()
        if now - self.last >= RELAY_SECONDS or step == self.steps:
            self.last = now
            self.messages.put(("on_log", self.method, self.seed, step, terms))

    def on_validate(self, step: int, metrics: dict[str, float], improved: bool) -> None:
        self.messages.put(("on_validate", self.method, self.seed, step, metrics, improved))


def _start_worker(recipe: Recipe, slots, devices: list[str], threads: int, stop, messages) -> None:
    """Set up one worker: signals, threads, device, the resolved recipe and a data cache."""
    from jadekit.build import resolve
    from jadekit.runner import DataCache

    _worker["stop_signal"] = on_signal = StopOnSignal()
    for s in STOP_SIGNALS:
        signal.signal(s, on_signal)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    messages.cancel_join_thread()  # exit even if a killed sibling left the queue's lock taken
    threading.Thread(target=_exit_with_parent, args=(on_signal,), daemon=True).start()
    torch.set_num_threads(threads)
    _worker.update(stop=stop, messages=messages, training=False)
    try:
        _worker["device"] = device = torch.device(devices[slots.get()])
        if device.type == "cuda":
            torch.cuda.set_device(device)
        _worker["resolved"] = resolved = resolve(recipe)
        _worker["cache"] = DataCache(resolved)
    except Exception as e:  # noqa: BLE001 - reported by the first run this worker takes, not as a broken pool
        _worker["error"] = e


def _exit_with_parent(on_signal: StopOnSignal) -> None:
    """Wait for the parent to die (SIGKILL, say: it could not tell the workers to stop); then stop this worker's run at
    its next step, with a checkpoint, and exit. Without this an orphan trains on beside the rerun the user starts."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return
    parent.join()
    on_signal.requested = True
    while _worker.get("training"):
        sleep(0.2)
    os._exit(130)


def _train(method: Method, seed: int) -> dict:
    """Train one run in this worker (see `jadekit.runner.train_one`)."""
    from jadekit.runner import run_dir_for, train_one

    w = _worker
    if "error" in w:
        raise w["error"]
    messages, recipe = w["messages"], w["resolved"].recipe

    def stop_requested() -> bool:
        return w["stop"].is_set() or w["stop_signal"].requested

    w["training"] = True  # before the stop check: `_exit_with_parent` then never exits mid-run
    try:
        if stop_requested():
            raise Interrupted(f"{method} seed {seed}: not started")
        return train_one(
            method, seed, w["resolved"], w["cache"], run_dir_for(recipe.experiment.output_dir, method, seed), w["device"],
            [_Forwarder(messages, method, seed, recipe.train.steps)], stop_requested,
            on_resume=lambda step, notes: messages.put(("resume", method, seed, step, notes)),
        )
    except Exception as e:
        try:  # the parent must be able to rebuild it; a plugin's exception may not allow that
            pickle.loads(pickle.dumps(e))
        except Exception:  # noqa: BLE001
            raise RuntimeError(f"{type(e).__name__}: {e}") from None
        raise
    finally:
        w["training"] = False
