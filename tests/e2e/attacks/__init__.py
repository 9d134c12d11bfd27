"""ATT&CK coverage proven end to end: attack procedures run on this machine through the real
sensor, agent and hive, each asserting an alert tagged with its technique (``matrix.py`` makes
docs/ATTACK.md from them and from the rules' tags)."""
