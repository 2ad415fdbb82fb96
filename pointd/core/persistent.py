"""An immutable mapping whose updates copy a small bucket, not the whole map.

The core keeps every sale a store ever made in an immutable state, and a restart replays
the whole journal through ``step``. Copying a plain dict per event would make each step
cost O(number of sales) and a replay quadratic. Here a map is a fixed tuple of small dicts
(buckets) chosen by a stable hash of the key, so an update copies the bucket tuple and one
bucket: O(buckets + sales / buckets) per step. Iteration order is stable across processes
(CRC-32 of the key's text, not Python's salted hash).
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import ItemsView, Iterator, Mapping, ValuesView
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=str | int)
V = TypeVar("V")

BUCKETS = 256
_EMPTY: dict[Any, Any] = {}
_NO_BUCKETS: tuple[dict[Any, Any], ...] = (_EMPTY,) * BUCKETS


def _bucket_of(key: str | int) -> int:
    return zlib.crc32(str(key).encode()) % BUCKETS


class PersistentMap(Mapping[K, V], Generic[K, V]):
    """Immutable str/int-keyed mapping; ``set`` and ``delete`` return new maps."""

    __slots__ = ("_buckets", "_length")

    def __init__(self, items: Mapping[K, V] | None = None) -> None:
        if not items:
            self._buckets: tuple[dict[K, V], ...] = _NO_BUCKETS
            self._length = 0
            return
        buckets: list[dict[K, V]] = [_EMPTY] * BUCKETS
        for key, value in (items or {}).items():
            index = _bucket_of(key)
            if buckets[index] is _EMPTY:
                buckets[index] = {}
            buckets[index][key] = value
        self._buckets = tuple(buckets)
        self._length = sum(map(len, buckets))

    @classmethod
    def _from(cls, buckets: tuple[dict[K, V], ...], length: int) -> PersistentMap[K, V]:
        new: PersistentMap[K, V] = cls.__new__(cls)
        new._buckets = buckets
        new._length = length
        return new

    def __getitem__(self, key: K) -> V:
        return self._buckets[_bucket_of(key)][key]

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str | int):
            return False
        return key in self._buckets[_bucket_of(key)]

    def __iter__(self) -> Iterator[K]:
        return itertools.chain.from_iterable(filter(None, self._buckets))

    def __len__(self) -> int:
        return self._length

    # Mapping's views look every key up again (a CRC each); these read the buckets. Most
    # buckets of a small map are empty, and skipping them (filter) is what keeps iterating
    # one with a few sales cheap (the explorer iterates its states at every transition).
    def values(self) -> ValuesView[V]:
        return _Values(self)

    def items(self) -> ItemsView[K, V]:
        return _Items(self)

    def set(self, key: K, value: V) -> PersistentMap[K, V]:
        """A map with ``key`` bound to ``value``."""
        index = _bucket_of(key)
        bucket = self._buckets[index]
        length = self._length + (0 if key in bucket else 1)
        buckets = list(self._buckets)
        buckets[index] = {**bucket, key: value}
        return self._from(tuple(buckets), length)

    def delete(self, key: K) -> PersistentMap[K, V]:
        """A map without ``key`` (raises KeyError when absent)."""
        index = _bucket_of(key)
        bucket = self._buckets[index]
        if key not in bucket:
            raise KeyError(key)
        buckets = list(self._buckets)
        buckets[index] = {k: v for k, v in bucket.items() if k != key} or _EMPTY
        return self._from(tuple(buckets), self._length - 1)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mapping):
            return NotImplemented
        return len(self) == len(other) and all(
            key in other and other[key] == value for key, value in self.items())

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"PersistentMap({dict(self.items())!r})"


class _Values(ValuesView[V]):
    _mapping: PersistentMap[Any, V]

    def __iter__(self) -> Iterator[V]:
        buckets = filter(None, self._mapping._buckets)
        return itertools.chain.from_iterable(map(dict.values, buckets))


class _Items(ItemsView[K, V]):
    _mapping: PersistentMap[K, V]

    def __iter__(self) -> Iterator[tuple[K, V]]:
        buckets = filter(None, self._mapping._buckets)
        return itertools.chain.from_iterable(map(dict.items, buckets))
