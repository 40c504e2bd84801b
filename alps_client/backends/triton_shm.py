"""Triton system shared memory: one set of regions per client thread, re-registered after a restart, released."""

from __future__ import annotations

import logging
import threading
import uuid
from typing import Any

from alps_client._imports import lazy_import
from alps_client.backends.triton_status import reason, server_errors

logger = logging.getLogger(__name__)


class ShmRegion:
    """One system shared-memory region, registered with the server."""

    def __init__(self, client: Any, shm: Any, nbytes: int) -> None:
        self.name = f"alps_{uuid.uuid4().hex[:12]}"
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
        if not ours:
            return False
        status = client.get_system_shared_memory_status(as_json=True)
        regions = status.get("regions", {}) if isinstance(status, dict) else status  # gRPC: dict, HTTP: list
        names = set(regions) if isinstance(regions, dict) else {r["name"] for r in regions}
        return not ours <= names

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
