"""``kdscope`` command line: thin wrappers that parse, build a config and call the library.

One module per kind of command; importing them registers their commands on :data:`app`.
"""

from kdscope.cli import runs, studies, zoo  # noqa: F401  (registers the commands, in this order)
from kdscope.cli.app import app, main

__all__ = ["app", "main"]
