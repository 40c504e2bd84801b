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
from alps_client.backends.triton_status import deadline, is_grpc, reason, server_errors

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


def sweep_stale_regions(client: Any, timeout_s: float) -> int:
    """Remove the regions of dead alps processes of this PID namespace; return how many were found.

    Both sides are freed: the ``/dev/shm`` files and the registrations with ``client``'s server (each call
    within ``timeout_s``).
    """
    files = stale_region_names(p.name for p in SHM_DIR.glob(f"alps_{_NAMESPACE}_*")) if SHM_DIR.is_dir() else []
    for name in files:
        (SHM_DIR / name).unlink(missing_ok=True)
    try:
        registered = stale_region_names(_registered_names(client, timeout_s))
        for name in registered:
            client.unregister_system_shared_memory(name, **deadline(client, timeout_s))
    except server_errors() as err:  # best effort: the run itself does not need it
        logger.debug("stale shared-memory registrations not checked (%s)", reason(err))
        registered = []
    found = len(set(files) | set(registered))
    if found:
        logger.info("removed %d shared-memory region(s) left by alps processes that were killed", found)
    return found


def _registered_names(client: Any, timeout_s: float) -> set[str]:
    """Names of the system shared-memory regions registered with ``client``'s server."""
    if is_grpc(client):
        return set(client.get_system_shared_memory_status(as_json=True, client_timeout=timeout_s).get("regions", {}))
    return {r["name"] for r in client.get_system_shared_memory_status()}  # HTTP: JSON already, a list


class ShmRegion:
    """One system shared-memory region, registered with the server (each call within ``timeout_s``)."""

    def __init__(self, client: Any, shm: Any, nbytes: int, timeout_s: float) -> None:
        self.name = region_name()
        self.key = f"/{self.name}"
        self.nbytes = nbytes
        self.timeout_s = timeout_s
        self.handle = shm.create_shared_memory_region(self.name, self.key, nbytes)
        self._shm = shm
        try:
            self.register(client)
        except BaseException:  # not registered (a server down or hung): the local region is ours to free
            self.free()
            raise

    def register(self, client: Any) -> None:
        """(Re-)register with ``client``'s server; unregistering an unknown name is no error (Triton 2.51)."""
        client.unregister_system_shared_memory(self.name, **deadline(client, self.timeout_s))
        client.register_system_shared_memory(self.name, self.key, self.nbytes, **deadline(client, self.timeout_s))

    def destroy(self, client: Any | None, timeout_s: float | None = None) -> bool:
        """Unregister (within ``timeout_s``, the region's by default) and free the region; False if unanswered.

        The local region is freed whether or not the server answered.
        """
        answered = True
        if client is not None:
            try:
                client.unregister_system_shared_memory(self.name, **deadline(client, timeout_s or self.timeout_s))
            except server_errors() as err:  # server gone or hung: the local region is freed all the same
                logger.debug("shared memory %s not unregistered (%s)", self.name, reason(err))
                answered = False
        self.free()
        return answered

    def free(self) -> None:
        """Free the local region (its ``/dev/shm`` file and mapping), whatever the server holds."""
        self._shm.destroy_shared_memory_region(self.handle)


class ShmRegions:
    """The regions of every thread of one backend, by thread and tensor name; server calls within ``timeout_s``."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
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
                    regions.pop(name).destroy(client)
                regions[name] = ShmRegion(client, shm, nbytes, self.timeout_s)
        return regions

    def _all(self) -> list[ShmRegion]:
        with self._lock:
            return [r for regions in self._regions.values() for r in regions.values()]

    def forgotten_by(self, client: Any) -> bool:
        """Whether ``client``'s server lacks any of our regions (it restarted since they were registered)."""
        ours = {r.name for r in self._all()}
        return bool(ours) and not ours <= _registered_names(client, self.timeout_s)

    def register_all(self, client: Any) -> None:
        """Register every region again with a server that forgot them."""
        logger.warning("Triton server forgot alps' shared-memory regions (restarted?): registering them again")
        for region in self._all():
            region.register(client)

    def release(self, client: Any | None, timeout_s: float) -> None:
        """Unregister and free every region; once the server does not answer, free the rest without asking it.

        Bounded: one call at most waits out its deadline (``timeout_s``) on a hung server (regions are many: per
        thread and tensor), and every local region is freed.
        """
        for region in self._all():
            if not region.destroy(client, timeout_s):
                client = None
        with self._lock:
            self._regions.clear()
