"""PyTorch reference implementations the parity tests run (see the README's test command)."""
import importlib

import pytest

INSTALL = {
    "torch": "pip install -e '.[test]'",
    "audiocraft": "pip install --no-deps audiocraft==1.3.0",
    "transformers": "pip install -e '.[test]'",
    "omegaconf": "pip install -e '.[test]'",
    "torchvggish": "pip install --no-deps torchvggish==0.2",
    "hear21passt": "pip install --no-deps hear21passt==0.0.26",
    "laion_clap": "pip install --no-deps laion-clap==1.1.7 torchlibrosa==0.1.0",
    "torchlibrosa": "pip install --no-deps laion-clap==1.1.7 torchlibrosa==0.1.0",
}


def require(module: str):
    """Imports a reference package; its absence fails the test with the install command
    (the README's test command installs both), never skips it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        pytest.fail(f"the parity reference {module!r} is missing ({e}); install it: {INSTALL[module.split('.')[0]]}")
