"""SENTINEL IMMUNE's kernel side: BPF programs (tracepoints, cgroup sock_addr
hooks), their build, a libbpf loader, a fanotify guard for exec and open
blocks, the policy that becomes BPF maps and fanotify marks, and the decoder
from kernel records to the wire contract's events.

    with kmod.open_sensor(scope=kmod.Scope.machine()) as sensor:
        while True:
            sensor.wait()
            for event in sensor.drain():
                print(kmod.verdict_line(event) or event)
"""

from __future__ import annotations

from ._build import build, cache_dir
from ._containers import (RUNTIMES, ContainerIdentity, Containers, ContainerStatistics, cgroup2_mount,
                          machine_containers)
from ._decode import Decoder, Verdicts, verdict_line
from ._errors import BuildError, KernelError, KmodError, PolicyError, PrivilegeError, ScopeError
from ._interface import Sensor, SensorStatistics, open_sensor
from ._linux import LinuxSensor
from ._policy import DEFAULT_POLICY, Policy, Rule
from ._reader import reader_actor
from ._scope import Scope

__all__ = [
    "DEFAULT_POLICY", "RUNTIMES", "BuildError", "ContainerIdentity", "ContainerStatistics", "Containers", "machine_containers",
    "Decoder", "KernelError", "KmodError", "LinuxSensor", "Policy", "PolicyError", "PrivilegeError", "Rule",
    "Scope", "ScopeError", "Sensor", "SensorStatistics", "Verdicts", "build", "cache_dir", "cgroup2_mount",
    "open_sensor", "reader_actor", "verdict_line",
]
