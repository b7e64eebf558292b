"""The torch-free reader of `torch.save` files against torch's own `torch.load`, its refusals of foreign
objects and damaged files, and `load_state_dict_file`'s dispatch between torch zips and safetensors."""
import builtins
import collections
import io
import os
import pickle
import zipfile

import ml_dtypes
import numpy as np
import pytest

from magnet_jax.convert.torch_pickle import TorchFileError, load_state_dict_file, load_torch_file

from tests.reference import require

torch = require("torch")

_WIDENED = (torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2)  # ml_dtypes here, compared as float32


def _same(ours, theirs):
    if isinstance(theirs, torch.Tensor):
        assert isinstance(ours, np.ndarray) and ours.base is None  # owns its memory
        assert tuple(ours.shape) == tuple(theirs.shape)
        if theirs.dtype in _WIDENED:
            assert ours.dtype == np.dtype(getattr(ml_dtypes, str(theirs.dtype).split(".")[1]))
            ours, ref = ours.astype(np.float32), theirs.float().numpy()
        else:
            ref = theirs.detach().numpy()
        assert ours.dtype == ref.dtype, (ours.dtype, ref.dtype)
        np.testing.assert_array_equal(ours, ref)
    elif isinstance(theirs, dict):
        assert type(ours) is type(theirs) and list(ours) == list(theirs)
        assert getattr(ours, "_metadata", None) == getattr(theirs, "_metadata", None)  # state_dict versions
        for k in theirs:
            _same(ours[k], theirs[k])
    elif isinstance(theirs, (list, tuple)):
        assert type(ours) is type(theirs) and len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            _same(a, b)
    else:
        assert type(ours) is type(theirs) and ours == theirs


def _roundtrip(tmp_path, obj, name="x.bin"):
    path = tmp_path / name
    torch.save(obj, path)
    ours = load_torch_file(path)
    _same(ours, torch.load(path, weights_only=False))  # our own files: trusted
    return ours


# ------------------------------------------------------------------------------- agreement with torch


def test_every_dtype(tmp_path):
    g = torch.Generator().manual_seed(0)
    classic = (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32,
               torch.int16, torch.int8, torch.uint8, torch.bool, torch.complex64, torch.complex128)
    obj = {str(dt): (torch.randn(3, 5, generator=g) * 7).to(dt) for dt in classic}
    # dtypes torch saves as raw bytes plus a dtype (`_rebuild_tensor_v3`)
    obj.update({str(dt): torch.randint(0, 200, (4, 3), generator=g).to(dt)
                for dt in (torch.uint16, torch.uint32, torch.uint64)})
    obj.update({str(dt): torch.randn(2, 7, generator=g).to(dt) for dt in (torch.float8_e4m3fn, torch.float8_e5m2)})
    ours = _roundtrip(tmp_path, obj)
    assert ours["torch.bfloat16"].dtype == ml_dtypes.bfloat16


def test_views_scalars_and_containers(tmp_path):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    obj = {
        "transposed": base.t(),  # non-contiguous
        "row": base[2],  # offset into a storage shared with the others
        "slice": base[:, 1:4:2],
        "base": base,
        "expanded": torch.arange(3.0).expand(4, 3),  # stride 0
        "scalar": torch.tensor(3.5),
        "int_scalar": torch.tensor(7, dtype=torch.int64),
        "empty": torch.zeros(0, 3),
        "empty_view": base[:, 6:],
        "nested": {"s": "text", "i": 3, "f": 0.5, "l": [1, None, "a", [2.5]], "t": (1, 2), "none": None, "b": True,
                   "bytes": b"\x00\xffab", "set": {1, 2}, "frozen": frozenset({"a"}), "c": 1 + 2j, "neg": -(2 ** 70)},
        "ordered": collections.OrderedDict([("z", torch.ones(2)), ("a", torch.zeros(1))]),
        "param": torch.nn.Parameter(torch.full((2, 2), 0.25)),
        "frozen_param": torch.nn.Parameter(torch.ones(3), requires_grad=False),
    }
    ours = _roundtrip(tmp_path, obj)
    # the arrays own their memory: writing into one view leaves the others sharing its storage alone
    ours["row"][:] = -1
    np.testing.assert_array_equal(ours["base"], base.numpy())
    assert ours["transposed"].flags.writeable and ours["scalar"].shape == ()


