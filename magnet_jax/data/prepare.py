"""Audio sources -> TFDS datasets: fixed-length audio segments, and EnCodec tokens.

    build_audio_dataset("songs.jsonl", "data/", name="songs_audio", sample_rate=32000)
    tokenize("songs.jsonl" or "data/songs_audio", codec, "data/", name="songs_tokens")

Files are cut into segments of `segment_s` seconds; a last piece shorter than `min_segment_s` is
dropped (audiocraft's minimum-segment rule), as are files shorter than it. Unreadable, empty or
too-short files are counted per reason and logged, never fatal. Work is split across processes
and resumable (see `records.ChunkWriter`); process 0 assembles the dataset once every slice is
written, so on a pod give it `wait_s` (or rerun it after the others finish).
"""
from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence

import numpy as np

from magnet_jax.data.audio_io import AudioError, EmptyAudioError, read_audio
from magnet_jax.data.records import ChunkWriter, dataset_facts, dataset_folder, finished_dataset, open_dataset
from magnet_jax.data.sources import AudioItem, load_source
from magnet_jax.run_lock import LOCK_NAME, RunLock

log = logging.getLogger(__name__)


@dataclass
class Segment:
    audio: np.ndarray  # float32 [C, N]
    path: str
    offset_s: float
    info: Dict[str, Any]


def audio_features(channels: int):
    import tensorflow_datasets as tfds

    return tfds.features.FeaturesDict({
        "audio": tfds.features.Tensor(shape=(channels, None), dtype=np.int16),
        "path": tfds.features.Text(), "offset_s": np.float32, "info": tfds.features.Text()})


def token_features(num_codebooks: int):
    import tensorflow_datasets as tfds

    return tfds.features.FeaturesDict({
        "codes": tfds.features.Tensor(shape=(num_codebooks, None), dtype=np.int16),
        "path": tfds.features.Text(), "offset_s": np.float32, "info": tfds.features.Text()})


def segments_of(item: AudioItem, *, sample_rate: int, channels: int, segment_s: float, min_segment_s: float,
                skipped: Counter) -> List[Segment]:
    """The segments of one file; [] (with the reason counted) when it cannot be used."""
    try:
        wav, _ = read_audio(item.path, sample_rate=sample_rate, channels=channels)
    except AudioError as e:
        reason = "empty" if isinstance(e, EmptyAudioError) else "unreadable"
        skipped[reason] += 1
        log.warning("skipping %s: %s", item.path, e)
        return []
    seg, min_len = int(round(segment_s * sample_rate)), int(round(min_segment_s * sample_rate))
    if wav.shape[-1] < max(min_len, 1):
        skipped["too_short"] += 1
        log.warning("skipping %s: %.2f s is shorter than the minimum segment (%.2f s)", item.path,
                    wav.shape[-1] / sample_rate, min_segment_s)
        return []
    if not np.isfinite(wav).all():
        skipped["unreadable"] += 1
        log.warning("skipping %s: NaN or infinite samples", item.path)
        return []
    out = []
    for start in range(0, wav.shape[-1], seg):
        piece = wav[:, start:start + seg]
        if piece.shape[-1] >= max(min_len, 1):
            out.append(Segment(piece, item.path, start / sample_rate, item.info))
    return out


def _to_int16(wav: np.ndarray) -> np.ndarray:
    return np.round(np.clip(wav, -1.0, 1.0) * 32767).astype(np.int16)


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="file", dynamic_ncols=True)


def build_audio_dataset(source: str, root: str, *, name: str, sample_rate: int, channels: int = 1,
                        segment_s: float = 30.0, min_segment_s: float = 1.0, chunk_size: int = 32,
                        process_index: int = 0, process_count: int = 1, wait_s: float = 0.0,
                        progress: bool = True, overwrite: bool = False) -> Optional[str]:
    """Segments of every file as a TFDS dataset `<root>/<name>` (int16 audio [C, N] + metadata)."""
    done = _already_done(root, name, overwrite)
    if done:
        return done
    with _locked(root, name, process_index):
        return _build_audio_dataset(source, root, name, sample_rate, channels, segment_s, min_segment_s, chunk_size,
                                    process_index, process_count, wait_s, progress)


