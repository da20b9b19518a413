"""A small, pure checker of the restricted Pod Security Standard (Kubernetes v1.25+ policy, latest version).

It follows https://kubernetes.io/docs/concepts/security/pod-security-standards/: every baseline control, then
the restricted ones. `violations(pod_spec, pod_annotations)` returns one line per breach, empty when the pod
would be admitted by a namespace labelled pod-security.kubernetes.io/enforce=restricted.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

ALLOWED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                        "projected", "secret"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                "net.ipv4.tcp_keepalive_probes"}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
SECCOMP_OK = {"RuntimeDefault", "Localhost"}
APPARMOR_OK = {"RuntimeDefault", "Localhost"}


def _containers(spec: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for field in ("initContainers", "containers", "ephemeralContainers"):
        for container in spec.get(field) or []:
            yield f"{field}[{container.get('name', '?')}]", container


def violations(spec: Mapping[str, Any], annotations: Mapping[str, str] | None = None) -> list[str]:
    out: list[str] = []
    pod_sc: Mapping[str, Any] = spec.get("securityContext") or {}
    annotations = annotations or {}

    # --- baseline ---------------------------------------------------------------------------------------------
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            out.append(f"{field} must be false")
    if (pod_sc.get("windowsOptions") or {}).get("hostProcess"):
        out.append("securityContext.windowsOptions.hostProcess must be false")
    for volume in spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if "hostPath" in kinds:
            out.append(f"volume {volume.get('name')}: hostPath is forbidden")
        elif not kinds <= ALLOWED_VOLUME_TYPES:
            out.append(f"volume {volume.get('name')}: type {sorted(kinds - ALLOWED_VOLUME_TYPES)} is not allowed")
    for sysctl in pod_sc.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            out.append(f"sysctl {sysctl.get('name')} is not in the safe set")
    out += _selinux("securityContext", pod_sc)
    out += _apparmor("securityContext", pod_sc)
    for key, value in annotations.items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/") and not (
                value == "runtime/default" or value.startswith("localhost/")):
            out.append(f"annotation {key}={value}: AppArmor must be runtime/default or localhost/*")
    pod_seccomp = (pod_sc.get("seccompProfile") or {}).get("type")
    if pod_seccomp is not None and pod_seccomp not in SECCOMP_OK:
        out.append(f"securityContext.seccompProfile.type {pod_seccomp} is not allowed")
    pod_non_root = pod_sc.get("runAsNonRoot")
    if pod_sc.get("runAsUser") == 0:
        out.append("securityContext.runAsUser must not be 0")

    # --- per container: baseline and restricted ---------------------------------------------------------------
    for where, container in _containers(spec):
        sc: Mapping[str, Any] = container.get("securityContext") or {}
        if sc.get("privileged"):
            out.append(f"{where}: privileged must be false")
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            out.append(f"{where}: windowsOptions.hostProcess must be false")
        for port in container.get("ports") or []:
            if port.get("hostPort"):
                out.append(f"{where}: hostPort {port['hostPort']} is forbidden")
        if sc.get("procMount", "Default") != "Default":
            out.append(f"{where}: procMount must be Default")
        out += _selinux(where, sc)
        out += _apparmor(where, sc)
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{where}: allowPrivilegeEscalation must be false")
        # runAsNonRoot: the container's own setting wins; unset falls back to the pod's.
        non_root = sc.get("runAsNonRoot", pod_non_root)
        if non_root is not True:
            out.append(f"{where}: runAsNonRoot must be true (container or pod)")
        if sc.get("runAsUser") == 0:
            out.append(f"{where}: runAsUser must not be 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type", pod_seccomp)
        if seccomp not in SECCOMP_OK:
            out.append(f"{where}: seccompProfile must be RuntimeDefault or Localhost (container or pod)")
        caps: Mapping[str, Any] = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"{where}: capabilities.drop must include ALL")
        added = set(caps.get("add") or []) - {"NET_BIND_SERVICE"}
        if added:
            out.append(f"{where}: capabilities.add may hold only NET_BIND_SERVICE, not {sorted(added)}")
    return out


def _selinux(where: str, sc: Mapping[str, Any]) -> list[str]:
    options: Mapping[str, Any] = sc.get("seLinuxOptions") or {}
    out = []
    if options.get("type", "") not in SELINUX_TYPES:
        out.append(f"{where}: seLinuxOptions.type {options['type']} is not allowed")
    for field in ("user", "role"):
        if options.get(field):
            out.append(f"{where}: seLinuxOptions.{field} must be unset")
    return out


def _apparmor(where: str, sc: Mapping[str, Any]) -> list[str]:
    profile = (sc.get("appArmorProfile") or {}).get("type")
    if profile is not None and profile not in APPARMOR_OK:
        return [f"{where}: appArmorProfile.type {profile} is not allowed"]
    return []


def pod_template(workload: Mapping[str, Any]) -> tuple[Mapping[str, Any], Mapping[str, str]]:
    """The pod spec and annotations of a Pod, Deployment, Job or CronJob."""
    kind = workload["kind"]
    if kind == "Pod":
        return workload["spec"], workload.get("metadata", {}).get("annotations") or {}
    template = workload["spec"]["jobTemplate"]["spec"]["template"] if kind == "CronJob" else \
        workload["spec"]["template"]
    return template["spec"], template.get("metadata", {}).get("annotations") or {}
