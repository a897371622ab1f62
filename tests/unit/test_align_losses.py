"""Alignment losses against reference formulas written independently of the implementation.

trl is the reference implementation, but its DPO/GRPO losses live inside its trainers' methods
(trl 1.13: ``DPOTrainer._compute_loss``, ``GRPOTrainer._compute_loss``; no standalone function to
call on given log-probs) and installing it pulls ``datasets``, ``pyarrow``, ``dill`` and
``multiprocess`` into the environment. So the references below transcribe trl 1.13's expressions
(DPO ``loss_type="sigmoid"`` with reverse-KL scores; GRPO's clipped token loss with the k3 KL,
``loss_type`` ``grpo`` and ``dapo``; advantages ``(r - mean) / (std + 1e-4)``) and the S-DPO paper's
equation (Chen et al., 2024, Eq. 9) element by element, in float64, and compare values and
gradients to 1e-6.
"""

from __future__ import annotations

import math

import pytest
import torch

from benchmark.align.losses import dpo_loss, group_advantages, grpo_loss, sdpo_loss

TOL = 1e-6


def leaf(*shape, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale - 5).requires_grad_(True)


def ref_dpo(pc, pr, rc, rr, beta):
    """trl 1.13 DPOTrainer._compute_loss, sigmoid loss: -logsigmoid(beta * delta_score), mean."""
    total = 0
    for i in range(len(pc)):
        delta = (pc[i] - rc[i]) - (pr[i] - rr[i])
        total = total + torch.log1p(torch.exp(-beta * delta))  # -log sigma(x) = log(1 + e^-x)
    return total / len(pc)


def ref_sdpo(pc, pr, rc, rr, beta):
    """S-DPO Eq. 9: -log sigma(-log sum_j exp(beta (log-ratio_j - log-ratio_chosen)))."""
    total = 0
    for i in range(len(pc)):
        s = 0
        for j in range(pr.shape[1]):
            s = s + torch.exp(beta * ((pr[i, j] - rr[i, j]) - (pc[i] - rc[i])))
        total = total + torch.log1p(torch.exp(torch.log(s)))  # -log sigma(-log s) = log(1 + s)
    return total / len(pc)


def ref_grpo(logps, old, ref, adv, mask, beta, eps, loss_type):
    """trl 1.13 GRPOTrainer._compute_loss (token-level importance sampling, k3 KL)."""
    n, t = logps.shape
    seq_losses, token_sum, token_count = [], 0, 0
    for i in range(n):
        s, c = 0, 0
        for j in range(t):
            ratio = torch.exp(logps[i, j] - old[i, j])
            clipped = torch.clamp(ratio, 1 - eps, 1 + eps)
            term = -torch.min(ratio * adv[i], clipped * adv[i])
            kl = torch.exp(ref[i, j] - logps[i, j]) - (ref[i, j] - logps[i, j]) - 1
            term = term + beta * kl
            s, c = s + term * mask[i, j], c + mask[i, j]
        seq_losses.append(s / max(c, 1.0))
        token_sum, token_count = token_sum + s, token_count + c
    return sum(seq_losses) / n if loss_type == "grpo" else token_sum / max(token_count, 1.0)


def grads(value, leaves):
    return torch.autograd.grad(value, leaves)


@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_dpo_loss_and_gradients_equal_reference(beta):
    pc, pr, rc, rr = (leaf(6, seed=s) for s in range(4))
    ours = dpo_loss(pc, pr, rc, rr, beta).loss
    ref = ref_dpo(pc, pr, rc, rr, beta)
    assert abs(ours.item() - ref.item()) < TOL
    for a, b in zip(grads(ours, [pc, pr]), grads(ref, [pc, pr]), strict=True):
        assert torch.allclose(a, b, atol=TOL, rtol=0)


