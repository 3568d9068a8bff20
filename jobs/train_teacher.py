"""Stage 2 job, the teacher: `python jobs/train_teacher.py [--config FILE] [key=value ...]` (local Ray) or via
`ray job submit --working-dir . -- python jobs/train_teacher.py ...` (a cluster)."""

import sys

from xpl.cli import job

if __name__ == "__main__":
    sys.exit(job("teacher"))
