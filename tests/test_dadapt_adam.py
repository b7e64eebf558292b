"""Our D-Adaptation Adam against audiocraft's `DAdaptAdam` (the paper recipe's optimizer)."""
import importlib
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax

from magnet_jax.train.dadapt_adam import dadapt_adam
from tests.reference import require
from tests.reference.audiocraft_modules import load


def _reference_dadam():
    torch = require("torch")
    load("audiocraft.modules.streaming")  # registers the bare `audiocraft` package
    root = sys.modules["audiocraft"].__path__[0]
    if "audiocraft.optim" not in sys.modules:
        pkg = types.ModuleType("audiocraft.optim")
        pkg.__path__ = [root + "/optim"]
        sys.modules["audiocraft.optim"] = pkg
        fsdp = types.ModuleType("audiocraft.optim.fsdp")  # the real one needs dora and a process group
        fsdp.is_fsdp_used = lambda: False
        sys.modules["audiocraft.optim.fsdp"] = fsdp
    return torch, importlib.import_module("audiocraft.optim.dadam").DAdaptAdam


def test_matches_audiocraft_dadapt_adam_through_warmup():
    torch, DAdaptAdam = _reference_dadam()
    rng = np.random.default_rng(0)
    shapes = {"w": (5, 3), "b": (3,)}
    init = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    base = {k: rng.normal(size=s) for k, s in shapes.items()}  # a consistent direction: d must grow
    grads = [{k: (base[k] + 0.3 * rng.normal(size=s)).astype(np.float32) for k, s in shapes.items()}
             for _ in range(8)]
    schedule = optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup_steps=3, decay_steps=8)

    tparams = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in init.items()}
    topt = DAdaptAdam(list(tparams.values()), lr=1.0, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    tx = dadapt_adam(schedule, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1)
    params = {k: jnp.asarray(v) for k, v in init.items()}
    state = tx.init(params)
    update = jax.jit(tx.update)
    for step, g in enumerate(grads):
        for group in topt.param_groups:
            group["lr"] = float(schedule(step))
        for k, p in tparams.items():
            p.grad = torch.from_numpy(g[k].copy())
        topt.step()
        upd, state = update({k: jnp.asarray(v) for k, v in g.items()}, state, params)
        params = optax.apply_updates(params, upd)
        assert bool(jnp.isfinite(state.d))
        np.testing.assert_allclose(float(state.d), topt.param_groups[0]["d"], rtol=1e-5, err_msg=f"d at {step}")
        for k in shapes:
            np.testing.assert_allclose(np.asarray(params[k]), tparams[k].detach().numpy(), rtol=1e-5, atol=1e-6,
                                       err_msg=f"{k} at step {step}")
    assert float(state.d) > 1e-6  # d adapted upwards
