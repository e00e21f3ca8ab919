"""Training loops for chapters 07-08: one generic loop, two task wrappers, and evaluation.

``train`` is the loop every experiment uses: it optimizes only the parameters that require a
gradient, so the same function does full fine-tuning (everything trainable), LoRA (only
``lora_A``/``lora_B`` trainable after ``add_lora``) and QLoRA (a frozen 4-bit base). It is
seeded (its batches come from its own ``torch.Generator``), shows a ``tqdm`` bar and returns a
history (a dict of lists) ready to plot.

``train_classifier`` (digits) and ``train_lm`` (characters) wrap it with the right batches and
loss; ``accuracy``, ``evaluate`` and ``lm_loss_on`` measure a model without changing it;
``l2_toward(base, strength)`` is a penalty that pulls a full fine-tune toward the base weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from minilora.lab.data import fixed_lm_batches, sample_lm_batch


def classification_loss(model: nn.Module, batch) -> torch.Tensor:
    """Mean cross-entropy of ``model(x)`` against labels y, for a batch ``(x, y)``."""
    x, y = batch
    return F.cross_entropy(model(x), y)


def lm_loss(model: nn.Module, batch) -> torch.Tensor:
    """Mean next-character cross-entropy (nats per character) for a batch ``(x, y)`` of ids."""
    x, y = batch
    logits = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))


def train(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, object], torch.Tensor],
    sample_batch: Callable[[torch.Generator], object],
    steps: int,
    lr: float,
    *,
    weight_decay: float = 0.0,
    penalty: Callable[[nn.Module], torch.Tensor] | None = None,
    eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
    eval_every: int = 0,
    seed: int = 0,
    grad_clip: float | None = 1.0,
    schedule: str = "constant",
    progress: bool = True,
    desc: str = "train",
) -> dict[str, list]:
    """Optimize the trainable parameters of ``model`` with AdamW for ``steps`` steps.

    ``sample_batch(generator)`` returns a batch, ``loss_fn(model, batch)`` its loss, and the
    optional ``penalty(model)`` is added to it (e.g. an L2 pull toward the base weights).
    ``eval_fn(model)`` returns named metrics; it runs every ``eval_every`` steps and at the end.
    ``schedule="cosine"`` decays the learning rate from ``lr`` to ``lr / 10`` along a half cosine.
    Gradients are clipped to norm ``grad_clip`` (a guard against one bad batch, not a tuning knob).
    Returns ``{"step", "loss", "eval_step", <metric names>...}`` as lists; the model is left in
    eval mode.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters (did add_lora freeze everything?)")
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"unknown schedule {schedule!r}; choose 'constant' or 'cosine'")
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if schedule == "cosine":  # factor 1 at step 0 → 0.1 at the last step
        factor = lambda i: 0.1 + 0.45 * (1 + math.cos(math.pi * i / steps))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    gen = torch.Generator().manual_seed(seed)  # the batch order depends on the seed only
    history: dict[str, list] = {"step": [], "loss": [], "eval_step": []}

    def run_eval(step: int) -> None:
        model.eval()
        with torch.no_grad():
            metrics = eval_fn(model)
        model.train()
        history["eval_step"].append(step)
        for key, value in metrics.items():
            history.setdefault(key, []).append(float(value))

    model.train()
    from tqdm.auto import tqdm  # minilora[course]; imported here so load_pretrained needs none

    bar = tqdm(range(1, steps + 1), desc=desc, disable=not progress, leave=False)
    for step in bar:
        loss = loss_fn(model, sample_batch(gen))
        objective = loss + penalty(model) if penalty is not None else loss
        opt.zero_grad(set_to_none=True)
        objective.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        if schedule == "cosine":
            sched.step()
        history["step"].append(step)
        history["loss"].append(loss.item())
        if eval_fn is not None and eval_every and step % eval_every == 0 and step != steps:
            run_eval(step)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    if eval_fn is not None:
        run_eval(steps)
    model.eval()
    return history


