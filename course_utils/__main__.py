"""What can `python -m course_utils` do? The GPU plan, the method chooser and training on the command line.

    python -m course_utils plan --gpu t4              # every notebook of the full profile
    python -m course_utils plan --gpu t4 --json       # the same, for machines
    python -m course_utils plan --gpu 24 --model Qwen/Qwen3-8B   # which method fits
    python -m course_utils train --method lora --profile tiny --steps 4
    accelerate launch --num_processes 2 -m course_utils train --method lora   # several processes
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    from course_utils import plan

    parser = argparse.ArgumentParser(prog="python -m course_utils",
                                     description="Plan the course on a GPU; choose a method; "
                                                 "train one.")
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
    trainer = commands.add_parser(
        "train", help="train full, LoRA or QLoRA with notebooks 02-04's recipe (one process or "
                      "several: accelerate launch, torchrun)",
        description="Notebooks 02-04's training with their recipe rows, data and helpers; runs "
                    "as it is or under accelerate launch / torchrun (DDP, or FSDP through an "
                    "accelerate config). See course_utils/train_cli.py.")
    trainer.add_argument("--method", required=True, choices=("full", "lora", "qlora"))
    trainer.add_argument("--profile", default="auto", help="tiny, full, ... (default: "
                                                           "$COURSE_PROFILE, else the hardware's)")
    trainer.add_argument("--steps", type=int, help="optimizer steps (default: the recipe's)")
    trainer.add_argument("--learning-rate", type=float, help="default: the recipe's")
    trainer.add_argument("--batch-size", type=int, help="rows per process per forward pass "
                                                        "(default: the recipe's)")
    trainer.add_argument("--model", help="another causal LM to train (default: the profile's "
                                         "chat model)")
    trainer.add_argument("--output", help="folder for the adapter or model and each process's "
                                          "log (default runs/<profile>/train-<method>)")
    args = parser.parse_args(argv)
    if args.command == "train":
        from course_utils.train_cli import train

        try:
            train(args.method, args.profile, steps=args.steps, output=args.output,
                  learning_rate=args.learning_rate, model_id=args.model,
                  batch_size=args.batch_size)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        return 0
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
