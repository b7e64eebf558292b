"""Metrics on generated audio, as the paper's tables report them: FAD (VGGish), KL (PaSST) and the
CLAP score (LAION's music CLAP), all native Flax ports (metrics/vggish.py, passt.py, clap*.py).

`magnet-jax eval --model NAME_OR_DIR --captions FILE [--reference-audio DIR] --out DIR` generates one
clip per caption (MusicCaps layout: `ytid`, `caption`), writes it to `DIR/audio/<ytid>.wav`, then scores:
- CLAP: each clip against its caption (no reference needed);
- FAD: VGGish embeddings of all generated clips against those of all reference clips
  (google-research FAD's framing: 1 s windows every 0.5 s, peak-normalised clips);
- KL: PaSST's label distributions of each generated clip against its reference (the file of
  `DIR/<ytid>.*`), as audiocraft computes it.
Reference files that are missing or unreadable are counted and skipped. Results: `results.json`
and `results.md` in the output folder.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from magnet_jax.atomic_files import replace_atomically
from magnet_jax.caches import cache_root

log = logging.getLogger(__name__)

# The public checkpoints (downloaded once into <cache>/metrics/ unless a local file is given).
VGGISH_URL = "https://github.com/harritaylor/torchvggish/releases/download/v0.1/vggish-10086976.pth"
CLAP_URL = "https://huggingface.co/lukewys/laion_clap/resolve/main/music_audioset_epoch_15_esc_90.14.pt"
METRICS = ("fad", "kl", "clap")


@dataclasses.dataclass
class Scorers:
    """The embedding models; None leaves its metric out."""
    vggish: Any = None  # metrics.vggish.VGGish
    passt: Any = None  # metrics.passt.PaSST
    clap: Any = None  # metrics.clap.ClapScorer


def read_captions(path: str) -> List[Tuple[str, str]]:
    """(ytid, caption) pairs of a csv (with a header naming `ytid` and `caption`, as MusicCaps'
    musiccaps-public.csv) or a jsonl file (one {"ytid": ..., "caption": ...} object per line)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"captions file {path} does not exist")
    rows: List[Tuple[int, Dict[str, Any]]] = []
    if p.suffix == ".jsonl":
        for n, line in enumerate(p.read_text().splitlines(), 1):
            if line.strip():
                try:
                    obj = json.loads(line)
                except ValueError as e:
                    raise ValueError(f"{path} line {n} is not JSON ({e})") from None
                if not isinstance(obj, dict):
                    raise ValueError(f"{path} line {n}: expected an object with 'ytid' and 'caption'")
                rows.append((n, obj))
    elif p.suffix == ".csv":
        with open(p, newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in ("ytid", "caption") if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{path} lacks the column(s) {', '.join(missing)} (its header: "
                                 f"{', '.join(reader.fieldnames or [])}); MusicCaps' layout has 'ytid' and 'caption'")
            rows = [(n, r) for n, r in enumerate(reader, 2)]
    else:
        raise ValueError(f"captions file {path}: expected a .csv or .jsonl file")
    out, seen = [], set()
    for n, r in rows:
        ytid, caption = str(r.get("ytid") or "").strip(), str(r.get("caption") or "").strip()
        if not ytid:
            raise ValueError(f"{path} line {n}: no ytid")
        if not caption:
            raise ValueError(f"{path} line {n}: empty caption (ytid {ytid})")
        if ytid in seen:
            raise ValueError(f"{path} line {n}: ytid {ytid} appears twice")
        if os.sep in ytid or ytid in (".", ".."):
            raise ValueError(f"{path} line {n}: ytid {ytid!r} cannot name a file")
        seen.add(ytid)
        out.append((ytid, caption))
    if not out:
        raise ValueError(f"{path} holds no captions")
    return out


def read_references(folder: str, ytids: Sequence[str]) -> Tuple[Dict[str, Tuple[np.ndarray, int]], Counter]:
    """{ytid: (wav [C, N], sample_rate)} of the files `folder/<ytid>.<ext>`; missing and unreadable
    files are counted (and logged), not fatal."""
    from magnet_jax.data.audio_io import AudioError, read_audio

    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"--reference-audio {folder} is not a folder")
    by_stem: Dict[str, Path] = {}
    for f in sorted(root.iterdir()):
        if f.is_file():
            by_stem.setdefault(f.stem, f)
    refs, skipped = {}, Counter()
    for ytid in ytids:
        f = by_stem.get(ytid)
        if f is None:
            skipped["missing"] += 1
            continue
        try:
            wav, sr = read_audio(f)
        except (AudioError, RuntimeError, ValueError, OSError) as e:
            log.warning("reference %s is unreadable, skipped: %s", f, e)
            skipped["unreadable"] += 1
            continue
        if wav.shape[-1] == 0:
            skipped["empty"] += 1
            continue
        refs[ytid] = (wav, sr)
    return refs, skipped


