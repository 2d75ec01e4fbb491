"""Discrete (mask-and-replace) diffusion over VQ codes.

VQ-Diffusion (Gu et al. 2022, arXiv 2111.14822, Sec. 3.2) and Improved
VQ-Diffusion (Tang et al. 2022, arXiv 2205.16007). A token takes one of K codes
or the extra [MASK] state (index K). One forward step (Eq. 5)

    q(x_t | x_{t-1}) = α_t [stay] + β_t [any code] + γ_t [MASK],  α_t + K β_t + γ_t = 1,

and [MASK] is absorbing. The cumulative transition has the same form (Eq. 7)
with ᾱ_t = Π α_i, 1 - γ̄_t = Π (1 - γ_i) and β̄_t = (1 - ᾱ_t - γ̄_t) / K.
The network predicts p_θ(x_0 | x_t, c); the reverse step is
p_θ(x_{t-1} | x_t) = Σ_{x_0} q(x_{t-1} | x_t, x_0) p_θ(x_0 | x_t) (Eq. 11), which we
compute in log space. Time runs t = 1..T; index 0 of every schedule tensor is
the clean state (ᾱ_0 = 1, γ̄_0 = 0).

Samplers are pure functions of ``(model_fn, shape, schedule, *, generator, callback)``;
``model_fn(x_t [B,N] long, t [B] long) -> log p(x_0) [B,K,N]`` already holds
the condition (house rules 1 and 2). They are registered (kind "discrete") in the one sampler table,
``unclip.diffusion.registry``, and call the one ``StepCallback``: ``callback(step, total, x_t, x0)``
with the codes and the most likely x_0 codes [B,N].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from unclip.diffusion.guidance import guide
from unclip.diffusion.registry import SamplerSpec, StepCallback, register

__all__ = [
    "DiscreteDiffusionConfig",
    "DiscreteSchedule",
    "mask_replace_schedule",
    "log_q_xt_given_x0",
    "log_q_xt_given_xprev",
    "log_posterior",
    "q_sample",
    "training_losses",
    "truncate",
    "guided_log_probs",
    "respace",
    "sample",
    "sample_ancestral",
    "sample_purity",
]

LOG_ZERO = -70.0  # log of "zero" probability; keeps every log finite (e^-70 ≈ 4e-31)

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class DiscreteDiffusionConfig:
    """Settings of the mask-and-replace process (saved in pipeline.json)."""

    num_steps: int = 100            # T
    replace_mass: float = 0.0       # K·β̄_T: 0 ≈ the released masking-only schedule, the paper's 0.1
    final_alpha_bar: float = 9e-6   # ᾱ_T (not exactly 0 so logs stay finite)
    aux_weight: float = 5e-4        # λ of the auxiliary x_0 loss (Eq. 13 of Gu et al.)

    def __post_init__(self):
        if self.num_steps < 1:
            raise ValueError("num_steps must be >= 1")
        if not 0.0 <= self.replace_mass < 1.0:
            raise ValueError("replace_mass must be in [0, 1)")
        if not 0.0 < self.final_alpha_bar < 1.0 - self.replace_mass:
            raise ValueError("final_alpha_bar must be in (0, 1 - replace_mass)")
        if self.aux_weight < 0:
            raise ValueError("aux_weight must be >= 0")


@dataclass(frozen=True)
class DiscreteSchedule:
    """Log-space schedule tensors, each [T+1] (index 0 = clean)."""

    num_codes: int
    num_steps: int
    log_alpha: torch.Tensor        # log α_t   (one step)
    log_beta: torch.Tensor         # log β_t
    log_gamma: torch.Tensor        # log γ_t
    log_alpha_bar: torch.Tensor    # log ᾱ_t   (cumulative)
    log_beta_bar: torch.Tensor     # log β̄_t
    log_gamma_bar: torch.Tensor    # log γ̄_t

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> "DiscreteSchedule":
        moved = {k: getattr(self, k).to(device=device, dtype=dtype) for k in _TENSOR_FIELDS}
        return DiscreteSchedule(self.num_codes, self.num_steps, **moved)


_TENSOR_FIELDS = ("log_alpha", "log_beta", "log_gamma", "log_alpha_bar", "log_beta_bar", "log_gamma_bar")


def _safe_log(x: torch.Tensor) -> torch.Tensor:
    return torch.log(x.clamp_min(0.0)).clamp_min(LOG_ZERO)


def mask_replace_schedule(num_codes: int, config: DiscreteDiffusionConfig = DiscreteDiffusionConfig()) -> DiscreteSchedule:
    """Linear cumulative schedule of Gu et al. (Sec. 4.1): ᾱ_t falls 1 → ᾱ_T, the replace
    mass K·β̄_t rises 0 → ``replace_mass`` and γ̄_t takes the rest (0 → 1 - ᾱ_T - replace_mass).

    ᾱ_t / (1 - γ̄_t) is then non-increasing, so every one-step β_t is ≥ 0.
    """
    steps = config.num_steps
    s = torch.arange(steps + 1, dtype=torch.float64) / steps                  # [T+1], 0..1
    alpha_bar = 1.0 - s * (1.0 - config.final_alpha_bar)
    replace_bar = s * max(config.replace_mass, 1e-6)                           # K·β̄_t; a floor keeps logs finite
    gamma_bar = 1.0 - alpha_bar - replace_bar
    gamma_bar[0] = 0.0
    alpha = torch.ones_like(alpha_bar)
    alpha[1:] = alpha_bar[1:] / alpha_bar[:-1]
    gamma = torch.zeros_like(gamma_bar)
    gamma[1:] = 1.0 - (1.0 - gamma_bar[1:]) / (1.0 - gamma_bar[:-1])
    beta = (1.0 - alpha - gamma) / num_codes
    beta_bar = (1.0 - alpha_bar - gamma_bar) / num_codes
    if (beta < -1e-12).any() or (gamma < -1e-12).any():
        raise ValueError("schedule gives negative transition probabilities; lower replace_mass")
    return DiscreteSchedule(
        num_codes, steps,
        _safe_log(alpha), _safe_log(beta), _safe_log(gamma),
        _safe_log(alpha_bar), _safe_log(beta_bar), _safe_log(gamma_bar),
    )


def respace(schedule: DiscreteSchedule, num_steps: int) -> tuple[DiscreteSchedule, list[int]]:
    """Fast sampling on a subset of ``num_steps`` timesteps (Gu et al. 2022, Sec. 4.3 "fast inference").

    Between kept steps s < t the one-step transition is the composite q(x_t | x_s), which has
    the same form with α = ᾱ_t/ᾱ_s, 1 - γ = (1 - γ̄_t)/(1 - γ̄_s), β = (1 - α - γ)/K.
    Returns the new schedule (steps 1..num_steps) and the original timestep of each new step
    (``timesteps[i]`` for new step i; index 0 is 0), which is what the network must be given.
    """
    T = schedule.num_steps
    if not 1 <= num_steps <= T:
        raise ValueError(f"num_steps must be in [1, {T}], got {num_steps}")
    kept = sorted({0, *[round(i * T / num_steps) for i in range(1, num_steps + 1)]})
    idx = torch.tensor(kept)
    log_ab, log_gb = schedule.log_alpha_bar.double()[idx], schedule.log_gamma_bar.double()[idx]
    alpha_bar, gamma_bar = log_ab.exp(), log_gb.exp()
    gamma_bar[0] = 0.0
    K = schedule.num_codes
    alpha = torch.ones_like(alpha_bar)
    alpha[1:] = alpha_bar[1:] / alpha_bar[:-1]
    gamma = torch.zeros_like(gamma_bar)
    gamma[1:] = 1.0 - (1.0 - gamma_bar[1:]) / (1.0 - gamma_bar[:-1])
    beta = ((1.0 - alpha - gamma) / K).clamp_min(0.0)
    beta_bar = ((1.0 - alpha_bar - gamma_bar) / K).clamp_min(0.0)
    new = DiscreteSchedule(K, len(kept) - 1, _safe_log(alpha), _safe_log(beta), _safe_log(gamma),
                           _safe_log(alpha_bar), _safe_log(beta_bar), _safe_log(gamma_bar))
    dtype = schedule.log_alpha.dtype
    return new.to(schedule.log_alpha.device, dtype), kept


def _at(values: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Pick schedule values for timesteps t [B] and shape them [B,1,1] to broadcast over [B,K+1,N]."""
    return values.to(t.device)[t].view(-1, 1, 1)


