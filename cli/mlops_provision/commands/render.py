"""render: the unit and environment files a deploy would write, rendered here (secrets masked)."""

from __future__ import annotations

import argparse
import sys

from mlops_provision.commands._common import spec_from_args, writable_dir
from mlops_provision.errors import EXIT_OK


def render(args: argparse.Namespace) -> int:
    from mlops_provision.render import LOCAL_ONLY_HOSTS, render_files, write_files

    spec = spec_from_args(args)
    output_dir = writable_dir("--output-dir", args.output_dir) if args.output_dir else None
    files = render_files(spec, mask_secrets=True)
    note = ""
    if not spec.effective.get("mlflow_allowed_hosts"):
        note = (f"note: MLFLOW_SERVER_ALLOWED_HOSTS shows {','.join(LOCAL_ONLY_HOSTS)}; on a host it also "
                "lists that host's names and addresses (pin it with --allowed-hosts)\n")
    if output_dir is not None:
        for path in write_files(files, output_dir):
            print(path)
    else:
        for name, text in files.items():
            print(f"# ---- {name} ----")
            sys.stdout.write(text)
    sys.stderr.write(note)
    return EXIT_OK