def score(generated: Dict[str, np.ndarray], sample_rate: int, captions: Dict[str, str],
          references: Dict[str, Tuple[np.ndarray, int]], scorers: Scorers) -> Dict[str, Any]:
    """The metrics of generated clips {ytid: [C, N]} (at `sample_rate`)."""
    out: Dict[str, Any] = {"clips": len(generated), "references": len(references)}
    ids = list(generated)
    if scorers.clap is not None:
        wavs = np.stack([generated[i] for i in ids])
        out["clap"] = scorers.clap.clap_score(wavs, sample_rate, [captions[i] for i in ids])
    if scorers.vggish is not None and references:
        from magnet_jax.metrics.frechet import fad_from_embeddings
        from magnet_jax.metrics.vggish import vggish_embeddings

        emb = lambda wav, sr: vggish_embeddings(scorers.vggish, wav, sr, framing="google_fad")
        gen = np.concatenate([emb(generated[i], sample_rate) for i in ids])
        ref = np.concatenate([emb(w, sr) for w, sr in references.values()])
        if min(len(gen), len(ref)) < 2:  # VGGish windows are 1 s long: too little audio for a covariance
            out["fad_skipped"] = (f"too few VGGish windows ({len(gen)} generated, {len(ref)} reference; 1 s "
                                  "each, every 0.5 s): score more or longer clips")
            log.warning("FAD left out: %s", out["fad_skipped"])
        else:
            out["fad"] = fad_from_embeddings(ref, gen)
    if scorers.passt is not None and references:
        from magnet_jax.metrics.kld import PasstKLDivergence

        kl = PasstKLDivergence(scorers.passt)
        pairs = 0
        for i in ids:
            if i not in references:
                continue
            ref, ref_sr = references[i]
            if ref_sr != sample_rate or ref.shape[0] != generated[i].shape[0]:
                from magnet_jax.data.audio_io import convert_audio

                ref = convert_audio(ref, ref_sr, sample_rate, generated[i].shape[0])
            n = min(ref.shape[-1], generated[i].shape[-1])  # audiocraft compares clips of one length
            kl.update(generated[i][None, :, :n], ref[None, :, :n], [n], [sample_rate])
            pairs += 1
        if pairs:
            out.update({k: v for k, v in kl.compute().items()})
            out["kl_pairs"] = pairs
    return out


def format_results(r: Dict[str, Any]) -> str:
    cells = [f"{name}: {r[key]:.4f}" for name, key in (("FAD (VGGish)", "fad"), ("KL (PaSST)", "kld"),
                                                        ("CLAP score", "clap")) if key in r]
    if "fad_skipped" in r:
        cells.append(f"FAD left out: {r['fad_skipped']}")
    return (f"{r['clips']} generated clips, {r['references']} references"
            + (f" (skipped: {dict(r['skipped'])})" if r.get("skipped") else "") + "\n" + "\n".join(cells))


