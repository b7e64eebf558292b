"""`magnet-jax compile`: the sharded train step and the sampler compiled for TPU slices by libtpu
(the `tpu` extra, installed by the README's test command) on this CPU-only machine."""
import json

import numpy as np
import pytest

from magnet_jax import aot, cli
from magnet_jax.config_io import load_config
from magnet_jax.parallel.mesh import make_mesh
from magnet_jax.train.flops import train_step_flops

WIDER = ["--config.lm.dim=256", "--config.lm.num_layers=4", "--config.lm.num_heads=4"]


def _last_json(text):
    return json.loads(text.strip().splitlines()[-1])


def test_train_step_compiles_for_a_v5e_slice_and_reports_json(capsys):
    assert cli.main(["compile", "--config", "configs/tiny.py", "--topology", "v5e:2x2"]) == 0
    report = _last_json(capsys.readouterr().out)
    cfg = load_config("configs/tiny.py", [])
    assert (report["topology"], report["devices"], report["chip"]) == ("v5e:2x2", 4, "TPU v5 lite")
    assert report["fits"] and 0 < report["per_device_bytes"] < report["hbm_bytes_per_device"] == 16 * 2**30
    assert report["flops_per_step"] == train_step_flops(cfg, 8, cfg.conditioner.max_text_len)
    assert report["tokens_per_step"] == 8 * 30 * 4 and report["roofline_step_s"] > 0 and report["compile_s"] > 0


def test_fsdp_divides_the_state_per_chip():
    reports = [aot.compile_train_step_for(load_config("configs/tiny.py", WIDER + mesh), "v5e:2x2")
               for mesh in (["--config.mesh.data=-1"], ["--config.mesh.data=1", "--config.mesh.fsdp=-1"])]
    replicated, sharded = (r["state_bytes_per_device"] for r in reports)
    assert reports[1]["mesh"]["fsdp"] == 4
    assert 3.5 < replicated / sharded <= 4.0  # parameters and optimizer state over 4 chips (a few stay whole)
    assert reports[1]["argument_bytes"] < reports[0]["argument_bytes"] / 2


def test_a_step_that_does_not_fit_exits_3_naming_the_knobs(capsys):
    argv = ["compile", "--config", "configs/tiny.py", "--topology", "v5e:2x2", "--config.train.global_batch_size=1048576"]
    assert cli.main(argv) == 3
    out = capsys.readouterr()
    report = _last_json(out.out)
    assert not report["fits"] and report["per_device_bytes"] > report["hbm_bytes_per_device"]
    assert "--config.mesh.fsdp=-1" in out.err and "--config.lm.remat=True" in out.err


def test_sampler_compiles_for_one_chip():
    # v4: two TensorCores per chip, described as one device per chip ("megacore"), as v4 jobs run.
    assert len(aot.tpu_devices("v4:2x2x1")) == 4
    report = aot.compile_sampler_for(load_config("configs/tiny.py", []), "v4:2x2x1", batch=2)
    assert (report["chip"], report["devices"], report["batch"]) == ("TPU v4", 1, 2)
    assert report["fits"] and report["roofline_step_s"] > 0 and report["tokens_per_step"] == 2 * 30 * 4


@pytest.mark.parametrize("argv, message", [
    (["--topology", "v9z:2x2"], "Names look like v4:2x2x1"),
    (["--topology", "v5e:2x2", "--config.mesh.data=3"], "mesh"),
    (["--topology", "v5e:2x2", "--sampler", "--num-slices", "2"], "--num-slices does not apply"),
])
def test_bad_requests_are_clear_errors(argv, message, capsys):
    assert cli.main(["compile", "--config", "configs/tiny.py", *argv]) == 2
    assert message in capsys.readouterr().err


def test_a_t5_width_that_differs_from_the_condition_width_is_a_clear_error(capsys):
    argv = ["compile", "--config", "configs/magnet_small_10s.py", "--topology", "v5e:2x2",
            "--config.conditioner.output_dim=512"]  # t5-base is 768 wide
    assert cli.main(argv) == 2
    assert "the T5 encoder has width 768 but conditioner.output_dim=512" in capsys.readouterr().err


def test_multi_slice_meshes_put_the_dcn_axes_across_slices():
    devices = aot.tpu_devices("v5e:2x2", num_slices=2)
    slice_of = lambda mesh: np.vectorize(lambda d: d.slice_index)(mesh.devices)
    mesh = make_mesh(load_config("configs/tiny.py", ["mesh.data=-1"]).mesh, devices)  # default: data spans them
    assert dict(mesh.shape)["data"] == 8 and slice_of(mesh)[:, 0, 0].tolist() == [0] * 4 + [1] * 4
    mesh = make_mesh(load_config("configs/tiny.py", ["mesh.data=2", "mesh.fsdp=-1", "mesh.dcn_fsdp=2"]).mesh, devices)
    assert slice_of(mesh)[0, :, 0].tolist() == [0, 0, 1, 1] and (slice_of(mesh)[:, 0] == 0).all()
    with pytest.raises(ValueError, match="dcn_fsdp=4 slices asked for, the devices form 2"):
        make_mesh(load_config("configs/tiny.py", ["mesh.data=1", "mesh.fsdp=-1", "mesh.dcn_fsdp=4"]).mesh, devices)
    with pytest.raises(ValueError, match="each axis must be a multiple of the slices it spans"):
        make_mesh(load_config("configs/tiny.py", ["mesh.data=1", "mesh.fsdp=-1", "mesh.dcn_data=2"]).mesh, devices)


def test_train_step_compiles_for_two_slices(capsys):
    argv = ["compile", "--config", "configs/tiny.py", "--topology", "v5e:2x2", "--num-slices", "2",
            "--config.mesh.data=2", "--config.mesh.fsdp=-1", "--config.mesh.dcn_data=2"]
    assert cli.main(argv) == 0
    report = _last_json(capsys.readouterr().out)
    assert report["devices"] == 8 and report["num_slices"] == 2 and report["mesh"] == {"data": 2, "fsdp": 4, "tensor": 1}


def test_a_t5_conditioned_step_compiles_with_the_encoder_sharded():
    """The frozen T5 (t5-small's shapes, nothing downloaded) placed by the mesh rules, as the trainer does."""
    cfg = load_config("configs/tiny.py", ["conditioner.encoder=t5", "conditioner.t5_name=t5-small",
                                          "conditioner.output_dim=512", "mesh.data=1", "mesh.fsdp=-1"])
    report = aot.compile_train_step_for(cfg, "v5e:2x2")
    # t5-small's encoder is about 35M parameters (141 MB in float32): a quarter per chip, plus the LM's state.
    assert report["fits"] and report["argument_bytes"] < 141e6 / 4 + report["state_bytes_per_device"] + 1e6
