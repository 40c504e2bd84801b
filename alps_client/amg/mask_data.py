"""``MaskData``: parallel per-mask arrays filtered and concatenated together (numpy, no deep copies)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt


class MaskData:
    """Per-mask fields of equal length: numpy arrays or lists (e.g. RLE dicts)."""

    def __init__(self, **kwargs: Any) -> None:
        for v in kwargs.values():
            self._check(v)
        self._stats: dict[str, Any] = dict(kwargs)

    @staticmethod
    def _check(value: Any) -> None:
        if not isinstance(value, (list, np.ndarray)):
            raise TypeError(f"MaskData values must be lists or numpy arrays, got {type(value).__name__}")

    def __setitem__(self, key: str, value: Any) -> None:
        self._check(value)
        self._stats[key] = value

    def __delitem__(self, key: str) -> None:
        del self._stats[key]

    def __getitem__(self, key: str) -> Any:
        return self._stats[key]

    def __contains__(self, key: str) -> bool:
        return key in self._stats

    def items(self) -> Iterator[tuple[str, Any]]:
        return iter(self._stats.items())

    def __len__(self) -> int:
        for v in self._stats.values():
            return len(v)
        return 0

    def filter(self, keep: npt.NDArray) -> None:
        """Keep the rows selected by a boolean mask or an index array (in that index order)."""
        keep = np.asarray(keep)
        index = np.flatnonzero(keep) if keep.dtype == bool else keep.astype(np.int64)
        for k, v in self._stats.items():
            self._stats[k] = v[index] if isinstance(v, np.ndarray) else [v[i] for i in index]

    def cat(self, other: MaskData) -> None:
        """Append another MaskData's rows."""
        for k, v in other.items():
            if k not in self._stats:
                self._stats[k] = v if isinstance(v, list) else v.copy()
            elif isinstance(v, np.ndarray):
                self._stats[k] = np.concatenate([self._stats[k], v], axis=0)
            else:
                self._stats[k] = self._stats[k] + v
