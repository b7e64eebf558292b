"""Masking ablation on the embedded synthetic data: schedule x span length x restricted context,
each point trained to the same token budget, scored by the config-independent protocol and by
its samples at three decoding budgets. Runs on a 2-core CPU in under 15 minutes:

    magnet-jax sweep --config configs/ablations/masking_schedules.py --workdir runs/ablation_masking
"""
from magnet_jax.train.sweep import Sweep


def get_sweep() -> Sweep:
    return Sweep(
        base_config="../quickstart.py",
        overrides=("lm.dim=64", "lm.num_heads=2", "lm.num_layers=2", "conditioner.output_dim=64",
                   "optim.warmup_steps=30", "train.eval_every=100000", "train.log_every=50",
                   "optim.ema_decay=0.0"),
        grid={
            "masking.schedule": ["cosine", "linear"],
            "lm.span_len": [1, 3],
            "lm.subcodes_context": [-1, 5],
        },
        token_budget=250 * 16 * 100 * 4,  # 250 steps of 16 clips of 100 frames x 4 codebooks
        decoding_grid={"decoding_steps": [(4, 2, 2, 2), (12, 6, 6, 6)], "temperature": [3.0, 1.0]},
        table=("lm.span_len", "lm.subcodes_context"),
    )
