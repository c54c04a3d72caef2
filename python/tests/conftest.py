import importlib.util

import pytest

HAS_TORCH = importlib.util.find_spec("torch") is not None


def pytest_configure(config):
    # Known marker even where pytest-timeout is not installed (it is then inert).
    config.addinivalue_line("markers", "timeout(seconds, method): per-test time limit (pytest-timeout)")


def pytest_report_header(config):
    import flashattn

    lines = [f"flashattn {flashattn.__version__}: CUDA compiled={flashattn.cuda_compiled()}, "
             f"devices={flashattn.cuda_device_count()}"]
    if not HAS_TORCH:
        lines.append("torch not installed: the torch tests (autograd, torch.compile, CUDA parity) are SKIPPED")
    return lines


def pytest_terminal_summary(terminalreporter):
    if not HAS_TORCH:
        terminalreporter.write_line("NOTE: torch not installed: torch tests skipped (numpy CPU tests ran)",
                                    yellow=True)


@pytest.fixture
def rng():
    import numpy as np

    return np.random.default_rng(1234)
