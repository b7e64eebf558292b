"""audiocraft 1.3.0's `MagnetSolver` (its training objective) as a parity reference, without
the training stack its package pulls in (datasets, dora, flashy's distributed runtime).

The solver module is loaded from audiocraft's own file; its two sibling imports (`builders`,
`musicgen`: the dataset builders and MusicGen's solver, which MagnetSolver only subclasses) are
given empty stand-ins while it loads. A `MagnetSolver` is then assembled without its
constructor: the methods under test (`run_step`, `_get_mask`, `_spans_mask`,
`_calc_mean_maskrate_to_u_LUT`, `_compute_cross_entropy_magnet`) only read the attributes set
in `make_solver`.
"""
import contextlib
import importlib.util
import sys
import types

from tests.reference import audiocraft_lm as ref_lm

_MODULE = None


def load_solver_module():
    global _MODULE
    if _MODULE is not None:
        return _MODULE
    ref_lm.load_audiocraft()  # audiocraft.modules.* (conditioners) with its light stubs
    root = list(sys.modules["audiocraft"].__path__)[0]
    builders = types.ModuleType("audiocraft.solvers.builders")
    builders.DatasetType = types.SimpleNamespace(MUSIC="music", SOUND="sound", AUDIO="audio")
    musicgen = types.ModuleType("audiocraft.solvers.musicgen")
    musicgen.MusicGenSolver = type("MusicGenSolver", (), {})
    package = types.ModuleType("audiocraft.solvers")
    package.__path__ = [root + "/solvers"]
    package.builders, package.musicgen = builders, musicgen
    names = {"audiocraft.solvers": package, "audiocraft.solvers.builders": builders,
             "audiocraft.solvers.musicgen": musicgen}
    saved = {n: sys.modules.get(n) for n in names}
    sys.modules.update(names)
    try:
        spec = importlib.util.spec_from_file_location("audiocraft.solvers.magnet", root + "/solvers/magnet.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:  # the stand-ins leave no trace for other tests
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m
    _MODULE = module
    return module


def make_solver(span_len: int, seq_len: int, model=None, tokens_and_conditions=None):
    """A MagnetSolver in evaluation mode (no optimizer step) for clips of `seq_len` frames.

    model: audiocraft's MagnetLMModel; tokens_and_conditions: what `_prepare_tokens_and_attributes`
    returns for the batch given to `run_step`, i.e. (condition_tensors, codes [B, K, T], padding
    mask [B, K, T])."""
    import torch
    from omegaconf import OmegaConf

    cls = load_solver_module().MagnetSolver
    solver = cls.__new__(cls)
    solver.cfg = OmegaConf.create({"masking": {"span_len": span_len}, "fsdp": {"use": False}})
    solver.device = "cpu"
    solver.mean_maskrate_to_u = torch.tensor(solver._calc_mean_maskrate_to_u_LUT(seq_len))
    solver.model = model
    solver.autocast = contextlib.nullcontext()
    solver.deadlock_detect = types.SimpleNamespace(update=lambda *a: None)
    solver.is_training = False
    solver._prepare_tokens_and_attributes = lambda batch, check: tokens_and_conditions
    return solver
