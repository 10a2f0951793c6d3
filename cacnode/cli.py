"""The ``cacnode`` console script: argument parsing and dispatch, nothing else.

Each command's work lives in the component that owns it; this module only
wires arguments to it, configures logging (library code never does) and turns
a user-facing error into one line on stderr with a non-zero exit code.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from cacnode import __version__
from cacnode.output_paths import OutputPathError
from cacnode.settings import ConfigError
from pipeline.errors import CacnodeError

log = logging.getLogger("cacnode")


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="config file (default: ./config.toml, else the bundled config.toml)",
    )


def _verbose_option(default: object) -> argparse.ArgumentParser:
    """``-v/--verbose`` as a parent parser, for the top level and for every command."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("-v", "--verbose", action="store_true", default=default, help="debug logging and tracebacks")
    return options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cacnode",
        description="A DICOM node that scores coronary artery calcium. Not a medical device.",
        parents=[_verbose_option(default=False)],
    )
    parser.add_argument("--version", action="version", version=f"cacnode {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # -v is taken after the command too; its default SUPPRESS keeps a command
    # without it from resetting a -v given before the command.
    common = [_verbose_option(default=argparse.SUPPRESS)]

    p = sub.add_parser("score", parents=common, help="score one CT series from a folder of DICOM files")
    p.add_argument("series_dir", type=Path, help="folder holding the series (searched recursively)")
    p.add_argument("--series-uid", help="Series Instance UID to score when the folder holds several")
    p.add_argument("--labels", type=Path, help="score this annotation (DICOM SEG or NIfTI) instead of the model")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--device", choices=("cuda", "cpu"), help="where the model runs (default: GPU if present)")
    p.add_argument("--sr", type=Path, help="write the TID 1500 Structured Report here")
    p.add_argument("--seg", type=Path, help="write the lesion DICOM SEG here")
    p.add_argument("--summary", type=Path, help="write the Secondary Capture summary image here")
    _add_config(p)

    p = sub.add_parser(
        "evaluate",
        parents=common,
        help="score series that have reference labels and report the model's agreement with them",
        epilog="exit status: 0 every case scored, 1 some cases skipped (the others reported), 2 error",
    )
    p.add_argument("cases", type=Path,
                   help="a folder of case folders (each dicom/ and labels.seg.dcm, labels.nii.gz or labels.nii) "
                        "or a .csv with columns series_dir,labels (paths relative to it; empty labels: no calcium)")
    p.add_argument("--out", type=Path, required=True,
                   help="folder for cases.csv, summary.json, bland_altman.png and scatter.png")
    p.add_argument("--weights", type=Path, help="model weights file (default: [model] weights of the config)")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), help="where the model runs (default: [model] device)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print summary.json instead of the text report")
    _add_config(p)

    p = sub.add_parser(
        "phantom", parents=common, help="generate synthetic calcium-scoring CT phantoms with exact ground truth"
    )
    p.add_argument("out_dir", type=Path)
    p.add_argument("--n", type=int, default=1, help="number of cases (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first case; case i uses seed + i")
    p.add_argument("--workers", type=int, default=None, help="parallel processes (default: all cores)")
    p.add_argument("--family", choices=("a", "b"), default="a",
                   help="phantom family: a (default) or b, an independently built generator")
    p.add_argument("--shifted", action="store_true", help="draw from the shifted (held-out) parameter ranges")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("train", parents=common, help="train the calcium model (needs the training extra)")
    _add_config(p)
    p.add_argument("--output", type=Path, help="weights file to write (default: [training] output)")
    p.add_argument("--fast-dev-run", action="store_true", help="one batch of train and validation, for smoke tests")

    p = sub.add_parser("serve", parents=common, help="run the DICOM node in the foreground")
    _add_config(p)
    p.add_argument("--no-worker", action="store_true",
                   help="receive only: score and deliver with `cacnode worker` processes (shared [database] url)")

    p = sub.add_parser("worker", parents=common,
                       help="score and deliver jobs from the shared database (beside `cacnode serve --no-worker`)")
    _add_config(p)

    p = sub.add_parser("status", parents=common, help="show jobs, states, errors and deliveries")
    _add_config(p)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("retry", parents=common, help="retry failed deliveries")
    _add_config(p)
    p.add_argument("--series-uid", help="only this series")
    return parser


def _config(args: argparse.Namespace):
    from cacnode.config import load_config

    path = args.config
    if path is None:
        # ./config.toml, else the bundled one beside the package (its paths,
        # e.g. the bundled weights, resolve against its own folder).
        bundled = Path(__file__).resolve().parent.parent / "config.toml"
        path = next((p for p in (Path("config.toml"), bundled) if p.is_file()), None)
    return load_config(path)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.verbose:
        # highdicom logs each module it copies into a report at INFO: noise for an admin.
        logging.getLogger("highdicom").setLevel(logging.WARNING)
    try:
        return _dispatch(args)
    except (CacnodeError, ConfigError) as exc:
        if args.verbose:
            log.exception("failed")
        print(f"cacnode {args.command}: error: {exc}", file=sys.stderr)
        # An output path that cannot be written is a bad argument, 2 as argparse's own;
        # evaluate's 1 means "some cases skipped, the others reported": its errors need another status.
        return 2 if isinstance(exc, OutputPathError) or args.command == "evaluate" else 1
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "phantom":
        from training.phantom.command import run_phantom

        return run_phantom(args)
    config = _config(args)  # a bad config fails first, whatever the command
    if args.command == "score":
        from cacnode.score_command import run_score

        return run_score(args, config)
    if args.command == "evaluate":
        from cacnode.evaluate_command import run_evaluate

        return run_evaluate(args, config)
    if args.command == "train":
        try:
            from training.train import run_train
        except ImportError as exc:
            raise CacnodeError(f"training needs the training extra (pip install '.[training]'): {exc}") from None
        return run_train(config.training, output=args.output, fast_dev_run=args.fast_dev_run)
    if args.command == "serve":
        from scp.app import serve

        return serve(config, run_worker=not args.no_worker)
    if args.command == "worker":
        from scp.worker_app import run_worker_service

        return run_worker_service(config)
    if args.command == "status":
        from scp.admin import show_status

        return show_status(config, as_json=args.json)
    if args.command == "retry":
        from scp.admin import retry_failed

        return retry_failed(config, series_uid=args.series_uid)
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
