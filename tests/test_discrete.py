"""Contract tests for the mask-and-replace discrete diffusion (VQ-Diffusion)."""

import itertools

import pytest
import torch

from unclip.diffusion import discrete as D


def _matrices(K, cfg):
    """Brute-force one-step and cumulative transition matrices Q[t][i, j] = q(x_t=j | x_{t-1}=i)."""
    sched = D.mask_replace_schedule(K, cfg)
    a, b, c = (v.double().exp() for v in (sched.log_alpha, sched.log_beta, sched.log_gamma))
    one_step, cumulative = [None], [torch.eye(K + 1, dtype=torch.float64)]
    for t in range(1, cfg.num_steps + 1):
        Q = torch.zeros(K + 1, K + 1, dtype=torch.float64)
        Q[:K, :K] = b[t]
        Q[:K, :K] += torch.eye(K, dtype=torch.float64) * a[t]
        Q[:K, K] = c[t]
        Q[K, K] = 1.0
        one_step.append(Q)
        cumulative.append(cumulative[-1] @ Q)
    return sched, one_step, cumulative


@pytest.mark.parametrize("replace_mass", [0.0, 0.1])
def test_transition_rows_sum_to_one_and_match_closed_form(replace_mass):
    K = 5
    cfg = D.DiscreteDiffusionConfig(num_steps=7, replace_mass=replace_mass)
    sched, one_step, cumulative = _matrices(K, cfg)
    for t in range(1, cfg.num_steps + 1):
        assert torch.all(one_step[t] >= 0)
        torch.testing.assert_close(one_step[t].sum(1), torch.ones(K + 1, dtype=torch.float64))
        # closed form q(x_t | x_0) from log_q_xt_given_x0 equals the matrix product
        for i in range(K + 1):
            log_x0 = D.index_to_log_onehot(torch.tensor([[i]]), K + 1).double()
            closed = D.log_q_xt_given_x0(log_x0, torch.tensor([t]), sched.to("cpu", torch.float64)).exp()[0, :, 0]
            torch.testing.assert_close(closed, cumulative[t][i], atol=1e-9, rtol=1e-6)
            stepped = D.log_q_xt_given_xprev(log_x0, torch.tensor([t]), sched.to("cpu", torch.float64)).exp()[0, :, 0]
            torch.testing.assert_close(stepped, one_step[t][i], atol=1e-9, rtol=1e-6)
    # end state is (almost) all [MASK], minus the replace mass
    assert cumulative[-1][0, K] == pytest.approx(1 - replace_mass - cfg.final_alpha_bar, abs=1e-5)


@pytest.mark.parametrize("replace_mass", [0.0, 0.3])
def test_posterior_equals_brute_force_bayes(replace_mass):
    K, T = 3, 4
    cfg = D.DiscreteDiffusionConfig(num_steps=T, replace_mass=replace_mass, final_alpha_bar=0.05)
    sched, one_step, cumulative = _matrices(K, cfg)
    sched64 = sched.to("cpu", torch.float64)
    gen = torch.Generator().manual_seed(0)
    p0 = torch.softmax(torch.randn(K, generator=gen, dtype=torch.float64) * 2, 0)   # a predicted p(x_0)
    for t, xt in itertools.product(range(2, T + 1), range(K + 1)):
        # Bayes by enumeration: Σ_x0 p0(x0) q(x_t|x_{t-1}) q(x_{t-1}|x0) / q(x_t|x0)
        want = torch.zeros(K + 1, dtype=torch.float64)
        for x0 in range(K):
            joint = one_step[t][:, xt] * cumulative[t - 1][x0]                        # over x_{t-1}
            want += p0[x0] * joint / joint.sum()
        got = D.log_posterior(p0.log().view(1, K, 1), torch.tensor([[xt]]), torch.tensor([t]), sched64).exp()
        torch.testing.assert_close(got[0, :, 0], want, atol=1e-9, rtol=1e-6)


def test_guidance_scale_one_is_identity_and_scale_changes_output():
    def cond_fn(x, t):
        return torch.log_softmax(torch.arange(4.0).view(1, 4, 1).expand(x.shape[0], 4, x.shape[1]), 1)

    def uncond_fn(x, t):
        return torch.log_softmax(torch.zeros(x.shape[0], 4, x.shape[1]), 1)

    x, t = torch.zeros(2, 3, dtype=torch.long), torch.ones(2, dtype=torch.long)
    assert D.guided_log_probs(cond_fn, uncond_fn, 1.0) is cond_fn
    guided = D.guided_log_probs(cond_fn, uncond_fn, 3.0)(x, t)
    torch.testing.assert_close(guided.exp().sum(1), torch.ones(2, 3))
    assert guided[0, 3, 0] > cond_fn(x, t)[0, 3, 0]                           # sharper towards the condition


