"""Python exceptions for the C++ layer's Status codes (include/flashattn/status.h).

The extension returns None or (code, message); raise_status turns the latter into:
  kInvalidArgument (1) -> ValueError          kUnsupported (2) -> UnsupportedError (a ValueError)
  kNotCompiled (3)     -> NotCompiledError (a RuntimeError)
  kCudaError (4)       -> CudaError (a RuntimeError)       kInternal (5) -> RuntimeError
"""


class UnsupportedError(ValueError):
    """A valid request that no compiled kernel handles (head dim, arch, feature)."""


class NotCompiledError(RuntimeError):
    """The backend asked for (e.g. CUDA) is not part of this build."""


class CudaError(RuntimeError):
    """A CUDA runtime call failed."""


_TYPES = {1: ValueError, 2: UnsupportedError, 3: NotCompiledError, 4: CudaError}


def raise_status(result):
    code, message = result
    if code == 5:
        raise RuntimeError(f"flashattn internal error: {message}")
    raise _TYPES.get(code, RuntimeError)(message)
