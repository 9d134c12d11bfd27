"""Fuzzing every input boundary: targets in ``targets.py``, the short run in
``test_fuzz.py``, the long run as ``.venv/bin/python -m tests.fuzz [TARGET ...]
[--seconds N]`` (see ``__main__.py``)."""
