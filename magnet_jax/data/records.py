"""Writing TFDS datasets (array_record shards) from many processes, resumably.

The items to write are split into numbered work chunks: chunk c holds items
[c * chunk_size, (c + 1) * chunk_size) and belongs to process c % process_count (on a pod,
every host takes its slice). A finished chunk is one array_record file plus a JSON of its
counts, each written to a temporary name and renamed, so an interrupted run leaves only whole
chunks; a rerun skips them (no example is lost or written twice). When every chunk exists,
`finalize` moves them into a TFDS dataset folder (`<root>/<name>/1.0.0/`) and writes its
metadata with `tfds.folder_dataset.write_metadata`: the result reads with `tfds.data_source` /
`tfds.builder_from_directory`, no TensorFlow needed. A GeneratorBasedBuilder cannot be split
across hosts and resumed this way, hence writing the shards ourselves.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

from magnet_jax.atomic_files import replace_atomically, write_text_atomically

log = logging.getLogger(__name__)
VERSION = "1.0.0"
FACTS_FILE = "magnet_jax_facts.json"
_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"


class ChunkWriter:
    def __init__(self, root: str, name: str, features, *, num_items: int, chunk_size: int = 64,
                 process_index: int = 0, process_count: int = 1, plan: Optional[Dict[str, Any]] = None,
                 files: Optional[Dict[str, List[int]]] = None):
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index={process_index} must be in [0, process_count={process_count})")
        self.root, self.name, self.features = Path(root), name, features
        self.work = self.root / name / "_work"
        self.work.mkdir(parents=True, exist_ok=True)
        self.num_items, self.chunk_size = num_items, chunk_size
        self.process_index, self.process_count = process_index, process_count
        self._check_plan(plan or {})
        if files is not None:
            self._check_files(files)

    def _check_plan(self, extra: Dict[str, Any]) -> None:
        """A resumed run must cut the same items into the same chunks (and make them the same way)."""
        plan = {"num_items": self.num_items, "chunk_size": self.chunk_size, **extra}
        path = self.work / "plan.json"
        if path.is_file():
            saved = json.loads(path.read_text())
            if saved != plan:
                raise ValueError(f"{self.work} holds a run with {saved}, this one has {plan}: resume with the same "
                                 "source and chunk size, or write to another folder")
        else:
            write_text_atomically(path, json.dumps(plan))

    def _check_files(self, files: Dict[str, List[int]]) -> None:
        """A resumed run must read the same source files: chunks are cut by position in the file
        list, so a file added and another removed would shift items between chunks unseen."""
        path = self.work / "files.json"
        if not path.is_file():
            write_text_atomically(path, json.dumps(files))
            return
        saved = json.loads(path.read_text())
        if saved == files:
            return
        added = sorted(set(files) - set(saved))
        removed = sorted(set(saved) - set(files))
        changed = sorted(k for k in set(files) & set(saved) if files[k] != saved[k])
        what = "; ".join(f"{len(v)} {name} (e.g. {v[0]})" for name, v in
                         (("added", added), ("removed", removed), ("changed", changed)) if v)
        raise ValueError(f"the source changed since this run started ({what}); its finished chunks were cut from "
                         f"the old file list. Restore the source as it was, or delete {self.work} to start over.")

    @property
    def num_chunks(self) -> int:
        return math.ceil(self.num_items / self.chunk_size)

    def my_chunks(self) -> List[int]:
        return [c for c in range(self.num_chunks) if c % self.process_count == self.process_index]

    def _paths(self, chunk: int):
        base = self.work / f"chunk-{chunk:06d}"
        return base.with_suffix(".array_record"), base.with_suffix(".json")

    def is_done(self, chunk: int) -> bool:
        return self._paths(chunk)[1].is_file()

    def items_of(self, chunk: int) -> range:
        return range(chunk * self.chunk_size, min((chunk + 1) * self.chunk_size, self.num_items))

    def write(self, chunk: int, examples: Iterable[Dict[str, Any]], stats: Dict[str, Any]) -> int:
        """Writes chunk `chunk`; `stats` is read after `examples` is exhausted (it may count skips)."""
        from array_record.python.array_record_module import ArrayRecordWriter

        data, meta = self._paths(chunk)
        n = 0

        def write(tmp: str) -> None:
            nonlocal n
            writer = ArrayRecordWriter(tmp, "group_size:1")
            try:
                for ex in examples:
                    writer.write(self.features.serialize_example(ex))
                    n += 1
            finally:
                writer.close()

        replace_atomically(data, write)
        write_text_atomically(meta, json.dumps({**dict(stats), "examples": n}))  # the chunk counts as done from here
        return n

    def stats(self) -> Dict[str, int]:
        total: Dict[str, int] = {}
        for c in range(self.num_chunks):
            if self.is_done(c):
                for k, v in json.loads(self._paths(c)[1].read_text()).items():
                    if isinstance(v, (int, float)):
                        total[k] = total.get(k, 0) + v
        return total

    def missing(self) -> List[int]:
        return [c for c in range(self.num_chunks) if not self.is_done(c)]

    def finalize(self, *, wait_s: float = 0.0, description: str = "",
                 facts: Optional[Dict[str, Any]] = None) -> Optional[Path]:
        """Turns the finished chunks into the TFDS dataset; None (with a log line) if chunks of other
        processes are still missing after `wait_s` seconds. `facts` (e.g. the codec's frame rate)
        are saved beside the data (`FACTS_FILE`) for readers to check against their config."""
        import tensorflow_datasets as tfds

        deadline = time.time() + wait_s
        while self.missing() and time.time() < deadline:
            time.sleep(1.0)
        missing = self.missing()
        if missing:
            log.info("%d chunks of other processes are not written yet (e.g. %s); finalize once they are",
                     len(missing), missing[:5])
            return None
        out = self.root / self.name / VERSION
        tmp = self.root / self.name / f"{VERSION}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        shard_lengths, num_bytes, index = [], 0, 0
        chunks = [c for c in range(self.num_chunks)
                  if json.loads(self._paths(c)[1].read_text())["examples"] > 0]
        for c in chunks:
            data, meta = self._paths(c)
            shard = tmp / f"{self.name}-train.array_record-{index:05d}-of-{len(chunks):05d}"
            shutil.copyfile(data, shard)  # keep the work chunks until the dataset is complete
            shard_lengths.append(json.loads(meta.read_text())["examples"])
            num_bytes += shard.stat().st_size
            index += 1
        if not shard_lengths:
            raise ValueError(f"no examples were written to {self.name}: every item was skipped (see the log)")
        tfds.folder_dataset.write_metadata(
            data_dir=str(tmp), features=self.features, version=VERSION, check_data=False, filename_template=_TEMPLATE,
            split_infos=[tfds.core.SplitInfo(name="train", shard_lengths=shard_lengths, num_bytes=num_bytes)],
            description=description)
        write_text_atomically(tmp / "magnet_jax_stats.json", json.dumps(self.stats(), indent=1))
        if facts:
            write_text_atomically(tmp / FACTS_FILE, json.dumps(facts, indent=1))
        old = self.root / self.name / f"{VERSION}.old"
        shutil.rmtree(old, ignore_errors=True)
        if out.exists():  # a dataset being rebuilt stays whole until the new one is complete
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(self.work)
        return out


def finished_dataset(root: str, name: str) -> Optional[Path]:
    """`<root>/<name>/1.0.0` if a run finished it (and none is under way there), else None."""
    out = Path(root) / name / VERSION
    return out if (out / "dataset_info.json").is_file() and not (Path(root) / name / "_work").is_dir() else None


def dataset_folder(path: str) -> Path:
    """The version folder of a finished dataset given as `<root>/<name>` or `<root>/<name>/1.0.0`."""
    p = Path(os.path.expanduser(path))
    if (p / VERSION / "dataset_info.json").is_file():
        p = p / VERSION
    if not (p / "dataset_info.json").is_file():
        hint = " (a run is unfinished: rerun the command to complete it)" if (p / "_work").is_dir() else ""
        raise FileNotFoundError(f"{path} is not a finished dataset{hint}")
    return p


def open_dataset(path: str):
    """A finished dataset folder as a TFDS data source (random access, no TensorFlow)."""
    import tensorflow_datasets as tfds

    return tfds.builder_from_directory(str(dataset_folder(path))).as_data_source(split="train")


def dataset_facts(path: str) -> Dict[str, Any]:
    """What the writer recorded about the data (e.g. the codec's frame rate); {} if nothing."""
    f = dataset_folder(path) / FACTS_FILE
    return json.loads(f.read_text()) if f.is_file() else {}
