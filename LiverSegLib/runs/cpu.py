"""How many CPU threads a run may use: the cores this process may run on, and a container's CPU quota.

torch sizes its thread pool from the machine's cores. In a container limited to 2 CPUs on a 64-core host
(cgroup ``cpu.max``) that is 64 threads fighting over 2 CPUs, which is slower than 2. :func:`available_cpus` reads
the affinity mask and the cgroup quota; :func:`configure_torch_threads` caps torch's pool at that, unless the user
chose (``OMP_NUM_THREADS`` or ``LIVERSEG_THREADS``).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = ["available_cpus", "cgroup_cpu_quota", "configure_torch_threads"]


def cgroup_cpu_quota(root: str | os.PathLike = "/sys/fs/cgroup") -> float | None:
    """The CPU quota of this process's cgroup in CPUs (e.g. 1.5), or ``None`` when there is none.

    cgroup v2 (``cpu.max``: "QUOTA PERIOD" or "max PERIOD") and v1 (``cpu/cpu.cfs_quota_us``,
    ``cpu/cpu.cfs_period_us``; -1 is no quota) are read.
    """
    root = Path(root)
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 or period <= 0 else quota / period
    except (OSError, ValueError):
        return None


def available_cpus(root: str | os.PathLike = "/sys/fs/cgroup") -> int:
    """CPUs this process can use: its affinity mask, capped by the cgroup quota (rounded up), at least 1."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpu_quota(root)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def configure_torch_threads() -> int:
    """Cap torch's intra-op threads at :func:`available_cpus` (``LIVERSEG_THREADS`` sets the number; with
    ``OMP_NUM_THREADS`` set, torch's own choice is kept). Returns the number of threads torch now uses."""
    import torch

    wanted = os.environ.get("LIVERSEG_THREADS")
    if wanted:
        torch.set_num_threads(max(1, int(wanted)))
    elif "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, min(torch.get_num_threads(), available_cpus())))
    return torch.get_num_threads()
