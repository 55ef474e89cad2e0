"""Compact video keys: `(uri, source version)` as 16-byte hashes, for sets of millions.

A nightly job checks millions of inputs against millions of rows already
written, and drops repeated URIs: as Python strings that costs gigabytes.
Each key is hashed twice (pandas' vectorised SipHash with two fixed keys,
the same in every process) into 128 bits; a `KeySet` holds those as 16-byte
`bytes`, about 100 bytes per key in all. Two different videos colliding in
128 bits is not a practical concern (about 1e-26 for a billion keys).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

_HASH_KEYS = ("tsm-labeller-k1!", "tsm-labeller-k2!")  # 16 characters each, fixed forever


def hash_keys(*columns: Sequence[str]) -> list[bytes]:
    """One 16-byte key per row of the given string columns (joined with a NUL)."""
    from pandas.util import hash_array

    joined = np.array(["\0".join(parts) for parts in zip(*columns, strict=True)], dtype=object)
    if not len(joined):
        return []
    halves = [hash_array(joined, hash_key=k, categorize=False) for k in _HASH_KEYS]
    return np.ascontiguousarray(np.stack(halves, axis=1)).view("V16").ravel().tolist()


class KeySet:
    """A set of hashed keys: `add` a chunk, ask which of a chunk are `known`."""

    def __init__(self, keys: Iterable[bytes] = ()):
        self._keys: set[bytes] = set(keys)

    def __len__(self) -> int:
        return len(self._keys)

    def known(self, keys: Sequence[bytes]) -> np.ndarray:
        """A bool per key: already in the set."""
        return np.fromiter((k in self._keys for k in keys), dtype=bool, count=len(keys))

    def add(self, keys: Iterable[bytes]) -> None:
        self._keys.update(keys)
