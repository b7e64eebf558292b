"""`magnet-jax sweep`: a small grid end to end, resuming, refusals, and concurrent points."""
import contextlib
import csv
import gc
import io
import json
import os

import pytest

from magnet_jax.cli import main
from magnet_jax.train import sweep as sw
from tests.process_maps import map_count

SWEEP = '''
from magnet_jax.train.sweep import Sweep

def get_sweep():
    return Sweep(base_config="{base}", overrides=("train.log_every=5", "train.eval_every=1000", "optim.ema_decay=0.0"),
                 grid={grid}, token_budget=6 * 8 * 30 * 4,
                 decoding_grid={{"temperature": [3.0, 1.0], "decoding_steps": [(2, 1, 1, 1)]}},
                 captions=("slow jazz with piano", "fast rock with bass"))
'''
GRID = {"lm.span_len": [1, 3], "lm.subcodes_context": [2]}


def write_sweep(tmp_path, grid=GRID, name="grid.py"):
    path = tmp_path / name
    path.write_text(SWEEP.format(base=os.path.abspath("configs/tiny.py"), grid=repr(grid)))
    return str(path)


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory):
    """The CLI's sweep of GRID, one point after the other (shared: the concurrent test compares with it)."""
    tmp = tmp_path_factory.mktemp("sweep")
    path, out = write_sweep(tmp), tmp / "sweep"
    printed, maps = io.StringIO(), []
    run_point = sw.run_point

    def counted(*args, **kwargs):  # the process's memory maps after each point
        result = run_point(*args, **kwargs)
        gc.collect()
        maps.append(map_count())
        return result

    with contextlib.redirect_stdout(printed), pytest.MonkeyPatch.context() as patch:
        patch.setattr(sw, "run_point", counted)
        assert main(["sweep", "--config", path, "--workdir", str(out), "--no-progress"]) == 0
    assert "2 points" in printed.getvalue()
    # One process trains every point: each point's compiled programs go with it (here the count grew
    # by ~100 from the first point to the second; one point's programs take well over 1,000 maps, and
    # a sweep of many points that kept them would die at vm.max_map_count, issue 24).
    assert maps[1] < maps[0] + 300, maps
    return path, out


def test_a_grid_trains_every_point_to_the_budget_and_writes_the_table(grid_run, tmp_path, capsys, monkeypatch):
    path, out = grid_run
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 2 * 2  # points x decoding settings
    assert {r["steps"] for r in rows} == {"6"}  # the budget: 6 steps of 8 clips of 30 frames x 4 codebooks
    assert sorted({r["lm.span_len"] for r in rows}) == ["1", "3"]
    assert {r["decode.temperature"] for r in rows} == {"3", "1"}
    table = (out / "results.md").read_text()
    assert "| lm.span_len \\ lm.subcodes_context | 2 |" in table and "(not run yet)" not in table
    assert os.path.getsize(out / "results.png") > 10_000
    first = out / "points" / "span_len=1,subcodes_context=2"
    result = json.load(open(first / "result.json"))
    assert result["protocol"]["protocol"] == "masked-ce-v1" and len(result["decoding"]) == 2
    assert json.load(open(first / "eval_protocol.json"))["ce_cosine"] == result["protocol"]["ce_cosine"]
    # `magnet-jax eval` on a point's run folder: the protocol numbers of its newest checkpoint.
    assert main(["eval", "--model", str(first), "--out", str(tmp_path / "ev")]) == 0
    printed = capsys.readouterr().out
    assert "masked-ce-v1" in printed and "samples following the data's rules" in printed
    again = json.load(open(tmp_path / "ev" / "results.json"))
    assert again["step"] == 6 and abs(again["ce_cosine"] - result["protocol"]["ce_cosine"]) < 1e-5

    # A rerun skips the finished points; a point without its result is run again (it resumes).
    # Concurrent points write nothing to the persistent compilation cache while they run (a
    # precaution, sweep._run_concurrently); the threshold comes back afterwards.
    import jax

    kept = out / "points" / "span_len=3,subcodes_context=2" / "result.json"
    os.rename(kept, tmp_path / "result.json")
    threshold = jax.config.jax_persistent_cache_min_compile_time_secs
    trained, seen = [], []
    point = lambda p, *a, **k: trained.append(p.name) or seen.append(
        jax.config.jax_persistent_cache_min_compile_time_secs) or result
    monkeypatch.setattr(sw, "run_point", point)
    try:
        sw.run_sweep(path, str(out), progress=False)
        sw.run_sweep(path, str(out), progress=False, concurrent=2)
    finally:
        os.rename(tmp_path / "result.json", kept)  # the concurrent test compares with it
    assert trained == ["span_len=3,subcodes_context=2"] * 2
    assert seen == [threshold, float("inf")] and jax.config.jax_persistent_cache_min_compile_time_secs == threshold


