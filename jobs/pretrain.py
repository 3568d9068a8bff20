"""Stage 1 job, caption pretraining: `python jobs/pretrain.py [--config FILE] [key=value ...]` (local Ray) or via
`ray job submit --working-dir . -- python jobs/pretrain.py ...` (a cluster)."""

import sys

from xpl.cli import job

if __name__ == "__main__":
    sys.exit(job("pretrain"))
