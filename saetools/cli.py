"""The ``saetools`` command line."""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def _reproduce(args) -> int:
    from saetools.experiments.budget import ProfileTooLargeError
    from saetools.reproduce import MissingExtraError, reproduce

    try:
        results = reproduce(model=args.model, profile=args.profile, out_dir=args.out,
                            notebooks=args.notebooks, only=args.only)
    except (ValueError, OSError, ProfileTooLargeError, MissingExtraError) as err:  # one clear line, no traceback
        print(f"saetools reproduce: {err}", file=sys.stderr)
        return 2
    for r in results:
        status = "ok" if r.ok else "FAILED"
        print(f"{status:7s} {r.seconds:7.1f} s  {r.name}" + (f"\n        {r.error.splitlines()[0]}" if r.error else ""))
    print(f"report: {(args.out / 'index.html').resolve()}")
    return 0 if results and all(r.ok for r in results) else 1


def _notebooks(args) -> int:
    from saetools.reproduce import copy_notebooks

    try:
        written = copy_notebooks(args.dir, overwrite=args.overwrite)
    except (ValueError, OSError) as err:
        print(f"saetools notebooks: {err}", file=sys.stderr)
        return 2
    print(f"{len(written)} notebooks in {args.dir.resolve()}:")
    for p in written:
        print(f"  {p.name}")
    print("open them with: jupyter lab " + str(args.dir))
    return 0


def main(argv: list[str] | None = None) -> int:
    from pathlib import Path

    from saetools.reproduce import PROFILES

    parser = argparse.ArgumentParser(prog="saetools", description="SAE interpretability toolkit")
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("reproduce", help="execute every notebook and write an HTML report")
    rep.add_argument("--model", default="tiny-ioi",
                     help="tiny-ioi (bundled, default), gpt2 or another TransformerLens model name")
    rep.add_argument("--profile", default="smoke", choices=PROFILES,
                     help="smoke: minutes on a CPU; cpu: the bundled models trained to convergence, the "
                          "papers' comparisons at matched L0 (up to 10 minutes per notebook on 2 cores); "
                          "test: seconds, any model, no science; "
                          "full: the paper-scale run (a GPU; refused when the GPU cannot hold it)")
    rep.add_argument("--out", type=Path, default=Path("reproduce-out"), help="output folder")
    rep.add_argument("--notebooks", type=Path, default=None,
                     help="folder of notebooks to run (default: the notebooks that came with saetools)")
    rep.add_argument("--only", nargs="*", help="run only notebooks whose name contains these")
    nbs = sub.add_parser("notebooks", help="copy the saetools notebooks into a folder, to open in Jupyter")
    nbs.add_argument("dir", type=Path, help="destination folder (created if missing)")
    nbs.add_argument("--overwrite", action="store_true", help="replace notebooks of the same name")
    args = parser.parse_args(argv)
    return _reproduce(args) if args.command == "reproduce" else _notebooks(args)


if __name__ == "__main__":
    sys.exit(main())
