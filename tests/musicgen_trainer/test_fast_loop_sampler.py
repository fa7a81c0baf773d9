"""``fast_sampling.loop_sampler``: the loop's per-request sampler gives ``sample_next(mix_guidance(...))``'s
codes and leaves the generator where it does, on its fast path and on every fallback."""
import pytest
import torch

from musicgen_trainer.fast_sampling import Exponentials, loop_sampler, mix_guidance, sample_next


@pytest.mark.parametrize("guided", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("top_k,top_p,temp", [(250, 0.0, 1.0), (5, 0.0, 0.7), (0, 0.0, 1.0), (250, 0.9, 1.0),
                                              (0, 0.0, 0.0)])
def test_loop_sampler_matches_sample_next(guided, dtype, top_k, top_p, temp):
    rows, steps = 2, 3
    logits = [3 * torch.randn(2 * rows if guided else rows, 4, 512, generator=torch.Generator().manual_seed(s)).to(dtype)
              for s in range(steps)]
    got, want = [], []
    for out, make in ((got, "loop"), (want, "reference")):
        torch.manual_seed(7)
        noise = Exponentials(steps) if temp > 0 else None
        sampler = loop_sampler(rows, guided, 3.0, True, temp, top_k, top_p, noise)
        for x in logits:
            x = x.clone()
            if make == "loop":
                out.append(sampler(x))
            else:
                out.append(sample_next(mix_guidance(x, rows, 3.0) if guided else x, True, temp, top_k, top_p, noise))
        out.append(torch.rand(3))  # the global RNG left in the same state
    for a, b in zip(got, want):
        assert torch.equal(a, b)
