"""Tiny Hugging Face T5 folders made on the fly: random weights plus a locally trained
sentencepiece tokenizer (no download), in the layout of the hub's t5-base."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

_CORPUS = [
    "80s disco with a funky bass", "slow jazz with piano and soft drums", "fast techno with dark synth",
    "a dog barks in the distance", "rain on a tin roof", "epic orchestral music with strings",
    "lofi hip hop beat to relax", "acoustic folk guitar and voice", "heavy metal with distorted guitars",
    "birds singing in the morning", "a car passes by on a wet road", "happy ukulele tune",
]


def make_tokenizer(folder: Path, texts: Sequence[str] = tuple(_CORPUS * 4), vocab_size: int = 64,
                   extra_ids: int = 0) -> None:
    """A sentencepiece unigram model trained on `texts`, saved as a transformers T5 tokenizer in
    t5-base's layout (<pad>=0, </s>=1, <unk>=2, the pieces, then `extra_ids` sentinels; the
    model's normaliser)."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2
    from transformers import T5Tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(texts))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(folder / "spm"), vocab_size=vocab_size,
                                   hard_vocab_limit=False, model_type="unigram", pad_id=0, eos_id=1, unk_id=2,
                                   bos_id=-1, character_coverage=1.0, minloglevel=2)
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString((folder / "spm.model").read_bytes())
    # transformers 5's T5Tokenizer takes the vocabulary itself: a `vocab_file` is ignored there
    # (every word would become <unk>).
    vocab = [(p.piece, p.score) for p in proto.pieces] + [(f"<extra_id_{i}>", 0.0) for i in reversed(range(extra_ids))]
    T5Tokenizer(vocab=vocab, extra_ids=extra_ids, legacy=False,
                _spm_precompiled_charsmap=proto.normalizer_spec.precompiled_charsmap).save_pretrained(str(folder))
    for f in ("corpus.txt", "spm.model", "spm.vocab"):
        (folder / f).unlink()


def make_t5(folder: Path, *, d_model: int = 32, num_layers: int = 2, num_heads: int = 4, d_kv: int = 8,
            d_ff: int = 48, ffn: str = "relu", vocab_size: int = 96, full: bool = True, safetensors: bool = True,
            seed: int = 0, tokenizer: bool = True):
    """A random T5 (encoder-decoder when `full`, as t5-base on the hub) saved to `folder`."""
    import torch
    from transformers import T5Config, T5EncoderModel, T5ForConditionalGeneration

    cfg = T5Config(vocab_size=vocab_size, d_model=d_model, d_kv=d_kv, d_ff=d_ff, num_layers=num_layers,
                   num_decoder_layers=1, num_heads=num_heads, feed_forward_proj=ffn, dropout_rate=0.0,
                   relative_attention_num_buckets=8, relative_attention_max_distance=20, decoder_start_token_id=0,
                   pad_token_id=0, eos_token_id=1)
    torch.manual_seed(seed)
    model = (T5ForConditionalGeneration if full else T5EncoderModel)(cfg).eval()
    with torch.no_grad():  # non-trivial norms (HF initialises them to 1)
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.add_(torch.randn_like(p) * 0.2)
    model.save_pretrained(str(folder), safe_serialization=safetensors)
    if tokenizer:
        make_tokenizer(folder)  # 64 pieces; the model table may be larger, as t5-base's is
    return model
