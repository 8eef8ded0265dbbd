"""The ``infoard-deploy`` command line (Typer + rich).

Errors a user can cause print one red line and exit 2 (usage) -- never a traceback; a failed
verification gate exits 1. Set ``INFOARD_DEBUG=1`` to see tracebacks of internal errors.
"""
from __future__ import annotations

import os
import sys
from typing import Optional

import typer
from typer._click.exceptions import ClickException  # typer >= 0.29 vendors click

from . import __version__
from .commands import register_all
from .commands._common import STATE, err_console
from .errors import GateFailure, UserError

app = typer.Typer(
    name="infoard-deploy",
    help="Distil adversarially robust compact classifiers (InfoARD), export them to ONNX / TensorRT, "
    "and re-verify robustness on the deployed runtime.",
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"infoard-deploy {__version__}")
        raise typer.Exit()


@app.callback()
def _global(
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N", envvar="INFOARD_DEVICE"),
    version: Optional[bool] = typer.Option(None, "--version", callback=_version, is_eager=True, help="show the version"),
) -> None:
    from .utils import parse_device

    parse_device(device)  # fail early on a bad or unavailable device
    STATE.device_spec = device


register_all(app)


def _one_line(msg: str) -> str:
    return " ".join(str(msg).split())


def main(argv: Optional[list] = None) -> int:
    """Entry point; returns the exit code (also used by tests)."""
    command = typer.main.get_command(app)
    try:
        rv = command.main(args=argv, prog_name="infoard-deploy", standalone_mode=False)
        return int(rv) if isinstance(rv, int) else 0
    except typer.Exit as e:
        return e.exit_code
    except ClickException as e:  # usage errors: bad option, missing argument, bad value
        err_console.print(f"error: {_one_line(e.format_message())} (see --help)", soft_wrap=True, markup=False,
                          style="red")
        return 2
    except typer.Abort:
        err_console.print("[red]aborted[/red]")
        return 130
    except UserError as e:
        err_console.print("error: " + str(e), soft_wrap=True, markup=False, style="red")
        return UserError.exit_code
    except GateFailure as e:
        err_console.print("gate failed: " + _one_line(str(e)), soft_wrap=True, markup=False, style="red")
        return GateFailure.exit_code
    except KeyboardInterrupt:
        err_console.print("interrupted", style="red")
        return 130
    except MemoryError:
        err_console.print("error: out of memory; lower --batch-size", style="red")
        return 1
    except Exception as e:  # an internal error: still one line unless debugging
        if os.environ.get("INFOARD_DEBUG"):
            raise
        err_console.print(f"internal error: {type(e).__name__}: {_one_line(str(e))[:400]} "
                          "(set INFOARD_DEBUG=1 for the traceback)", soft_wrap=True, markup=False, style="red")
        return 3


def run() -> None:  # console-script entry
    sys.exit(main())


if __name__ == "__main__":
    run()
