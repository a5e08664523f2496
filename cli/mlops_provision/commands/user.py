"""user list/add/passwd/remove/admin-password: a deployed server's users, through its REST API,
logging in with the admin password kept in this machine's secrets store."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from mlops_provision.commands._common import secret_store
from mlops_provision.errors import EXIT_OK, UsageError

if TYPE_CHECKING:
    from mlops_provision.endpoints import Endpoint
    from mlops_provision.health import Client


def user(args: argparse.Namespace) -> int:
    from mlops_provision import endpoints, users
    from mlops_provision import health as health_mod

    username: str = getattr(args, "username", "")
    if hasattr(args, "username"):  # add, passwd, remove: the name first, before any host is asked
        users.check_username(username)
    known = endpoints.lookup(args.host)
    if known is None:
        raise UsageError(f"--host {args.host}: no deploy from this machine recorded it; deploy it first "
                         "(the user commands log in with the admin password kept here)")
    if not known.auth_user:
        raise UsageError(f"--host {args.host}: deployed with --auth none, so it has no users; "
                         "deploy again without --auth none to turn basic auth on")
    new_password = ""
    if args.user_command in ("add", "passwd"):
        if args.password_stdin:
            new_password = sys.stdin.readline().rstrip("\n")
            if len(new_password) < 12 or re.search(r"[\x00-\x1f\x7f]", new_password):
                raise UsageError("--password-stdin: the password needs 12 or more characters on one line")
        else:
            new_password = users.generate_password()
    if args.user_command == "remove" and username == known.auth_user:
        raise UsageError(f"{username} is the admin user this tool logs in with; it cannot be removed here")
    with secret_store(args).session() as secrets_dir:
        admin_password = known.password(secrets_dir)
        if not admin_password:
            raise UsageError(f"the admin password of {args.host} is not in the secrets store on this machine")
        if args.user_command == "admin-password":
            print(admin_password)
            return EXIT_OK
        try:
            client = health_mod.Client(known.url, 30,
                                       health_mod.Access(known.auth_user, admin_password, known.ca_file))
        except ValueError as exc:
            raise UsageError(f"--host {args.host}: {exc}") from None
        if args.user_command == "list":
            rows = users.list_users(client)
            print(f"{'USER':<32} ADMIN")
            for row in sorted(rows, key=lambda r: str(r.get("username"))):
                print(f"{row.get('username', ''):<32} {'yes' if row.get('is_admin') else 'no'}")
        elif args.user_command == "add":
            taken = (f"user add: {username} already exists on {args.host}; to change the password use: "
                     f"mlops-provision user passwd --host {args.host} {username}")
            if users.exists(client, username):
                raise UsageError(taken)
            try:
                users.add(client, username, new_password)
            except users.UserExists:  # created by someone else in between
                raise UsageError(taken) from None
            print(f"user {username} created on {args.host}" + ("" if args.password_stdin else
                  f"; password (shown once, not kept): {new_password}"), flush=True)
            if args.admin:
                users.make_admin(client, username)
                print(f"user {username} is an admin")
        elif args.user_command == "passwd":
            own = username == known.auth_user
            if own:  # the tool logs in with it: keep the new one, once the server takes it
                _change_admin_password(client, known, secrets_dir, admin_password, new_password)
            else:
                users.set_password(client, username, new_password)
            print(f"password of {username} changed on {args.host}" + (
                "; kept in the secrets store (status, backup and deploy log in with it now; the next deploy "
                "also writes it into the host's basic_auth.ini)" if own else
                "" if args.password_stdin else f"; new password (shown once, not kept): {new_password}"))
            print(_cache_note(known.auth_cache_ttl, "the old password"))
        elif args.user_command == "remove":
            users.remove(client, username)
            print(f"user {username} removed from {args.host}")
            print(_cache_note(known.auth_cache_ttl, "its password"))
    return EXIT_OK


def _change_admin_password(client: Client, known: Endpoint, secrets_dir: Path, old: str, new: str) -> None:
    """The password this machine logs in with changes here only once the server takes it: proven
    by a login with it. An answer lost on the way (a timeout, a dropped connection) is settled the
    same way, so the store never holds a password the server does not know, nor keeps one it
    no longer accepts."""
    from mlops_provision import users
    from mlops_provision.errors import ProvisionError

    try:
        users.set_password(client, known.auth_user, new, old)
    except ProvisionError:
        if users.logs_in(client, known.auth_user, new):  # it went through; only the answer was lost
            known.set_password(secrets_dir, new)
        raise
    if not users.logs_in(client, known.auth_user, new):
        raise users.UserError(f"{client.url} answered the change of {known.auth_user}'s password, but the new one "
                              "does not log in; the password kept on this machine is unchanged")
    known.set_password(secrets_dir, new)


def _cache_note(ttl: int, what: str) -> str:
    """The login cache's bound on revocation (mlflow_auth_cache_ttl_sec), said every time."""
    if ttl <= 0:
        return f"{what} is refused from now on (no login cache)"
    return (f"{what} is refused from now on by the worker that made the change and by every worker "
            f"within {ttl} s (the login cache, mlflow_auth_cache_ttl_sec)")
