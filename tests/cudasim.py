"""Settings for running Numba's CUDA simulator in the tests (test-only).

Call :func:`prepare_simulator` in an interpreter started with
``NUMBA_ENABLE_CUDASIM=1`` before launching kernels.
"""

from __future__ import annotations

import sys
import threading
import traceback

import numpy as np


def prepare_simulator() -> None:
    """Make the simulator fast enough and thread-safe for the GPU kernels.

    * The simulator runs every CUDA thread as a Python thread; at each
      ``syncthreads`` all 32 threads of a block must take turns with the GIL,
      and with the default 5 ms switch interval a warp-per-system call takes
      ten times longer.
    * It creates a block's ``cuda.shared.array`` on the first call from any of
      its threads with an unlocked check-then-set, so two threads can get
      different arrays (seen as a rare wrong result of the warp-per-system
      kernel).  The same lookup is done here under a lock.
    """
    from numba import types
    from numba.cuda.simulator import kernelapi
    from numba.np import numpy_support

    sys.setswitchinterval(1e-5)
    lock = threading.Lock()

    def array(self, shape, dtype, alignment=None):
        if isinstance(dtype, types.Type):
            dtype = numpy_support.as_dtype(dtype)
        caller = traceback.extract_stack(sys._getframe())[-2][0:2]  # as the simulator does
        with lock:
            if caller not in self._allocations:
                self._allocations[caller] = np.empty(shape, dtype)
            return self._allocations[caller]

    kernelapi.FakeCUDAShared.array = array
