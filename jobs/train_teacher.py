"""Stage 2 job: `python jobs/train_teacher.py [--config FILE] [key=value ...]` or via `ray job submit`."""

import sys

from xpl.cli import main

if __name__ == "__main__":
    sys.exit(main(["train-teacher", *sys.argv[1:]]))
