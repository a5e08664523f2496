"""Print where the end-to-end suite's time went, per module (the sum of its tests, whichever
lane ran it) and slowest tests, from the JUnit XML files that `make e2e` writes (one per lane:
.cache/e2e-junit-*.xml). Used for docs/testing.md.

    python scripts/test_times.py .cache/e2e-junit-*.xml
    python scripts/test_times.py --write tests/e2e/module_times.json .cache/e2e-junit-*.xml

--write also stores the seconds per module as JSON, which scripts/e2e_plan.py reads to balance
the two lanes (commit it after a full clean-clone run).
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path


def main() -> int:
    args = sys.argv[1:]
    write = None
    if args[:1] == ["--write"]:
        write, args = Path(args[1]), args[2:]
    paths = [Path(arg) for arg in args] or sorted(Path(".cache").glob("e2e-junit-*.xml"))
    trees = [ET.parse(path) for path in paths]  # noqa: S314 - our own pytest runs wrote them
    cases = [case for tree in trees for case in tree.getroot().iter("testcase")]
    per_module: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    rows = []
    for case in cases:
        module = case.get("classname", "?").rsplit(".", 1)[-1]
        seconds = float(case.get("time", 0))
        per_module[module] += seconds
        count[module] += 1
        rows.append((seconds, f"{module}::{case.get('name')}"))
    print("| module | tests | seconds |\n|---|---|---|")
    for module, seconds in sorted(per_module.items(), key=lambda item: -item[1]):
        print(f"| {module} | {count[module]} | {seconds:.0f} |")
    print(f"| total | {sum(count.values())} | {sum(per_module.values()):.0f} |\n")
    for seconds, name in sorted(rows, reverse=True)[:15]:
        print(f"{seconds:7.1f} s  {name}")
    if write:
        # A module this run did not include (test_scale_out, outside `make test`) keeps its time.
        kept = json.loads(write.read_text()) if write.exists() else {}
        kept.update({module: round(seconds) for module, seconds in per_module.items()})
        write.write_text(json.dumps(dict(sorted(kept.items())), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