def _transition(log_p: torch.Tensor, log_a: torch.Tensor, log_b: torch.Tensor, log_c: torch.Tensor) -> torch.Tensor:
    """Push a (possibly unnormalised) distribution log_p [B,K+1,N] through a transition
    with stay a, replace b (per code) and mask c: p'(k) = a·p(k) + b·P_codes, p'(MASK) = p(MASK) + c·P_codes."""
    codes, mask = log_p[:, :-1], log_p[:, -1:]
    log_code_mass = torch.logsumexp(codes, dim=1, keepdim=True)               # [B,1,N]
    new_codes = torch.logaddexp(codes + log_a, log_b + log_code_mass)
    new_mask = torch.logaddexp(mask, log_c + log_code_mass)
    return torch.cat([new_codes, new_mask], dim=1)


def log_q_xt_given_x0(log_x0: torch.Tensor, t: torch.Tensor, schedule: DiscreteSchedule) -> torch.Tensor:
    """log q(x_t | x_0) [B,K+1,N] for a distribution over x_0 given as log_x0 [B,K+1,N] (Eq. 7)."""
    return _transition(log_x0, _at(schedule.log_alpha_bar, t), _at(schedule.log_beta_bar, t), _at(schedule.log_gamma_bar, t))


def log_q_xt_given_xprev(log_xprev: torch.Tensor, t: torch.Tensor, schedule: DiscreteSchedule) -> torch.Tensor:
    """log q(x_t | x_{t-1}) [B,K+1,N] for a distribution over x_{t-1} (Eq. 5)."""
    return _transition(log_xprev, _at(schedule.log_alpha, t), _at(schedule.log_beta, t), _at(schedule.log_gamma, t))


