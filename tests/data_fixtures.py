"""Small folders of synthetic audio with captions, in the layouts users have, plus bad files."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from magnet_jax.data.audio_io import write_audio

GENRES = ["jazz", "techno", "folk", "metal", "ambient", "pop"]


def _tone(seconds: float, sr: int, freq: float) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * np.sin(2 * np.pi * 3.1 * freq * t))[None].astype(np.float32)


def make_audiocraft_layout(root: Path, n: int = 6, sr: int = 32000) -> Path:
    """`root/manifest.jsonl` + wav files with `.json` sidecars; one file at 44.1 kHz (resampled)."""
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        rate = 44100 if i == 1 else sr
        seconds = 1.0 + 0.5 * (i % 3)
        path = root / "audio" / f"track{i}.wav"
        write_audio(path, _tone(seconds, rate, 110 * (i + 1)), rate, strategy="none")
        meta = {"description": f"a {GENRES[i % 6]} piece number {i}", "genre": GENRES[i % 6], "moods": ["calm", "dark"],
                "keywords": ["test"], "bpm": 90 + i, "key": "C major", "title": f"t{i}"}
        path.with_suffix(".json").write_text(json.dumps(meta))
        lines.append(json.dumps({"path": f"audio/track{i}.wav", "duration": seconds, "sample_rate": rate}))
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return root / "manifest.jsonl"


def make_caption_folder(root: Path, n: int = 4, sr: int = 32000, bad_files: bool = True) -> Path:
    """Audio files with `.txt` captions; with `bad_files`, also a corrupt, an empty and a too-short file."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        write_audio(root / f"clip{i}.wav", _tone(1.2, sr, 200 + 50 * i), sr, strategy="none")
        (root / f"clip{i}.txt").write_text(f"a {GENRES[i % 6]} sound effect")
    if bad_files:
        (root / "corrupt.wav").write_bytes(b"RIFF" + bytes(range(200)))
        import soundfile as sf

        sf.write(str(root / "empty.wav"), np.zeros((0, 1), np.float32), sr)
        write_audio(root / "short.wav", _tone(0.1, sr, 300), sr, strategy="none")
    return root


def make_data_env(root: Path) -> dict:
    """A tiny codec (64 codes, 50 Hz) and T5 (width 32), beside audio in both layouts."""
    from magnet_jax.convert.encodec import load_encodec
    from tests.encodec_fixtures import make_encodec
    from tests.t5_fixtures import make_t5

    make_encodec(root / "codec", codebook_size=64)
    make_t5(root / "t5", d_model=32)
    _, codec = load_encodec(root / "codec")
    return dict(root=root, codec=codec, manifest=make_audiocraft_layout(root / "music"),
                folder=make_caption_folder(root / "sounds"))


TOKENIZE_ARGS = dict(name="music", segment_s=1.0, min_segment_s=0.5)


def make_token_dataset(env: dict, root: Path) -> str:
    """The music folder of `make_data_env` tokenised (one process): the dataset's folder."""
    from magnet_jax.data import prepare

    return prepare.tokenize(str(env["manifest"]), env["codec"], str(root), progress=False, **TOKENIZE_ARGS)
