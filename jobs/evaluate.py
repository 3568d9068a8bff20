"""Stage 5 job: `python jobs/evaluate.py --checkpoint MODEL [--config FILE] [key=value ...]`, or
`--gt GT.json --predictions RESULTS.json [--vocab VOCAB.json]`; also via `ray job submit`.

Evaluation runs in the job's driver process (no Ray tasks): on a cluster, on the head node.
"""

import sys

from xpl.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
