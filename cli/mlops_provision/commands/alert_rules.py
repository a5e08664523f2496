"""alert-rules: the Prometheus alert rules shipped with this package, for an operator's Prometheus."""

from __future__ import annotations

import argparse
import sys

from mlops_provision.errors import EXIT_OK


def alert_rules(args: argparse.Namespace) -> int:
    from mlops_provision.paths import alert_rules_file

    sys.stdout.write(alert_rules_file().read_text())
    return EXIT_OK
