"""Command line of the course tooling (developers only, run from the checkout):

    python -m course_tools run --profile tiny [--only 03] [--run-dir runs/my-run]
        (Ctrl-C stops it with exit code 130, the partial notebook marked, a summary written)
    python -m course_tools strip notebooks/*.ipynb
    python -m course_tools store-checked notebooks/03_lora.ipynb runs/<run>/03_lora.ipynb
    python -m course_tools standalone --out standalone [--repo owner/name]
        (a copy of each notebook and whole_course.ipynb, which runs them all in one upload)

The mini MS MARCO has its own: `python -m course_tools.mini_msmarco build|check`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_tools",
                                     description="Run the course notebooks headless, keep them clean, "
                                                 "build standalone copies.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="execute the notebooks in order with papermill")
    run.add_argument("--profile", default="tiny", help="tiny | full | auto (default: tiny)")
    run.add_argument("--only", nargs="+", metavar="NN",
                     help="run only these notebooks, by number or name (e.g. 00 03 or lora), "
                          "each once")
    run.add_argument("--notebooks", type=Path, help="folder of notebooks (default: notebooks/)")
    run.add_argument("--run-dir", type=Path, help="where executed notebooks and the summary go")
    run.add_argument("--no-progress", action="store_true", help="hide per-cell progress bars")
    strip = commands.add_parser("strip", help="remove outputs except nbval-checked cells")
    strip.add_argument("notebooks", nargs="+", type=Path)
    store = commands.add_parser("store-checked",
                                help="copy checked cells' outputs from an executed copy")
    store.add_argument("source", type=Path)
    store.add_argument("executed", type=Path)
    standalone = commands.add_parser("standalone",
                                     help="build notebooks that run uploaded alone (Kaggle, Colab): "
                                          "a copy of each and whole_course.ipynb")
    standalone.add_argument("--out", type=Path, default=Path("standalone"))
    standalone.add_argument("--only", nargs="+", metavar="NN",
                            help="only these copies (and no whole_course.ipynb)")
    standalone.add_argument("--repo", metavar="OWNER/NAME",
                            help="public GitHub repository: also write Colab/Kaggle badges")
    standalone.add_argument("--branch", default="main", help="branch the badges open")
    args = parser.parse_args(argv)

    if args.command == "standalone":
        from course_tools.standalone import build_standalone
        from course_utils.config import project_root

        root = project_root()
        if root is None:
            print("ERROR: run this from the course checkout (it builds the package's wheel)",
                  file=sys.stderr)
            return 2
        try:
            build_standalone(args.out, root / "notebooks", root, args.only, args.repo, args.branch)
        except ValueError as error:
            print(f"ERROR: {error}", file=sys.stderr)
            return 2
        return 0

    if args.command == "strip":
        from course_tools.notebooks import strip_files

        strip_files(args.notebooks)
        return 0
    if args.command == "store-checked":
        from course_tools.notebooks import store_checked_files

        store_checked_files(args.source, args.executed)
        return 0

    from course_tools.runner import NotebookFailed, RunInterrupted, run_course

    try:
        run_course(profile=args.profile, only=args.only, notebooks_dir=args.notebooks,
                   run_dir=args.run_dir, progress=not args.no_progress)
    except RunInterrupted as error:  # Ctrl-C: one line, no traceback
        print(f"\n{error}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("\nInterrupted (Ctrl-C) outside a notebook's execution: no notebook was cut short.",
              file=sys.stderr)
        return 130
    except NotebookFailed as error:
        print(f"\nERROR: {error}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as error:
        print(f"\nERROR: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
