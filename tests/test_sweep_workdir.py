"""`magnet-jax sweep --workdir DIR` takes an empty folder the user made first (`mkdir DIR`), as a new
one: nothing trains here, a stand-in for `run_point` stops the sweep at its first point."""
import json
import os

import pytest

from magnet_jax.cli import main
from magnet_jax.train import sweep as sw

SWEEP = '''
from magnet_jax.train.sweep import Sweep

def get_sweep():
    return Sweep(base_config="{base}", grid={{"lm.span_len": [1, 3]}}, token_budget=6 * 8 * 30 * 4,
                 captions=("slow jazz with piano",))
'''


class Stop(Exception):
    """Raised by the stand-in for `run_point`: the sweep got as far as training its first point."""


def test_an_empty_existing_workdir_is_taken_as_new(tmp_path, monkeypatch):
    path = tmp_path / "grid.py"
    path.write_text(SWEEP.format(base=os.path.abspath("configs/tiny.py")))
    workdir = tmp_path / "runs" / "ablation"
    workdir.mkdir(parents=True)  # what a new user does first
    started = []

    def run_point(point, *args, **kwargs):
        started.append(point.name)
        raise Stop

    monkeypatch.setattr(sw, "run_point", run_point)
    with pytest.raises(Stop):
        main(["sweep", "--config", str(path), "--workdir", str(workdir), "--no-progress"])
    assert started == ["span_len=1"]
    spec = json.loads((workdir / "sweep.json").read_text())  # claimed as this grid's folder
    assert spec["grid"] == {"lm.span_len": [1, 3]}
    assert sorted(os.listdir(tmp_path / "runs")) == ["ablation"]  # nothing set aside (no ablation.replaced)
    # and the same grid in the now claimed folder resumes rather than being refused
    with pytest.raises(Stop):
        main(["sweep", "--config", str(path), "--workdir", str(workdir), "--no-progress"])
    assert started == ["span_len=1", "span_len=1"]