def test_module_state_dict_and_audiocraft_export(tmp_path):
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3), torch.nn.BatchNorm1d(3),
                                 torch.nn.Linear(3, 2, bias=False))
    state = module.state_dict()
    assert isinstance(state, collections.OrderedDict) and hasattr(state, "_metadata")
    pkg = {"best_state": state, "xp.cfg": "a: 1\nb: {c: [1, 2]}\n", "version": "1.3.0", "exported": True}
    ours = _roundtrip(tmp_path, pkg)
    assert ours["best_state"]["0.weight"].dtype == np.float32
    assert ours["best_state"]["2.num_batches_tracked"].dtype == np.int64  # a 0-d buffer
    path = tmp_path / "sd.bin"
    torch.save(state, path)
    flat = load_state_dict_file(path)
    assert list(flat) == list(state)
    for k in state:
        np.testing.assert_array_equal(flat[k], state[k].numpy())


def test_deflated_records_are_read_too(tmp_path):
    # torch stores records uncompressed (read by memory-mapping); a re-zipped file takes the other path
    obj = {"w": torch.randn(5, 4), "v": torch.arange(10).reshape(2, 5).t()}
    torch.save(obj, tmp_path / "stored.bin")
    with zipfile.ZipFile(tmp_path / "stored.bin") as src, \
            zipfile.ZipFile(tmp_path / "deflated.bin", "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    _same(load_torch_file(tmp_path / "deflated.bin"), obj)


# ------------------------------------------------------------------------------------------ refusals


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


class _Custom:
    def __init__(self):
        self.x = 1


def test_refuses_foreign_objects_without_running_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"x": _Evil()}, tmp_path / "evil.bin")
    with pytest.raises(TorchFileError, match=r"contains a pickled (posix|nt)\.system.*does not load.*"
                                             r"re-save it with PyTorch .* holding only tensors"):
        load_torch_file(tmp_path / "evil.bin")
    assert not (tmp_path / "pwned").exists()
    torch.save({"w": torch.ones(2), "obj": _Custom()}, tmp_path / "custom.bin")
    with pytest.raises(TorchFileError, match=r"contains a pickled \S*test_torch_pickle\._Custom"):
        load_torch_file(tmp_path / "custom.bin")
    # The advice works: loaded with torch, the foreign object replaced, saved again.
    sd = torch.load(tmp_path / "custom.bin", weights_only=False)
    sd["obj"] = "replaced"
    torch.save(sd, tmp_path / "plain.bin")
    assert load_torch_file(tmp_path / "plain.bin")["obj"] == "replaced"
    torch.save({"a": np.ones(3)}, tmp_path / "numpy.bin")  # numpy arrays are not on the allow-list either
    with pytest.raises(TorchFileError, match="contains a pickled numpy"):
        load_torch_file(tmp_path / "numpy.bin")
    torch.save({"name": np.str_("x")}, tmp_path / "numpy_str.bin")  # nor non-numeric numpy scalars
    with pytest.raises(TorchFileError, match="only numeric ones are read"):
        load_torch_file(tmp_path / "numpy_str.bin")


def test_numeric_numpy_scalars_beside_the_weights(tmp_path):
    """laion_clap's checkpoints keep numpy numbers (epoch, scores) beside the weights."""
    w = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    torch.save({"state_dict": {"w": w}, "epoch": np.int64(15), "best": np.float64(0.9014),
                "big_endian": np.dtype(">f4").type(2.5)}, tmp_path / "ckpt.pt")
    got = load_state_dict_file(tmp_path / "ckpt.pt")
    np.testing.assert_array_equal(got["state_dict"]["w"], w.numpy())
    assert got["epoch"] == 15 and got["epoch"].dtype == np.int64 and got["best"] == 0.9014
    assert got["big_endian"] == 2.5


