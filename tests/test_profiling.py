"""train.profile_steps: a profiler trace of the chosen steps in WORKDIR/profile."""
import glob
import os

import jax
import pytest

from magnet_jax.config_io import load_config
from magnet_jax.train.trainer import train


def test_profile_steps_write_a_trace_of_those_steps(tmp_path, monkeypatch):
    cfg = load_config("configs/tiny.py", [f"train.workdir={tmp_path / 'run'}", "train.num_steps=6",
                                          "train.eval_every=6", "train.profile_steps=1,3"])
    events = []  # the profiler's calls, in order (each still made: the trace is real)
    start, stop, annotation = jax.profiler.start_trace, jax.profiler.stop_trace, jax.profiler.StepTraceAnnotation

    class Annotation(annotation):
        def __init__(self, name, **kwargs):
            events.append((name, kwargs["step_num"]))
            super().__init__(name, **kwargs)

    monkeypatch.setattr(jax.profiler, "start_trace", lambda *a, **k: events.append("start") or start(*a, **k))
    monkeypatch.setattr(jax.profiler, "stop_trace", lambda: events.append("stop") or stop())
    monkeypatch.setattr(jax.profiler, "StepTraceAnnotation", Annotation)
    train(cfg, progress=False, plot=False)
    assert events == ["start", ("train", 1), ("train", 2), "stop"]  # steps 1 and 2, each annotated
    traces = glob.glob(str(tmp_path / "run" / "profile" / "plugins" / "profile" / "*" / "*.xplane.pb"))
    assert len(traces) == 1, os.listdir(tmp_path / "run")
    data = open(traces[0], "rb").read()
    # The traced steps are annotated as steps (what TensorBoard's step view reads), steps 1 and 2 only.
    assert b"step_num" in data and b"train" in data


@pytest.mark.parametrize("steps", ["3,3", "2", "-1,2", "1,2,3"])
def test_bad_profile_steps_are_refused_when_the_config_loads(steps):
    with pytest.raises(ValueError, match="train.profile_steps=.*START,STOP"):
        load_config("configs/tiny.py", [f"train.profile_steps={steps}"])
