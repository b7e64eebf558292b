"""Tiny Hugging Face T5 folders made on the fly: random weights plus a locally trained
sentencepiece tokenizer (no download), in the layout of the hub's t5-base."""
from __future__ import annotations

from pathlib import Path

_CORPUS = [
    "80s disco with a funky bass", "slow jazz with piano and soft drums", "fast techno with dark synth",
    "a dog barks in the distance", "rain on a tin roof", "epic orchestral music with strings",
    "lofi hip hop beat to relax", "acoustic folk guitar and voice", "heavy metal with distorted guitars",
    "birds singing in the morning", "a car passes by on a wet road", "happy ukulele tune",
]


def make_tokenizer(folder: Path, vocab_size: int = 64) -> None:
    import sentencepiece as spm
    from transformers import T5Tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(_CORPUS * 4))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(folder / "spm"), vocab_size=vocab_size,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   character_coverage=1.0, minloglevel=2)
    tok = T5Tokenizer(vocab_file=str(folder / "spm.model"), extra_ids=0, legacy=False)
    tok.save_pretrained(str(folder))
    corpus.unlink()
    for f in ("spm.model", "spm.vocab"):
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
