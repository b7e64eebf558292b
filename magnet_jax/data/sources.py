"""The datasets users already have, as a list of `AudioItem`s.

- audiocraft's layout: a `.jsonl` manifest (or `.jsonl.gz`) of `{"path", "duration", "sample_rate"}`
  lines, with a `.json` sidecar next to each audio file holding its metadata (description, genre,
  moods, keywords, bpm, key, instrument, ...). Relative paths are taken from the manifest's folder.
- a folder of audio files, each with an optional `.txt` caption or `.json` metadata of the same
  name; durations are read from the file headers.
"""
from __future__ import annotations

import dataclasses
import gzip
import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, List

log = logging.getLogger(__name__)
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".opus")
# Metadata fields audiocraft's MusicInfo knows (others in the sidecar are ignored).
INFO_FIELDS = ("title", "artist", "key", "bpm", "genre", "moods", "keywords", "description", "name", "instrument")


@dataclasses.dataclass(frozen=True)
class AudioItem:
    path: str
    duration: float  # seconds (as the manifest says; checked again when the file is read)
    sample_rate: int
    info: Dict[str, Any]  # metadata: description, genre, moods, ...


def read_sidecar(audio_path: Path) -> Dict[str, Any]:
    """Metadata beside an audio file: `<stem>.json` (fields of INFO_FIELDS) or `<stem>.txt` (description)."""
    js, txt = audio_path.with_suffix(".json"), audio_path.with_suffix(".txt")
    if js.is_file():
        try:
            raw = json.loads(js.read_text())
        except (OSError, ValueError) as e:
            log.warning("ignoring unreadable metadata %s: %s", js, e)
            return {}
        return {k: raw[k] for k in INFO_FIELDS if raw.get(k) not in (None, "", [])} if isinstance(raw, dict) else {}
    if txt.is_file():
        try:
            text = txt.read_text().strip()
        except (OSError, UnicodeDecodeError) as e:
            log.warning("ignoring unreadable caption %s: %s", txt, e)
            return {}
        return {"description": text} if text else {}
    return {}


def _open_text(path: Path):
    return gzip.open(path, "rt") if path.suffix == ".gz" else open(path)


def scan_manifest(manifest: Path) -> List[AudioItem]:
    items = []
    with _open_text(manifest) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                path = Path(d["path"])
                duration, sr = float(d["duration"]), int(d["sample_rate"])
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{manifest}:{n}: a manifest line needs path, duration and sample_rate ({e})") from e
            if not path.is_absolute():
                path = manifest.parent / path
            items.append(AudioItem(str(path), duration, sr, read_sidecar(path)))
    return items


def scan_folder(folder: Path) -> List[AudioItem]:
    import soundfile as sf

    items = []
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES):
        try:
            info = sf.info(str(path))
            duration, sr = info.frames / info.samplerate, int(info.samplerate)
        except Exception as e:  # unreadable header: keep it, the reader counts and skips it
            log.warning("cannot read the header of %s: %s", path, e)
            duration, sr = 0.0, 0
        items.append(AudioItem(str(path), duration, sr, read_sidecar(path)))
    return items


def load_source(source: str) -> List[AudioItem]:
    """A manifest file (`.jsonl`, `.jsonl.gz`) or a folder of audio files."""
    path = Path(os.path.expanduser(source))
    if path.is_dir():
        items = scan_folder(path)
    elif path.is_file() and (path.name.endswith(".jsonl") or path.name.endswith(".jsonl.gz")):
        items = scan_manifest(path)
    else:
        raise FileNotFoundError(f"{source}: pass a folder of audio files or an audiocraft .jsonl manifest")
    if not items:
        raise ValueError(f"{source} lists no audio files ({', '.join(AUDIO_SUFFIXES)})")
    return items

