#!/bin/sh
# The packaged launcher: the venv's interpreter, so the node's child processes
# (started with sys.executable) find the same packages.
# /usr/lib/immune is read-only to the services and owned by dpkg: no __pycache__ written there.
export PYTHONDONTWRITEBYTECODE=1
exec /usr/lib/immune/bin/python -m node.cli "$@"
