"""A Hybrid-MAGNeT LM behind the text-to-audio pipeline (T5, conditioner, EnCodec from a tiny
checkpoint folder): `generate` decodes its autoregressive prefix, then MAGNeT's stages."""
import dataclasses

import numpy as np
import pytest
from flax import nnx

from magnet_jax.models.magnet_model import MagnetModel
from magnet_jax.pipeline import MAGNeT
from magnet_jax.loading import load_pretrained

from tests.reference import require
from tests.reference.audiocraft_pipeline import make_magnet_folder

TEXTS = ["80s disco with a funky bass", "rain"]


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    """(a MAGNeT pipeline from a checkpoint folder, a Hybrid-MAGNeT one with its T5 and codec)."""
    require("torch")
    tmp = tmp_path_factory.mktemp("hybrid")
    magnet = load_pretrained(str(make_magnet_folder(tmp / "magnet-tiny")), cache_dir=str(tmp / "cache"),
                             local_files_only=True)
    cfg = magnet.config
    cfg = dataclasses.replace(cfg, lm=dataclasses.replace(cfg.lm, kind="hybrid", codebook_delays=(0, 1, 2, 3)))
    hybrid = MAGNeT(cfg, MagnetModel(cfg, rngs=nnx.Rngs(0)), magnet.t5, magnet.tokenizer, magnet.codec, name="hybrid")
    return magnet, hybrid


def test_hybrid_pipeline_generates_and_refuses_what_does_not_apply(pipelines):
    magnet, hybrid = pipelines
    kw = dict(duration=0.6, decoding_steps=(2, 1, 1, 1), query_buckets=1)
    codes = hybrid.generate_codes(TEXTS, hybrid_prefix=0.2, seed=1, **kw)
    assert codes.shape == (2, 4, 30) and not (codes == hybrid.config.lm.mask_id).any()
    np.testing.assert_array_equal(hybrid.generate_codes(TEXTS, hybrid_prefix=0.2, seed=1, **kw), codes)
    wav = hybrid.generate(["rain"], hybrid_prefix=0.1, **{**kw, "duration": 0.3})
    assert wav.shape == (1, 1, 15 * 640) and np.isfinite(wav).all()
    with pytest.raises(ValueError, match="prefix .* must be shorter than the requested duration"):
        hybrid.generate_codes(TEXTS, hybrid_prefix=0.6, **kw)
    with pytest.raises(ValueError, match="hybrid_prefix applies to Hybrid-MAGNeT"):
        magnet.generate_codes(TEXTS, hybrid_prefix=0.2, **kw)
    with pytest.raises(ValueError, match="rescoring applies to MAGNeT; hybrid is a Hybrid-MAGNeT LM"):
        hybrid.set_rescorer(magnet)
