"""Stage 3 job, cross-modal pseudo-labeling of caption shards: `python jobs/pseudolabel.py [--config FILE]
[key=value ...]` (local Ray) or via `ray job submit --working-dir . -- python jobs/pseudolabel.py ...` (a cluster).
A run again with the same `pseudolabel.output` resumes: finished shards are skipped."""

import sys

from xpl.cli import job

if __name__ == "__main__":
    sys.exit(job("pseudolabel"))