def test_decoding_knobs_reuse_one_compiled_program():
    """Temperature x CFG coefficient x top-p (traced knobs): one sampler program for all 8."""
    import types

    from magnet_jax.config_io import load_config
    from magnet_jax.train.samples import TextSampler
    from magnet_jax.train.state import init_params, model_graphdef
    from magnet_jax.train.setup import make_data_source

    cfg = load_config("configs/tiny.py")
    result = types.SimpleNamespace(state=types.SimpleNamespace(params=init_params(cfg, 0), ema_params=None),
                                   graphdef=model_graphdef(cfg), data=make_data_source(cfg))
    made = []
    orig_init = TextSampler.__init__

    def spy(self, *a, **k):
        orig_init(self, *a, **k)
        made.append(self)

    TextSampler.__init__ = spy
    try:
        sweep = sw.Sweep(base_config="configs/tiny.py", grid={"masking.schedule": ["cosine"]},
                         decoding_grid={"temperature": [3.0, 1.0], "max_cfg_coef": [10.0, 3.0], "top_p": [0.0, 0.9],
                                        "decoding_steps": [(2, 1, 1, 1)]},
                         captions=("slow jazz with piano",))
        rows = sw.score_decoding(cfg, result, sw.expand_decoding(sweep, cfg), sweep)
    finally:
        TextSampler.__init__ = orig_init
    assert len(rows) == 8 and len(made) == 1
    assert made[0].sampler._generate_jit._cache_size() == 1


def test_bad_grids_are_refused_before_anything_trains(tmp_path):
    bad = write_sweep(tmp_path, {"masking.shedule": ["cosine"]}, "bad.py")
    with pytest.raises(ValueError, match=r"masking.shedule.*Did you mean 'masking.schedule'"):
        sw.run_sweep(bad, str(tmp_path / "a"), progress=False)
    assert not (tmp_path / "a").exists()
    bad_value = write_sweep(tmp_path, {"lm.span_len": [0]}, "bad_value.py")
    with pytest.raises(ValueError, match="span_len"):
        sw.run_sweep(bad_value, str(tmp_path / "b"), progress=False)
    with pytest.raises(ValueError, match="unknown decoding key 'temprature'"):
        sw.expand_decoding(sw.Sweep(base_config="x", grid={"a": [1]}, decoding_grid={"temprature": [1.0]}), None)
    with pytest.raises(ValueError, match="non-empty list"):
        sw.Sweep(base_config="x", grid={"masking.schedule": "cosine"})


def test_a_folder_of_another_grid_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "sweep"
    sw.claim_directory(str(out), {"grid": 1}, overwrite=False)
    (out / "keep.txt").write_text("results of the first grid")
    sw.claim_directory(str(out), {"grid": 1}, overwrite=False)  # the same grid: resumes
    with pytest.raises(ValueError, match="another grid.*--overwrite"):
        sw.claim_directory(str(out), {"grid": 2}, overwrite=False)
    sw.claim_directory(str(out), {"grid": 2}, overwrite=True)
    assert (tmp_path / "sweep.replaced" / "keep.txt").read_text() == "results of the first grid"  # set aside
    assert json.load(open(out / "sweep.json")) == {"grid": 2}
    other = tmp_path / "not_a_sweep"
    other.mkdir()
    (other / "x").write_text("x")
    with pytest.raises(ValueError, match="not a sweep"):
        sw.claim_directory(str(other), {"grid": 1}, overwrite=False)


def test_concurrent_points_give_the_numbers_of_sequential_runs(grid_run, tmp_path):
    """Two points at once, each on 4 of the 8 (fake) devices, against one after the other on all 8."""
    import jax
    import numpy as np

    assert len(jax.devices()) == 8  # tests/conftest.py
    path, seq = grid_run
    concurrent = sw.run_sweep(path, str(tmp_path / "con"), progress=False, concurrent=2)
    names = sorted(p.name for p in (seq / "points").iterdir())
    assert [r["name"] for r in concurrent] == names and len(names) == 2
    for b in concurrent:
        a = json.load(open(seq / "points" / b["name"] / "result.json"))
        np.testing.assert_allclose(b["protocol"]["ce"], a["protocol"]["ce"], rtol=1e-4)
        losses = [[r["loss"] for r in map(json.loads, open(d / "points" / b["name"] / "metrics.jsonl"))
                   if r["kind"] == "train"] for d in (seq, tmp_path / "con")]
        np.testing.assert_allclose(losses[1], losses[0], rtol=1e-4)
    with pytest.raises(ValueError, match="divisor of the 8 devices"):
        sw.device_groups(3)
