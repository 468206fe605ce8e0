"""Draft distillation (GPT and EAGLE drafts): it learns the target's warped distribution, resumes from its
checkpoint, and the trained file drafts for the engine with exact (greedy-identical) output."""
import pytest
import torch

from specdec.distill import (ALPHA_STEPS, DRAFT_TEMPERATURES, DistillConfig, Example, acceptance, distill,
                             tokens_per_round)
from specdec.drafters import make_drafter
from specdec.engine import Engine, Request
from specdec.sampling import SamplingParams
from test_spec import sticky_gpt


@pytest.mark.parametrize("kind,n_layer,precision", [("eagle", 1, "fp32"), ("gpt", 1, "fp32"), ("eagle", 1, "bf16")])
def test_training_raises_acceptance_and_resumes(tmp_path, kind, n_layer, precision):
    target = sticky_gpt()
    g = torch.Generator().manual_seed(0)
    reqs = [Request(torch.randint(0, 732, (8,), generator=g), torch.randint(0, 1024, (5,), generator=g),
                    params=SamplingParams(max_new_tokens=30, seed=i)) for i in range(60)]
    outs = Engine(target).generate(reqs)  # sequences the target itself generates
    data = [Example(r.phones, torch.cat([r.prompt, o.tokens])) for r, o in zip(reqs, outs)]
    out, work = str(tmp_path / "draft.safetensors"), str(tmp_path / "work")
    cfg = dict(kind=kind, n_layer=n_layer, batch_tokens=1500, checkpoint_every=30, precision=precision)
    first = distill(target, data[:50], data[50:], out, work, DistillConfig(steps=60, **cfg))
    # the report measures the trained weights: the file, loaded afresh, accepts exactly as reported
    fresh = make_drafter(out, target).model  # the engine's own loading of a draft file, either kind
    assert acceptance(target, fresh, data[50:], SamplingParams()) == pytest.approx(first["alpha_after"], abs=1e-6)
    resumed = distill(target, data[:50], data[50:], out, work, DistillConfig(steps=150, **cfg))
    assert resumed["alpha_before"] == first["alpha_before"] and resumed["steps"] == 150
    assert resumed["alpha_after"][0] > first["alpha_before"][0] + 0.3  # step-1 acceptance, held out
    assert resumed["alpha_after"][1] > first["alpha_before"][1] + 0.3  # step 2 (eagle: fed its own features)
    assert len(resumed["alpha_after"]) == ALPHA_STEPS
    # the file records the draft temperature that kept the most tokens per round held out; engines default to it
    t = resumed["draft_temperature"]
    by_t = {float(k): v for k, v in resumed["alpha_by_temperature"].items()}
    assert set(by_t) == set(DRAFT_TEMPERATURES)
    assert tokens_per_round(by_t[t]) == max(tokens_per_round(a) for a in by_t.values())
    assert Engine(target, out, k=4).draft_temperature == t
    draft = out  # the file, resolved by the engine like a user's --draft path
    ref = Engine(target).generate([Request(reqs[55].phones, reqs[55].prompt, params=SamplingParams(top_k=1))])[0]
    got = Engine(target, draft, k=4).generate([Request(reqs[55].phones, reqs[55].prompt,
                                                       params=SamplingParams(top_k=1))])[0]
    assert torch.equal(got.tokens, ref.tokens) and got.stats.num_accepted_tokens > 0


def test_a_bad_config_fails_when_it_is_built():
    with pytest.raises(ValueError, match="precision"):
        DistillConfig(precision="fp16")
    with pytest.raises(ValueError, match="passes"):
        DistillConfig(passes=0)


def test_a_draft_files_temperature_round_trips_and_is_checked(tmp_path):
    from specdec.models.checkpoint import load_gpt, save_gpt
    from specdec.models.weights import write
    from specdec.errors import SpecdecError
    draft = sticky_gpt()
    draft.draft_temperature = 0.7
    path = str(tmp_path / "draft.safetensors")
    save_gpt(draft, path)
    assert load_gpt(path).draft_temperature == 0.7
    assert Engine(sticky_gpt(), path).draft_temperature == 0.7
    assert Engine(sticky_gpt(), path, draft_temperature=1.0).draft_temperature == 1.0  # an explicit one wins
    assert Engine(sticky_gpt(), "int8").draft_temperature == 1.0  # a copy of the target: its own temperature
    write(path, draft.state_dict(), "specdec-gpt", draft.cfg.to_dict(), draft_temperature=-1)
    with pytest.raises(SpecdecError, match="draft_temperature in the metadata"):
        load_gpt(path)
