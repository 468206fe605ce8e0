"""Oracle parity: specdec's GPT and AR generation against upstream Text2SemanticDecoder.infer_panel.

Same weights (saved as an upstream .ckpt and loaded by specdec.load_gpt) → per-step logits within 1e-4 and
identical tokens, greedy and sampled (same seed: specdec draws its exponential noise exactly as upstream does)."""
from unittest import mock

import pytest
import torch

import specdec
from specdec.engine import Engine
from upstream import make_upstream_gpt, save_upstream_ckpt, upstream_generate

CONFIGS = [  # (n_layer, d_model, n_head, phoneme_vocab, with_prompt, ckpt dtype, bert, eos_bias)
    pytest.param(2, 64, 4, 512, True, torch.float16, False, 0.0, id="v1-vocab-fp16"),
    pytest.param(3, 128, 8, 732, True, torch.float32, True, 0.0, id="v2-vocab-fp32-bert"),
    pytest.param(2, 96, 4, 732, False, torch.float16, False, 0.0, id="v2-prompt-free"),
    pytest.param(2, 64, 2, 732, True, torch.float16, False, 2.0, id="v2-eos-stops"),
    pytest.param(24, 512, 16, 732, True, torch.float16, False, 0.0, id="v2-real-shape"),
]


def _run_both(tmp_path, n_layer, d, h, pv, with_prompt, dtype, with_bert, eos_bias, top_k, seed, steps):
    up, cfg = make_upstream_gpt(n_layer, d, h, pv, seed=n_layer * 7 + d, eos_bias=eos_bias)
    path = tmp_path / "gpt.ckpt"
    save_upstream_ckpt(up, cfg, str(path), dtype)
    # upstream computes in fp32 with whatever the file holds: give it the same (possibly fp16-rounded) values
    up.load_state_dict({k: v.to(dtype).float() for k, v in up.state_dict().items()})
    up.rebuild_t2s_transformer()
    gpt = specdec.load_gpt(str(path))
    g = torch.Generator().manual_seed(seed)
    phones = torch.randint(0, pv, (17,), generator=g)
    prompt = torch.randint(0, 1024, (13,), generator=g) if with_prompt else None
    bert = torch.randn(1024, 17, generator=g) if with_bert else None
    ref_tokens, ref_logits = upstream_generate(up, phones, prompt, bert, top_k=top_k, early_stop_num=steps - 1,
                                               seed=seed)
    logits = []
    accept = Engine._accept

    def recording(self, seqs, lg, proposals):  # the logits every sampling step sees
        logits.append(lg.detach().clone())
        return accept(self, seqs, lg, proposals)
    with mock.patch.object(Engine, "_accept", recording):
        out = specdec.generate(gpt, phones, prompt, bert, top_k=top_k, seed=seed, max_new_tokens=steps)
    return ref_tokens, ref_logits, out.tokens, torch.cat(logits)


@pytest.mark.parametrize("n_layer,d,h,pv,with_prompt,dtype,with_bert,eos_bias", CONFIGS)
def test_logits_and_greedy_tokens_match_upstream(tmp_path, n_layer, d, h, pv, with_prompt, dtype, with_bert,
                                                 eos_bias):
    steps = 12 if n_layer == 24 else 40
    ref_tokens, ref_logits, tokens, logits = _run_both(tmp_path, n_layer, d, h, pv, with_prompt, dtype, with_bert,
                                                       eos_bias, top_k=1, seed=0, steps=steps)
    assert torch.equal(tokens, ref_tokens)
    assert logits.shape == ref_logits.shape  # one logits row per decode step, prefill included
    assert (logits - ref_logits).abs().max().item() <= 1e-4
    if eos_bias:
        assert len(tokens) < steps  # this config must exercise the EOS stop rule


@pytest.mark.parametrize("n_layer,d,h,pv,with_prompt,dtype,with_bert,eos_bias", CONFIGS[:4])
@pytest.mark.parametrize("seed", [1, 2])
def test_sampled_tokens_match_upstream_for_the_same_seed(tmp_path, n_layer, d, h, pv, with_prompt, dtype,
                                                         with_bert, eos_bias, seed):
    ref_tokens, _, tokens, _ = _run_both(tmp_path, n_layer, d, h, pv, with_prompt, dtype, with_bert, eos_bias,
                                         top_k=15, seed=seed, steps=40)
    assert torch.equal(tokens, ref_tokens)
