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
# A plain import: its process pool pickles its functions by module name.
wheelhouse = importlib.import_module("build_wheelhouse")
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


def test_the_wheelhouse_digest_is_computed_once_and_again_when_the_tar_changes(tmp_path: Path) -> None:
    import hashlib
    import os

    tar = tmp_path / "mlflow-3.17.2-abc-v3-cp311-x86_64-glibc2.36.tar"
    tar.write_bytes(b"a" * 5000)
    first = wheelhouse.sha256_of(tar)
    assert first == hashlib.sha256(b"a" * 5000).hexdigest()
    sidecar = tmp_path / (tar.name + ".sha256")
    assert sidecar.read_text().split("\n")[0] == first
    sidecar.write_text(sidecar.read_text().replace(first, "0" * 64))  # kept: not read from the tar again
    assert wheelhouse.sha256_of(tar) == "0" * 64
    tar.write_bytes(b"b" * 6000)  # another tar under the same name: size and mtime differ
    os.utime(tar, ns=(1, 1))
    assert wheelhouse.sha256_of(tar) == hashlib.sha256(b"b" * 6000).hexdigest()
    sidecar.write_text("garbage")
    assert wheelhouse.sha256_of(tar) == hashlib.sha256(b"b" * 6000).hexdigest()


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


def fake_mlflow_wheel(wheels: Path) -> None:
    wheels.mkdir(exist_ok=True)
    make_wheel(wheels / "mlflow-9.0-py3-none-any.whl", {
        "mlflow/__init__.py": "", "mlflow/server/__init__.py": "",
        "mlflow/server/handlers.py": "from mlflow.store import util\n", "mlflow/store/__init__.py": "",
        "mlflow/store/util.py": "X = 1\n", "mlflow/store/db_migrations/v1.py": "Y = 2\n",
        "mlflow/broken.py": "def (:\n"})


def test_the_wheelhouse_gets_hash_checked_bytecode_of_what_the_server_imports(tmp_path: Path) -> None:
    fake_mlflow_wheel(tmp_path / "wheels")
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    # 6: the imported handlers and util, the packages' __init__ files (mlflow, server, store),
    # the migration loaded by path; not the file that does not compile (left to the host).
    assert wheelhouse.add_bytecode(tmp_path / "wheels", tmp_path / "work", python, os.uname().machine) == 6
    out = tmp_path / "wheels" / "bytecode"
    assert (out / "MAGIC").read_text() == importlib.util.MAGIC_NUMBER.hex() + "\n"
    tag = sys.implementation.cache_tag
    handlers = (out / "mlflow/server/__pycache__" / f"handlers.{tag}.pyc").read_bytes()
    assert handlers[4:8] == (0b11).to_bytes(4, "little")
    assert handlers[8:16] == importlib.util.source_hash(b"from mlflow.store import util\n")
    assert (out / "mlflow/store/db_migrations/__pycache__" / f"v1.{tag}.pyc").is_file()
    assert not list(out.rglob("broken.*"))


def test_no_bytecode_is_made_for_a_host_whose_python_or_architecture_differs(tmp_path: Path) -> None:
    fake_mlflow_wheel(tmp_path / "wheels")
    other = f"{sys.version_info.major}.{sys.version_info.minor + 1}"
    assert wheelhouse.add_bytecode(tmp_path / "wheels", tmp_path / "w1", other, os.uname().machine) == 0
    assert wheelhouse.add_bytecode(tmp_path / "wheels", tmp_path / "w2", f"{sys.version_info.major}."
                                   f"{sys.version_info.minor}", "no-such-arch") == 0
    assert not (tmp_path / "wheels" / "bytecode").exists()


def overlay(wheels: Path, magic: str, package: str = "pkg") -> None:
    pyc = wheels / "bytecode" / package / "__pycache__" / "mod.cpython-311.pyc"
    pyc.parent.mkdir(parents=True)
    pyc.write_bytes(b"compiled")
    (wheels / "bytecode" / "MAGIC").write_text(magic + "\n")


def site_of(venv: Path, *installed: str) -> Path:
    site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    for package in installed:
        (site / package).mkdir(parents=True)
        (site / package / "mod.py").write_text("")
    return site