def l2_toward(reference: nn.Module, strength: float) -> Callable[[nn.Module], torch.Tensor]:
    """A ``penalty`` for ``train``: strength · Σ ‖θ − θ_ref‖² over the trainable parameters.

    ``reference`` is copied now (e.g. the pretrained base), so full fine-tuning with this penalty
    is "weight decay toward the base" rather than toward zero. Parameters are matched by name.
    """
    if strength < 0:
        raise ValueError(f"strength must be >= 0, got {strength}")
    ref = {name: p.detach().clone() for name, p in reference.named_parameters()}

    def penalty(model: nn.Module) -> torch.Tensor:
        terms = [
            ((p - ref[name]) ** 2).sum()
            for name, p in model.named_parameters()
            if p.requires_grad and name in ref
        ]
        return strength * torch.stack(terms).sum() if terms else torch.zeros(())

    return penalty


@torch.no_grad()
def evaluate(model: nn.Module, loss_fn: Callable, batches: Iterable) -> float:
    """Mean of ``loss_fn(model, batch)`` over fixed ``batches``, in eval mode, without gradients."""
    was_training = model.training
    model.eval()
    losses = [loss_fn(model, batch).item() for batch in batches]
    model.train(was_training)
    if not losses:
        raise ValueError("evaluate needs at least one batch")
    return sum(losses) / len(losses)