def _build_audio_dataset(source, root, name, sample_rate, channels, segment_s, min_segment_s, chunk_size,
                         process_index, process_count, wait_s, progress) -> Optional[str]:
    items = load_source(source)
    writer = ChunkWriter(root, name, audio_features(channels), num_items=len(items), chunk_size=chunk_size,
                         process_index=process_index, process_count=process_count, files=source_files(items, source),
                         plan=dict(source=str(source), sample_rate=sample_rate, channels=channels, segment_s=segment_s,
                                   min_segment_s=min_segment_s))
    _run_chunks(writer, items, progress, f"segments {name}", lambda chunk_items, skipped: (
        {"audio": _to_int16(s.audio), "path": s.path, "offset_s": s.offset_s, "info": json.dumps(s.info)}
        for it in chunk_items
        for s in segments_of(it, sample_rate=sample_rate, channels=channels, segment_s=segment_s,
                             min_segment_s=min_segment_s, skipped=skipped)))
    return _finalize(writer, wait_s, f"audio segments of {source} at {sample_rate} Hz",
                     dict(sample_rate=sample_rate, channels=channels, segment_s=segment_s, min_segment_s=min_segment_s))


def _locked(root: str, name: str, process_index: int) -> RunLock:
    """One run per dataset and process index: a second is refused, naming the first."""
    folder = os.path.join(root, name)
    os.makedirs(folder, exist_ok=True)
    return RunLock(folder, f"dataset {folder} (process {process_index})", name=f"{LOCK_NAME}.p{process_index}")


def source_files(items, source: str) -> Dict[str, List[int]]:
    """{file: [size, mtime_ns]} of what a run reads: each audio file, or an audio dataset's files."""
    if isinstance(items, range):
        paths = sorted(p for p in dataset_folder(source).iterdir() if p.is_file())
    else:
        paths = [it.path for it in items]
    out = {}
    for p in paths:
        try:
            st = os.stat(p)
            out[str(p)] = [st.st_size, st.st_mtime_ns]
        except OSError:  # unreadable files are skipped (and counted) when their chunk is made
            out[str(p)] = [-1, -1]
    return out


def _already_done(root: str, name: str, overwrite: bool) -> Optional[str]:
    done = finished_dataset(root, name)
    if done is None or overwrite:
        return None
    log.info("%s is already complete: kept as it is (overwrite=True, --overwrite on the CLI, rebuilds it)", done)
    return str(done)


def _finalize(writer: ChunkWriter, wait_s: float, description: str, facts: Dict[str, Any]) -> Optional[str]:
    """Process 0 assembles the dataset (after waiting up to `wait_s` for the others); the rest return None."""
    if writer.process_index != 0:
        return None
    out = writer.finalize(wait_s=wait_s, description=description, facts=facts)
    return None if out is None else str(out)


def _run_chunks(writer: ChunkWriter, items: Sequence, progress: bool, desc: str, make_examples) -> None:
    mine = writer.my_chunks()
    todo = [c for c in mine if not writer.is_done(c)]
    bar = _progress(sum(len(writer.items_of(c)) for c in todo), desc, progress and bool(todo))
    if len(todo) < len(mine):
        log.info("%s: resuming, %d of %d chunks of this process already written", desc, len(mine) - len(todo),
                 len(mine))
    t0, seconds, examples = time.time(), 0.0, 0
    for c in todo:
        chunk_items = [items[i] for i in writer.items_of(c)]
        skipped: Counter = Counter(items=len(chunk_items))  # filled while the examples are made
        n = writer.write(c, make_examples(chunk_items, skipped), skipped)
        examples += n
        seconds += sum(getattr(it, "duration", 0.0) for it in chunk_items)
        if bar is not None:
            bar.update(len(chunk_items))
            bar.set_postfix(examples=examples, audio_s_per_s=f"{seconds / max(time.time() - t0, 1e-9):.0f}")
    if bar is not None:
        bar.close()
    stats = writer.stats()
    skipped = {k: v for k, v in stats.items() if k not in ("items", "examples")}
    log.info("%s: %d examples from %d items so far; skipped %s; %.1f s", desc, stats.get("examples", 0),
             stats.get("items", 0), skipped or "none", time.time() - t0)


