"""The errors ``describe-policy`` raises: each message says what to change, and nothing was written."""

from __future__ import annotations


class DescribeError(ValueError):
    """The graph cannot be served as the policy asked for; the message says what to change. Nothing was written."""


class OptionsError(DescribeError):
    """Options that do not fit together (a usage error: the command line, not the file, must change)."""


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (at most 300 characters), else its type's name: messages stay one line."""
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__
