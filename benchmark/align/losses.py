"""Preference and policy-gradient losses over sequence log-probabilities (pure tensor functions).

Definitions (and the reference implementation they are tested against, ``tests/unit/test_align_losses.py``):

- DPO (Rafailov et al., 2023), trl's ``loss_type="sigmoid"`` with reverse-KL scores:
  ``-log sigma(beta * ((pi_c - ref_c) - (pi_r - ref_r)))`` per pair, averaged.
- S-DPO (Chen et al., 2024, "On Softmax Direct Preference Optimization for Recommendation"):
  ``-log sigma(-log sum_j exp(beta * ((pi_j - ref_j) - (pi_c - ref_c))))`` over k negatives j;
  with k = 1 it is DPO.
- GRPO (Shao et al., 2024), trl's token-level clipped objective with the k3 KL estimator
  ``exp(ref - pi) - (ref - pi) - 1`` and group-normalised advantages
  ``(r - mean_group) / (std_group + 1e-4)`` (unbiased std, as trl); ``loss_type`` ``grpo``
  (mean over a sequence's tokens, then over sequences) or ``dapo`` (sum over all tokens / tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

GRPO_LOSS_TYPES = ("grpo", "dapo")


@dataclass
class PairLoss:
    """A preference loss and its diagnostics.

    Attributes:
        loss: scalar mean loss (differentiable).
        margin: [B] detached ``(pi_c - pi_r)`` log-prob margin (mean over negatives for S-DPO).
        chosen_reward: [B] detached ``beta * (pi_c - ref_c)``.
        rejected_reward: [B] detached ``beta * (pi_r - ref_r)`` (mean over negatives for S-DPO).
        kl: detached scalar mean ``pi - ref`` of the chosen sequences (a sample estimate of KL).
    """

    loss: torch.Tensor
    margin: torch.Tensor
    chosen_reward: torch.Tensor
    rejected_reward: torch.Tensor
    kl: torch.Tensor


def dpo_loss(
    pi_chosen: torch.Tensor,
    pi_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> PairLoss:
    """DPO's sigmoid loss.

    Args:
        pi_chosen, ref_chosen: [B] sequence log-probs of the chosen outputs under the policy / reference.
        pi_rejected, ref_rejected: [B] the same for the rejected outputs.
        beta: the KL strength (> 0).

    Returns:
        :class:`PairLoss`.
    """
    chosen = pi_chosen - ref_chosen
    rejected = pi_rejected - ref_rejected
    loss = -F.logsigmoid(beta * (chosen - rejected)).mean()
    return PairLoss(
        loss,
        (pi_chosen - pi_rejected).detach(),
        beta * chosen.detach(),
        beta * rejected.detach(),
        chosen.detach().mean(),
    )


def sdpo_loss(
    pi_chosen: torch.Tensor,
    pi_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> PairLoss:
    """Softmax DPO over k negatives per prompt.

    Args:
        pi_chosen, ref_chosen: [B] chosen sequence log-probs.
        pi_rejected, ref_rejected: [B, k] rejected sequence log-probs.
        beta: the KL strength (> 0).

    Returns:
        :class:`PairLoss` (margins and rejected rewards averaged over the k negatives).
    """
    chosen = (pi_chosen - ref_chosen).unsqueeze(1)  # [B, 1]
    rejected = pi_rejected - ref_rejected  # [B, k]
    loss = -F.logsigmoid(-torch.logsumexp(beta * (rejected - chosen), dim=1)).mean()
    return PairLoss(
        loss,
        (pi_chosen.unsqueeze(1) - pi_rejected).detach().mean(dim=1),
        beta * chosen.detach().squeeze(1),
        beta * rejected.detach().mean(dim=1),
        chosen.detach().mean(),
    )


def group_advantages(rewards: torch.Tensor, scale: bool = True) -> torch.Tensor:
    """Group-normalised advantages.

    Args:
        rewards: [B, G] rewards of G generations per prompt.
        scale: divide by the group's (unbiased) std + 1e-4 (trl's ``scale_rewards="group"``).

    Returns:
        [B, G] ``r - mean`` (scaled).
    """
    adv = rewards - rewards.mean(dim=1, keepdim=True)
    if scale:
        std = rewards.std(dim=1, keepdim=True) if rewards.shape[1] > 1 else torch.zeros_like(rewards[:, :1])
        adv = adv / (std + 1e-4)
    return adv


@dataclass
class PolicyLoss:
    """GRPO's loss and diagnostics: ``loss`` (scalar), ``kl`` (detached mean per-token k3 KL)."""

    loss: torch.Tensor
    kl: torch.Tensor


def grpo_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    loss_type: str = "grpo",
) -> PolicyLoss:
    """GRPO's clipped token-level objective with a KL penalty to the reference.

    Args:
        logps: [N, T] per-token log-probs of the generations under the policy (N = B * G).
        old_logps: [N, T] the same under the policy that generated them (detached).
        ref_logps: [N, T] under the frozen reference.
        advantages: [N] sequence advantages (see :func:`group_advantages`, flattened).
        mask: [N, T] 1 for completion tokens, 0 for padding.
        beta: KL coefficient (0 = no reference term).
        epsilon, epsilon_high: clipping range ``[1 - epsilon, 1 + epsilon_high]``.
        loss_type: ``grpo`` or ``dapo``.

    Returns:
        :class:`PolicyLoss`.
    """
    if loss_type not in GRPO_LOSS_TYPES:
        raise ValueError(f"loss_type {loss_type!r}: one of {', '.join(GRPO_LOSS_TYPES)}")
    mask = mask.to(logps.dtype)
    high = epsilon if epsilon_high is None else epsilon_high
    ratio = torch.exp(logps - old_logps)
    adv = advantages.unsqueeze(1)  # [N, 1]
    per_token = -torch.min(ratio * adv, torch.clamp(ratio, 1 - epsilon, 1 + high) * adv)
    delta = ref_logps - logps
    kl = torch.exp(delta) - delta - 1  # [N, T]
    if beta != 0.0:
        per_token = per_token + beta * kl
    if loss_type == "grpo":
        loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    else:
        loss = (per_token * mask).sum() / mask.sum().clamp(min=1.0)
    mean_kl = ((kl * mask).sum() / mask.sum().clamp(min=1.0)).detach()
    return PolicyLoss(loss, mean_kl)