@torch.no_grad()
def accuracy(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of rows of ``X`` whose arg-max prediction equals ``y``."""
    was_training = model.training
    model.eval()
    acc = (model(X).argmax(dim=-1) == y).float().mean().item()
    model.train(was_training)
    return acc


def lm_loss_on(model: nn.Module, ids: torch.Tensor, n_batches: int = 8, batch_size: int = 32):
    """Nats per character of ``model`` on fixed, evenly spaced windows of the text ``ids``."""
    batches = fixed_lm_batches(ids, model.config.block_size, n_batches, batch_size)
    return evaluate(model, lm_loss, batches)


def train_classifier(
    model: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    lr: float,
    *,
    batch_size: int = 64,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    eval_every: int = 0,
    **kwargs,
) -> dict[str, list]:
    """Train a classifier on ``(X, y)`` with random mini-batches; tracks train/val accuracy.

    Extra keyword arguments (``seed``, ``weight_decay``, ``penalty``, ``progress``...) go to
    ``train``.
    """
    if len(X) != len(y):
        raise ValueError(f"X has {len(X)} rows but y has {len(y)}")
    batch_size = min(batch_size, len(X))

    def sample(gen):
        idx = torch.randperm(len(X), generator=gen)[:batch_size]
        return X[idx], y[idx]

    def eval_fn(m):
        metrics = {"train_acc": accuracy(m, X, y)}
        if val is not None:
            metrics["val_acc"] = accuracy(m, *val)
            metrics["val_loss"] = F.cross_entropy(m(val[0]), val[1]).item()
        return metrics

    kwargs.setdefault("desc", "train classifier")
    return train(
        model, classification_loss, sample, steps, lr, eval_fn=eval_fn, eval_every=eval_every,
        **kwargs,
    )  # fmt: skip


def train_lm(
    model: nn.Module,
    ids: torch.Tensor,
    steps: int,
    lr: float,
    *,
    batch_size: int = 32,
    val: dict[str, torch.Tensor] | None = None,
    eval_every: int = 0,
    eval_batches: int = 4,
    **kwargs,
) -> dict[str, list]:
    """Train a character model on random windows of ``ids`` (next-character prediction).

    ``val`` maps names to id tensors, e.g. ``{"prose": ..., "code": ...}``; each is measured as
    ``"<name>_loss"`` (nats/char) every ``eval_every`` steps and at the end. Extra keyword
    arguments go to ``train``.
    """
    block = model.config.block_size
    sample = lambda gen: sample_lm_batch(ids, batch_size, block, gen)
    eval_fn = None
    if val:
        eval_fn = lambda m: {f"{k}_loss": lm_loss_on(m, v, eval_batches) for k, v in val.items()}
    kwargs.setdefault("desc", "train lm")
    return train(
        model, lm_loss, sample, steps, lr, eval_fn=eval_fn, eval_every=eval_every, **kwargs
    )


def train_classifiers_together(
    models: list[nn.Module],
    X: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    lrs: list[float],
    seeds: list[int],
    *,
    batch_size: int = 64,
    grad_clip: float | None = 1.0,
) -> None:
    """``train_classifier`` for many runs at once: model i at ``lrs[i]``, ``seeds[i]``'s batches.

    The same recipe as ``train_classifier(models[i], X, y, steps, lrs[i], seed=seeds[i])`` (AdamW
    with no weight decay, gradients clipped to norm ``grad_clip`` per run, the batch order drawn
    from a generator seeded with ``seeds[i]``), but one Python step trains every run: the trainable
    tensors are stacked and ``torch.func.vmap`` computes the per-run gradients. On the small models
    of the course most of a step is interpreter overhead, so a race's grid × seeds runs faster
    this way. Results equal the one-at-a-time loop up to float rounding (a stacked matmul sums in
    another order), not bit for bit. The models must differ only in their trainable tensors (the
    same frozen base); they are trained in place and left in eval mode.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not (len(models) == len(lrs) == len(seeds) >= 1):
        raise ValueError(
            f"need one lr and one seed per model: {len(models)}, {len(lrs)}, {len(seeds)}"
        )
    from torch.func import functional_call, grad, vmap

    named = [dict(m.named_parameters()) for m in models]
    names = [n for n, p in named[0].items() if p.requires_grad]
    if not names:
        raise ValueError("model has no trainable parameters (did add_lora freeze everything?)")
    frozen = {n: p.detach() for n, p in named[0].items() if not p.requires_grad}
    for params in named[1:]:
        if [n for n, p in params.items() if p.requires_grad] != names or any(
            not torch.equal(params[n], p) for n, p in frozen.items()
        ):
            raise ValueError("the models must share their frozen tensors and train the same ones")
    theta = {n: torch.stack([params[n].detach() for params in named]) for n in names}
    exp_avg = {n: torch.zeros_like(t) for n, t in theta.items()}
    exp_avg_sq = {n: torch.zeros_like(t) for n, t in theta.items()}
    lr = torch.tensor([float(v) for v in lrs])
    gens = [torch.Generator().manual_seed(s) for s in seeds]  # as in train(): batches by seed only
    batch_size = min(batch_size, len(X))
    net = models[0]

    def loss(trainable, xb, yb):
        return F.cross_entropy(functional_call(net, {**frozen, **trainable}, (xb,)), yb)

    per_run_grad = vmap(grad(loss), randomness="different")  # dropout: its own mask per run
    beta1, beta2, eps = 0.9, 0.999, 1e-8  # AdamW's defaults, as train() uses them
    net.train()
    for step in range(1, steps + 1):
        idx = torch.stack([torch.randperm(len(X), generator=g)[:batch_size] for g in gens])
        g = per_run_grad(theta, X[idx], y[idx])
        coef = torch.ones(len(models))
        if grad_clip is not None:  # clip_grad_norm_ per run: max_norm / (‖g‖ + 1e-6), at most 1
            norm = torch.stack([g[n].flatten(1).pow(2).sum(1) for n in names]).sum(0).sqrt()
            coef = (grad_clip / (norm + 1e-6)).clamp(max=1.0)
        bias1, bias2 = 1 - beta1**step, 1 - beta2**step
        for n in names:
            shape = (-1,) + (1,) * (theta[n].dim() - 1)
            gn = g[n] * coef.view(shape)
            exp_avg[n].lerp_(gn, 1 - beta1)
            exp_avg_sq[n].mul_(beta2).addcmul_(gn, gn, value=1 - beta2)
            denom = (exp_avg_sq[n].sqrt() / math.sqrt(bias2)).add_(eps)
            theta[n].sub_(exp_avg[n] / denom * (lr / bias1).view(shape))
    with torch.no_grad():
        for i, (model, params) in enumerate(zip(models, named, strict=True)):
            for n in names:
                params[n].copy_(theta[n][i])
            model.eval()
