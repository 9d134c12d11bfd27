#!/bin/sh
# The packaged launcher: the venv's interpreter, so the node's child processes
# (started with sys.executable) find the same packages.
exec /usr/lib/immune/bin/python -m node.cli "$@"