def index_to_log_onehot(x: torch.Tensor, num_classes: int) -> torch.Tensor:
    """x [B,N] long → log one-hot [B,C,N] with LOG_ZERO off the hot class."""
    onehot = F.one_hot(x, num_classes).permute(0, 2, 1).float()
    return torch.log(onehot.clamp_min(math.exp(LOG_ZERO)))


def _with_mask_column(log_p0: torch.Tensor) -> torch.Tensor:
    """log p(x_0) [B,K,N] over codes → [B,K+1,N] with (log-)zero mass on [MASK]."""
    zero = torch.full_like(log_p0[:, :1], LOG_ZERO)
    return torch.cat([log_p0, zero], dim=1)


def log_posterior(log_x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, schedule: DiscreteSchedule) -> torch.Tensor:
    """log Σ_{x_0} q(x_{t-1} | x_t, x_0) p(x_0)  → [B,K+1,N], normalised over dim 1 (Eq. 11).

    log_x0 [B,K,N]: log p(x_0) over codes (one-hot for the true posterior);
    x_t [B,N] long in 0..K; t [B] long in 1..T. By Bayes,
    q(x_{t-1}=j | x_t, x_0) = q(x_t | x_{t-1}=j) q(x_{t-1}=j | x_0) / q(x_t | x_0), so the
    sum over x_0 is q(x_t | j) · [Q̄_{t-1} w](j) with w(x_0) = p(x_0) / q(x_t | x_0).
    """
    K = schedule.num_codes
    log_x0 = _with_mask_column(log_x0)                                        # [B,K+1,N]
    log_xt = index_to_log_onehot(x_t, K + 1)                                  # [B,K+1,N]
    # q(x_t | x_0 = i) for every i, read at the observed x_t
    log_q_xt = _q_xt_given_each_x0(x_t, t, schedule, log_x0.dtype)            # [B,K+1,N]
    log_w = log_x0 - log_q_xt
    log_w[:, -1] = LOG_ZERO                                                   # x_0 is never [MASK]
    tm1 = t - 1
    log_prev = _transition(log_w, _at(schedule.log_alpha_bar, tm1), _at(schedule.log_beta_bar, tm1),
                           _at(schedule.log_gamma_bar, tm1))                  # Σ_i w(i) q(x_{t-1}=j | i)
    log_like = _likelihood_of_xt(log_xt, t, schedule)                         # q(x_t | x_{t-1}=j)
    return torch.log_softmax(log_prev + log_like, dim=1).clamp_min(LOG_ZERO)


