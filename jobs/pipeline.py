"""The whole pipeline as one job: `python jobs/pipeline.py [--config FILE] [key=value ...]` or via `ray job submit`."""

import sys

from xpl.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
