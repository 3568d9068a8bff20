"""Stage 1 job: `python jobs/pretrain.py [--config FILE] [key=value ...]` or via `ray job submit`."""

import sys

from xpl.cli import main

if __name__ == "__main__":
    sys.exit(main(["pretrain", *sys.argv[1:]]))
