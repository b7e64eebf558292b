"""PyTorch reference implementations the parity tests run (see the README's test command)."""
import importlib

import pytest

INSTALL = {
    "torch": "pip install -e '.[test]'",
    "audiocraft": "pip install --no-deps audiocraft==1.3.0",
    "transformers": "pip install -e '.[test]'",
    "omegaconf": "pip install -e '.[test]'",
}


def require(module: str):
    """Imports a reference package; its absence fails the test with the install command
    (the README's test command installs both), never skips it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        pytest.fail(f"the parity reference {module!r} is missing ({e}); install it: {INSTALL[module.split('.')[0]]}")
