"""Proxies that present one :class:`VectorStore` from another process or another calling style.

Generated from the contract (``CONTRACT_METHODS``), never written method by method:

* :func:`actor_store` — blocking calls on the actor that owns the embedded store (job drivers, Ray
  Data tasks, CLIs): ``ray.get`` of the actor method of the same name.
* :func:`async_actor_store` — the same actor, awaited (Serve replicas: never block their loop).
* :func:`threaded_store` — any blocking store (a Qdrant server client) awaited from an event loop,
  each call on a worker thread: Serve replicas talk to a Qdrant server directly, no actor hop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from deployments.vector_store.async_contract import AsyncVectorStore
from deployments.vector_store.base import CONTRACT_METHODS, VectorStore

if TYPE_CHECKING:
    from ray.actor import ActorHandle


def _documented(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    method.__name__ = method.__qualname__ = name
    method.__doc__ = getattr(VectorStore, name).__doc__
    return method


def _blocking_actor_call(name: str) -> Callable[..., Any]:
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        import ray

        return ray.get(getattr(self._handle, name).remote(*args, **kwargs))

    return _documented(name, call)


def _awaited_actor_call(name: str) -> Callable[..., Any]:
    async def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        return await getattr(self._handle, name).remote(*args, **kwargs)

    return _documented(name, call)


def _threaded_call(name: str) -> Callable[..., Any]:
    async def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(getattr(self._store, name), *args, **kwargs)

    return _documented(name, call)


def _init_handle(self: Any, handle: ActorHandle) -> None:
    self._handle = handle


def _init_store(self: Any, store: VectorStore) -> None:
    self._store = store
    self.kind = store.kind


def _reduce_handle(self: Any) -> tuple[Any, tuple[Any, ...]]:
    return type(self), (self._handle,)


def _proxy_class(name: str, base: type, init: Callable[..., None], make: Callable[[str], Callable[..., Any]],
                 kind: str, picklable: bool) -> type:
    namespace: dict[str, Any] = {name_: make(name_) for name_ in CONTRACT_METHODS}
    namespace.update(__init__=init, kind=kind, __module__=__name__, __qualname__=name)
    if picklable:
        namespace["__reduce__"] = _reduce_handle
    return type(name, (base,), namespace)


ActorStore = _proxy_class("ActorStore", VectorStore, _init_handle, _blocking_actor_call, "edge-actor", True)
AsyncActorStore = _proxy_class("AsyncActorStore", AsyncVectorStore, _init_handle, _awaited_actor_call,
                               "edge-actor", True)
ThreadedStore = _proxy_class("ThreadedStore", AsyncVectorStore, _init_store, _threaded_call, "threaded", False)


def actor_store(handle: ActorHandle) -> VectorStore:
    """The actor-owned store with blocking calls (never inside a Serve replica's event loop)."""
    return cast(VectorStore, ActorStore(handle))


def async_actor_store(handle: ActorHandle) -> AsyncVectorStore:
    """The actor-owned store, awaited."""
    return cast(AsyncVectorStore, AsyncActorStore(handle))


def threaded_store(store: VectorStore) -> AsyncVectorStore:
    """A blocking store awaited from an event loop, each call on a worker thread."""
    return cast(AsyncVectorStore, ThreadedStore(store))
