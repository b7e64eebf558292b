"""Import single audiocraft 1.3.0 modules as PyTorch references, without the package's
heavy `__init__` (which pulls torchaudio, av, transformers, ...).

audiocraft is installed with `pip install --no-deps audiocraft==1.3.0` (the README's test
command does it). xformers is stubbed: the reference paths used here (custom attention,
not memory-efficient) only need `xformers.ops.unbind`.
"""
import importlib
import importlib.util
import sys
import types

from tests.reference import require


def load(module: str):
    torch = require("torch")
    if module in sys.modules:
        return sys.modules[module]
    if "audiocraft" not in sys.modules:
        spec = importlib.util.find_spec("audiocraft")
        if spec is None:
            require("audiocraft")  # fails with the install command
        root = spec.submodule_search_locations[0]
        for name, path in (("audiocraft", root), ("audiocraft.modules", root + "/modules")):
            pkg = types.ModuleType(name)
            pkg.__path__ = [path]
            sys.modules[name] = pkg
    if "xformers" not in sys.modules:
        xformers = types.ModuleType("xformers")
        ops = types.ModuleType("xformers.ops")
        ops.unbind = torch.unbind
        xformers.ops = ops
        sys.modules["xformers"], sys.modules["xformers.ops"] = xformers, ops
    return importlib.import_module(module)
