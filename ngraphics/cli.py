"""The `ngraphics` command line. Each verb is a thin program in `ngraphics.apps` with two functions:
`add_arguments(parser)` and `run(args) -> int`. User mistakes (`NgraphicsError`) print one line, no trace.
While a verb runs, INFO lines of the `ngraphics` loggers (each op's backend decision, from `ngraphics.ops`) go
to stderr as plain messages; importing ngraphics installs no handler."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import sys
import warnings

from ngraphics.errors import NgraphicsError

# verb -> (module in ngraphics.apps, one-line help). Literal table: what you see is what exists.
VERBS: dict[str, tuple[str, str]] = {
    "fit-image": ("fit_image", "fit an encoding + MLP to an image (instant-ngp's image demo)"),
    "profile": ("profile", "time the encoding and MLP kernels on cpu or cuda"),
    "train": ("train", "train a scene from a YAML config (default: the built-in procedural scene)"),
    "eval": ("evaluate", "test-set metrics and images of a run folder"),
    "render": ("render", "render a run along a camera path to MP4 or PNGs"),
    "view": ("view", "explore a trained run in the browser (viser)"),
    "export": ("export", "export a trained run as a file (a mesh of a surface method)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ngraphics", description="Neural graphics: encodings, NeRF, surfaces, splats.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb, (module, help_text) in VERBS.items():
        app = importlib.import_module(f"ngraphics.apps.{module}")
        p = sub.add_parser(verb, help=help_text, description=(app.__doc__ or help_text).strip().splitlines()[0])
        app.add_arguments(p)
        p.set_defaults(_app=app)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"ngraphics {version('ngraphics')}"
    except PackageNotFoundError:
        return "ngraphics (not installed)"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for verbs that start copies of themselves
    if args.verb is None:
        parser.print_help()
        return 2
    try:
        with log_to_stderr(), plain_warnings():
            return int(args._app.run(args) or 0)
    except NgraphicsError as err:
        print(f"ngraphics {args.verb}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ngraphics {args.verb}: interrupted", file=sys.stderr)
        return 130


class _BarSafeHandler(logging.StreamHandler):
    """A stream handler that prints through `tqdm.write`, so a log line never lands inside a progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001 - logging's own convention: report, never raise
            self.handleError(record)


@contextlib.contextmanager
def log_to_stderr(level: int = logging.INFO):
    """For the length of the block, records of the `ngraphics` loggers at `level` and above are written to
    stderr (the stream current at entry) as `%(message)s` lines, e.g. `grid_encode runs on torch: tensors are
    on cpu (...)`. Handler and logger level are restored afterwards (tests call `main` many times)."""
    logger = logging.getLogger("ngraphics")
    handler = _BarSafeHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.setLevel(level)
    old_level = logger.level
    if logger.getEffectiveLevel() > level:
        logger.setLevel(level)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


@contextlib.contextmanager
def plain_warnings():
    """For the length of the block, each distinct warning is printed once to stderr as `warning: <message>`
    (no category, no source line), through `tqdm.write` so it never lands inside a progress bar."""
    seen: set[str] = set()
    stream = sys.stderr

    def show(message, category, filename, lineno, file=None, line=None):
        text = str(message).strip().splitlines()[0] if str(message).strip() else category.__name__
        if text in seen:
            return
        seen.add(text)
        try:
            from tqdm import tqdm

            tqdm.write(f"warning: {text}", file=stream)
        except Exception:  # noqa: BLE001 - a warning must never end the run
            print(f"warning: {text}", file=stream)

    old = warnings.showwarning
    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = old


if __name__ == "__main__":
    sys.exit(main())
