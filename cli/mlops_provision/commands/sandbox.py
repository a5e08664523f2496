"""sandbox up/down/list/image: local test VMs (podman containers that boot systemd)."""

from __future__ import annotations

import argparse

from mlops_provision.commands._common import secret_store, to_stderr
from mlops_provision.errors import EXIT_OK


def sandbox(args: argparse.Namespace) -> int:
    from mlops_provision.sandbox import image, machines

    if args.sandbox_command == "up":
        box = machines.up(args.name, args.distro, host_loopback=args.host_loopback,
                          log=to_stderr)
        print(f"sandbox {box.name} ({box.distro}) is up: ssh -p {box.ssh_port} -i {box.key_file} "
              f"{box.user}@127.0.0.1")
        print(f"  MLflow port 5000 of the VM is published at {box.url}")
        print(f"  next: mlops-provision deploy --host {box.name}")
    elif args.sandbox_command == "down":
        _down(args)
    elif args.sandbox_command == "list":
        rows = machines.list_all()
        print(f"{'NAME':<14} {'DISTRO':<9} {'STATE':<9} {'SSH':<16} MLFLOW URL")
        for box, state in rows:
            print(f"{box.name:<14} {box.distro:<9} {state:<9} 127.0.0.1:{box.ssh_port:<6} {box.url}")
    elif args.sandbox_command == "image":
        print(image.build_image(args.distro, force=args.rebuild, log=to_stderr))
    return EXIT_OK


def _down(args: argparse.Namespace) -> None:
    """Remove the VM, then what this machine kept for it: its secrets and its endpoint record,
    so a new sandbox of the same name starts with new passwords."""
    from mlops_provision.sandbox import machines

    names = machines.secret_names(args.name)
    store = secret_store(args)
    if store.vaulted and store.vault_password is not None:
        store.values()  # a wrong vault password stops here, before the VM is gone
    print(f"sandbox {args.name} " + ("removed" if machines.down(args.name) else "did not exist"))
    store.remove(names)
    machines.forget_endpoint(args.name)
    if store.vaulted and store.vault_password is None:
        to_stderr(f"note: {store.vault_file} is vault-encrypted and no vault password was given, so "
                  f"{', '.join(names)} stay in it (where present); remove them with: mlops-provision sandbox "
                  f"down --name {args.name} --vault-password-file FILE (or --ask-vault-pass)")
