"""The hive: router, registry, sentinel, correlate, playbook, store, API."""
