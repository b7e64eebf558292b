"""The torch-free reader of `torch.save` files against torch's own `torch.load`."""
import collections
import os

import numpy as np
import pytest

from magnet_jax.convert.torch_pickle import TorchFileError, load_state_dict_file, load_torch_file

from tests.reference import require

torch = require("torch")


def _same(ours, theirs):
    if isinstance(theirs, torch.Tensor):
        assert isinstance(ours, np.ndarray)
        assert tuple(ours.shape) == tuple(theirs.shape)
        ref = theirs.float().numpy() if theirs.dtype == torch.bfloat16 else theirs.numpy()
        got = ours.astype(np.float32) if theirs.dtype == torch.bfloat16 else ours
        assert got.dtype == ref.dtype, (got.dtype, ref.dtype)
        np.testing.assert_array_equal(got, ref)
    elif isinstance(theirs, dict):
        assert type(ours) is type(theirs) and list(ours) == list(theirs)
        for k in theirs:
            _same(ours[k], theirs[k])
    elif isinstance(theirs, (list, tuple)):
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            _same(a, b)
    else:
        assert ours == theirs


def _roundtrip(tmp_path, obj):
    path = tmp_path / "x.bin"
    torch.save(obj, path)
    ours = load_torch_file(path)
    _same(ours, torch.load(path, weights_only=True))
    return ours


def test_every_dtype(tmp_path):
    g = torch.Generator().manual_seed(0)
    obj = {str(dt): (torch.randn(3, 5, generator=g) * 7).to(dt)
           for dt in (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32,
                      torch.int16, torch.int8, torch.uint8, torch.bool)}
    _roundtrip(tmp_path, obj)


def test_views_scalars_and_containers(tmp_path):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    obj = {
        "transposed": base.t(),  # non-contiguous
        "row": base[2],  # offset into a shared storage
        "slice": base[:, 1:4:2],
        "base": base,
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 3),
        "nested": {"s": "text", "i": 3, "f": 0.5, "l": [1, None, "a"], "t": (1, 2), "none": None, "b": True},
        "ordered": collections.OrderedDict([("z", torch.ones(2)), ("a", torch.zeros(1))]),
    }
    _roundtrip(tmp_path, obj)


def test_module_state_dict_and_audiocraft_export(tmp_path):
    module = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3), torch.nn.Linear(3, 2, bias=False))
    pkg = {"best_state": module.state_dict(), "xp.cfg": "a: 1\nb: {c: [1, 2]}\n", "version": "1.3.0",
           "exported": True}
    ours = _roundtrip(tmp_path, pkg)
    assert ours["best_state"]["0.weight"].dtype == np.float32
    path = tmp_path / "sd.bin"
    torch.save(module.state_dict(), path)
    assert sorted(load_state_dict_file(path)) == sorted(module.state_dict())


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_refuses_foreign_objects_without_running_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"x": _Evil()}, tmp_path / "evil.bin")
    with pytest.raises(TorchFileError, match="does not load"):
        load_torch_file(tmp_path / "evil.bin")
    assert not (tmp_path / "pwned").exists()


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_torch_file(tmp_path / "missing.bin")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(os.urandom(256))
    with pytest.raises(TorchFileError, match="not a zip-format"):
        load_torch_file(junk)
    legacy = tmp_path / "legacy.bin"
    torch.save({"a": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(TorchFileError, match="legacy"):
        load_torch_file(legacy)
