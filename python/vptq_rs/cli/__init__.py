"""The ``vptq-rs`` command line: a thin Click layer over library functions.

Exit codes: 0 success, 2 bad input (one line on stderr naming the problem), 1 internal
failure, 130 interrupted. Each command lives in its own module and imports torch lazily,
so ``vptq-rs --help`` stays fast.
"""

from __future__ import annotations

import importlib
import logging
import sys

import click

from vptq_rs import __version__
from vptq_rs.errors import VptqError, VptqIOError

# module name -> command object name; a module per command keeps the layer thin
_COMMANDS = {
    "vptq_rs.cli.inspect_cmd": "inspect_cmd",
    "vptq_rs.cli.quantize_cmd": "quantize_cmd",
    "vptq_rs.cli.hessian_cmd": "hessian_cmd",
    "vptq_rs.cli.pack_cmd": "pack_cmd",
    "vptq_rs.cli.unpack_cmd": "unpack_cmd",
    "vptq_rs.cli.eval_cmd": "eval_cmd",
    "vptq_rs.cli.generate_cmd": "generate_cmd",
    "vptq_rs.cli.chat_cmd": "chat_cmd",
    "vptq_rs.cli.finetune_cmd": "finetune_cmd",
}


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "-V", "--version", prog_name="vptq-rs")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def cli(verbose: int) -> None:
    """Compress Hugging Face LLMs to 2-4 bits per weight with VPTQ, and run the result."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


for _module, _name in _COMMANDS.items():
    try:
        _mod = importlib.import_module(_module)
    except ModuleNotFoundError as _exc:  # a command not written yet must not break the rest
        if _exc.name != _module:
            raise
        continue
    cli.add_command(getattr(_mod, _name))


def fail(message: str, code: int = 2) -> None:
    """Print ``error: message`` on one line and exit with ``code``."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``vptq-rs`` script; maps exceptions to exit codes."""
    try:
        cli.main(args=argv, prog_name="vptq-rs", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:  # usage errors: click's own message, exit 2
        exc.show()
        sys.exit(exc.exit_code)
    except click.Abort:  # click's name for an interrupt (Ctrl-C) inside a command
        fail("interrupted", 130)
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except (ValueError, VptqIOError, FileNotFoundError, PermissionError) as exc:
        fail(" ".join(str(exc).split()) or type(exc).__name__)
    except OSError as exc:  # full disk and friends: the user's environment, not our bug
        fail(f"{exc.strerror or exc} ({exc.filename or 'no file'})")
    except VptqError as exc:
        fail(" ".join(str(exc).split()), 1)
