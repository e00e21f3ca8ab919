"""LoRA in NumPy, with every gradient derived by hand: the companion of chapters 01 and 02.

A frozen weight ``W0`` (d_out, d_in) gets a trainable low-rank update ``ΔW = (alpha/r)·B·A``
with ``A`` (r, d_in) and ``B`` (d_out, r). For a batch of rows ``x`` (n, d_in)::

    h = x·Aᵀ                    (n, r)       the input, squeezed into r numbers per row
    y = x·W0ᵀ + s·h·Bᵀ          (n, d_out)   s = alpha / r, the "scaling"

``B·A`` (a full d_out × d_in matrix) is never formed on the way forward: that is the point of
LoRA, and it is cheaper (two thin matmuls). With ``dy = ∂L/∂y`` the chain rule gives::

    dB = s·dyᵀ·h      (d_out, r)
    dh = s·dy·B       (n, r)
    dA = dhᵀ·x        (r, d_in)
    dx = dy·W0 + dh·A (n, d_in)      no gradient for W0: it is frozen

Also here: ``SGD`` and ``Adam`` that update (A, B) from (dA, dB), a central-difference
``gradcheck``, a ``cmp`` that compares our arrays with a reference (e.g. PyTorch autograd), and
the low-rank toy task of chapter 01 with its Eckart–Young loss floor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

INITS = ("gaussian", "kaiming", "peft_gaussian")
STARTS = ("paper", "A zero", "both random", "both zero")


# --- input checks: each names the problem, and none touches the layer ----------------------


def _check_finite_float_2d(name: str, a) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"{name} must be a float array, got dtype {a.dtype}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or inf")
    return a


# --- the layer ------------------------------------------------------------------------------


class LoRALinear:
    """A frozen linear map ``W0`` plus a trainable low-rank update ``(alpha/r)·B·A``.

    ``init="gaussian"``: A ~ N(0, 1/d_in). The LoRA paper says "random Gaussian" without a
    variance; 1/d_in keeps each entry of h = x·Aᵀ at the scale of one input feature.
    ``init="kaiming"``: PEFT's default, ``kaiming_uniform_(A, a=√5)``. PyTorch's recipe is
    gain = √(2/(1+a²)) = √(1/3), std = gain/√fan_in, bound = √3·std, so with fan_in = d_in the
    bound is exactly 1/√d_in: A ~ U(-1/√d_in, 1/√d_in) (variance 1/(3·d_in)).
    ``init="peft_gaussian"``: PEFT's ``init_lora_weights="gaussian"``, A ~ N(0, 1/r²): the
    entries shrink with the rank instead of with d_in (``minilora.lora`` offers the same three).
    Chapter 02 measures what that does to α/r's rank invariance under Adam.
    B starts at zero in every case, so the adapted layer starts as the base layer (chapter 02).
    """

    def __init__(self, W0, r: int, alpha: float, seed: int = 0, init: str = "gaussian"):
        W0 = _check_finite_float_2d("W0", W0)
        d_out, d_in = W0.shape
        if isinstance(r, bool) or not isinstance(r, (int, np.integer)):
            raise ValueError(f"rank r must be an integer, got {r!r}")
        if r < 1:
            raise ValueError(f"rank r must be >= 1, got r={r}")
        if r > min(d_in, d_out):
            raise ValueError(f"rank r={r} exceeds min(d_in, d_out)={min(d_in, d_out)}")
        if not np.isfinite(alpha) or alpha <= 0:
            raise ValueError(f"alpha must be a positive number, got alpha={alpha}")
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; choose one of {INITS}")

        self.W0 = W0.copy()
        self.W0.flags.writeable = False  # frozen: an accidental in-place update raises
        self.r, self.alpha = int(r), float(alpha)
        self.scaling = self.alpha / self.r
        rng = np.random.default_rng(seed)
        if init == "gaussian":
            A = rng.normal(0.0, 1.0 / np.sqrt(d_in), size=(r, d_in))
        elif init == "peft_gaussian":
            A = rng.normal(0.0, 1.0 / r, size=(r, d_in))
        else:
            bound = 1.0 / np.sqrt(d_in)
            A = rng.uniform(-bound, bound, size=(r, d_in))
        self.A = A.astype(W0.dtype)
        self.B = np.zeros((d_out, r), dtype=W0.dtype)
        self.dA = np.zeros_like(self.A)
        self.dB = np.zeros_like(self.B)
        self._cache = None  # (x, h) saved by forward for backward

    @property
    def shape(self) -> tuple[int, int]:
        return self.W0.shape

    def forward(self, x) -> np.ndarray:
        """y = x·W0ᵀ + s·(x·Aᵀ)·Bᵀ for a batch of rows x (n, d_in); saves x and h for backward."""
        x = _check_finite_float_2d("x", x)
        if x.shape[1] != self.W0.shape[1]:
            raise ValueError(f"x must have d_in={self.W0.shape[1]} columns, got {x.shape[1]}")
        h = x @ self.A.T
        self._cache = (x, h)
        return x @ self.W0.T + self.scaling * (h @ self.B.T)

    def backward(self, dy) -> np.ndarray:
        """Store dA and dB (the gradients of the loss), return dx. Needs the last forward's x."""
        if self._cache is None:
            raise ValueError("call forward(x) before backward(dy)")
        x, h = self._cache
        dy = np.asarray(dy)
        if dy.shape != (x.shape[0], self.W0.shape[0]):
            raise ValueError(
                f"dy must have the output's shape {(x.shape[0], self.W0.shape[0])}, got {dy.shape}"
            )
        s = self.scaling
        self.dB = s * (dy.T @ h)
        dh = s * (dy @ self.B)
        self.dA = dh.T @ x
        return dy @ self.W0 + dh @ self.A

    def delta_weight(self) -> np.ndarray:
        """ΔW = s·B·A, the (d_out, d_in) update LoRA adds to W0 (formed only when asked for)."""
        return self.scaling * (self.B @ self.A)

    def merged_weight(self) -> np.ndarray:
        """W0 + ΔW: one plain matrix, so a merged layer costs nothing extra at inference."""
        return self.W0 + self.delta_weight()

    def parameters(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """The trainable arrays with their gradients: {"A": (A, dA), "B": (B, dB)}."""
        return {"A": (self.A, self.dA), "B": (self.B, self.dB)}


def start_layer(W0, r: int, alpha: float, start: str = "paper", seed: int = 0) -> LoRALinear:
    """A LoRALinear with one of chapter 02's four starts (A and B drawn with the same Gaussian).

    "paper": A random, B zero · "A zero": A zero, B random · "both random" · "both zero".
    """
    if start not in STARTS:
        raise ValueError(f"unknown start {start!r}; choose one of {STARTS}")
    layer = LoRALinear(W0, r, alpha, seed=seed)
    random_A = layer.A.copy()
    # B gets the same law as A's entries (std 1/√d_in), from a second, independent stream.
    d_out, d_in = layer.shape
    rng = np.random.default_rng([seed, 1])
    random_B = rng.normal(0.0, 1.0 / np.sqrt(d_in), size=(d_out, r)).astype(layer.B.dtype)
    layer.A = random_A if start in ("paper", "both random") else np.zeros_like(random_A)
    layer.B = random_B if start in ("A zero", "both random") else np.zeros_like(random_B)
    return layer


# --- optimizers: they read layer.dA, layer.dB and update layer.A, layer.B in place ------------


class SGD:
    """Plain gradient descent: p ← p − lr·dp for p in (A, B)."""

    def __init__(self, layer: LoRALinear, lr: float = 1e-2):
        if not lr > 0:
            raise ValueError(f"learning rate must be positive, got lr={lr}")
        self.layer, self.lr = layer, lr

    def step(self) -> None:
        for p, dp in self.layer.parameters().values():
            p -= self.lr * dp


class Adam:
    """Adam (Kingma & Ba 2015) with bias correction, the update ``torch.optim.Adam`` makes.

    m ← β1·m + (1−β1)·g,  v ← β2·v + (1−β2)·g²,
    p ← p − lr·m̂/(√v̂ + eps) with m̂ = m/(1−β1ᵗ), v̂ = v/(1−β2ᵗ).
    Dividing by √v̂ makes the step size nearly independent of the gradient's scale: the first
    step is ≈ lr·sign(g) for every entry (chapter 02 uses this).
    """

    def __init__(self, layer: LoRALinear, lr: float = 1e-3, betas=(0.9, 0.999), eps=1e-8):
        if not lr > 0:
            raise ValueError(f"learning rate must be positive, got lr={lr}")
        if not all(0 <= b < 1 for b in betas):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        self.layer, self.lr, self.betas, self.eps = layer, lr, tuple(betas), eps
        self.t = 0
        self.m = {k: np.zeros_like(p) for k, (p, _) in layer.parameters().items()}
        self.v = {k: np.zeros_like(p) for k, (p, _) in layer.parameters().items()}

    def step(self) -> None:
        b1, b2 = self.betas
        self.t += 1
        for k, (p, g) in self.layer.parameters().items():
            self.m[k] = b1 * self.m[k] + (1 - b1) * g
            self.v[k] = b2 * self.v[k] + (1 - b2) * g * g
            m_hat = self.m[k] / (1 - b1**self.t)
            v_hat = self.v[k] / (1 - b2**self.t)
            p -= self.lr * m_hat / (np.sqrt(v_hat) + self.eps)


# --- checking gradients -----------------------------------------------------------------------


def _relative_error(num: np.ndarray, ana: np.ndarray) -> float:
    """‖num − ana‖ / max(‖num‖, ‖ana‖), and 0 when both are exactly zero."""
    scale = max(np.linalg.norm(num), np.linalg.norm(ana))
    return 0.0 if scale == 0 else float(np.linalg.norm(num - ana) / scale)


def numerical_gradients(layer: LoRALinear, x, dy, eps: float = 1e-6) -> dict[str, np.ndarray]:
    """Central differences of L = Σ forward(x)⊙dy w.r.t. A, B and x (on a copy of the layer).

    ∂L/∂θ ≈ (L(θ+eps) − L(θ−eps)) / (2·eps), one entry at a time. L is linear in each of A, B
    and x separately, so the central difference has no truncation error: what remains is
    floating-point rounding, about 1e-16·|L|/eps.
    """
    probe = LoRALinear(np.asarray(layer.W0, dtype=np.float64), layer.r, layer.alpha)
    probe.A, probe.B = np.array(layer.A, dtype=np.float64), np.array(layer.B, dtype=np.float64)
    x = np.array(x, dtype=np.float64)
    dy = np.asarray(dy, dtype=np.float64)
    grads = {}
    for name, arr in (("A", probe.A), ("B", probe.B), ("x", x)):
        g = np.zeros_like(arr)
        for i in np.ndindex(arr.shape):
            old = arr[i]
            arr[i] = old + eps
            plus = np.sum(probe.forward(x) * dy)
            arr[i] = old - eps
            minus = np.sum(probe.forward(x) * dy)
            arr[i] = old
            g[i] = (plus - minus) / (2 * eps)
        grads[name] = g
    return grads


def gradcheck(layer: LoRALinear, x, dy, eps: float = 1e-6, wrt=("A", "B", "x")) -> float:
    """Max relative error between backward's dA, dB, dx and central differences (float64).

    Run it with B ≠ 0: at the paper's start B = 0 makes dA = 0 exactly and the check is empty.
    """
    if np.asarray(layer.W0).dtype != np.float64 or np.asarray(x).dtype != np.float64:
        raise ValueError("gradcheck needs float64 W0 and x: float32 rounding swamps the check")
    unknown = set(wrt) - {"A", "B", "x"}
    if unknown:
        raise ValueError(f"gradcheck: unknown names {sorted(unknown)}; choose from A, B, x")
    numerical = numerical_gradients(layer, x, dy, eps)
    probe = type(layer)(layer.W0, layer.r, layer.alpha)  # a subclass's own backward is checked
    probe.A, probe.B = layer.A.copy(), layer.B.copy()
    probe.forward(x)
    analytic = {"x": probe.backward(dy), "A": probe.dA, "B": probe.dB}
    return max(_relative_error(numerical[k], analytic[k]) for k in wrt)


def cmp(name: str, ours, ref) -> float:
    """Print whether ``ours`` equals ``ref`` exactly / to allclose, and the max |difference|.

    ``ref`` may be a NumPy array or a torch tensor (e.g. ``t.grad``). Returns the max difference.
    """
    if hasattr(ref, "detach"):  # a torch tensor: no torch import needed here
        ref = ref.detach().cpu().numpy()
    ours, ref = np.asarray(ours), np.asarray(ref)
    if ours.shape != ref.shape:
        raise ValueError(f"cmp {name}: shapes differ, {ours.shape} vs {ref.shape}")
    exact = bool(np.array_equal(ours, ref))
    close = bool(np.allclose(ours, ref))
    maxdiff = float(np.max(np.abs(ours - ref))) if ours.size else 0.0
    print(f"{name:<6} | exact: {exact!s:<5} | close: {close!s:<5} | max diff: {maxdiff:.1e}")
    return maxdiff


# --- the low-rank toy task of chapter 01 --------------------------------------------------------


@dataclass
class LowRankTask:
    """Frozen W0, a target update ΔW* of rank r*, inputs X and targets Y = X·(W0 + ΔW*)ᵀ."""

    W0: np.ndarray
    delta_star: np.ndarray
    X: np.ndarray
    Y: np.ndarray
    singular_values: np.ndarray


def make_low_rank_task(
    d_in: int = 32,
    d_out: int = 32,
    r_star: int = 4,
    n: int = 256,
    singular_values=None,
    whiten: bool = True,
    seed: int = 0,
) -> LowRankTask:
    """A regression task whose ideal update ΔW* has exactly rank r* and known singular values.

    ΔW* = U·diag(σ)·Vᵀ with random orthonormal U, V; σ defaults to r*, r*−1, ..., 1.
    ``whiten=True`` makes XᵀX/n = I exactly, so the data metric is the plain Frobenius norm and
    the Eckart–Young floor is the textbook one (see ``eckart_young_floor``).
    """
    if not 1 <= r_star <= min(d_in, d_out):
        raise ValueError(f"r_star must be in [1, min(d_in, d_out)], got {r_star}")
    if n < d_in:
        raise ValueError(f"need n >= d_in samples to pin down ΔW, got n={n}, d_in={d_in}")
    sv = np.arange(r_star, 0, -1.0) if singular_values is None else np.asarray(singular_values)
    if sv.shape != (r_star,) or np.any(sv <= 0):
        raise ValueError(f"singular_values must be {r_star} positive numbers, got {sv}")
    rng = np.random.default_rng(seed)
    W0 = rng.normal(0.0, 1.0 / np.sqrt(d_in), size=(d_out, d_in))
    U, _ = np.linalg.qr(rng.normal(size=(d_out, r_star)))
    V, _ = np.linalg.qr(rng.normal(size=(d_in, r_star)))
    delta_star = U @ np.diag(sv) @ V.T
    X = rng.normal(size=(n, d_in))
    if whiten:  # X = √n·Q with orthonormal columns Q, so XᵀX/n = I
        Q, _ = np.linalg.qr(X)
        X = np.sqrt(n) * Q
    Y = X @ (W0 + delta_star).T
    return LowRankTask(W0, delta_star, X, Y, np.sort(sv)[::-1])


def mse(y_hat, y) -> tuple[float, np.ndarray]:
    """Mean squared error over all n·d_out entries, and its gradient dL/dy_hat."""
    diff = y_hat - y
    return float(np.mean(diff**2)), 2.0 * diff / diff.size


def cosine_lr(lr: float, steps: int):
    """The learning rate of step t (0-based) decaying from ``lr`` to 0 along half a cosine.

    lr_t = lr·(1 + cos(π·t/steps))/2. Chapter 01 uses it to stop Adam's late loss spikes: with a
    constant lr, √v̂ shrinks with the gradients until lr/√v̂ is too large a step for the curvature.
    """
    if not lr > 0 or steps < 1:
        raise ValueError(f"cosine_lr needs lr > 0 and steps >= 1, got lr={lr}, steps={steps}")
    return lambda t: lr * 0.5 * (1.0 + np.cos(np.pi * t / steps))


def fit(layer: LoRALinear, X, Y, steps: int, opt, lr_schedule=None) -> np.ndarray:
    """Full-batch training of (A, B) on the MSE; returns the losses before each step and after.

    ``lr_schedule``, if given, maps the step index t (0-based) to the learning rate of that step
    (e.g. ``cosine_lr(1e-2, steps)``); it is written to ``opt.lr`` before each step.
    """
    losses = np.empty(steps + 1)
    for t in range(steps + 1):
        loss, dy = mse(layer.forward(X), Y)
        losses[t] = loss
        if t < steps:
            layer.backward(dy)
            if lr_schedule is not None:
                opt.lr = float(lr_schedule(t))
            opt.step()
    return losses


def eckart_young_floor(delta_star, r: int, X=None) -> float:
    """The smallest MSE any ΔW of rank ≤ r reaches on targets Y = X·(W0 + ΔW*)ᵀ.

    The residual is X·(ΔW − ΔW*)ᵀ, so the loss is ‖X·(ΔW − ΔW*)ᵀ‖²_F / (n·d_out).
    Write X = Q·R (QR, Q with orthonormal columns): ‖X·Dᵀ‖_F = ‖D·Rᵀ‖_F, and ΔW·Rᵀ has the same
    rank as ΔW (R invertible). So this is Eckart–Young for M = ΔW*·Rᵀ: the best rank-r
    approximation keeps the top r singular values and the loss is Σ_{i>r} σ_i(M)² / (n·d_out).
    ``X=None`` (or whitened X, XᵀX = n·I) gives the textbook Σ_{i>r} σ_i(ΔW*)² / d_out.
    """
    delta_star = np.asarray(delta_star, dtype=np.float64)
    d_out = delta_star.shape[0]
    if X is None:
        sv, n = np.linalg.svd(delta_star, compute_uv=False), 1
    else:
        X = np.asarray(X, dtype=np.float64)
        n = X.shape[0]
        R = np.linalg.qr(X, mode="r")
        if np.linalg.matrix_rank(R) < R.shape[1]:
            raise ValueError("X must have full column rank for the floor to be well defined")
        sv = np.linalg.svd(delta_star @ R.T, compute_uv=False)
    return float(np.sum(sv[r:] ** 2) / (n * d_out))
