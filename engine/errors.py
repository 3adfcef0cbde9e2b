"""The one small error hierarchy of newsbt.

A ``NewsbtError`` is a user's mistake (bad file, bad key, missing data); the command-line edge prints its
message as one line and exits non-zero. Anything else is a bug and keeps its traceback.
"""
import argparse
import sys


class NewsbtError(Exception):
    """Base of every error caused by the user's input or configuration."""


class DataError(NewsbtError):
    """An input file is missing, corrupt or malformed; the message names the file and row or column."""


class ConfigError(NewsbtError):
    """A configuration key or value is unknown or invalid; the message names the key."""


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line ``newsbt: error: ...`` and exit status 2."""

    def error(self, message: str) -> None:
        print(f"newsbt: error: {message}", file=sys.stderr)
        sys.exit(2)
