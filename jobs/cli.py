"""The `tsm` command line.

Each command group lives in its own module under `jobs/` and is registered
here. Command modules import torch, ray and mlflow inside their functions so
that `tsm --help` and a mistyped flag answer at once.

The conventions (see `jobs.console`): `-h` and `--help` on every command,
`tsm --version`, results on stdout and nothing else, and every error as one
line on stderr: a usage error (unknown option, missing argument, bad value)
exits 2 and names the help to read; an unexpected failure exits 1 and names
the log file holding its traceback.
"""

from __future__ import annotations

import contextlib
import sys
import traceback

import typer
from typer.core import TyperGroup

from jobs import demo as demo_cmd
from jobs import evaluate as evaluate_cmd
from jobs import label as label_cmd
from jobs import model_cmd, models_cmd
from jobs import synth as synth_cmd
from jobs import train as train_cmd
from jobs.console import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, TsmCommand, log_file

HELP_OPTIONS = ["-h", "--help"]


def _folded(text: str) -> str:
    return " ".join(str(text).split())


def usage_line(error: typer.TyperException) -> str:
    """`error: what (see tsm CMD -h)`: a usage error (exit code 2) as one line."""
    ctx = getattr(error, "ctx", None)
    where = f"{ctx.command_path} -h" if ctx is not None else "tsm -h"
    if type(error).__name__ == "NoSuchOption":
        option = error.option_name
        what = f"no such option {option}"
        close = [p for p in (error.possibilities or []) if p != option]
        if close:
            what += f"; did you mean {' or '.join(close)}?"
    else:
        what = _folded(error.format_message()).rstrip(".")
        what = what[:1].lower() + what[1:]
    return f"error: {what} (see {where})"


class TsmGroup(TyperGroup):
    """The root group: turns every failure into one line on stderr (no usage box, no traceback).

    Typer's errors (its own copy of click's) are `typer.TyperException`s; usage
    errors among them have exit code 2.
    """

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True,
             **extra):
        argv = list(sys.argv[1:] if args is None else args)
        try:
            rv = super().main(args=argv, prog_name=prog_name, complete_var=complete_var,
                              standalone_mode=False, **extra)
            code = rv if isinstance(rv, int) else 0
        except typer.TyperException as e:
            code = e.exit_code
            if type(e).__name__ == "NoArgsIsHelpError":  # the help was printed while made
                message = e.format_message().strip()
                if message:
                    typer.echo(message)
            elif code == EXIT_BAD_INPUT:
                typer.echo(usage_line(e), err=True)
            else:
                typer.echo(f"error: {_folded(e.format_message())}", err=True)
        except typer.Abort:
            typer.echo("error: interrupted", err=True)
            code = EXIT_INTERRUPTED
        except Exception as e:  # a bug or an unforeseen failure: one line and the log
            code = unexpected(e, argv)
        if not standalone_mode:
            return code
        sys.exit(code)


def unexpected(error: BaseException, argv: list[str]) -> int:
    """Write the traceback to a log file, print one line naming it; returns the exit code."""
    from pipeline.errors import one_line

    command = next((a for a in argv if not a.startswith("-")), "cli")
    path = log_file(command if command.isidentifier() else "cli")
    try:
        with open(path, "a") as log:
            log.write(f"tsm {' '.join(argv)}\n")
            traceback.print_exception(error, file=log)
        where = f"details: {path}"
    except OSError:
        where = "no log file could be written"
    typer.echo(f"error: {one_line(error, with_type=True)} ({where})", err=True)
    return EXIT_FAILED


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            number = version("tsm-labeller")
        except PackageNotFoundError:  # run from a checkout that was never installed
            number = "unknown (not installed)"
        typer.echo(f"tsm {number}")
        raise typer.Exit()


app = typer.Typer(
    name="tsm",
    cls=TsmGroup,
    help="Label videos at scale with TSM (Temporal Shift Module).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": HELP_OPTIONS},
)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Label videos at scale with TSM (Temporal Shift Module)."""


app.add_typer(synth_cmd.app, name="data")
app.command("train", cls=TsmCommand)(train_cmd.command)
app.command("evaluate", cls=TsmCommand)(evaluate_cmd.command)
app.add_typer(models_cmd.app, name="models")
app.add_typer(model_cmd.app, name="model", hidden=True)  # deprecated: `tsm models`
app.command("demo", cls=TsmCommand)(demo_cmd.command)
app.command("label", cls=TsmCommand)(label_cmd.label)


def main() -> None:
    """Console-script entry point.

    Once the command is done the process ends at once: what Python would still do is tear
    down its modules one by one, and with torch, Ray and MLflow loaded that alone took ~2 s
    after each `tsm label` (docs/performance.md). Everything that matters at exit still
    runs first: threads are joined and the atexit hooks run (Ray's shutdown, logging's flush,
    temporary files), then the streams are flushed.
    """
    try:
        app()
        code = 0
    except SystemExit as e:  # how click ends every command, the good and the bad
        code = e.code
    if isinstance(code, str):  # sys.exit("message"): printed, exit status 1
        print(code, file=sys.stderr)
        code = 1
    end_process(code or 0)


def end_process(code: int) -> None:
    """Exit with `code` as Python would, less the module teardown (see `main`)."""
    import atexit
    import os
    import threading

    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed pipe: nothing more can be said
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
