"""Command line: parse, then hand over to the commands package. Imports stay light so --help is instant."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mlops_provision import __version__
from mlops_provision.options import OPTIONS


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        sys.stderr.write(f"error: {message}\n")
        sys.exit(2)


def _server_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("server options (same meaning as `mlflow server`)")
    for opt in OPTIONS:
        if opt.kind == "bool":
            group.add_argument(f"--{opt.flag}", dest=opt.key, action=argparse.BooleanOptionalAction,
                               default=None, help=opt.help)
        elif opt.repeatable:
            group.add_argument(f"--{opt.flag}", dest=opt.key, action="append", default=None,
                               metavar=opt.flag.split("-")[-1].upper(), help=opt.help)
        else:
            group.add_argument(f"--{opt.flag}", dest=opt.key, default=None,
                               metavar=opt.flag.split("-")[-1].upper(), help=opt.help)
    group.add_argument("--allow-insecure-version", action="store_true",
                       help="allow an MLflow release with known server vulnerabilities")
    parser.add_argument("--config", metavar="FILE", help="YAML file with the same keys as these flags")


def _target_options(parser: argparse.ArgumentParser, ansible: bool = True, changes: bool = True) -> None:
    group = parser.add_argument_group("targets")
    group.add_argument("--host", action="append", default=[], metavar="NAME",
                       help="sandbox name, inventory host, or hostname/IP (repeatable)")
    group.add_argument("-i", "--inventory", action="append", default=[], metavar="FILE",
                       help="Ansible inventory; without --host, its group mlflow_servers is used")
    if not ansible:
        return
    group.add_argument("--limit", help="Ansible --limit pattern")
    group = parser.add_argument_group("ansible passthrough")
    group.add_argument("-e", "--extra-vars", action="append", default=[], metavar="VARS",
                       help="extra variables (key=value, JSON or @file), as for ansible-playbook")
    if changes:  # a command that reads only (status) has nothing to run partly, dry or with diffs
        group.add_argument("--tags", help="run only these role tags (e.g. mlflow_configure)")
        group.add_argument("--check", action="store_true", help="dry run: report what would change")
        group.add_argument("--diff", action="store_true", help="show file differences")
    group.add_argument("-v", "--verbose", action="count", default=0, help="raw Ansible output (-vv, -vvv: more)")
    _secrets_options(parser)


def _lock_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lock-wait", default="60", metavar="SECONDS",
                        help="wait this long (0-3600, default 60) for another deploy or destroy of the same "
                             "host to finish, from this machine or (the role's lock) from another")


def _secrets_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("secrets")
    group.add_argument("--vault-password-file", metavar="FILE",
                       help="keep generated passwords ansible-vault encrypted (also opens vaulted inventory vars)")
    group.add_argument("--ask-vault-pass", action="store_true", help="prompt for the vault password")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mlops-provision",
        description="Put a production-grade MLflow tracking server on your own Linux VMs.",
        epilog=("Exit codes: 0 ok, 1 failed on a host, 2 bad input (nothing changed), 3 host unreachable, "
                "130 interrupted (Ctrl-C or SIGTERM; run the same command again)."),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    deploy = sub.add_parser("deploy", help="install or converge MLflow on hosts")
    _server_options(deploy)
    _target_options(deploy)
    deploy.add_argument("--force", action="store_true",
                        help="allow switching an existing server to another backend store")
    deploy.add_argument("--full", action="store_true",
                        help="walk every step even when the host runs exactly what is asked "
                             "(by default such a deploy ends after one check)")
    _lock_option(deploy)

    backup = sub.add_parser("backup", help="copy a server's databases and local artifacts into one archive here "
                                           "(backup list: the scheduled backups on the host)")
    backup.add_argument("what", nargs="?", choices=["list"], help="list: show the scheduled backups on the host")
    _target_options(backup)
    backup.add_argument("--output", default=".", metavar="DIR",
                        help="directory on this machine for the archive (default: the current one)")
    _lock_option(backup)

    restore = sub.add_parser("restore", help="deploy the archive's MLflow release and put its data in place")
    restore.add_argument("--from", dest="source", metavar="ARCHIVE",
                         help="an archive written by `mlops-provision backup`, or @NAME: a scheduled backup "
                              "on the host (`backup list`)")
    restore.add_argument("--from-sqlite", dest="from_sqlite", metavar="FILE",
                         help="adopt a server installed by hand: its SQLite database, a path on the host "
                              "(stop that server first)")
    restore.add_argument("--artifacts", dest="adopt_artifacts", metavar="DIR", default="",
                         help="with --from-sqlite: its artifact directory on the host (its runs' artifact "
                              "URIs are pointed at the managed store)")
    _server_options(restore)
    _target_options(restore)
    restore.add_argument("--force", dest="replace_data", action="store_true",
                         help="replace a server that holds data: experiments, runs, models, traces or users "
                              "(they are backed up first)")
    restore.add_argument("--accept-unverified-archive", dest="accept_unverified", action="store_true",
                         help="restore an archive whose signature does not verify with this machine's backup "
                              "signing key (written before archives were signed, or on a machine whose key is "
                              "lost): only an archive whose origin you know")
    restore.set_defaults(force=False)
    _lock_option(restore)

    status = sub.add_parser("status", help="one table of every server and load balancer: version, health, "
                                           "readiness, uptime, last deploy, drift from the configuration")
    _server_options(status)
    _target_options(status, changes=False)
    status.add_argument("--json", action="store_true", help="machine-readable output")

    render = sub.add_parser("render", help="write the unit and env file a deploy would install")
    _server_options(render)
    render.add_argument("--output-dir", metavar="DIR", help="write files here instead of printing them")

    sub.add_parser("alert-rules", help="print the Prometheus alert rules for MLflow servers and load balancers "
                                       "(docs/alerting.md)")

    health = sub.add_parser("health", help="check /health and /version (--deep: a real round trip)")
    _target_options(health, ansible=False)
    health.add_argument("--url", action="append", default=[], help="check this URL instead of hosts")
    health.add_argument("--port", type=int, default=None, help="server port on non-sandbox hosts (default 5000)")
    health.add_argument("--deep", action="store_true",
                        help="also create a run, log a metric, upload and download an artifact, clean up")
    health.add_argument("--json", action="store_true", help="machine-readable output")
    health.add_argument("--timeout", type=float, default=10.0, help="seconds per request (default 10)")
    _secrets_options(health)

    user = sub.add_parser("user", help="manage MLflow users (basic auth) through the server's REST API")
    usr = user.add_subparsers(dest="user_command", required=True, parser_class=_Parser)
    for name, text in (("list", "list the users"),
                       ("add", "create a user; its password is generated and printed once, or read from stdin"),
                       ("passwd", "set a new password (generated and printed once, or read from stdin)"),
                       ("remove", "delete a user"),
                       ("admin-password", "print the admin password kept on this machine")):
        cmd = usr.add_parser(name, help=text)
        cmd.add_argument("--host", required=True, metavar="NAME", help="a host deployed from this machine")
        if name in ("add", "passwd", "remove"):
            cmd.add_argument("username")
        if name in ("add", "passwd"):
            cmd.add_argument("--password-stdin", action="store_true",
                             help="read the password from standard input instead of generating one")
        if name == "add":
            cmd.add_argument("--admin", action="store_true", help="make the user an MLflow admin")
        _secrets_options(cmd)

    destroy = sub.add_parser("destroy", help="remove the service, unit, venv and firewall rule")
    _target_options(destroy)
    destroy.add_argument("--yes", action="store_true", help="confirm removal (required)")
    destroy.add_argument("--purge-data", action="store_true", help="also delete /var/lib/mlflow and the user")
    destroy.add_argument("--port", default=None, help="port whose firewall rule to close (default 5000)")
    _lock_option(destroy)

    sandbox = sub.add_parser("sandbox", help="local sandbox VMs (podman containers that boot systemd)")
    sbx = sandbox.add_subparsers(dest="sandbox_command", required=True, parser_class=_Parser)
    up = sbx.add_parser("up", help="start a sandbox VM reachable over SSH on 127.0.0.1")
    up.add_argument("--name", required=True)
    up.add_argument("--distro", default="debian12", choices=["debian12", "debian13"])
    up.add_argument("--host-loopback", action="store_true",
                    help="let the VM reach this machine's 127.0.0.1 services at 10.0.2.2 (for test stores)")
    down = sbx.add_parser("down", help="remove a sandbox VM and the passwords and endpoint kept for it")
    down.add_argument("--name", required=True)
    _secrets_options(down)
    sbx.add_parser("list", help="list sandbox VMs")
    image = sbx.add_parser("image", help="build the cached sandbox image")
    image.add_argument("--distro", default="debian12", choices=["debian12", "debian13"])
    image.add_argument("--rebuild", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from mlops_provision import commands, interrupt
    from mlops_provision.errors import EXIT_INTERRUPTED, ProvisionError

    try:
        # SIGTERM takes the Ctrl-C path: a running playbook is cancelled and reported, and
        # cleanup (vault, locks, temporary files) runs, which the default action would skip.
        interrupt.install()
        return commands.dispatch(args)
    except ProvisionError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
