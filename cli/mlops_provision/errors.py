"""Errors that map to the CLI's documented exit codes."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1  # the deploy or check failed on a host
EXIT_USAGE = 2  # bad input; nothing was touched
EXIT_UNREACHABLE = 3  # a host could not be reached
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM (128 + SIGINT, as shells report it); hosts may be half-changed


class ProvisionError(Exception):
    """An error with a message for the operator and an exit code."""

    exit_code = EXIT_FAILED


class UsageError(ProvisionError):
    """Bad input: names the flag or variable and what would be valid."""

    exit_code = EXIT_USAGE


class UnreachableError(ProvisionError):
    exit_code = EXIT_UNREACHABLE


class DeployFailed(ProvisionError):
    exit_code = EXIT_FAILED
