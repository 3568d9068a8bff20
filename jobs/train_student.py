"""Stage 4 job, the robust student: `python jobs/train_student.py [--config FILE] [key=value ...]` (local Ray) or
via `ray job submit --working-dir . -- python jobs/train_student.py ...` (a cluster)."""

import sys

from xpl.cli import job

if __name__ == "__main__":
    sys.exit(job("student"))
