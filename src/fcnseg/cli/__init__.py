"""The `fcnseg` command.

Every module in this package that defines ``register(subparsers)`` contributes one subcommand
(models.py -> `fcnseg models`, train.py -> `fcnseg train`, ...). ``register`` adds its parser and
sets ``func=<callable(args) -> int>``. Errors a user can cause are raised as FcnsegError and are
printed here on one line, with exit status 2 and no traceback. Logging (progress lines, warnings,
summaries: the "fcnseg" logger tree) is configured here, once: see fcnseg.logs.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

from fcnseg.errors import FcnsegError


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: the message and where to read the usage, no usage dump.
    Subcommand parsers are of this class too (argparse creates them with the parent's class)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="fcnseg",
        description="Fully Convolutional Networks for semantic segmentation.",
    )
    from fcnseg import __version__

    parser.add_argument("--version", action="version", version=f"fcnseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "register"):
            module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run `fcnseg ARGS`; the exit status. A process started by torchrun (WORLD_SIZE > 1) ends
    here instead, once its command is done and its process group left (see
    ``engine.runtime.exit_without_teardown``)."""
    code = _main(argv)
    if _distributed():
        from fcnseg.engine.runtime import exit_without_teardown

        exit_without_teardown(code)
    return code


def _distributed() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from fcnseg.logs import configure

    configure()
    try:
        return _run_command(args)
    except FcnsegError as exc:
        if getattr(exc, "exit_code", None):  # stopped on request (engine.runtime.RunStopped), already logged
            return exc.exit_code
        print(f"fcnseg {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fcnseg {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        # Anything the file system refused, anywhere below: one line with advice fitting the cause
        # (full disk, read-only, missing folder, permission, ...), never a traceback.
        from fcnseg.files import os_error_message

        print(f"fcnseg {args.command}: error: {os_error_message(exc)}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as exc:  # torch's allocation failures are RuntimeErrors too
        from fcnseg.devices import is_out_of_memory

        if not is_out_of_memory(exc):
            raise
        print(
            f"fcnseg {args.command}: error: out of memory; use smaller images, tiles (--tile) or a "
            "smaller --batch-size",
            file=sys.stderr,
        )
        return 2


def _run_command(args: argparse.Namespace) -> int:
    """Run the subcommand. Under torchrun (WORLD_SIZE > 1) it runs inside ``fail_together``, so a fault
    on one process ends every process of every command (train, evaluate, predict) with that fault's
    one line, and the process group the command joined is left here, after that, in one place."""
    if not _distributed():
        return int(args.func(args) or 0)
    from fcnseg.engine.runtime import fail_together, shutdown_distributed

    try:
        with fail_together():
            return int(args.func(args) or 0)
    finally:
        shutdown_distributed()


if __name__ == "__main__":
    sys.exit(main())