def _q_xt_given_each_x0(x_t: torch.Tensor, t: torch.Tensor, schedule: DiscreteSchedule, dtype) -> torch.Tensor:
    """[B,K+1,N]: entry i = log q(x_t | x_0 = i). Unmasked x_t = k: ᾱ+β̄ at i = k, β̄ elsewhere;
    masked x_t: γ̄ for every i."""
    K = schedule.num_codes
    B, N = x_t.shape
    a, b, c = (_at(v, t).to(dtype) for v in (schedule.log_alpha_bar, schedule.log_beta_bar, schedule.log_gamma_bar))
    out = b.expand(B, K + 1, N).clone()
    hit = F.one_hot(x_t, K + 1).permute(0, 2, 1).bool()                       # [B,K+1,N]
    out = torch.where(hit, torch.logaddexp(a, b).expand_as(out), out)
    masked = (x_t == K).unsqueeze(1)                                          # [B,1,N]
    return torch.where(masked, c.expand_as(out), out)


def _likelihood_of_xt(log_xt: torch.Tensor, t: torch.Tensor, schedule: DiscreteSchedule) -> torch.Tensor:
    """[B,K+1,N]: entry j = log q(x_t | x_{t-1} = j) for the observed one-hot x_t.
    Unmasked x_t = k: α+β at j = k, β at other codes, 0 at [MASK]; masked x_t: γ at codes, 1 at [MASK]."""
    a, b, c = (_at(v, t) for v in (schedule.log_alpha, schedule.log_beta, schedule.log_gamma))
    codes_hot = log_xt[:, :-1]                                                # 0 at k, LOG_ZERO elsewhere
    is_masked = log_xt[:, -1:] > LOG_ZERO / 2                                 # [B,1,N]
    unmasked_codes = torch.logaddexp(codes_hot + a, b.expand_as(codes_hot))
    codes = torch.where(is_masked, c.expand_as(codes_hot), unmasked_codes)
    mask = torch.where(is_masked, torch.zeros_like(log_xt[:, -1:]), torch.full_like(log_xt[:, -1:], LOG_ZERO))
    return torch.cat([codes, mask], dim=1)


