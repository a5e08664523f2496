"""render: the unit and environment files a deploy would write, rendered here (secrets masked)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mlops_provision.commands._common import spec_from_args
from mlops_provision.errors import EXIT_OK


def render(args: argparse.Namespace) -> int:
    from mlops_provision.render import LOCAL_ONLY_HOSTS, render_files, write_files

    spec = spec_from_args(args)
    files = render_files(spec, mask_secrets=True)
    note = ""
    if not spec.effective.get("mlflow_allowed_hosts"):
        note = (f"note: MLFLOW_SERVER_ALLOWED_HOSTS shows {','.join(LOCAL_ONLY_HOSTS)}; on a host it also "
                "lists that host's names and addresses (pin it with --allowed-hosts)\n")
    if args.output_dir:
        for path in write_files(files, Path(args.output_dir)):
            print(path)
    else:
        for name, text in files.items():
            print(f"# ---- {name} ----")
            sys.stdout.write(text)
    sys.stderr.write(note)
    return EXIT_OK