class _Global:
    """Pickles as a call of `fn(*args)`: builds the hostile pickles torch.save would not write."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


_STORAGE = object()


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        return ("storage", torch.FloatStorage, "0", "cpu", 4) if obj is _STORAGE else None


def _crafted(tmp_path, obj, data=np.arange(4, dtype=np.float32).tobytes(), name="crafted.bin"):
    """A torch-style zip whose pickle holds `obj`; `_STORAGE` in it stands for a 4-float storage `data`."""
    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump(obj)
    path = tmp_path / name
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3")
        if data is not None:
            z.writestr("archive/data/0", data)
    return path


def _tensor(offset, size, stride):
    return _Global(torch._utils._rebuild_tensor_v2, _STORAGE, offset, size, stride, False,
                   collections.OrderedDict())


def test_crafted_tensors_are_bounds_checked(tmp_path):
    ok = load_torch_file(_crafted(tmp_path, {"t": _tensor(0, (2, 2), (2, 1)), "u": _tensor(1, (3,), (1,))}))
    np.testing.assert_array_equal(ok["t"], [[0, 1], [2, 3]])
    np.testing.assert_array_equal(ok["u"], [1, 2, 3])
    # as_strided would happily read past the storage: every such tensor is refused instead
    for offset, size, stride in ((0, (100,), (1,)), (4, (1,), (1,)), (0, (2, 2), (3, 1)), (4, (), ())):
        with pytest.raises(TorchFileError, match=r"crafted\.bin: a tensor .* reaches element"):
            load_torch_file(_crafted(tmp_path, _tensor(offset, size, stride)))
    for offset, size, stride in ((-1, (1,), (1,)), (0, (2,), (-1,)), (0, (2,), (1, 1)), (0, ("2",), (1,))):
        with pytest.raises(TorchFileError):
            load_torch_file(_crafted(tmp_path, _tensor(offset, size, stride)))
    with pytest.raises(TorchFileError, match="should hold 4 x float32 but its record has 8 bytes"):
        load_torch_file(_crafted(tmp_path, _tensor(0, (2,), (1,)), data=b"\x00" * 8))
    with pytest.raises(TorchFileError, match="lacks the record archive/data/0"):
        load_torch_file(_crafted(tmp_path, _tensor(0, (2,), (1,)), data=None))


def test_crafted_calls_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for fn, args in ((builtins.eval, ("open('pwned', 'w')",)), (builtins.getattr, ("x", "upper")),
                     (os.system, ("touch pwned",))):
        with pytest.raises(TorchFileError, match="does not load"):
            load_torch_file(_crafted(tmp_path, [_Global(fn, *args)]))
    assert not (tmp_path / "pwned").exists()


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_torch_file(tmp_path / "missing.bin")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(np.random.default_rng(0).bytes(256).replace(b"\x80", b"\x00").replace(b"PK", b"pk"))
    with pytest.raises(TorchFileError, match="not a torch.save zip file at all"):
        load_torch_file(junk)
    legacy = tmp_path / "legacy.bin"
    torch.save({"a": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(TorchFileError, match=r"legacy \(non-zip\) torch file.*re-save it with PyTorch"):
        load_torch_file(legacy)
    good = tmp_path / "good.bin"
    torch.save({"a": torch.randn(64, 64)}, good)
    cut = tmp_path / "cut.bin"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])  # an interrupted download
    with pytest.raises(TorchFileError, match="damaged or truncated"):
        load_torch_file(cut)
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(TorchFileError, match="expected one data.pkl"):
        load_torch_file(other)
    garbled = _crafted(tmp_path, None, name="garbled.bin")
    with zipfile.ZipFile(garbled, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00(X\x01")  # a pickle cut short
    with pytest.raises(TorchFileError, match="is damaged"):
        load_torch_file(garbled)


# ------------------------------------------------------------------------------ load_state_dict_file


def test_load_state_dict_file_dispatch(tmp_path):
    from safetensors.numpy import save_file
    from safetensors.torch import save_file as save_torch_file

    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1, 2], np.int64)}
    save_file(arrays, str(tmp_path / "m.safetensors"))
    got = load_state_dict_file(tmp_path / "m.safetensors")
    assert sorted(got) == ["a", "b"]
    for k in arrays:
        np.testing.assert_array_equal(got[k], arrays[k])
    # safetensors.numpy cannot make bfloat16 arrays; those files are read directly
    bf = {"w": torch.randn(3, 4).to(torch.bfloat16), "f8": torch.randn(5).to(torch.float8_e4m3fn),
          "x": torch.arange(3.0)}
    save_torch_file(bf, str(tmp_path / "bf16.safetensors"))
    got = load_state_dict_file(tmp_path / "bf16.safetensors")
    assert got["w"].dtype == ml_dtypes.bfloat16 and got["f8"].dtype == ml_dtypes.float8_e4m3fn
    for k in bf:
        np.testing.assert_array_equal(got[k].astype(np.float32), bf[k].float().numpy())
    # the contents decide, not the name: safetensors bytes in a .bin file
    (tmp_path / "st.bin").write_bytes((tmp_path / "m.safetensors").read_bytes())
    np.testing.assert_array_equal(load_state_dict_file(tmp_path / "st.bin")["a"], arrays["a"])
    torch.save([torch.ones(1)], tmp_path / "list.bin")
    with pytest.raises(TorchFileError, match="holds a list, not a state dict"):
        load_state_dict_file(tmp_path / "list.bin")
    (tmp_path / "junk.bin").write_bytes(b"hello world, not a checkpoint")
    with pytest.raises(TorchFileError, match="neither a safetensors file nor a torch.save zip"):
        load_state_dict_file(tmp_path / "junk.bin")
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(TorchFileError, match="not a readable safetensors file"):
        load_state_dict_file(tmp_path / "bad.safetensors")
    with pytest.raises(FileNotFoundError):
        load_state_dict_file(tmp_path / "missing.safetensors")