def _uniform(shape, generator, device, dtype) -> torch.Tensor:
    """U(0,1) noise [B,...]; a list of generators draws row b from generator b (per-image seeds)."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}")
        return torch.cat([torch.rand((1, *shape[1:]), generator=g, device=device, dtype=dtype) for g in generator])
    return torch.rand(shape, generator=generator, device=device, dtype=dtype)


def _gumbel_sample(log_p: torch.Tensor, generator) -> torch.Tensor:
    """Sample an index per position from log_p [B,C,N] → [B,N] (Gumbel-max)."""
    u = _uniform(log_p.shape, generator, log_p.device, log_p.dtype)
    neg_log_u = (-torch.log(u.clamp(1e-30, 1.0))).clamp_min(1e-30)
    gumbel = -torch.log(neg_log_u)
    return (log_p + gumbel).argmax(dim=1)


def q_sample(x0: torch.Tensor, t: torch.Tensor, schedule: DiscreteSchedule, generator=None) -> torch.Tensor:
    """Draw x_t ~ q(x_t | x_0) for codes x0 [B,N] → [B,N] in 0..K."""
    log_x0 = index_to_log_onehot(x0, schedule.num_codes + 1)
    return _gumbel_sample(log_q_xt_given_x0(log_x0, t, schedule), generator)


def _kl(log_q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
    """KL(q || p) over dim 1 → [B,N]."""
    return (log_q.exp() * (log_q - log_p)).sum(dim=1)


def training_losses(
    model_fn: ModelFn,
    x0: torch.Tensor,
    schedule: DiscreteSchedule,
    *,
    aux_weight: float = 5e-4,
    generator: Optional[torch.Generator] = None,
) -> dict[str, torch.Tensor]:
    """VLB + λ·auxiliary loss of Gu et al. (Eq. 8 and 13) for codes x0 [B,N].

    t ~ U{1..T}. For t > 1 the VLB term is KL(q(x_{t-1}|x_t,x_0) ‖ p_θ(x_{t-1}|x_t));
    for t = 1 it is -log p_θ(x_0 | x_1). The auxiliary term is -log p_θ(x_0 | x_t) on
    every token, weighted by (2 - t/T) as in the released code. Returns per-batch means
    in nats per token: ``loss``, ``vlb``, ``aux``.
    """
    B = x0.shape[0]
    T, K = schedule.num_steps, schedule.num_codes
    t = torch.randint(1, T + 1, (B,), generator=generator, device=x0.device)
    x_t = q_sample(x0, t, schedule, generator)
    log_p0 = model_fn(x_t, t)                                                 # [B,K,N]
    log_x0_true = index_to_log_onehot(x0, K)                                  # [B,K,N]
    log_q_prev = log_posterior(log_x0_true, x_t, t, schedule)
    log_p_prev = log_posterior(log_p0, x_t, t, schedule)
    nll = -log_p0.gather(1, x0.unsqueeze(1)).squeeze(1)                       # [B,N]
    kl = _kl(log_q_prev, log_p_prev)                                          # [B,N]
    vlb = torch.where((t == 1).unsqueeze(1), nll, kl).mean(dim=1)             # [B]
    aux = nll.mean(dim=1) * (2.0 - t.float() / T)                             # [B]
    loss = vlb + aux_weight * aux
    return {"loss": loss.mean(), "vlb": vlb.mean(), "aux": nll.mean()}


def truncate(log_p0: torch.Tensor, r: float) -> torch.Tensor:
    """Truncation sampling (Gu et al., Sec. 4.1): keep the most likely codes until their
    cumulative probability reaches r, always keeping the top code; renormalise.
    log_p0 [B,K,N] → [B,K,N]."""
    if r >= 1.0:
        return log_p0
    sorted_logp, order = log_p0.sort(dim=1, descending=True)
    probs = sorted_logp.exp()
    before = probs.cumsum(dim=1) - probs                                      # mass of strictly better codes
    keep_sorted = before < r
    keep_sorted[:, 0] = True
    keep = torch.zeros_like(keep_sorted).scatter(1, order, keep_sorted)
    return torch.log_softmax(log_p0.masked_fill(~keep, LOG_ZERO), dim=1)


def guided_log_probs(cond_fn: ModelFn, uncond_fn: ModelFn, scale: float) -> ModelFn:
    """Discrete classifier-free guidance (Tang et al. 2022, Sec. 3.2):
    log p̃(x_0|x_t,c) = log p(x_0|x_t,∅) + s·(log p(x_0|x_t,c) - log p(x_0|x_t,∅)), renormalised.
    ``uncond_fn`` uses the learned null condition. Scale 1 returns ``cond_fn`` unchanged."""
    if scale == 1.0:
        return cond_fn

    def guided(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        log_c, log_u = cond_fn(x_t, t), uncond_fn(x_t, t)
        return torch.log_softmax(guide(log_c, log_u, scale), dim=1)

    return guided


def sample(
    model_fn: ModelFn,
    shape: tuple[int, int],
    schedule: DiscreteSchedule,
    *,
    truncation: float = 1.0,
    generator=None,
    device: torch.device | str = "cpu",
    callback: Optional[StepCallback] = None,
    timesteps: Optional[list[int]] = None,
    known: Optional[torch.Tensor] = None,
    keep: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Ancestral sampling x_T = all [MASK] → x_0 with p_θ(x_{t-1}|x_t) (Eq. 11). Returns codes [B,N].

    ``generator``: one torch.Generator or one per row. ``timesteps`` (from ``respace``) maps each
    step of ``schedule`` to the timestep the network was trained on. ``callback(step, total, x_t, x0)``
    after each step (``StepCallback``; x0: the most likely codes).
    ``known`` codes [B,N] where ``keep`` [B,N] is True are fixed from x_T on and after every step
    (VQ-Diffusion's inpainting, Gu et al. 2022: known tokens stay, the reverse process fills the rest)."""
    K = schedule.num_codes
    x = _fix(torch.full(shape, K, dtype=torch.long, device=device), known, keep)
    for step in range(schedule.num_steps, 0, -1):
        t = torch.full((shape[0],), step, dtype=torch.long, device=device)
        t_model = t if timesteps is None else torch.full_like(t, timesteps[step])
        log_p0 = truncate(model_fn(x, t_model), truncation)
        if step == 1:
            x = _gumbel_sample(log_p0, generator)
        else:
            x = _gumbel_sample(log_posterior(log_p0, x, t, schedule), generator)
        x = _fix(x, known, keep)
        if callback is not None:
            callback(schedule.num_steps - step, schedule.num_steps, x, log_p0.argmax(dim=1))
    return x


