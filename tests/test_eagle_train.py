"""EAGLE draft training: it learns the target's warped distribution, resumes from its checkpoint, and the
trained file drafts for the engine."""
import torch

from specdec.eagle_train import EagleTrainConfig, Example, train_eagle
from specdec.engine import Engine, Request
from specdec.models.eagle import load_eagle
from specdec.sampling import SamplingParams
from test_spec import sticky_gpt


def test_training_raises_acceptance_and_resumes(tmp_path):
    target = sticky_gpt()
    g = torch.Generator().manual_seed(0)
    reqs = [Request(torch.randint(0, 732, (8,), generator=g), torch.randint(0, 1024, (5,), generator=g),
                    params=SamplingParams(max_new_tokens=30, seed=i)) for i in range(60)]
    outs = Engine(target).generate(reqs)  # sequences the target itself generates
    data = [Example(r.phones, torch.cat([r.prompt, o.tokens])) for r, o in zip(reqs, outs)]
    out, work = str(tmp_path / "eagle.safetensors"), str(tmp_path / "work")
    first = train_eagle(target, data[:50], data[50:], out, work,
                        EagleTrainConfig(steps=60, batch_tokens=1500, checkpoint_every=30))
    resumed = train_eagle(target, data[:50], data[50:], out, work,
                          EagleTrainConfig(steps=150, batch_tokens=1500, checkpoint_every=30))
    assert resumed["alpha_before"] == first["alpha_before"] and resumed["steps"] == 150
    assert resumed["alpha_after"][0] > first["alpha_before"][0] + 0.3  # step-1 acceptance, held out
    assert resumed["alpha_after"][1] > first["alpha_before"][1] + 0.3  # step 2, fed its own features
    draft = load_eagle(out, target.cfg)
    ref = Engine(target).generate([Request(reqs[55].phones, reqs[55].prompt, params=SamplingParams(top_k=1))])[0]
    got = Engine(target, draft, k=4).generate([Request(reqs[55].phones, reqs[55].prompt,
                                                       params=SamplingParams(top_k=1))])[0]
    assert torch.equal(got.tokens, ref.tokens) and got.stats.num_accepted_tokens > 0
