"""Build (once, cached in podman's image store) a bare Debian image that boots systemd.

No registry is reachable, so the root filesystem comes from debootstrap and is imported
with `podman import`. The image is what a fresh cloud VM offers: systemd, sshd, sudo,
python3 — no venv module, no MLflow. Bump RECIPE_VERSION when the recipe changes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from mlops_provision.errors import UsageError
from mlops_provision.paths import cache_dir
from mlops_provision.sandbox.podman import podman

RECIPE_VERSION = "2"
DISTROS = {"debian12": "bookworm", "debian13": "trixie"}
MIRROR = os.environ.get("MLOPS_PROVISION_DEBIAN_MIRROR", "http://deb.debian.org/debian")
PACKAGES = [
    "systemd", "systemd-sysv", "dbus", "python3", "openssh-server", "sudo",
    "iproute2", "ca-certificates", "procps", "less",
]
SANDBOX_USER = "ops"

# Runs inside the new root: a sudo user like a cloud image's default user, host keys made
# per container at first boot (not baked into the shared image), consoles that a
# container lacks masked so boot reaches "running".
_CUSTOMIZE = f"""
set -eu
useradd --create-home --shell /bin/bash --groups sudo {SANDBOX_USER}
echo '{SANDBOX_USER} ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/90-{SANDBOX_USER}
chmod 0440 /etc/sudoers.d/90-{SANDBOX_USER}
install -d -m 0700 -o {SANDBOX_USER} -g {SANDBOX_USER} /home/{SANDBOX_USER}/.ssh
rm -f /etc/ssh/ssh_host_*
cat > /etc/systemd/system/sandbox-ssh-hostkeys.service <<'UNIT'
[Unit]
Description=Generate SSH host keys for this sandbox
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key
[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A
[Install]
WantedBy=multi-user.target
UNIT
ln -sf /etc/systemd/system/sandbox-ssh-hostkeys.service \
  /etc/systemd/system/multi-user.target.wants/sandbox-ssh-hostkeys.service
printf 'PasswordAuthentication no\\nUseDNS no\\n' > /etc/ssh/sshd_config.d/sandbox.conf
for unit in getty@tty1.service console-getty.service systemd-udevd.service \
    systemd-udev-trigger.service systemd-firstboot.service; do
  ln -sf /dev/null /etc/systemd/system/$unit
done
codename=$(. /etc/os-release; echo "$VERSION_CODENAME")
printf 'deb {MIRROR} %s main\ndeb {MIRROR} %s-updates main\n' "$codename" "$codename" > /etc/apt/sources.list
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
"""


def image_name(distro: str) -> str:
    return f"localhost/mlops-provision-sandbox:{distro}-r{RECIPE_VERSION}"


def image_exists(distro: str) -> bool:
    return podman("image", "exists", image_name(distro), check=False).returncode == 0


def build_image(distro: str, *, force: bool = False, log: Callable[[str], None] = print) -> str:
    """Return the image name, building it with debootstrap when it is missing."""
    if distro not in DISTROS:
        raise UsageError(f"--distro {distro!r} is not supported; valid: {', '.join(DISTROS)}")
    name = image_name(distro)
    if image_exists(distro) and not force:
        return name
    if os.geteuid() != 0:
        raise UsageError("building the sandbox image needs root (debootstrap); run as root or `make setup`")
    if shutil.which("debootstrap") is None:
        raise UsageError("debootstrap is not installed: apt-get install debootstrap (or run `make setup`)")
    log(f"building sandbox image {name} with debootstrap (one time, a few minutes)...")
    with tempfile.TemporaryDirectory(dir=cache_dir(), prefix="rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        _run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
              DISTROS[distro], str(rootfs), MIRROR])
        _run(["chroot", str(rootfs), "/bin/sh", "-c", _CUSTOMIZE])
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        assert tar.stdout is not None
        from mlops_provision.sandbox.podman import podman_env, require_podman
        subprocess.run(
            [require_podman(), "import", "--change", "CMD=/sbin/init", "-", name],
            stdin=tar.stdout, env=podman_env(), check=True, capture_output=True,
        )
        if tar.wait() != 0:
            raise RuntimeError("tar of the sandbox root filesystem failed")
    return name


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise RuntimeError(f"{cmd[0]} failed with exit code {proc.returncode}")