def sample_ancestral(model_fn: ModelFn, shape: tuple[int, int], schedule: DiscreteSchedule, *,
                     steps: Optional[int] = None, **kwargs) -> torch.Tensor:
    """``sample`` on ``steps`` of the schedule's timesteps (``respace``; None: all of them)."""
    if steps is None or steps == schedule.num_steps:
        return sample(model_fn, shape, schedule, **kwargs)
    fast, timesteps = respace(schedule, steps)
    return sample(model_fn, shape, fast, timesteps=timesteps, **kwargs)


def _fix(x: torch.Tensor, known: Optional[torch.Tensor], keep: Optional[torch.Tensor]) -> torch.Tensor:
    """x [B,N] with the ``known`` codes where ``keep`` is True (fixed-token inpainting), else x."""
    if known is None or keep is None:
        return x
    return torch.where(keep.to(x.device), known.to(x.device, x.dtype), x)


def sample_purity(
    model_fn: ModelFn,
    shape: tuple[int, int],
    schedule: DiscreteSchedule,
    *,
    steps: Optional[int] = None,
    truncation: float = 1.0,
    generator=None,
    device: torch.device | str = "cpu",
    callback: Optional[StepCallback] = None,
    known: Optional[torch.Tensor] = None,
    keep: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Purity-prior sampling (Tang et al. 2022, Sec. 3.3): a masking-only reverse process that
    at each step reveals the still-masked tokens with the highest purity max_k p_θ(x_0=k|x_t).

    The number of revealed tokens follows the schedule's 1 - γ̄_t on ``steps`` steps
    (default T). Returns codes [B,N]. ``known``/``keep`` as in ``sample``: fixed tokens start revealed."""
    K = schedule.num_codes
    B, N = shape
    steps = steps or schedule.num_steps
    x = _fix(torch.full(shape, K, dtype=torch.long, device=device), known, keep)
    gamma_bar = schedule.log_gamma_bar.exp().cpu()
    for i in range(steps, 0, -1):
        t_model = max(1, round(i * schedule.num_steps / steps))
        t_prev = round((i - 1) * schedule.num_steps / steps)
        t = torch.full((B,), t_model, dtype=torch.long, device=device)
        log_p0 = truncate(model_fn(x, t), truncation)                         # [B,K,N]
        proposal = _gumbel_sample(log_p0, generator)                          # [B,N]
        purity = log_p0.max(dim=1).values                                     # [B,N]
        masked = x == K
        target_revealed = N if t_prev == 0 else int(round(N * (1.0 - float(gamma_bar[t_prev]))))
        num_new = (target_revealed - (~masked).sum(dim=1)).clamp_min(0)       # [B]
        score = purity.masked_fill(~masked, float("-inf"))
        rank = score.argsort(dim=1, descending=True).argsort(dim=1)           # rank of each position
        reveal = masked & (rank < num_new.unsqueeze(1))
        x = torch.where(reveal, proposal, x)
        if callback is not None:
            callback(steps - i, steps, x, log_p0.argmax(dim=1))
    return x


register(SamplerSpec("ancestral", sample_ancestral, kind="discrete", stochastic=True,
                     help="VQ-Diffusion's reverse process (Gu et al. 2022, Eq. 11)"))
register(SamplerSpec("purity", sample_purity, kind="discrete", stochastic=True,
                     help="purity-prior sampling (Tang et al. 2022, Sec. 3.3)"))