def test_the_control_nodes_bytecode_goes_into_site_packages_only_for_the_same_python(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    site = site_of(venv, "pkg")
    overlay(tmp_path / "same", importlib.util.MAGIC_NUMBER.hex())
    assert venv_install.apply_bytecode(tmp_path / "same", venv) == 1
    assert (site / "pkg" / "__pycache__" / "mod.cpython-311.pyc").read_bytes() == b"compiled"
    assert (site / "pkg" / "__pycache__" / "mod.cpython-311.pyc").stat().st_mode & 0o777 == 0o644
    overlay(tmp_path / "other", "0d0d0d0a")
    assert venv_install.apply_bytecode(tmp_path / "other", tmp_path / "venv2") == 0
    assert not (tmp_path / "venv2").exists()
    assert venv_install.apply_bytecode(tmp_path / "none", venv) == 0


def test_bytecode_of_a_package_this_venv_does_not_have_is_left_out(tmp_path: Path) -> None:
    """The wheelhouse holds every store client; a venv without one gets none of its bytecode,
    which would leave directories that import as (empty) namespace packages."""
    venv = tmp_path / "venv"
    site = site_of(venv, "pkg")
    overlay(tmp_path / "wheels", importlib.util.MAGIC_NUMBER.hex(), package="pkg")
    overlay_azure = tmp_path / "wheels" / "bytecode" / "azure" / "storage" / "__pycache__" / "blob.cpython-311.pyc"
    overlay_azure.parent.mkdir(parents=True)
    overlay_azure.write_bytes(b"compiled")
    assert venv_install.apply_bytecode(tmp_path / "wheels", venv) == 1
    assert (site / "pkg" / "__pycache__" / "mod.cpython-311.pyc").exists()
    assert not (site / "azure").exists()


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
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([sys.executable, "-c", "import hello"], cwd=tmp_path, check=True, env=env)
    written = Path(importlib.util.cache_from_source(str(source))).read_bytes()
    assert written[4:8] == bytes(4)  # the import wrote a timestamp-checked .pyc: this is the rewrite
    pyc = Path(wheelhouse.hash_checked_pyc(str(source)))
    assert pyc.read_bytes()[16:] == written[16:]
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


def test_a_pyc_not_written_for_this_source_is_compiled_again_not_relabelled(tmp_path: Path) -> None:
    source = tmp_path / "mod.py"
    source.write_text("A = 1\n")
    pyc = Path(importlib.util.cache_from_source(str(source)))
    pyc.parent.mkdir()
    # An unchecked hash-based .pyc of other code, as a wheel could ship it.
    pyc.write_bytes(importlib.util.MAGIC_NUMBER + (0b01).to_bytes(4, "little") + bytes(8) + b"junk")
    assert wheelhouse.hash_checked_pyc(str(source)) == str(pyc)
    data = pyc.read_bytes()
    assert data[4:16] == (0b11).to_bytes(4, "little") + importlib.util.source_hash(b"A = 1\n")
    assert b"junk" not in data


def test_a_venv_completed_meanwhile_only_loses_its_wheelhouse(tmp_path: Path) -> None:
    """The run of a killed deploy finished the venv while the next deploy waited for its lock."""
    venv, wheels, tar = tmp_path / "venv", tmp_path / "wheelhouse-x", tmp_path / "wheelhouse-x.tar"
    venv.mkdir()
    (venv / "mlops-requirements.txt").write_text("mlflow==9\n")
    (venv / "mlops-bytecode.json").write_text("{}\n")
    wheels.mkdir()
    tar.write_text("")
    out = subprocess.run([sys.executable, str(FILES / "venv_install.py"), "--tarball", str(tar), "--wheelhouse",
                          str(wheels), "--venv", str(venv), "--marker", str(venv / "mlops-requirements.txt"),
                          "--bytecode-marker", str(venv / "mlops-bytecode.json"), "mlflow==9"],
                         capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.splitlines()[-1])["bytecode"] is True
    assert not wheels.exists() and not tar.exists()
    assert (venv / "mlops-requirements.txt").read_text() == "mlflow==9\n"


def test_ensure_removes_the_wheelhouses_killed_deploys_left_but_not_one_still_needed(tmp_path: Path) -> None:
    for name in ("wheelhouse", "wheelhouse.tar", "wheelhouse-old", "wheelhouse-old.tar", "wheelhouse-new",
                 "wheelhouse-new.tar"):
        (tmp_path / name).mkdir() if "." not in name else (tmp_path / name).write_text("")
    want = spec(tmp_path) | {"stale_wheelhouses": {
        "glob": f"{tmp_path}/wheelhouse*", "venv_marker": str(tmp_path / "venv-new" / "done"),
        "current": [str(tmp_path / "wheelhouse-new"), str(tmp_path / "wheelhouse-new.tar")]}}
    removed = [f"{tmp_path}/{n} removed (left by a deploy that was killed)"
               for n in ("wheelhouse", "wheelhouse-old", "wheelhouse-old.tar", "wheelhouse.tar")]
    assert state.ensure(want, dry_run=True) == removed
    assert state.ensure(want) == removed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wheelhouse-new", "wheelhouse-new.tar"]
    (tmp_path / "venv-new").mkdir()
    (tmp_path / "venv-new" / "done").write_text("")  # complete: its wheelhouse is not needed any more
    assert len(state.ensure(want)) == 2 and not (tmp_path / "wheelhouse-new").exists()


def test_ensure_creates_missing_parents_and_accepts_a_symlinked_directory(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir(mode=0o755)
    os.chmod(tmp_path / "real", 0o755)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    want = spec(tmp_path, link="0755")
    want["dirs"].append({**want["dirs"][0], "path": str(tmp_path / "a" / "b" / "c")})
    assert state.ensure(want) == [f"{tmp_path}/a/b/c created"]
    assert (tmp_path / "a" / "b" / "c").is_dir()


def test_ensure_waits_for_an_install_a_killed_deploy_left_running(tmp_path: Path) -> None:
    import time

    lock = tmp_path / ".mlops-install.lock"
    lock.write_text("")
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time\n"
                               "f = open(sys.argv[1]); fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True)\n"
                               "time.sleep(2); print(time.time(), flush=True); f.close()", str(lock)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    assert state.ensure(spec(tmp_path) | {"install_lock": str(lock)}) == []
    returned = time.time()
    released = float(holder.stdout.readline())  # printed just before the holder let go
    holder.wait()
    assert returned >= released
