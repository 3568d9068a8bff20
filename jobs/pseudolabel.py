"""Ray job: cross-modal pseudo-labeling of caption shards with the teacher.

    python jobs/pseudolabel.py [--config FILE] [key=value ...]                  # local Ray
    ray job submit --working-dir . -- python jobs/pseudolabel.py --config ...  # a cluster

Runs again with the same `pseudolabel.output` resume: finished shards are skipped.
Prints the totals (labeled / no_match / rejected with reasons) and exits 0, or 2 on a user error.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    from xpl.runtime import apply_env_defaults

    apply_env_defaults()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="YAML config (default: the paper's recipe on COCO; "
                        "configs/shapes.yaml: the embedded shapes world)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. pseudolabel.num_actors=2")
    args = parser.parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
    logging.getLogger("xpl").addHandler(handler)
    logging.getLogger("xpl").setLevel(logging.INFO)  # per-shard progress lines

    from xpl.ray_cluster import connect
    from xpl.config import load_config
    from xpl.errors import XPLError
    from xpl.pseudo.manifest import format_totals
    from xpl.stages.pseudolabel import run_pseudolabel

    try:
        cfg = load_config(args.config, args.overrides)
        connect()
        totals = run_pseudolabel(cfg)
    except XPLError as exc:
        print(f"pseudolabel: error: {exc}", file=sys.stderr)
        return 2
    print(format_totals(totals))
    print(json.dumps(totals, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
