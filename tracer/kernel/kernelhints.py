"""Advice that must be true on the running kernel: a file to read only where it exists (or how to make it
exist), a `modprobe` only where the kernel loads modules."""

from __future__ import annotations

import os

SECURITY_DIR = "/sys/kernel/security"
PROC_MODULES = "/proc/modules"  # absent on a kernel built without loadable modules (CONFIG_MODULES=n)


def lockdown_hint(security_dir: str = SECURITY_DIR) -> str:
    """How to see the lockdown mode: its value when securityfs is mounted, else how to mount it first."""
    path = os.path.join(security_dir, "lockdown")
    try:
        with open(path) as file:
            mode = file.read().strip()
    except FileNotFoundError:
        if os.path.isdir(security_dir) and not os.listdir(security_dir):  # the mount point, nothing mounted
            return (f"securityfs is not mounted: `mount -t securityfs securityfs {security_dir} && cat {path}` "
                    "(needs [none])")
        return "this kernel has no lockdown LSM (no securityfs lockdown file): look at other LSMs (`cat " \
               f"{security_dir}/lsm`, SELinux, AppArmor)"
    except OSError as err:
        return f"{path} is unreadable ({err.strerror}): read it as root (needs [none])"
    return f"{path} reads {mode} (needs [none])"


def modules_loadable(proc_modules: str = PROC_MODULES) -> bool:
    return os.path.exists(proc_modules)


def module_hint(module: str, config: str, proc_modules: str = PROC_MODULES) -> str:
    if modules_loadable(proc_modules):
        return f"`modprobe {module}` (or use a kernel with {config}=y)"
    return f"this kernel loads no modules ({proc_modules} is absent): use a kernel built with {config}=y"
