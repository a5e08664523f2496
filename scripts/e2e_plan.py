"""Split the end-to-end modules into two lanes of about equal time, from measured module times.

    python scripts/e2e_plan.py [--times tests/e2e/module_times.json] tests/e2e/test_*.py

Prints two lines, one per lane: the modules (paths) that lane's pytest session runs, in order.
The modules that set `SHARED_SERVER = True` share one deployed sandbox, so they stay together
in one lane, in file order (test_deploy first: it makes the first deploy the others build on).
The rest are placed longest first, each in the lane with less time so far (LPT scheduling),
and each lane runs its longest module first, so the short ones fill the end.
Times come from `python scripts/test_times.py --write` after a full run (the sum of a module's
test times under the other lane's load); a module not in the file counts as DEFAULT seconds.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

DEFAULT = 300.0
SHARED_SERVER = re.compile(r"^SHARED_SERVER = True\b", re.MULTILINE)


def plan(modules: list[Path], times: dict[str, float]) -> tuple[list[Path], list[Path]]:
    def took(module: Path) -> float:
        return times.get(module.stem, DEFAULT)

    shared = [m for m in modules if SHARED_SERVER.search(m.read_text())]
    blocks = [(sum(took(m) for m in shared), shared)] if shared else []
    blocks += [(took(m), [m]) for m in modules if m not in shared]
    lanes: list[list[tuple[float, list[Path]]]] = [[], []]
    for block in sorted(blocks, key=lambda b: -b[0]):
        min(lanes, key=lambda lane: sum(t for t, _ in lane)).append(block)
    first, second = ([m for _, block in lane for m in block] for lane in lanes)
    return first, second


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--times", type=Path, default=Path("tests/e2e/module_times.json"))
    ap.add_argument("modules", nargs="+", type=Path)
    args = ap.parse_args()
    times = json.loads(args.times.read_text()) if args.times.exists() else {}
    for lane in plan(args.modules, times):
        print(" ".join(str(m) for m in lane))
    return 0


if __name__ == "__main__":
    sys.exit(main())
