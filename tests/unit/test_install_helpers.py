"""The install step's helpers (roles/mlflow_server/files): the helper-script bundle, the
control node's bytecode for the wheelhouse and its use on the host, and the one-run layout."""

from __future__ import annotations

import grp
import importlib.util
import json
import os
import pwd
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT, load_module

FILES = ROOT / "roles/mlflow_server/files"
sys.path.insert(0, str(FILES))  # build_wheelhouse imports the module list from venv_bytecode
wheelhouse = load_module(FILES / "build_wheelhouse.py", "build_wheelhouse")
venv_install = load_module(FILES / "venv_install.py", "venv_install")
state = load_module(FILES / "server_state.py", "server_state")


def bundle(cache: Path, *scripts: Path) -> dict:
    out = subprocess.run([sys.executable, str(FILES / "helper_bundle.py"), "--cache-dir", str(cache),
                          *map(str, scripts)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_helper_bundle_is_named_by_content_and_holds_only_root_owned_0644_files(tmp_path: Path) -> None:
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("print('a')\n")
    b.write_text("print('b')\n")
    first = bundle(tmp_path / "cache", b, a)
    assert first["changed"] is True
    assert bundle(tmp_path / "cache", a, b) == {"changed": False, "tarball": first["tarball"]}
    with tarfile.open(first["tarball"]) as tar:
        members = tar.getmembers()
        assert [(m.name, m.isfile(), m.mode, m.uid, m.gid) for m in members] == [
            ("a.py", True, 0o644, 0, 0), ("b.py", True, 0o644, 0, 0)]
        assert tar.extractfile("b.py").read() == b"print('b')\n"
    b.write_text("print('B')\n")
    assert bundle(tmp_path / "cache", a, b)["tarball"] != first["tarball"]


def make_wheel(path: Path, files: dict[str, str]) -> None:
    with zipfile.ZipFile(path, "w") as wheel:
        for name, text in files.items():
            wheel.writestr(name, text)


def test_unpack_wheels_lays_out_site_packages_as_an_installer_does(tmp_path: Path) -> None:
    make_wheel(tmp_path / "pkg-1.0-py3-none-any.whl", {
        "pkg/__init__.py": "", "pkg/mod.py": "X = 1\n",
        "pkg-1.0.data/purelib/extra.py": "Y = 2\n", "pkg-1.0.data/scripts/tool": "#!/bin/sh\n",
        "pkg-1.0.dist-info/RECORD": ""})
    make_wheel(tmp_path / "uv-0.9-py3-none-linux_x86_64.whl", {"uv/__init__.py": ""})
    site = tmp_path / "site"
    wheelhouse.unpack_wheels(tmp_path, site)
    found = sorted(str(p.relative_to(site)) for p in site.rglob("*") if p.is_file())
    assert found == ["extra.py", "pkg-1.0.dist-info/RECORD", "pkg/__init__.py", "pkg/mod.py"]


def test_no_bytecode_is_made_for_a_host_whose_python_differs(tmp_path: Path) -> None:
    other = f"{sys.version_info.major}.{sys.version_info.minor + 1}"
    assert wheelhouse.add_bytecode(tmp_path, tmp_path / "work", other, os.uname().machine) == 0
    assert wheelhouse.add_bytecode(tmp_path, tmp_path / "work", f"{sys.version_info.major}.{sys.version_info.minor}",
                                   "no-such-arch") == 0
    assert not (tmp_path / "bytecode").exists()


def overlay(wheels: Path, magic: str) -> None:
    pyc = wheels / "bytecode" / "pkg" / "__pycache__" / "mod.cpython-311.pyc"
    pyc.parent.mkdir(parents=True)
    pyc.write_bytes(b"compiled")
    (wheels / "bytecode" / "MAGIC").write_text(magic + "\n")


def test_the_control_nodes_bytecode_goes_into_site_packages_only_for_the_same_python(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    overlay(tmp_path / "same", importlib.util.MAGIC_NUMBER.hex())
    assert venv_install.apply_bytecode(tmp_path / "same", venv) == 1
    assert (site / "pkg" / "__pycache__" / "mod.cpython-311.pyc").read_bytes() == b"compiled"
    overlay(tmp_path / "other", "0d0d0d0a")
    assert venv_install.apply_bytecode(tmp_path / "other", tmp_path / "venv2") == 0
    assert not (tmp_path / "venv2").exists()
    assert venv_install.apply_bytecode(tmp_path / "none", venv) == 0


def me() -> tuple[str, str]:
    return pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name


def spec(tmp_path: Path, **dirs: str) -> dict:
    user, group = me()
    return {"group": group, "user": user, "home": pwd.getpwuid(os.getuid()).pw_dir,
            "shell": pwd.getpwuid(os.getuid()).pw_shell,
            "dirs": [{"path": str(tmp_path / name), "owner": user, "group": group, "mode": mode}
                     for name, mode in dirs.items()]}


def test_ensure_creates_and_corrects_directories_and_names_what_changed(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir(mode=0o700)
    os.chmod(tmp_path / "b", 0o700)
    want = spec(tmp_path, a="0750", b="0755")
    assert state.ensure(want, dry_run=True) == [f"{tmp_path}/a created", f"{tmp_path}/b owner or mode corrected"]
    assert not (tmp_path / "a").exists() and (tmp_path / "b").stat().st_mode & 0o777 == 0o700
    assert state.ensure(want) == [f"{tmp_path}/a created", f"{tmp_path}/b owner or mode corrected"]
    assert [(tmp_path / n).stat().st_mode & 0o777 for n in "ab"] == [0o750, 0o755]
    assert state.ensure(want) == []


def test_ensure_names_a_missing_user_and_group_in_a_dry_run_and_refuses_a_file_for_a_directory(
        tmp_path: Path) -> None:
    want = spec(tmp_path) | {"group": "no-such-group-here", "user": "no-such-user-here"}
    assert state.ensure(want, dry_run=True) == ["group no-such-group-here created", "user no-such-user-here created"]
    (tmp_path / "f").write_text("")
    with pytest.raises(SystemExit, match=r"f exists and is not a directory: move it away, then deploy again"):
        state.ensure(spec(tmp_path, f="0755"))


def test_bytecode_from_an_import_becomes_hash_checked_and_stays_valid_whatever_the_mtime(tmp_path: Path) -> None:
    source = tmp_path / "hello.py"
    source.write_text("GREETING = 'hi'\n")
    subprocess.run([sys.executable, "-c", "import hello"], cwd=tmp_path, check=True)  # a timestamp-checked .pyc
    pyc = Path(wheelhouse.hash_checked_pyc(str(source)))
    assert int.from_bytes(pyc.read_bytes()[4:8], "little") == 0b11  # hash-based, checked
    os.utime(source, (1, 1))  # the host's copy gets another mtime
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    run = subprocess.run([sys.executable, "-v", "-c", "import hello; print(hello.GREETING)"], cwd=tmp_path,
                         capture_output=True, text=True, env=env, check=True)
    assert run.stdout == "hi\n"
    assert f"code object from '{pyc}'" in run.stderr and "stale" not in run.stderr
    source.write_text("GREETING = 'changed'\n")  # a source that differs is compiled again, never run stale
    run = subprocess.run([sys.executable, "-c", "import hello; print(hello.GREETING)"], cwd=tmp_path,
                         capture_output=True, text=True, env=env, check=True)
    assert run.stdout == "changed\n"