def evaluate_model(pipeline, items: Sequence[Tuple[str, str]], out_dir: str, *, scorers: Scorers,
                   reference_dir: Optional[str] = None, duration: Optional[float] = None, seed: int = 0,
                   batch_size: int = 4, **decode_overrides) -> Dict[str, Any]:
    """Generates one clip per (ytid, caption), writes them under out_dir/audio, scores them, and
    writes results.json / results.md; returns the results."""
    from magnet_jax.data.audio_io import write_audio

    out = Path(out_dir)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    captions = dict(items)
    generated: Dict[str, np.ndarray] = {}
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        wavs = pipeline.generate([c for _, c in chunk], duration=duration, seed=seed + start, **decode_overrides)
        for (ytid, _), wav in zip(chunk, np.asarray(wavs)):
            generated[ytid] = wav
            write_audio(out / "audio" / f"{ytid}.wav", wav, pipeline.sample_rate)
        log.info("generated %d of %d clips", len(generated), len(items))
    references, skipped = read_references(reference_dir, list(captions)) if reference_dir else ({}, Counter())
    if reference_dir and not references:
        log.warning("no readable reference clip in %s: FAD and KL are left out", reference_dir)
    results = score(generated, pipeline.sample_rate, captions, references, scorers)
    results.update(model=pipeline.name, skipped=dict(skipped), duration=duration, seed=seed,
                   decoding=decode_overrides)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    (out / "results.md").write_text(format_results(results).replace("\n", "\n\n") + "\n")
    return results


def metric_file(explicit: Optional[str], url: str, cache_dir: Optional[str], offline: bool, flag: str) -> str:
    """A metric model's checkpoint: `explicit`, else the cached download of `url`."""
    if explicit:
        if not os.path.isfile(explicit):
            raise FileNotFoundError(f"{flag} {explicit} does not exist")
        return explicit
    target = cache_root(cache_dir) / "metrics" / url.rsplit("/", 1)[-1]
    if target.is_file():
        return str(target)
    if offline:
        raise FileNotFoundError(f"{target} is not downloaded and --offline is set: give {flag} PATH")
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s -> %s", url, target)
    try:  # a cut download never looks finished
        replace_atomically(target, lambda tmp: urllib.request.urlretrieve(url, tmp))
    except OSError as e:
        raise OSError(f"could not download {url} ({e}); download it yourself and give {flag} PATH") from None
    return str(target)


def load_scorers(metrics: Sequence[str], *, vggish: Optional[str] = None, passt: Optional[str] = None,
                 clap: Optional[str] = None, clap_tokenizer: str = "roberta-base", cache_dir: Optional[str] = None,
                 offline: bool = False) -> Scorers:
    """The released embedding models of `metrics` (a subset of fad, kl, clap)."""
    bad = [m for m in metrics if m not in METRICS]
    if bad:
        raise ValueError(f"unknown metric(s) {', '.join(bad)}; choose from {', '.join(METRICS)}")
    s = Scorers()
    if "fad" in metrics:
        from magnet_jax.metrics.convert_vggish import load_vggish

        s.vggish = load_vggish(metric_file(vggish, VGGISH_URL, cache_dir, offline, "--vggish"))
    if "kl" in metrics:
        from magnet_jax.metrics.convert_passt import load_passt
        from magnet_jax.metrics.passt import PASST_URLS

        url = PASST_URLS["passt-s-f128-20sec-p16-s10-ap474-swa"]  # audiocraft's solvers: pretrained_length 20
        s.passt = load_passt(metric_file(passt, url, cache_dir, offline, "--passt"))
    if "clap" in metrics:
        from magnet_jax.metrics.clap import ClapScorer

        s.clap = ClapScorer.from_checkpoint(metric_file(clap, CLAP_URL, cache_dir, offline, "--clap"), clap_tokenizer)
    return s