def test_dpo_diagnostics():
    pc, pr = torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -2.5])
    rc, rr = torch.tensor([-1.5, -2.0]), torch.tensor([-3.0, -2.0])
    out = dpo_loss(pc, pr, rc, rr, 0.5)
    assert torch.allclose(out.margin, torch.tensor([2.0, 0.5]))
    assert torch.allclose(out.chosen_reward, torch.tensor([0.25, 0.0]))
    assert torch.allclose(out.rejected_reward, torch.tensor([0.0, -0.25]))
    assert abs(out.kl.item() - 0.25) < 1e-7
    # At the reference (policy == reference) the loss is log 2 whatever the margin.
    assert abs(dpo_loss(pc, pr, pc, pr, 0.3).loss.item() - math.log(2)) < 1e-6


@pytest.mark.parametrize("k", [1, 3, 7])
def test_sdpo_loss_and_gradients_equal_paper(k):
    pc, rc = leaf(5, seed=1), leaf(5, seed=2)
    pr, rr = leaf(5, k, seed=3), leaf(5, k, seed=4)
    ours = sdpo_loss(pc, pr, rc, rr, 0.7).loss
    ref = ref_sdpo(pc, pr, rc, rr, 0.7)
    assert abs(ours.item() - ref.item()) < TOL
    for a, b in zip(grads(ours, [pc, pr]), grads(ref, [pc, pr]), strict=True):
        assert torch.allclose(a, b, atol=TOL, rtol=0)


def test_sdpo_with_one_negative_is_dpo():
    pc, rc, pr, rr = leaf(4, seed=5), leaf(4, seed=6), leaf(4, 1, seed=7), leaf(4, 1, seed=8)
    a = sdpo_loss(pc, pr, rc, rr, 0.4).loss
    b = dpo_loss(pc, pr[:, 0], rc, rr[:, 0], 0.4).loss
    assert abs(a.item() - b.item()) < 1e-12


def test_group_advantages_match_trl_normalisation():
    r = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.5, 0.5]], dtype=torch.float64)
    adv = group_advantages(r)
    mean, std = 0.25, torch.tensor([1.0, 0.0, 0.0, 0.0]).std().item()  # unbiased, as torch.std / trl
    assert torch.allclose(adv[0], (r[0] - mean) / (std + 1e-4))
    assert torch.equal(adv[1], torch.zeros(4, dtype=torch.float64))  # no signal in a flat group
    assert torch.allclose(group_advantages(r, scale=False)[0], r[0] - mean)


@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_grpo_loss_and_gradients_equal_trl_formula(loss_type, beta):
    logps = leaf(6, 4, seed=10, scale=0.5)
    old = logps.detach() + 0.3 * torch.randn(
        6, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )
    ref = leaf(6, 4, seed=11, scale=0.5).detach()
    adv = torch.tensor([1.2, -0.4, 0.0, 0.9, -1.5, 0.3], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0]] * 3 + [[1, 1, 0, 0]] * 2 + [[1, 1, 1, 1]], dtype=torch.float64)
    ours = grpo_loss(logps, old, ref, adv, mask, beta, 0.2, loss_type=loss_type).loss
    theirs = ref_grpo(logps, old, ref, adv, mask, beta, 0.2, loss_type)
    assert abs(ours.item() - theirs.item()) < TOL
    (ga,), (gb,) = grads(ours, [logps]), grads(theirs, [logps])
    assert torch.allclose(ga, gb, atol=TOL, rtol=0)


def test_grpo_on_policy_gradient_is_advantage_weighted_log_likelihood():
    # One update per generation batch: old = current (detached), ratio 1, no clipping, beta 0:
    # the gradient per token is -A / (tokens of its sequence) / N.
    logps = leaf(2, 3, seed=12, scale=0.2)
    mask = torch.ones(2, 3, dtype=torch.float64)
    adv = torch.tensor([1.0, -2.0], dtype=torch.float64)
    out = grpo_loss(logps, logps.detach(), logps.detach(), adv, mask, 0.0)
    (g,) = grads(out.loss, [logps])
    assert torch.allclose(g, (-adv / 3 / 2).unsqueeze(1).expand(2, 3))
    assert out.kl.item() == 0.0


def test_grpo_unknown_loss_type():
    with pytest.raises(ValueError, match="loss_type"):
        grpo_loss(*(torch.zeros(1, 1),) * 3, torch.zeros(1), torch.ones(1, 1), 0.0, loss_type="ppo")
