"""What can `python -m course_utils` do? The GPU plan and the method chooser on the command line.

    python -m course_utils plan --gpu t4              # every notebook of the full profile
    python -m course_utils plan --gpu t4 --json       # the same, for machines
    python -m course_utils plan --gpu 24 --model Qwen/Qwen3-8B   # which method fits
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    from course_utils import plan

    parser = argparse.ArgumentParser(prog="python -m course_utils",
                                     description="Plan the course on a GPU; choose a method.")
    commands = parser.add_subparsers(dest="command", required=True)
    planner = commands.add_parser(
        "plan", help="predicted peak memory and time of each notebook, or which method fits",
        description="Without --model: every notebook of the profile on the GPU. With --model: "
                    "which of full fine-tuning, LoRA and QLoRA fit that model on the GPU.")
    planner.add_argument("--gpu", default="t4",
                         help=f"{', '.join(plan.GPUS)} or a memory size in GB (default t4)")
    planner.add_argument("--model", help="a model whose shape ships with the course, e.g. "
                                         "Qwen/Qwen3-8B (see course_utils/resources/model_shapes)")
    planner.add_argument("--profile", default="full", help="profile to plan (default full)")
    planner.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    try:
        if args.model:
            choices = plan.choose_method(args.gpu, args.model)
            if args.json:
                print(json.dumps({"gpu": plan.gpu_spec(args.gpu).key, "model": args.model,
                                  "choices": [c.to_dict() for c in choices],
                                  "recommended": plan.recommend(choices)}, indent=2))
            else:
                print(plan.choice_table(args.gpu, args.model))
            return 0
        plans = plan.plan_course(args.gpu, args.profile)
    except (ValueError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([p.to_dict() for p in plans], indent=2))
    else:
        print(plan.course_table(plans))
    return 0 if all(p.fits for p in plans) else 1


if __name__ == "__main__":
    sys.exit(main())
