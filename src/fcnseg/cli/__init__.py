"""The `fcnseg` command.

Every module in this package that defines ``register(subparsers)`` contributes one subcommand
(models.py -> `fcnseg models`, train.py -> `fcnseg train`, ...). ``register`` adds its parser and
sets ``func=<callable(args) -> int>``. Errors a user can cause are raised as FcnsegError and are
printed here on one line, with exit status 2 and no traceback. Logging (progress lines, warnings,
summaries: the "fcnseg" logger tree) is configured here, once: see fcnseg.logs.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import pkgutil
import sys

from fcnseg.errors import FcnsegError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
    parser = build_parser()
    args = parser.parse_args(argv)
    from fcnseg.logs import configure

    configure()
    try:
        return int(args.func(args) or 0)
    except FcnsegError as exc:
        print(f"fcnseg {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fcnseg {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        # Disk full, permission denied, ... anywhere below: one line, never a traceback.
        if exc.errno in (errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EDQUOT, errno.EPERM):
            where = f" {exc.filename}" if exc.filename else ""
            print(f"fcnseg {args.command}: error: cannot write{where}: {exc.strerror}; "
                  "free disk space or choose a writable location", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
