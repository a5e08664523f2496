#!/usr/bin/python3
"""Make ufw or firewalld admit exactly what was asked to the server's ports, and nothing else
of ours (runs on the host as root, like deploy_lock.py).

  host_firewall.py apply  --firewall ufw|firewalld --port P... [--allow CIDR...] [--other-port P...]
  host_firewall.py remove --other-port P...     (in every active one of ufw and firewalld)

--port: the ports to open now; --other-port: ports of ours to close (MLflow's port once TLS
puts nginx in front, the proxy's once TLS is off).

One run reads the rules, removes ours that are no longer asked for (an earlier allowlist, an
open port that an allowlist replaces), adds the missing ones, and prints JSON:
{"changed": bool, "added": [...], "removed": [...]}.

Ours in ufw: rules commented "mlflow". Ours in firewalld (which has no comments): the ports
opened in the default zone and rich rules of exactly the shape we write, for our ports. With an
allowlist, a rule that admits everyone to one of our ports is removed even if it is not ours:
the allowlist is what the operator asked for, and that rule would make it a lie.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
import shutil
import subprocess
import sys

ANY = "any"
UFW_RULE = re.compile(r"^\[\s*(\d+)\]\s+(\d+)/tcp(?: \(v6\))?\s+ALLOW IN\s+(.+?)\s*(# mlflow)?$")
RICH_RULE = re.compile(r'^rule family="ipv[46]" source address="([^"]+)" port port="(\d+)" protocol="tcp" accept$')


def run(*argv: str, check: bool = True) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if check and proc.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed: {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout


def source(text: str) -> str:
    """One spelling per network: 10.0.0.1 and 10.0.0.1/32 are the same source."""
    text = text.strip()
    if text.startswith("Anywhere"):
        return ANY
    return str(ipaddress.ip_network(text, strict=False))


def wanted(ports: list[int], allow: list[str]) -> set[tuple[int, str]]:
    return {(p, source(a)) for p in ports for a in allow} if allow else {(p, ANY) for p in ports}


def is_allowlist(want: set[tuple[int, str]]) -> bool:
    """Only an allowlist removes others' rules that admit everyone; removing ours does not."""
    return bool(want) and all(src != ANY for _, src in want)


# --- ufw ---------------------------------------------------------------------------------

def ufw_active() -> bool:
    return shutil.which("ufw") is not None and "Status: active" in run("ufw", "status", check=False)


def ufw_rules(ports: list[int]) -> list[tuple[int, int, str, bool]]:
    """(number, port, source, ours) of every ALLOW rule for our ports, highest number first."""
    rules = []
    for line in run("ufw", "status", "numbered").splitlines():
        m = UFW_RULE.match(line.strip())
        if m and int(m.group(2)) in ports:
            rules.append((int(m.group(1)), int(m.group(2)), source(m.group(3)), bool(m.group(4))))
    return sorted(rules, reverse=True)


def ufw_apply(ports: list[int], want: set[tuple[int, str]], report: dict[str, list[str]]) -> None:
    strict = is_allowlist(want)
    while True:  # numbers shift after each delete: read again until nothing is left to remove
        stale = [r for r in ufw_rules(ports) if (r[1], r[2]) not in want and (r[3] or (strict and r[2] == ANY))]
        if not stale:
            break
        number, port, src, _ = stale[0]
        run("ufw", "--force", "delete", str(number))
        report["removed"].append(f"{src} -> {port}/tcp")
    have = {(r[1], r[2]) for r in ufw_rules(ports) if r[3]}
    for port, src in sorted(want - have):
        frm = [] if src == ANY else ["from", src]
        run("ufw", "allow", "proto", "tcp", *frm, "to", "any", "port", str(port), "comment", "mlflow")
        report["added"].append(f"{src} -> {port}/tcp")


# --- firewalld ---------------------------------------------------------------------------

def firewalld_active() -> bool:
    return shutil.which("firewall-cmd") is not None and subprocess.run(
        ["firewall-cmd", "--state"], capture_output=True).returncode == 0


def rich_rule(src: str, port: int) -> str:
    family = "ipv6" if ":" in src else "ipv4"
    return f'rule family="{family}" source address="{src}" port port="{port}" protocol="tcp" accept'


def firewalld_change(flag: str) -> None:
    """The same change to the saved and to the running configuration."""
    run("firewall-cmd", "--permanent", flag)
    run("firewall-cmd", flag, check=False)  # absent from the running config: nothing to undo


def firewalld_apply(ports: list[int], want: set[tuple[int, str]], report: dict[str, list[str]]) -> None:
    """Ports opened in the default zone count as ours: firewalld cannot say who opened them."""
    open_ports = {int(p.split("/")[0]) for p in run("firewall-cmd", "--permanent", "--list-ports").split()
                  if p.endswith("/tcp") and p.split("/")[0].isdigit()}
    rules = {}
    for line in run("firewall-cmd", "--permanent", "--list-rich-rules").splitlines():
        m = RICH_RULE.match(line.strip())
        if m and int(m.group(2)) in ports:
            rules[(int(m.group(2)), source(m.group(1)))] = line.strip()
    for port in sorted(p for p in ports if p in open_ports and (p, ANY) not in want):
        firewalld_change(f"--remove-port={port}/tcp")
        report["removed"].append(f"{ANY} -> {port}/tcp")
    for key, rule in sorted(rules.items()):
        if key not in want:
            firewalld_change(f"--remove-rich-rule={rule}")
            report["removed"].append(f"{key[1]} -> {key[0]}/tcp")
    for port, src in sorted(want):
        if src == ANY and port not in open_ports:
            firewalld_change(f"--add-port={port}/tcp")
        elif src != ANY and (port, src) not in rules:
            firewalld_change(f"--add-rich-rule={rich_rule(src, port)}")
        else:
            continue
        report["added"].append(f"{src} -> {port}/tcp")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("action", choices=["apply", "remove"])
    parser.add_argument("--firewall", choices=["ufw", "firewalld"])
    parser.add_argument("--port", type=int, action="append", default=[])
    parser.add_argument("--other-port", type=int, action="append", default=[])
    parser.add_argument("--allow", action="append", default=[])
    args = parser.parse_args(argv)
    ports = sorted(set(args.port + args.other_port))
    report: dict[str, list[str]] = {"added": [], "removed": []}
    if args.action == "apply":
        if not args.firewall or not args.port:
            parser.error("apply needs --firewall and --port")
        apply = ufw_apply if args.firewall == "ufw" else firewalld_apply
        apply(ports, wanted(args.port, args.allow), report)
    else:  # want nothing: every rule of ours goes
        if ufw_active():
            ufw_apply(ports, set(), report)
        if firewalld_active():
            firewalld_apply(ports, set(), report)
    print(json.dumps({"changed": bool(report["added"] or report["removed"]), **report}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
