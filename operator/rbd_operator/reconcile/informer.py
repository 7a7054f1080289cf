"""An index of one kind kept from its watch stream (kopf_fixes.tap feeds it every raw event and the end of
every listing), read like a kopf index: key -> the values of the objects under that key.

Why not a kopf index: kopf makes every object of an indexed kind wait, each with its own worker task, queue
and views, until every indexed kind has been listed; at a start with 20,000 RbdImages all of them wait at
once (the restart's memory peak, docs/performance.md). Fed here from the stream, the index costs what its
entries cost, and kopf's workers for RbdImages come and go as the listing passes.

Fail closed: `complete` is False while a listing runs (readers wait: an RbdImage not yet listed must never
read as "gone" — another tenant's image would look like a deleted object's). That is the start, and every
later listing too (a watch whose resourceVersion expired, a resume after a pause, a listing cut short and
restarted): objects created meanwhile are not in the index until listed, and objects the listing did not
list (deleted while nobody watched) are dropped when it ends.
Pure: no I/O, no event loop; the caller wires `on_complete` to whatever wakes its readers."""

from __future__ import annotations

from typing import Any, Callable, Collection, Iterator, Mapping

IndexFunction = Callable[[Mapping[str, Any]], Mapping[Any, Any]]  # raw object -> {key: value}


class Store(Collection[Any]):
    """The values under one key (a live view: read it at once, as kopf's stores are read)."""

    __slots__ = ("_values",)

    def __init__(self, values: dict[str, Any]) -> None:
        self._values = values

    def __iter__(self) -> Iterator[Any]:
        return iter(list(self._values.values()))

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, value: object) -> bool:
        return value in self._values.values()

    def __repr__(self) -> str:
        return f"Store({list(self._values.values())!r})"


def object_uid(raw: Mapping[str, Any]) -> str | None:
    meta = raw.get("metadata") if isinstance(raw, Mapping) else None
    uid = meta.get("uid") if isinstance(meta, Mapping) else None
    return uid if isinstance(uid, str) and uid else None


class Informed(Mapping[Any, Store]):
    """key -> Store of the values `function` gave for every object listed or watched so far."""

    def __init__(self, function: IndexFunction, on_complete: Callable[[], None] | None = None) -> None:
        self._function = function
        self._on_complete = on_complete
        self._by_uid: dict[str, Mapping[Any, Any]] = {}
        self._by_key: dict[Any, dict[str, Any]] = {}
        self._listing: set[str] | None = None
        self.complete = False
        self.listings = 0  # listings ended

    def clear(self) -> None:
        """Empty and incomplete again (a new operator run in the same process)."""
        self._by_uid.clear()
        self._by_key.clear()
        self._listing = None
        self.complete = False
        self.listings = 0

    # -- the stream ---------------------------------------------------------------------------------------
    def listing_started(self) -> None:
        self._listing = set()
        self.complete = False

    def apply(self, event_type: str | None, raw: Mapping[str, Any]) -> None:
        """One raw watch event (type None: an object of a listing)."""
        uid = object_uid(raw)
        if uid is None:
            return
        if event_type == "DELETED":
            self._drop(uid)
            return
        if event_type is None and self._listing is not None:
            self._listing.add(uid)
        self._put(uid, self._function(raw))

    def listing_ended(self) -> None:
        """A listing ended: what it did not list is gone; the index is complete until the next listing."""
        if self._listing is not None:
            for uid in [u for u in self._by_uid if u not in self._listing]:
                self._drop(uid)
        self._listing = None
        self.listings += 1
        self.complete = True
        if self._on_complete is not None:
            self._on_complete()

    # -- entries --------------------------------------------------------------------------------------------
    def _put(self, uid: str, entries: Mapping[Any, Any]) -> None:
        old = self._by_uid.get(uid)
        if old:
            for key in old:
                if key not in entries:
                    self._unkey(key, uid)
        for key, value in entries.items():
            self._by_key.setdefault(key, {})[uid] = value
        if entries:
            self._by_uid[uid] = entries
        else:
            self._by_uid.pop(uid, None)

    def _drop(self, uid: str) -> None:
        for key in self._by_uid.pop(uid, None) or ():
            self._unkey(key, uid)

    def _unkey(self, key: Any, uid: str) -> None:
        values = self._by_key.get(key)
        if values is not None:
            values.pop(uid, None)
            if not values:
                del self._by_key[key]

    # -- Mapping ----------------------------------------------------------------------------------------------
    def __getitem__(self, key: Any) -> Store:
        return Store(self._by_key[key])

    def __iter__(self) -> Iterator[Any]:
        return iter(list(self._by_key))

    def __len__(self) -> int:
        return len(self._by_key)

    def __contains__(self, key: object) -> bool:
        return key in self._by_key

    def objects(self) -> int:
        """How many objects the index holds."""
        return len(self._by_uid)
