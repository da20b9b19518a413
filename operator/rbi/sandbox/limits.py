"""Per-run resource limits, with the defaults of the original plan."""

from __future__ import annotations

from dataclasses import dataclass, replace

from rbi.quantity import parse_bytes, parse_cpu

DEFAULT_MEMORY = 2 * 2**30
DEFAULT_CPU = 1.0
DEFAULT_DISK = 100 * 10**6
DEFAULT_TIMEOUT = 300.0


@dataclass(frozen=True, slots=True)
class SandboxLimits:
    memory_bytes: int = DEFAULT_MEMORY
    cpus: float = DEFAULT_CPU
    disk_bytes: int = DEFAULT_DISK
    timeout_seconds: float = DEFAULT_TIMEOUT
    # Total bytes of stdout plus stderr before the run is stopped as output_limit.
    # Generous, because real scripts print megabytes of repeated warnings.
    max_output_bytes: int = 64 * 2**20
    max_processes: int = 64
    max_open_files: int = 256
    max_files: int = 10_000

    @classmethod
    def from_spec(cls, limits: dict[str, object] | None) -> SandboxLimits:
        """Read `spec.limits` (cpu, memory, disk, timeoutSeconds) in quantity notation."""
        result = cls()
        if not limits:
            return result
        return result.override(
            cpu=limits.get("cpu"),
            memory=limits.get("memory"),
            disk=limits.get("disk"),
            timeout=limits.get("timeoutSeconds"),
        )

    def override(self, *, cpu: object = None, memory: object = None, disk: object = None,
                 timeout: object = None) -> SandboxLimits:
        changes: dict[str, float | int] = {}
        if cpu is not None:
            changes["cpus"] = parse_cpu(str(cpu))
        if memory is not None:
            changes["memory_bytes"] = parse_bytes(str(memory))
        if disk is not None:
            changes["disk_bytes"] = parse_bytes(str(disk))
        if timeout is not None:
            changes["timeout_seconds"] = float(str(timeout))
        updated = replace(self, **changes)  # type: ignore[arg-type]
        updated.check()
        return updated

    def check(self) -> None:
        if self.cpus <= 0 or self.cpus > 64:
            raise ValueError(f"cpu must be in (0, 64], got {self.cpus}")
        if self.memory_bytes < 64 * 2**20:
            raise ValueError(f"memory must be at least 64Mi, got {self.memory_bytes} bytes")
        if self.disk_bytes < 2**20:
            raise ValueError(f"disk must be at least 1Mi, got {self.disk_bytes} bytes")
        if not 0 < self.timeout_seconds <= 86_400:
            raise ValueError(f"timeoutSeconds must be in (0, 86400], got {self.timeout_seconds}")

    def to_json(self) -> dict[str, float | int]:
        return {
            "memory_bytes": self.memory_bytes, "cpus": self.cpus, "disk_bytes": self.disk_bytes,
            "timeout_seconds": self.timeout_seconds, "max_output_bytes": self.max_output_bytes,
            "max_processes": self.max_processes, "max_open_files": self.max_open_files,
            "max_files": self.max_files,
        }

    @classmethod
    def from_json(cls, data: dict[str, float | int]) -> SandboxLimits:
        return cls(
            memory_bytes=int(data["memory_bytes"]), cpus=float(data["cpus"]),
            disk_bytes=int(data["disk_bytes"]), timeout_seconds=float(data["timeout_seconds"]),
            max_output_bytes=int(data["max_output_bytes"]), max_processes=int(data["max_processes"]),
            max_open_files=int(data["max_open_files"]), max_files=int(data["max_files"]),
        )
