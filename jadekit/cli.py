"""The `jadekit` command: a thin typer layer over the library; it alone decides how things look."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Column, Table

from jadekit.errors import JadekitError, first_line

app = typer.Typer(add_completion=False, no_args_is_help=True, help="JADE: borrow strength from a large labelled dataset.")
out = Console()
err = Console(stderr=True)

RecipeArg = Annotated[Path, typer.Argument(help="A TOML recipe, e.g. recipes/smoke.toml.")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="Override a recipe value: --set train.lr=3e-4 (repeatable).")
]


DEBUG_ENV = "JADEKIT_DEBUG"


def _say(message: str, hint: str | None) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True, markup=True)
    if hint:
        err.print(f"[bold]fix:[/] {hint}", highlight=False, soft_wrap=True)


def _debugging() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


INTERRUPTED = ("interrupted by Ctrl-C", "run the command again.")
RUN_ABORTED = ("aborted by Ctrl-C without writing a checkpoint",
               "any earlier checkpoint is kept; run the same command again to continue from it "
               "(press Ctrl-C once to stop cleanly).")


@contextlib.contextmanager
def user_errors(interrupted: tuple[str, str] = INTERRUPTED) -> Iterator[None]:
    """Turn every failure into one clear message and an exit code, never a traceback.

    Exit codes: 2 user error (recipe, data, plugin, output directory, disk), 3 training diverged,
    130 interrupted (`interrupted`: what to say then), 1 unexpected internal error (set JADEKIT_DEBUG=1
    to see its traceback).
    """
    try:
        yield
    except JadekitError as e:
        if _debugging():  # e.g. a plugin's own bug behind "failed to load": its traceback, then the message
            traceback.print_exception(e)
        _say(escape(e.message), escape(e.hint) if e.hint else None)
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        _say(*interrupted)
        raise typer.Exit(130) from None
    except OSError as e:  # full disk, read-only or vanished directory, permission denied
        where = f" ({e.filename})" if e.filename else ""
        _say(escape(f"cannot read or write a file{where}: {e.strerror or e}"),
             "check free space and permissions of the output directory and data root; completed checkpoints are kept.")
        raise typer.Exit(2) from None
    except (typer.Exit, typer.Abort):  # recent typer (0.29 here) vendors its own click: name typer's classes
        raise
    except Exception as e:  # a bug in jadekit or in a plugin: say so briefly, keep the traceback for debugging
        if _debugging():
            raise
        _say(escape(f"unexpected {type(e).__name__}: {first_line(e)}"),
             f"this is a bug in jadekit or a plugin; rerun with {DEBUG_ENV}=1 to see the traceback and report it.")
        raise typer.Exit(1) from None


def _load(recipe: Path, overrides: list[str] | None):
    from jadekit.build import load_resolved

    return load_resolved(recipe, overrides)


@app.command()
def check(recipe: RecipeArg, set_: SetOpt = None) -> None:
    """Validate a recipe, resolve every plugin it names and build each method's model (no data is read)."""
    from jadekit.trainer import build_checked_model

    with user_errors():
        resolved = _load(recipe, set_)
        for method in resolved.recipe.experiment.methods:  # backbone params that cannot build fail here, not in `run`
            build_checked_model(method, resolved)
    r = resolved.recipe
    out.print(f"[green]ok[/] {recipe}: {r.experiment.name}: methods {', '.join(r.experiment.methods)}, "
              f"seeds {r.experiment.seeds}; primary {resolved.primary.name} {resolved.primary.info.image_shape}, "
              f"auxiliary {resolved.auxiliary.name} {resolved.auxiliary.info.image_shape}, "
              f"{len(resolved.class_names)} classes", highlight=False)


