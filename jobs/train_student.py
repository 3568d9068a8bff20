"""Stage 4 job: `python jobs/train_student.py [--config FILE] [key=value ...]` or via `ray job submit`."""

import sys

from xpl.cli import main

if __name__ == "__main__":
    sys.exit(main(["train-student", *sys.argv[1:]]))
