"""A stand-in CuPy module for tests of GPU-only code paths on machines without
a GPU: it records what the code asks of CuPy (device and stream contexts,
array views) in ``events``, so tests can check order and arguments."""

from __future__ import annotations

import contextlib
import types
from collections.abc import Callable


def stand_in_cupy(events: list, asarray: Callable | None = None) -> types.ModuleType:
    """A module named ``cupy`` with ``cuda.Device`` (records ``("device", i)``
    on entry and ``("exit device", i)`` on exit), ``cuda.Stream.from_external``
    (records ``("stream", obj.__cuda_stream__())``), ``cuda.using_allocator``
    (records ``"allocator"`` and ``"exit allocator"``; ``cuda.get_allocator``
    returns the current one), ``cuda.UnownedMemory`` and ``cuda.MemoryPointer``
    (plain records of their arguments) and, if given, ``asarray``.  Install
    it with ``monkeypatch.setitem(sys.modules, "cupy", ...)``."""

    @contextlib.contextmanager
    def device(index):
        events.append(("device", index))
        yield
        events.append(("exit device", index))

    def from_external(stream):
        events.append(("stream", stream.__cuda_stream__()))
        return contextlib.nullcontext()

    allocators = [None]

    @contextlib.contextmanager
    def using_allocator(allocator):
        events.append("allocator")
        allocators.append(allocator)
        yield
        allocators.pop()
        events.append("exit allocator")

    def unowned_memory(ptr, size, owner, device_id):
        return types.SimpleNamespace(ptr=ptr, size=size, owner=owner, device_id=device_id)

    def memory_pointer(mem, offset):
        return types.SimpleNamespace(mem=mem, ptr=mem.ptr + offset, device_id=mem.device_id)

    fake = types.ModuleType("cupy")
    fake.cuda = types.SimpleNamespace(
        Device=device,
        Stream=types.SimpleNamespace(from_external=from_external),
        using_allocator=using_allocator,
        get_allocator=lambda: allocators[-1],
        UnownedMemory=unowned_memory,
        MemoryPointer=memory_pointer,
    )
    if asarray is not None:
        fake.asarray = asarray
    return fake