@app.command()
def describe(
    recipe: RecipeArg,
    set_: SetOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Parameter count of each module of each method of a recipe."""
    from jadekit.build import parameter_counts
    from jadekit.trainer import build_checked_model

    with user_errors():
        resolved = _load(recipe, set_)
        counts = {m: parameter_counts(build_checked_model(m, resolved)) for m in resolved.recipe.experiment.methods}
    if as_json:
        print(json.dumps(counts, indent=2))
        return
    modules = ["primary_encoder", "auxiliary_encoder", "primary_decoder", "auxiliary_decoder", "classifier", "total"]
    table = Table("module", *counts, title=f"parameters: {recipe}")
    for mod in modules:
        table.add_row(mod, *(f"{c[mod]:,}" if mod in c else "-" for c in counts.values()))
    out.print(table)


class ProgressBar:
    """A rich progress bar fed by loop events (one task per run)."""

    def __init__(self, progress: Progress, method: str, seed: int, steps: int) -> None:
        self.progress = progress
        self.task = progress.add_task(f"{method} seed {seed}", total=steps, info="")
        self.loss = self.val = ""

    def on_log(self, step: int, terms: dict[str, float]) -> None:
        self.loss = f"loss {terms['total']:.3f}"
        self.progress.update(self.task, completed=step, info=self.loss + self.val)

    def on_validate(self, step: int, metrics: dict[str, float], improved: bool) -> None:
        balanced = metrics.get("balanced_accuracy")
        self.val = f"  val acc {metrics['accuracy']:.3f}" + (f" (balanced {balanced:.3f})" if balanced is not None else "")
        self.progress.update(self.task, info=self.loss + self.val)  # now: the last validation has no log after it

    def on_checkpoint(self, state) -> None:
        pass


@app.command()
def run(
    recipe: RecipeArg,
    set_: SetOpt = None,
    resume: Annotated[bool, typer.Option(help="Continue unfinished runs, even if the recipe changed.")] = False,
    force: Annotated[bool, typer.Option(help="Discard existing runs in the output directory.")] = False,
    jobs: Annotated[int, typer.Option(
        min=1, help="Train this many runs at a time, each in its own process (CPU threads are split between them; "
        "with device cuda they spread over the visible GPUs).")] = 1,
) -> None:
    """Train every method x seed of a recipe and write run directories and the summary."""
    from jadekit.parallel import STOP_SIGNALS, StopOnSignal
    from jadekit.runner import RunEvents, run_recipe
    from jadekit.summary import summary_markdown

    stop = StopOnSignal(lambda: err.print("[yellow]stopping after this step (Ctrl-C again to abort without a checkpoint)…[/]"))

    def warn(notes: list[str]) -> None:
        for note in notes:
            err.print(f"[yellow]warning:[/] {escape(note)}", highlight=False, soft_wrap=True)

    def on_resume(method: str, seed: int, step: int, notes: list[str]) -> None:
        warn(notes)
        err.print(f"{method} seed {seed}: resuming at step {step}", highlight=False)

    def on_skip(method: str, seed: int, final: dict, notes: list[str]) -> None:
        err.print(f"{method} seed {seed}: finished earlier, skipped", highlight=False)
        warn(notes)

    def kept(width: int) -> Column:  # never cut: on a narrow terminal the bar goes first, then the end of the loss text
        return Column(no_wrap=True, min_width=width)

    with user_errors(RUN_ABORTED):
        resolved = _load(recipe, set_)
        steps, seeds = resolved.recipe.train.steps, resolved.recipe.experiment.seeds
        columns = (TextColumn("{task.description}", table_column=kept(len(f"paired seed {max(seeds)}"))),
                   BarColumn(bar_width=None, table_column=Column(ratio=1)),
                   MofNCompleteColumn(table_column=kept(len(f"{steps}/{steps}"))),
                   TimeElapsedColumn(table_column=kept(7)), TimeRemainingColumn(table_column=kept(7)),
                   TextColumn("{task.fields[info]}", table_column=Column(ratio=3, no_wrap=True)))
        previous = {s: signal.signal(s, stop) for s in STOP_SIGNALS}
        # a log file or pipe has no width: give the lines room there, or the loss and validation text is cut at 80
        progress = Progress(*columns, console=err if err.is_terminal else Console(stderr=True, width=160),
                            transient=False)

        def bars(method: str, seed: int, steps: int) -> list[ProgressBar]:
            if not progress.live.is_started:  # shown from the first run on: an input error before it leaves no blank line
                progress.start()
            return [ProgressBar(progress, method, seed, steps)]

        events = RunEvents(
            callbacks_for=bars,
            on_resume=on_resume,
            on_skip=on_skip,
            on_done=lambda m, s, f: progress.console.print(
                f"{m} seed {s}: primary test error {f['primary_test_error']:.2f}%"
                + (f", auxiliary {f['auxiliary_test_error']:.2f}%" if f["auxiliary_test_error"] is not None else "")
            ),
        )
        try:
            finals = run_recipe(resolved, resume=resume, force=force, events=events,
                                stop_requested=lambda: stop.requested, jobs=jobs)
        finally:
            if progress.live.is_started:
                progress.stop()
            for s, handler in previous.items():
                signal.signal(s, handler)
    out.print(summary_markdown(finals, resolved.recipe.experiment.name), highlight=False, markup=False, soft_wrap=True)
    out.print(f"written to {resolved.recipe.experiment.output_dir}", highlight=False)


def _register_subcommands() -> None:
    from jadekit.commands import evaluate, plugins

    plugins.register(app)
    evaluate.register(app)


_register_subcommands()


def main() -> None:
    """Console-script entry point."""
    app()
