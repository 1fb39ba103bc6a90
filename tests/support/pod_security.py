"""Test-only stand-in for Kubernetes' PodSecurity admission at level `restricted` (v1.32): the
published Pod Security Standards (https://kubernetes.io/docs/concepts/security/pod-security-standards/),
every Baseline and Restricted control, checked on a pod spec. Replaces a real API server with the
PodSecurity plugin enforcing `restricted` on a namespace; names follow the plugin's check IDs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

Obj = dict[str, Any]

BASELINE_CAPABILITIES = frozenset({"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                                   "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"})
SAFE_SYSCTLS = frozenset({
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes"})
SELINUX_TYPES = frozenset({"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"})
RESTRICTED_VOLUMES = frozenset({"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                                "projected", "secret"})


def containers(pod: Obj) -> Iterator[Obj]:
    for key in ("initContainers", "containers", "ephemeralContainers"):
        yield from pod.get(key) or []


def _ctx(c: Obj) -> Obj:
    return c.get("securityContext") or {}


def host_process(pod: Obj) -> bool:
    opts = [(pod.get("securityContext") or {}).get("windowsOptions") or {}]
    opts += [_ctx(c).get("windowsOptions") or {} for c in containers(pod)]
    return not any(o.get("hostProcess") for o in opts)


def host_namespaces(pod: Obj) -> bool:
    return not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))


def privileged(pod: Obj) -> bool:
    return not any(_ctx(c).get("privileged") for c in containers(pod))


def capabilities_baseline(pod: Obj) -> bool:
    return all(set((_ctx(c).get("capabilities") or {}).get("add") or []) <= BASELINE_CAPABILITIES
               for c in containers(pod))


def host_path_volumes(pod: Obj) -> bool:
    return not any("hostPath" in v for v in pod.get("volumes") or [])


def host_ports(pod: Obj) -> bool:
    return not any(p.get("hostPort") for c in containers(pod) for p in c.get("ports") or [])


def app_armor(pod: Obj) -> bool:
    profiles = [(pod.get("securityContext") or {}).get("appArmorProfile")]
    profiles += [_ctx(c).get("appArmorProfile") for c in containers(pod)]
    return all(p is None or p.get("type") in ("RuntimeDefault", "Localhost") for p in profiles)


def se_linux(pod: Obj) -> bool:
    options = [(pod.get("securityContext") or {}).get("seLinuxOptions")]
    options += [_ctx(c).get("seLinuxOptions") for c in containers(pod)]
    return all(o is None or (o.get("type", "") in SELINUX_TYPES and not o.get("user") and not o.get("role"))
               for o in options)


def proc_mount(pod: Obj) -> bool:
    return all(_ctx(c).get("procMount") in (None, "Default") for c in containers(pod))


def seccomp_baseline(pod: Obj) -> bool:
    profiles = [(pod.get("securityContext") or {}).get("seccompProfile")]
    profiles += [_ctx(c).get("seccompProfile") for c in containers(pod)]
    return all(p is None or p.get("type") != "Unconfined" for p in profiles)


def sysctls(pod: Obj) -> bool:
    return all(s.get("name") in SAFE_SYSCTLS for s in (pod.get("securityContext") or {}).get("sysctls") or [])


def restricted_volumes(pod: Obj) -> bool:
    return all(any(k in RESTRICTED_VOLUMES for k in v if k != "name") for v in pod.get("volumes") or [])


def allow_privilege_escalation(pod: Obj) -> bool:
    return all(_ctx(c).get("allowPrivilegeEscalation") is False for c in containers(pod))


def run_as_non_root(pod: Obj) -> bool:
    pod_level = (pod.get("securityContext") or {}).get("runAsNonRoot")
    for c in containers(pod):
        own = _ctx(c).get("runAsNonRoot")
        if own is False or (own is None and pod_level is not True):
            return False
    return True


def run_as_user(pod: Obj) -> bool:
    users = [(pod.get("securityContext") or {}).get("runAsUser")] + [_ctx(c).get("runAsUser") for c in containers(pod)]
    return all(u != 0 for u in users)


def seccomp_restricted(pod: Obj) -> bool:
    allowed = ("RuntimeDefault", "Localhost")
    pod_level = ((pod.get("securityContext") or {}).get("seccompProfile") or {}).get("type")
    if pod_level is not None and pod_level not in allowed:
        return False
    for c in containers(pod):
        own = (_ctx(c).get("seccompProfile") or {}).get("type")
        if (own is None and pod_level is None) or (own is not None and own not in allowed):
            return False
    return True


def capabilities_restricted(pod: Obj) -> bool:
    for c in containers(pod):
        caps = _ctx(c).get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []) or set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            return False
    return True


CHECKS: dict[str, Callable[[Obj], bool]] = {
    "hostProcess": host_process, "hostNamespaces": host_namespaces, "privileged": privileged,
    "capabilities_baseline": capabilities_baseline, "hostPathVolumes": host_path_volumes, "hostPorts": host_ports,
    "appArmorProfile": app_armor, "seLinuxOptions": se_linux, "procMount": proc_mount,
    "seccompProfile_baseline": seccomp_baseline, "sysctls": sysctls,
    "restrictedVolumes": restricted_volumes, "allowPrivilegeEscalation": allow_privilege_escalation,
    "runAsNonRoot": run_as_non_root, "runAsUser": run_as_user, "seccompProfile_restricted": seccomp_restricted,
    "capabilities_restricted": capabilities_restricted,
}


def restricted_violations(pod: Obj) -> list[str]:
    """The `restricted` checks a pod spec fails; [] when the PodSecurity plugin would admit it."""
    return [name for name, check in CHECKS.items() if not check(pod)]
