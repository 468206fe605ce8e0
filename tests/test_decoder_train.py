import torch

from specdec.decoder_train import DecoderTrainConfig, Utterance, evaluate, references, train
from specdec.models.fast_decoder import FRAMES_PER_TOKEN, N_MELS, FastDecoderConfig

K = 16


def _corpus(n: int, seed: int) -> list[Utterance]:
    """Mel = a fixed pattern per token, shifted by a per-speaker offset: learnable from tokens + reference stats."""
    g = torch.Generator().manual_seed(0)
    patterns = torch.randn(K, FRAMES_PER_TOKEN, N_MELS, generator=g)
    offsets = {"a": -4.0, "b": -1.0}
    g = torch.Generator().manual_seed(seed)
    utts = []
    for i in range(n):
        spk = "ab"[i % 2]
        tokens = torch.randint(0, K, (int(torch.randint(20, 40, (1,), generator=g)),), generator=g)
        mel = patterns[tokens].reshape(-1, N_MELS) + offsets[spk]
        utts.append(Utterance(f"{spk}{i}", spk, tokens, mel, phones=tokens[::3] % 8))
    return utts


def test_training_learns_and_resumes(tmp_path):
    torch.manual_seed(0)
    train_utts, test_utts = _corpus(24, seed=1), _corpus(6, seed=2)
    model_cfg = FastDecoderConfig(vocab_size=K, dim=32, token_layers=2, frame_layers=1, phone_vocab=8, phone_layers=1)
    cfg = DecoderTrainConfig(steps=40, batch_size=8, crop=16, lr=3e-3, warmup=5, eval_every=20)
    work = str(tmp_path / "ckpt")
    net = train(train_utts, test_utts, work, cfg, model_cfg)
    first = torch.load(f"{work}/ckpt.pt")["log"]
    assert [e["step"] for e in first] == [20, 40]
    net = train(train_utts, test_utts, work, DecoderTrainConfig(**{**cfg.__dict__, "steps": 120}), model_cfg)
    log = torch.load(f"{work}/ckpt.pt")["log"]
    assert [e["step"] for e in log] == [20, 40, 60, 80, 100, 120]  # resumed at 40, not restarted
    untrained = evaluate(type(net)(model_cfg), test_utts, references(train_utts))
    assert log[-1]["held_l1"] < 0.6 * untrained
