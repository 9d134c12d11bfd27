"""The kernel sensor's own errors.  Foreign errors (OSError, libbpf's negative
errnos, TOML syntax errors) are caught where they happen and re-raised as one of
these, with a message that says what to do about it."""

from __future__ import annotations


class KmodError(Exception):
    """Base of every error the kernel sensor raises."""


class BuildError(KmodError):
    """The BPF programs could not be built: a tool is missing or clang failed."""


class PrivilegeError(KmodError):
    """The sensor needs root (CAP_BPF, CAP_SYS_ADMIN, CAP_PERFMON)."""


class KernelError(KmodError):
    """The kernel refused something: no BTF, a load or attach failure, a mount."""


class PolicyError(KmodError):
    """A policy file or rule is malformed or asks for something unsupported."""


class ScopeError(KmodError):
    """A scope names a cgroup or network namespace that does not exist."""