def _source_segments(source: str, *, sample_rate: int, channels: int, segment_s: float, min_segment_s: float):
    """(items, segment function) for a raw source or a finished audio dataset."""
    try:
        ds = open_dataset(source)
    except FileNotFoundError:
        ds = None
    if ds is None:
        items = load_source(source)

        def segs(item, skipped):
            return segments_of(item, sample_rate=sample_rate, channels=channels, segment_s=segment_s,
                               min_segment_s=min_segment_s, skipped=skipped)
        return items, segs

    facts = dataset_facts(source)
    if "audio" not in ds.dataset_info.features:
        raise ValueError(f"{source} is not an audio-segment dataset (made with --audio-only)")
    for key, want in (("sample_rate", sample_rate), ("channels", channels)):
        if key in facts and facts[key] != want:
            raise ValueError(f"{source} holds audio with {key}={facts[key]}, the codec takes {want}: rebuild the "
                             f"audio dataset with --sample-rate/--channels of the codec, or tokenise the raw files")

    def from_record(i, skipped):
        ex = ds[i]
        audio = ex["audio"].astype(np.float32) / 32767
        return [Segment(audio, _text(ex["path"]), float(ex["offset_s"]), json.loads(_text(ex["info"])))]
    return range(len(ds)), from_record


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def encode_segments(codec, segments: List[Segment], batch_size: int) -> Iterator[np.ndarray]:
    """Codes [K, T] per segment: equal lengths batched (the batch padded to `batch_size`, so one
    compiled program serves every full batch), other lengths one by one."""
    out: List[Optional[np.ndarray]] = [None] * len(segments)
    by_len: Dict[int, List[int]] = {}
    for i, s in enumerate(segments):
        by_len.setdefault(s.audio.shape[-1], []).append(i)
    for length, idx in by_len.items():
        for start in range(0, len(idx), batch_size):
            group = idx[start:start + batch_size]
            batch = np.zeros((batch_size if len(idx) > 1 else 1, segments[0].audio.shape[0], length), np.float32)
            for j, i in enumerate(group):
                batch[j] = segments[i].audio
            codes = np.asarray(codec.encode(batch))
            for j, i in enumerate(group):
                out[i] = codes[j]
    return iter(out)


def tokenize(source: str, codec, root: str, *, name: str, segment_s: float = 30.0, min_segment_s: float = 1.0,
             chunk_size: int = 32, batch_size: int = 8, process_index: int = 0, process_count: int = 1,
             wait_s: float = 0.0, progress: bool = True, overwrite: bool = False) -> Optional[str]:
    """EnCodec tokens of every segment as a TFDS dataset `<root>/<name>` (int16 codes [K, T] + metadata).

    source: an audio source (manifest / folder) or a dataset made by `build_audio_dataset`.
    A finished dataset of that name is kept as it is unless `overwrite`.
    """
    done = _already_done(root, name, overwrite)
    if done:
        return done
    with _locked(root, name, process_index):
        return _tokenize(source, codec, root, name, segment_s, min_segment_s, chunk_size, batch_size, process_index,
                         process_count, wait_s, progress)


def _tokenize(source, codec, root, name, segment_s, min_segment_s, chunk_size, batch_size, process_index,
              process_count, wait_s, progress) -> Optional[str]:
    items, segs = _source_segments(source, sample_rate=codec.sample_rate, channels=codec.channels,
                                   segment_s=segment_s, min_segment_s=min_segment_s)
    if isinstance(items, range):  # an audio dataset: its own segments, already cut
        facts = dataset_facts(source)
        segment_s, min_segment_s = facts.get("segment_s", segment_s), facts.get("min_segment_s", min_segment_s)
    writer = ChunkWriter(root, name, token_features(codec.num_codebooks), num_items=len(items),
                         chunk_size=chunk_size, process_index=process_index, process_count=process_count,
                         files=source_files(items, source),
                         plan=dict(source=str(source), sample_rate=codec.sample_rate, num_codebooks=codec.num_codebooks,
                                   segment_s=segment_s, min_segment_s=min_segment_s))

    def examples(chunk_items, skipped):
        segments = [s for it in chunk_items for s in segs(it, skipped)]
        for s, codes in zip(segments, encode_segments(codec, segments, batch_size)):
            yield {"codes": codes.astype(np.int16), "path": s.path, "offset_s": s.offset_s,
                   "info": json.dumps(s.info)}

    _run_chunks(writer, items, progress, f"tokenize {name}", examples)
    return _finalize(writer, wait_s, f"EnCodec tokens ({codec.num_codebooks} x {codec.cardinality} at "
                                     f"{codec.frame_rate:g} Hz) of {source}",
                     dict(sample_rate=codec.sample_rate, channels=codec.channels, frame_rate=float(codec.frame_rate),
                          num_codebooks=codec.num_codebooks, cardinality=codec.cardinality, segment_s=segment_s,
                          min_segment_s=min_segment_s))
