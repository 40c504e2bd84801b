"""Triton system shared memory: one set of regions per client thread, re-registered after a restart, released.

A client that is killed (``kill -9``, the out-of-memory killer, a Dask worker lost mid-image) cannot release its
regions: the server keeps them registered and mapped, holding their RAM until it restarts, and when the client's
process group went with it (a container, a job) their files stay in ``/dev/shm`` too (otherwise Python's resource
tracker, which ``tritonclient`` registers them with, unlinks the files: never the registrations). Region names
therefore carry the process id of their owner (and its host and PID namespace), and a backend starting with shared
memory removes the regions of alps processes of its namespace that are no longer running
(:func:`sweep_stale_regions`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import threading
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from alps_client._imports import lazy_import
from alps_client.backends.triton_status import reason, server_errors

logger = logging.getLogger(__name__)

SHM_DIR = Path("/dev/shm")


def _process_namespace() -> str:
    """The host name and PID namespace of this process: where its process ids mean something."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:  # not Linux
        namespace = ""
    return f"{socket.gethostname()}/{namespace}"


# Process ids are only meaningful within one PID namespace, while /dev/shm may be shared with other containers
# (docker compose's `ipc: service:triton`, or `ipc: host`): the owner's namespace is part of every region's name.
_NAMESPACE = hashlib.sha1(_process_namespace().encode()).hexdigest()[:8]
_OWNED = re.compile(rf"alps_{_NAMESPACE}_(\d+)_[0-9a-f]{{12}}")


def region_name(pid: int | None = None) -> str:
    """A new region name owned by process ``pid`` (this process by default) of this PID namespace."""
    return f"alps_{_NAMESPACE}_{os.getpid() if pid is None else pid}_{uuid.uuid4().hex[:12]}"


def stale_region_names(names: Iterable[str]) -> list[str]:
    """The names among ``names`` that alps processes of this PID namespace made and that are no longer running."""
    psutil = lazy_import("psutil")
    return [n for n in names if (m := _OWNED.fullmatch(n)) and not psutil.pid_exists(int(m[1]))]


def sweep_stale_regions(client: Any) -> int:
    """Remove the regions of dead alps processes of this PID namespace; return how many were found.

    Both sides are freed: the ``/dev/shm`` files and the registrations with ``client``'s server.
    """
    files = stale_region_names(p.name for p in SHM_DIR.glob(f"alps_{_NAMESPACE}_*")) if SHM_DIR.is_dir() else []
    for name in files:
        (SHM_DIR / name).unlink(missing_ok=True)
    try:
        registered = stale_region_names(_registered_names(client))
        for name in registered:
            client.unregister_system_shared_memory(name)
    except server_errors() as err:  # best effort: the run itself does not need it
        logger.debug("stale shared-memory registrations not checked (%s)", reason(err))
        registered = []
    found = len(set(files) | set(registered))
    if found:
        logger.info("removed %d shared-memory region(s) left by alps processes that were killed", found)
    return found


def _registered_names(client: Any) -> set[str]:
    """Names of the system shared-memory regions registered with ``client``'s server."""
    if client.__class__.__module__.startswith("tritonclient.grpc"):
        return set(client.get_system_shared_memory_status(as_json=True).get("regions", {}))
    return {r["name"] for r in client.get_system_shared_memory_status()}  # HTTP: JSON already, a list


class ShmRegion:
    """One system shared-memory region, registered with the server."""

    def __init__(self, client: Any, shm: Any, nbytes: int) -> None:
        self.name = region_name()
        self.key = f"/{self.name}"
        self.nbytes = nbytes
        self.handle = shm.create_shared_memory_region(self.name, self.key, nbytes)
        self._shm = shm
        self.register(client)

    def register(self, client: Any) -> None:
        """(Re-)register with ``client``'s server; unregistering an unknown name is no error (Triton 2.51)."""
        client.unregister_system_shared_memory(self.name)
        client.register_system_shared_memory(self.name, self.key, self.nbytes)

    def destroy(self, client: Any | None) -> None:
        """Unregister (if the server still answers) and free the region."""
        if client is not None:
            try:
                client.unregister_system_shared_memory(self.name)
            except server_errors() as err:  # server gone: it holds nothing of ours any more
                logger.debug("shared memory %s not unregistered (%s)", self.name, reason(err))
        self._shm.destroy_shared_memory_region(self.handle)


class ShmRegions:
    """The regions of every thread of one backend, by thread and tensor name."""

    def __init__(self) -> None:
        self._regions: dict[int, dict[str, ShmRegion]] = {}
        self._lock = threading.Lock()

    def for_thread(self, client: Any, sizes: dict[str, int]) -> dict[str, ShmRegion]:
        """This thread's regions, at least ``sizes[name]`` bytes each (grown and re-registered as needed)."""
        shm = lazy_import("tritonclient.utils.shared_memory")
        with self._lock:
            regions = self._regions.setdefault(threading.get_ident(), {})
        for name, nbytes in sizes.items():
            if name not in regions or regions[name].nbytes < nbytes:
                if name in regions:
                    regions[name].destroy(client)
                regions[name] = ShmRegion(client, shm, nbytes)
        return regions

    def _all(self) -> list[ShmRegion]:
        with self._lock:
            return [r for regions in self._regions.values() for r in regions.values()]

    def forgotten_by(self, client: Any) -> bool:
        """Whether ``client``'s server lacks any of our regions (it restarted since they were registered)."""
        ours = {r.name for r in self._all()}
        return bool(ours) and not ours <= _registered_names(client)

    def register_all(self, client: Any) -> None:
        """Register every region again with a server that forgot them."""
        logger.warning("Triton server forgot alps' shared-memory regions (restarted?): registering them again")
        for region in self._all():
            region.register(client)

    def release(self, client: Any | None) -> None:
        """Unregister and free every region."""
        for region in self._all():
            region.destroy(client)
        with self._lock:
            self._regions.clear()
