"""The project's root error type: bad input or unreadable state the user can fix.

The CLI turns any ``DlasError`` into one ``error:`` line and a non-zero exit, wherever it is raised.
"""

from __future__ import annotations


class DlasError(Exception):
    """Known bad input or unreadable state: the message is one line that names the file."""
