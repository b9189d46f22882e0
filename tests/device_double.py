"""A recording stand-in for CuPy, to prove GPU paths CUDA-graph safe without a GPU (test-only).

:func:`recording_cupy` returns a module that takes CuPy's place for the GPU
backends and layer (install it as ``sys.modules["cupy"]`` and as the kernel
set's ``xp``).  Its arrays, :class:`DeviceArray`, are NumPy arrays underneath
-- the simulated Numba CUDA kernels and the host build of the CUDA C++ run on
them -- but everything that would wait for a real device or move data between
host and device is recorded in ``events``:

* ``"wait"``: reading a value on the host (``bool``, ``int``, ``float``,
  ``item``, ``tolist``) or a device-to-host copy (``get``, ``asnumpy``),
  each of which synchronises with the device; ``synchronize`` calls;
* ``"h2d"``: a NumPy array or Python data copied to the device;
* ``"foreign alloc"``: a device allocation made while no framework allocator
  is installed (``cuda.using_allocator``), i.e. not from torch's pool;
  ``"alloc"`` for one made through it.

``capturing`` (a one-element list) is what the current stream's
``is_capturing()`` answers.
"""

from __future__ import annotations

import contextlib
import types

import numpy as np


class DeviceArray(np.ndarray):
    """A "device" array: NumPy storage, host reads recorded."""

    events: list  # set on the subclass made by recording_cupy
    device_type: type  # likewise: the stand-in's cuda.Device

    @property
    def device(self):
        return self.device_type(0)

    # CuPy arrays implement the CUDA array interface (the package tests for it).
    @property
    def __cuda_array_interface__(self):
        return {"shape": self.shape, "typestr": self.dtype.str, "version": 3,
                "data": (self.ctypes.data, False), "strides": self.strides}  # fmt: skip

    def _wait(self, what):
        self.events.append(("wait", what))

    def __bool__(self):
        self._wait("bool")
        return bool(np.asarray(self))

    def __int__(self):
        self._wait("int")
        return int(np.asarray(self))

    def __float__(self):
        self._wait("float")
        return float(np.asarray(self))

    def item(self, *args):
        self._wait("item")
        return np.asarray(self).item(*args)

    def tolist(self):
        self._wait("tolist")
        return np.asarray(self).tolist()

    def get(self):
        self._wait("get")
        return np.array(self)


def recording_cupy(events: list, capturing: list) -> types.ModuleType:
    """The stand-in module (see the module docstring)."""
    allocators: list = [None]

    def device(x):
        return x.view(array_type) if isinstance(x, np.ndarray) else x

    def allocated(x):
        events.append("alloc" if allocators[-1] is not None else "foreign alloc")
        return device(x)

    def creator(function):
        return lambda *args, **kwargs: allocated(function(*args, **kwargs))

    def asarray(x, dtype=None, order=None):
        if not isinstance(x, DeviceArray):
            events.append("h2d")
            return allocated(np.array(x, dtype=dtype, order=order))
        out = np.asarray(x, dtype=dtype, order=order)
        return allocated(out) if not np.shares_memory(out, x) else device(out)

    def ascontiguousarray(x, dtype=None):
        out = np.ascontiguousarray(x, dtype=dtype)
        return allocated(out) if not np.shares_memory(out, x) else device(out)

    def passthrough(function):  # results that may be views or fresh arrays
        def call(*args, **kwargs):
            out = function(*args, **kwargs)
            base = [a for a in args if isinstance(a, np.ndarray)]
            fresh = isinstance(out, np.ndarray) and not any(np.shares_memory(out, a) for a in base)
            return allocated(out) if fresh and out.size else device(out)

        return call

    module = types.ModuleType("cupy")
    for name in ("empty", "zeros", "ones", "full", "arange", "empty_like", "zeros_like", "eye"):
        setattr(module, name, creator(getattr(np, name)))
    for name in ("where", "broadcast_to", "moveaxis", "isfinite", "minimum", "maximum",
                 "swapaxes", "concatenate", "stack", "diagonal"):  # fmt: skip
        setattr(module, name, passthrough(getattr(np, name)))
    module.asarray = asarray

    def array(x, dtype=None, order="K"):
        if not isinstance(x, DeviceArray):
            events.append("h2d")
        return allocated(np.array(x, dtype=dtype, order=order))

    module.array = array
    module.ascontiguousarray = ascontiguousarray
    module.result_type = np.result_type
    module.nan, module.inf = np.nan, np.inf
    module.float32, module.float64, module.int32, module.int64 = (
        np.float32, np.float64, np.int32, np.int64)  # fmt: skip
    module.lib = types.SimpleNamespace(
        stride_tricks=types.SimpleNamespace(
            as_strided=lambda x, shape, strides: device(
                np.lib.stride_tricks.as_strided(x, shape=shape, strides=strides)
            )
        )
    )

    def asnumpy(x):
        events.append(("wait", "asnumpy"))
        return np.array(x)

    module.asnumpy = asnumpy

    @contextlib.contextmanager
    def using_allocator(allocator):
        allocators.append(allocator)
        try:
            yield
        finally:
            allocators.pop()

    class Stream:
        def is_capturing(self):
            return capturing[0]

        def synchronize(self):
            events.append(("wait", "stream.synchronize"))

    class Device:
        id = 0

        def __init__(self, index=0):
            self.id = index

        def synchronize(self):
            events.append(("wait", "device.synchronize"))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    array_type = type("DeviceArray", (DeviceArray,),
                      {"events": events, "device_type": Device, "__module__": "cupy"})  # fmt: skip
    module.cuda = types.SimpleNamespace(
        get_current_stream=lambda: Stream(),
        Device=Device,
        using_allocator=using_allocator,
        runtime=types.SimpleNamespace(
            deviceSynchronize=lambda: events.append(("wait", "deviceSynchronize"))
        ),
    )
    module.ndarray = array_type
    module.to_device = device  # for the tests: wrap host data without recording
    return module
