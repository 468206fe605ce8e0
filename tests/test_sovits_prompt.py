"""Prompt tokens: SoVITS `ssl_proj` + codebook nearest against upstream `extract_latent`, and the optional HuBERT
forward (transformers) against gpt-sovits-cpufast's own HuBERT implementation, both with random weights built
from the chinese-hubert-base config.json that package ships."""
from __future__ import annotations

import os

import pytest
import torch

from sovits_oracle import oracle_case, require_sovits_upstream, specdec_model
from specdec.errors import SpecdecError
from specdec.models.hubert import PROMPT_SILENCE, hubert_features, load_hubert, prompt_tokens



def hubert_dir() -> str:
    return os.path.join(require_sovits_upstream(), "pretrained_models", "chinese-hubert-base")


@pytest.fixture(scope="module")
def hubert_pair(tmp_path_factory):
    """(our transformers HubertModel loaded from a saved folder, cpufast's HubertInferenceModel), same weights."""
    transformers = pytest.importorskip("transformers", reason="optional extra [hubert] not installed")
    torch.manual_seed(0)
    config = transformers.HubertConfig.from_pretrained(hubert_dir())
    hf = transformers.HubertModel(config).eval()
    with torch.no_grad():  # the default init leaves biases and norms trivial: make every tensor count
        for name, p in hf.named_parameters():
            if p.ndim == 1:
                p.add_(0.05 * torch.randn(p.shape))
    folder = str(tmp_path_factory.mktemp("hubert"))
    hf.save_pretrained(folder)
    from feature_extractor.cnhubert import HubertInferenceModel, _load_config
    theirs = HubertInferenceModel(_load_config(hubert_dir())).eval()
    state = {k.replace("parametrizations.weight.original0", "weight_g")
              .replace("parametrizations.weight.original1", "weight_v"): v for k, v in hf.state_dict().items()}
    theirs.load_state_dict(state, strict=True)
    return load_hubert(folder), theirs


def test_extract_tokens_matches_upstream():
    case = oracle_case("v2")
    ours = specdec_model("v2")
    ssl = torch.randn(1, 768, 151, generator=torch.Generator().manual_seed(1))  # odd length: last frame dropped
    with torch.no_grad():
        codes = case.upstream.extract_latent(ssl)  # [n_q=1, B=1, T25]
    tokens = ours.extract_tokens(ssl[0])
    assert tokens.shape == (75,) and tokens.unique().numel() > 20
    assert torch.equal(tokens, codes[0, 0])


def test_hubert_features_match_cpufast(hubert_pair):
    ours, theirs = hubert_pair
    wav = 0.1 * torch.randn(16000, generator=torch.Generator().manual_seed(2))
    feats = hubert_features(ours, wav)
    with torch.no_grad():
        ref = theirs(torch.cat([wav, torch.zeros(PROMPT_SILENCE)])[None])["last_hidden_state"][0].t()
    assert feats.shape == ref.shape == (768, (16000 + PROMPT_SILENCE) // 320 - 1)
    torch.testing.assert_close(feats, ref, rtol=1e-4, atol=1e-4)


def test_prompt_tokens_match_upstream_chain(hubert_pair):
    ours_hubert, theirs_hubert = hubert_pair
    case = oracle_case("v2")
    wav = 0.1 * torch.randn(int(3.2 * 16000), generator=torch.Generator().manual_seed(3))
    tokens = prompt_tokens(specdec_model("v2"), ours_hubert, wav)
    with torch.no_grad():  # upstream TTS._set_prompt_semantic: raw wav + 0.6 s zeros → .model → extract_latent
        ssl = theirs_hubert(torch.cat([wav, torch.zeros(PROMPT_SILENCE)])[None])["last_hidden_state"].transpose(1, 2)
        codes = case.upstream.extract_latent(ssl)
    assert tokens.shape == (int(25 * 3.8) - 1,)
    assert torch.equal(tokens, codes[0, 0])


def test_prompt_errors(tmp_path, hubert_pair):
    with pytest.raises(SpecdecError, match="no config.json"):
        load_hubert(str(tmp_path))
    with pytest.raises(SpecdecError, match="3-10 s"):
        prompt_tokens(specdec_model("v2"), hubert_pair[0], torch.zeros(2 * 16000))
