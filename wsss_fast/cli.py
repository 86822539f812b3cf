"""The ``wsss-fast`` command line (also ``python -m wsss_fast``).

Each command lives in a module of :data:`COMMAND_MODULES` that exposes
``add_parser(subparsers)``: it calls ``subparsers.add_parser(NAME, help=...)``
(one or more times), adds the arguments, and sets ``func`` with
``set_defaults(func=run)``, where ``run(args)`` returns an exit status or
None for success. A new pipeline stage adds a command by writing such a module
and listing it here. Modules are imported whenever the parser is built, so
they import their heavy dependencies inside ``run``.

Errors that describe the user's input (:class:`wsss_fast.errors.WsssFastError`)
are printed as one line and exit with status 2, without a traceback; errors
of the file system (OSError: permissions, a full disk) as one line with
status 1 (``WSSS_FAST_TRACEBACK=1`` shows the traceback). A command whose
trailing positionals may follow its options (``run CONFIG --check k=v``)
names their destination with ``set_defaults(trailing_positionals=DEST)``.

Before anything imports torch, :func:`main` sets OpenMP's environment
(``OMP_WAIT_POLICY=PASSIVE`` unless the user chose a wait policy), and before
a command runs it sets torch's threads from the cores this process may use
and keeps freed memory for reuse (:mod:`wsss_fast.cpu`).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from pathlib import Path
from typing import Sequence

from .errors import WsssFastError

COMMAND_MODULES = (
    "wsss_fast.commands.make_demo_data",
    "wsss_fast.commands.evaluate",
    "wsss_fast.commands.report",
    "wsss_fast.commands.train_cls",
    "wsss_fast.commands.make_cam",
    "wsss_fast.commands.train_refine",
    "wsss_fast.commands.make_labels",
    "wsss_fast.commands.saliency",
    "wsss_fast.commands.train_seg",
    "wsss_fast.commands.infer_seg",
    "wsss_fast.commands.run",
    "wsss_fast.commands.demo",
    "wsss_fast.commands.affinity",
    "wsss_fast.commands.irn",
)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="wsss-fast", description="Weakly-supervised semantic segmentation from image-level labels.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMAND_MODULES:
        importlib.import_module(module).add_parser(subparsers)
    return parser


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings of wsss-fast's own code as one line naming the program
    (not the source line that issued it); others as Python writes them."""
    if Path(filename).resolve().is_relative_to(Path(__file__).resolve().parent):
        return f"wsss-fast: warning: {message}\n"
    return _python_format_warning(message, category, filename, lineno, line)


_python_format_warning = warnings.formatwarning


def main(argv: Sequence[str] | None = None) -> int:
    from .cpu import configure_torch, prepare_environment

    if "torch" not in sys.modules:  # libgomp reads its environment when torch loads it
        prepare_environment()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    trailing = getattr(args, "trailing_positionals", None)  # e.g. run's KEY=VALUE overrides
    if extra and trailing and not any(item.startswith("-") for item in extra):
        getattr(args, trailing).extend(extra)  # positionals given after an option (run CONFIG --check k=v)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    warnings.formatwarning = _format_warning
    try:
        configure_torch()
        status = args.func(args)
    except WsssFastError as exc:
        print(f"wsss-fast {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the file system refused (permissions, full disk, a file where a folder goes)
        if os.environ.get("WSSS_FAST_TRACEBACK"):
            raise
        print(f"wsss-fast {args.command}: error: {exc} (WSSS_FAST_TRACEBACK=1 shows where)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"wsss-fast {args.command}: interrupted (finished outputs are complete; "
              "run again to resume)", file=sys.stderr)
        return 130
    return 0 if status is None else int(status)
