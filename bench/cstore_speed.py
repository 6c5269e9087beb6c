"""C-STORE speed alone: xnatdrop's sender vs DCMTK's storescu, same files, same Orthanc.

    python bench/cstore_speed.py [--repeat 3] [--profile FILE.html]

A thin entry point into the harness (`harness/cstore.py` says what is measured and how); the
whole benchmark, this included, is `python bench/run.py`. `--profile` also profiles one
xnatdrop run (needs `pip install pyinstrument`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import cstore


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs of each sender (default 3)")
    parser.add_argument("--profile", type=Path, help="also profile one xnatdrop run into FILE")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cstore-speed-"))
    try:
        print("load average before: " + " ".join(f"{v:.2f}" for v in os.getloadavg()))
        result = cstore.measure(args.repeat, work)
        print("load average after: " + " ".join(f"{v:.2f}" for v in os.getloadavg()))
        for name, rate in result["inst_per_s"].items():
            print(f"median {name:9s} {rate:7.1f} inst/s")
        ratio = result["ratios"]["C-STORE / storescu"]
        print(f"xnatdrop / storescu: {ratio:.2f}x (target >= 0.8x)")
        if args.profile:
            cstore.profile(args.profile, work / "profile")
            print(f"profile of one xnatdrop run: {args.profile}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