def test_truncation_keeps_top_code_and_mass():
    logits = torch.tensor([[0.1, 5.0, 0.2, 4.0, -3.0]]).view(1, 5, 1)
    log_p = torch.log_softmax(logits, 1)
    for r in (0.0, 1e-6, 0.5):
        kept = D.truncate(log_p, r).exp()[0, :, 0]
        assert kept[1] == pytest.approx(1.0, abs=1e-6)                      # only the top code
    kept = D.truncate(log_p, 0.9).exp()[0, :, 0]
    assert kept[1] > 0.5 and kept[3] > 0.1 and kept[4] < 1e-20              # top two kept, tail cut
    torch.testing.assert_close(D.truncate(log_p, 1.0), log_p)


def test_training_loss_and_samplers_run_with_perfect_model():
    K, N = 6, 4
    sched = D.mask_replace_schedule(K, D.DiscreteDiffusionConfig(num_steps=10))
    target = torch.tensor([[1, 2, 3, 4]])

    def oracle(x_t, t):
        return torch.log(D.index_to_log_onehot(target.expand(x_t.shape[0], N), K).exp().clamp_min(1e-12))

    gen = torch.Generator().manual_seed(0)
    losses = D.training_losses(oracle, target.repeat(8, 1), sched, generator=gen)
    assert losses["loss"].item() < 1e-3
    for sampler in (D.sample, D.sample_purity):
        steps = []
        out = sampler(oracle, (2, N), sched, generator=gen, callback=lambda i, n, x, x0: steps.append(i))
        assert torch.equal(out, target.expand(2, N)) and len(steps) == 10


def test_q_sample_masks_more_over_time():
    K = 16
    sched = D.mask_replace_schedule(K, D.DiscreteDiffusionConfig(num_steps=100))
    x0 = torch.randint(0, K, (64, 64), generator=torch.Generator().manual_seed(1))
    frac = [(D.q_sample(x0, torch.full((64,), t), sched) == K).float().mean().item() for t in (1, 50, 100)]
    assert frac[0] < 0.05 and 0.4 < frac[1] < 0.6 and frac[2] > 0.95


@pytest.mark.parametrize("replace_mass", [0.0, 0.2])
def test_respaced_steps_compose_the_original_transitions(replace_mass):
    K, T = 3, 6
    cfg = D.DiscreteDiffusionConfig(num_steps=T, replace_mass=replace_mass, final_alpha_bar=0.05)
    sched, one_step, cumulative = _matrices(K, cfg)
    fast, kept = D.respace(sched.to("cpu", torch.float64), 3)
    assert kept == [0, 2, 4, 6] and fast.num_steps == 3
    for new_t in range(1, 4):
        composite = one_step[kept[new_t - 1] + 1]
        for t in range(kept[new_t - 1] + 2, kept[new_t] + 1):
            composite = composite @ one_step[t]
        for i in range(K + 1):
            log_x = D.index_to_log_onehot(torch.tensor([[i]]), K + 1).double()
            step = D.log_q_xt_given_xprev(log_x, torch.tensor([new_t]), fast).exp()[0, :, 0]
            torch.testing.assert_close(step, composite[i], atol=1e-9, rtol=1e-6)
            cum = D.log_q_xt_given_x0(log_x, torch.tensor([new_t]), fast).exp()[0, :, 0]
            torch.testing.assert_close(cum, cumulative[kept[new_t]][i], atol=1e-9, rtol=1e-6)


def test_per_row_generators_make_rows_reproducible():
    K, N = 8, 5
    sched = D.mask_replace_schedule(K, D.DiscreteDiffusionConfig(num_steps=5))

    def flat(x_t, t):
        return torch.log_softmax(torch.zeros(x_t.shape[0], K, N), 1)

    both = D.sample(flat, (2, N), sched, generator=[torch.Generator().manual_seed(s) for s in (3, 4)])
    alone = D.sample(flat, (1, N), sched, generator=[torch.Generator().manual_seed(4)])
    assert torch.equal(both[1:], alone)
