"""Speaker embedding (v2Pro/ProPlus): Kaldi fbank and ERes2NetV2 `forward3` against upstream's `eres2net` code
(random weights saved as the bare state dict upstream loads)."""
from __future__ import annotations

import os
import sys

import pytest
import torch

from sovits_oracle import require_sovits_upstream
from specdec.errors import SpecdecError
from specdec.models.audio import SOVITS_RATE
from specdec.models.sv import SV_CKPT_NAME, kaldi_fbank, load_sv_model, speaker_embedding


def upstream_eres2net():
    root = require_sovits_upstream()
    path = os.path.join(root, "eres2net")
    if path not in sys.path:
        sys.path.insert(0, path)  # upstream's sv.py does the same: its modules import each other top-level
    import kaldi
    from ERes2NetV2 import ERes2NetV2
    return kaldi, ERes2NetV2


@pytest.fixture(scope="module")
def sv_pair(tmp_path_factory):
    _, ERes2NetV2 = upstream_eres2net()
    up = ERes2NetV2(baseWidth=24, scale=4, expansion=4)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # random weights, and BatchNorm statistics that are not the identity
        for name, t in up.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif name.endswith(("running_mean", "bias")):
                t.copy_(0.1 * torch.randn(t.shape, generator=g))
            elif t.ndim == 1:  # BatchNorm gains
                t.copy_(1.0 + 0.1 * torch.randn(t.shape, generator=g))
            else:
                t.copy_(torch.randn(t.shape, generator=g) / t[0].numel() ** 0.5)
    path = str(tmp_path_factory.mktemp("sv") / SV_CKPT_NAME)
    torch.save(up.state_dict(), path)
    return up.eval(), load_sv_model(path), path


def test_fbank_matches_kaldi_compliance():
    kaldi, _ = upstream_eres2net()
    g = torch.Generator().manual_seed(3)
    wav = 0.2 * torch.randn(int(1.37 * 16000), generator=g)  # not a whole number of frames
    ours = kaldi_fbank(wav)
    theirs = kaldi.fbank(wav[None], num_mel_bins=80, sample_frequency=16000, dither=0)
    assert ours.shape == theirs.shape == (1 + (len(wav) - 400) // 160, 80)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_embedding_matches_upstream_forward3(sv_pair):
    up, ours, _ = sv_pair
    kaldi, _ = upstream_eres2net()
    g = torch.Generator().manual_seed(4)
    wav16k = 0.2 * torch.randn(8000, generator=g)  # 0.5 s: 48 frames, enough for the three stride-2 stages
    feats = kaldi.fbank(wav16k[None], num_mel_bins=80, sample_frequency=16000, dither=0)
    with torch.no_grad():
        theirs = up.forward3(feats[None].clone())[0]
    mine = ours.embed(feats[None])[0]
    assert mine.shape == theirs.shape == (20480,)
    assert theirs.std() > 1e-2
    torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-4 * float(theirs.abs().max()))


def test_speaker_embedding_from_32k_audio(sv_pair):
    _, ours, _ = sv_pair
    wav32k = 0.2 * torch.randn(SOVITS_RATE // 2, generator=torch.Generator().manual_seed(5))
    emb = speaker_embedding(ours, wav32k)
    assert emb.shape == (20480,) and emb.dtype == torch.float32 and torch.isfinite(emb).all()


def test_missing_or_wrong_sv_checkpoint(tmp_path):
    with pytest.raises(SpecdecError, match=SV_CKPT_NAME):
        load_sv_model(str(tmp_path / SV_CKPT_NAME))
    bad = tmp_path / "other.ckpt"
    torch.save({"conv1.weight": torch.zeros(64, 1, 3, 3)}, bad)
    with pytest.raises(SpecdecError, match="not an ERes2NetV2"):
        load_sv_model(str(bad))
