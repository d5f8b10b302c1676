#!/usr/bin/env python
"""Training entry point for `accelerate launch` (multi-GPU, DeepSpeed ZeRO-3, FSDP2):

    accelerate launch --config_file recipes/accelerate/zero3.yaml --num_processes 4 scripts/train.py RECIPE.yaml \
        [--set key=value ...] [--output-dir DIR] [--no-resume]

Same arguments and behaviour as `emsweep train`; exit code 99 means "preempted, checkpoint saved: requeue".
"""

import sys

from emsweep.cli.train_entry import main

if __name__ == "__main__":
    sys.exit(main())
