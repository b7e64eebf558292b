"""Files are written whole or not at all: a failed write keeps the old file and leaves nothing behind."""
import json
import os

import pytest

from magnet_jax.atomic_files import replace_atomically, write_json_atomically, write_text_atomically


def test_a_write_replaces_the_file_whole(tmp_path):
    path = tmp_path / "result.json"
    write_text_atomically(path, "old")
    write_json_atomically(path, {"step": 3, "values": (1, 2)}, default=list)
    assert json.loads(path.read_text()) == {"step": 3, "values": [1, 2]}
    assert os.listdir(tmp_path) == ["result.json"]


def test_a_failed_write_keeps_the_old_file_and_no_temporary_one(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text("old")

    def half_then_fail(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        replace_atomically(path, half_then_fail, fsync=True)
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["results.csv"]
