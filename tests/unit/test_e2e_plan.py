"""scripts/e2e_plan.py: the two end-to-end lanes, balanced from measured module times."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, load_module

plan_module = load_module(ROOT / "scripts" / "e2e_plan.py", "e2e_plan")


def modules(tmp_path: Path, shared: tuple[str, ...], own: tuple[str, ...]) -> list[Path]:
    paths = []
    for name in sorted(shared + own):
        path = tmp_path / f"{name}.py"
        path.write_text("SHARED_SERVER = True\n" if name in shared else "import pytest\n")
        paths.append(path)
    return paths


def test_the_shared_server_modules_stay_together_in_file_order_and_the_rest_balance(tmp_path: Path) -> None:
    paths = modules(tmp_path, shared=("test_deploy", "test_security"), own=("test_a", "test_b", "test_c", "test_d"))
    times = {"test_deploy": 300, "test_security": 500, "test_a": 700, "test_b": 400, "test_c": 350, "test_d": 100}
    lanes = plan_module.plan(paths, times)
    names = [[p.stem for p in lane] for lane in lanes]
    # LPT: shared block 800 -> lane 1; a 700 -> lane 2; b 400 -> lane 2 (1,100); c 350 -> lane 1
    # (1,150); d 100 -> lane 2 (1,200).
    assert names == [["test_deploy", "test_security", "test_c"], ["test_a", "test_b", "test_d"]]
    totals = [sum(times[n] for n in lane) for lane in names]
    assert abs(totals[0] - totals[1]) <= 100


def test_a_module_without_a_measured_time_counts_as_the_default(tmp_path: Path) -> None:
    paths = modules(tmp_path, shared=(), own=("test_new", "test_old"))
    lanes = plan_module.plan(paths, {"test_old": plan_module.DEFAULT + 1})
    assert [[p.stem for p in lane] for lane in lanes] == [["test_old"], ["test_new"]]


def test_the_script_prints_one_line_per_lane_from_a_times_file(tmp_path: Path) -> None:
    paths = modules(tmp_path, shared=("test_deploy",), own=("test_a", "test_b"))
    times = tmp_path / "times.json"
    times.write_text(json.dumps({"test_deploy": 100, "test_a": 90, "test_b": 20}))
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "e2e_plan.py"), "--times", str(times),
                          *map(str, paths)], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == [str(tmp_path / "test_deploy.py"),
                                f"{tmp_path / 'test_a.py'} {tmp_path / 'test_b.py'}"]


def test_the_committed_times_name_every_end_to_end_module() -> None:
    times = json.loads((ROOT / "tests" / "e2e" / "module_times.json").read_text())
    assert set(times) == {p.stem for p in (ROOT / "tests" / "e2e").glob("test_*.py")}
