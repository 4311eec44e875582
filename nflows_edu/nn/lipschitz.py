r"""Lipschitz networks for residual and implicit flows (bijectors/residual.py, implicit.py):
a spectrally normalised Linear, 1-Lipschitz activations with first and second derivatives,
and an MLP that propagates Jacobian-vector products forward and back."""
import numpy as np

from ..core import Module, check_array
from .basic import Sine


def top_singular_pair(W):
    """(u, v): unit vectors with u^T W v = ||W||_2, the largest singular value of W (I, O)."""
    U, _, Vt = np.linalg.svd(W, full_matrices=False)
    return U[:, 0].copy(), Vt[0].copy()


def check_lipschitz_bound(c, where):
    """``float(c)`` for a Lipschitz bound with 0 < c < 1, else ``ValueError`` naming ``where``
    (the layer or model that was given it)."""
    if not (isinstance(c, (int, float, np.floating)) and 0 < c < 1):
        raise ValueError(f"{where}: expected a Lipschitz bound c with 0 < c < 1 (the residual "
                         f"map must be a contraction to be invertible), got {c!r}")
    return float(c)


class SpectralLinear(Module):
    r"""Affine layer whose weight is spectrally normalised to norm at most ``c``.

    Forward:  sigma = u^T W v;   s = max(1, sigma / c);   W_hat = W / s
              y = x @ W_hat + b,                x (N, I), W (I, O), u (I,), v (O,), y (N, O)
    Backward: dW_hat = x^T @ dy;  db = sum_n dy;  dx = dy @ W_hat^T
              dW = dW_hat                                     if s == 1
              dW = (dW_hat - <dW_hat, W_hat> u v^T / c) / s    if s > 1  (s = sigma / c)
              (u, v held constant, as in Miyato et al. and the residual-flow papers)

    Where u and v come from depends on the mode (``train()`` / ``eval()``):

    * **training**: ``u`` and ``v`` are buffers (saved with the model, not trained), the
      papers' power iteration ``v <- W^T u / ||W^T u||;  u <- W v / ||W v||``, which drives
      ``u^T W v`` up to the largest singular value of ``W``. ``forward`` never changes them,
      so the layer is a deterministic function of its parameters and buffers (the
      finite-difference checks need that); ``update(n)`` runs ``n`` steps, and a
      ``ResidualBlock`` calls it after each backward pass (``power_iterations``). The
      estimate lags the weights it follows: ``u^T W v <= ||W||_2`` for unit u, v, so right
      after the weights move (a large step, a perturbation) ``||W_hat||_2`` can exceed c.
    * **evaluation**: ``u`` and ``v`` are the exact top singular vectors of the weights as
      they are now (``top_singular_pair``, an SVD: the matrices here are at most a few
      hundred wide), so sigma = ||W||_2 and ``||W_hat||_2 <= c`` holds for *any*
      parameters, which is what sampling and density evaluation of a residual flow need.
      The backward formula above is then the exact gradient (d sigma / dW = u v^T).

    References: Miyato, Kataoka, Koyama, Yoshida (2018), arXiv:1802.05957;
    Behrmann et al. (2019), arXiv:1811.00995, section 3.2.
    """

    def __init__(self, n_in, n_out, c=0.9, rng=None, dtype=np.float64):
        super().__init__()
        rng = np.random.default_rng() if rng is None else rng
        self.c = check_lipschitz_bound(c, "SpectralLinear")
        bound = 1.0 / np.sqrt(n_in)
        self.add_param("W", rng.uniform(-bound, bound, (n_in, n_out)).astype(dtype))
        self.add_param("b", rng.uniform(-bound, bound, n_out).astype(dtype))
        u = rng.standard_normal(n_in)
        self.buffers["u"] = (u / np.linalg.norm(u)).astype(dtype)
        self.buffers["v"] = np.zeros(n_out, dtype=dtype)
        self.n_in, self.n_out = n_in, n_out
        self.update(100)

    def update(self, n=1):
        """Run ``n`` power-iteration steps on ``u``, ``v`` (in place); returns sigma = u^T W v."""
        W, u, v = self.params["W"], self.buffers["u"], self.buffers["v"]
        for _ in range(int(n)):
            Wu = W.T @ u
            v[...] = Wu / max(np.linalg.norm(Wu), 1e-30)
            Wv = W @ v
            u[...] = Wv / max(np.linalg.norm(Wv), 1e-30)
        return float(u @ W @ v)

    def converge(self):
        """Set ``u``, ``v`` to the exact top singular vectors of ``W``, so the power iteration
        starts from where it would converge; returns sigma = ||W||_2. ``train.fit`` calls it
        before the first step: weights moved without the iteration (a perturbation, edited or
        loaded arrays) would otherwise start training with a bound that does not hold."""
        u, v = top_singular_pair(self.params["W"])
        self.buffers["u"][...], self.buffers["v"][...] = u, v
        return float(u @ self.params["W"] @ v)

    def weight(self):
        """(W_hat, s, u, v): the normalised weight, its divisor s >= 1, and the u, v it used
        (copies of the buffers in training mode, the exact singular vectors in evaluation)."""
        W = self.params["W"]
        if self.training:
            u, v = self.buffers["u"].copy(), self.buffers["v"].copy()
        else:
            u, v = top_singular_pair(W)
        sigma = u @ W @ v
        s = max(1.0, float(sigma) / self.c)
        return W / s, s, u, v

    def weight_backward(self, dW_hat, W_hat, s, u, v):
        """Add dW (from dW_hat, the gradient with respect to W_hat) into ``grads['W']``."""
        if s == 1.0:
            self.grads["W"] += dW_hat
        else:
            self.grads["W"] += (dW_hat - np.sum(dW_hat * W_hat) / self.c * np.outer(u, v)) / s

    def forward(self, x):
        W_hat, s, u, v = self.weight()
        return x @ W_hat + self.params["b"], (x, W_hat, s, u, v)

    def backward(self, dy, cache):
        x, W_hat, s, u, v = cache
        self.weight_backward(x.T @ dy, W_hat, s, u, v)
        self.grads["b"] += dy.sum(axis=0)
        return dy @ W_hat.T

    def __repr__(self):
        return f"SpectralLinear({self.n_in}, {self.n_out}, c={self.c})"


class LipSwish(Module):
    r"""LipSwish, a smooth 1-Lipschitz activation (Residual Flows).

    Forward:  beta = softplus(rho);  q = sigmoid(beta x);  y = x q / 1.1
    Derivatives (for the Jacobian of a residual block):
              y'  = (q + beta x q (1 - q)) / 1.1
              y'' = beta q (1 - q) (2 + beta x (1 - 2 q)) / 1.1
    Backward: dx = dy * y';   drho = sigmoid(rho) * sum(dy * dy/dbeta),  dy/dbeta = x^2 q (1-q)/1.1

    Swish's slope never exceeds about 1.0998 for any beta > 0, so dividing by 1.1 makes it
    1-Lipschitz; softplus keeps beta positive while rho is unconstrained. rho starts at 0.5.
    References: Chen, Behrmann, Duvenaud, Jacobsen (2019), arXiv:1906.02735, section 4.
    """

    def __init__(self, dtype=np.float64):
        super().__init__()
        self.add_param("rho", np.full(1, 0.5, dtype=dtype))

    def beta(self):
        return np.logaddexp(0, self.params["rho"][0])  # softplus, without overflow

    def derivatives(self, x):
        """(y, y', y'') elementwise."""
        beta = self.beta()
        q = 0.5 * (1 + np.tanh(0.5 * beta * x))  # sigmoid, without overflow
        qq = q * (1 - q)
        y = x * q / 1.1
        d1 = (q + beta * x * qq) / 1.1
        d2 = beta * qq * (2 + beta * x * (1 - 2 * q)) / 1.1
        return y, d1, d2

    def param_backward(self, x, dy, dd1=None):
        r"""Add drho for upstream gradients ``dy`` of y and (optionally) ``dd1`` of y'.

        dy/dbeta = x^2 q (1 - q) / 1.1;   dy'/dbeta = x q (1 - q) (2 + beta x (1 - 2 q)) / 1.1
        """
        beta = self.beta()
        q = 0.5 * (1 + np.tanh(0.5 * beta * x))
        qq = q * (1 - q)
        dbeta = np.sum(dy * x * x * qq) / 1.1
        if dd1 is not None:
            dbeta += np.sum(dd1 * x * qq * (2 + beta * x * (1 - 2 * q))) / 1.1
        rho = self.params["rho"][0]
        self.grads["rho"] += dbeta * 0.5 * (1 + np.tanh(0.5 * rho))  # dbeta/drho = sigmoid(rho)

    def forward(self, x):
        return self.derivatives(x)[0], x

    def backward(self, dy, cache):
        x = cache
        self.param_backward(x, dy)
        return dy * self.derivatives(x)[1]

    def __repr__(self):
        return "LipSwish()"


LIPSCHITZ_ACTIVATIONS = {"lipswish": LipSwish, "sine": Sine}


class LipschitzMLP(Module):
    r"""MLP with spectrally normalised layers and 1-Lipschitz activations: Lip(g) <= c.

    Forward:  h_0 = x;  a_k = h_{k-1} @ W_hat_k + b_k;  h_k = phi(a_k)  (k < K);  g = a_K
    Each ``W_hat_k`` has spectral norm <= c and phi is 1-Lipschitz, so ``Lip(g) <= c`` (the
    last layer carries c, the others could carry 1; all carry c, as in the i-ResNet code).

    Jacobian-vector products in forward mode (``jvp_forward``): the rows of ``V`` (N, m, D)
    are tangents at x, propagated alongside the values:
              T_0 = V;  M_k = T_{k-1} @ W_hat_k;  T_k = M_k * phi'(a_k);  G = M_K
    so G[n, r] = (J_g(x_n) V[n, r]^T)^T; with V = I, G = J_g^T (G[n, i, j] = dg_j / dx_i).
    Reverse mode through both the value and the tangent paths (``jvp_backward``), given
    dg (N, D) and dG (N, m, D):
              dM_k = dT_k * phi'(a_k);   dphi'_k = sum_r dT_k[:, r] * M_k[:, r]
              da_k = dh_k * phi'(a_k) + dphi'_k * phi''(a_k)
              dW_hat_k = h_{k-1}^T da_k + sum_{n, r} T_{k-1}[n, r]^T dM_k[n, r]
              dh_{k-1} = da_k @ W_hat_k^T;   dT_{k-1} = dM_k @ W_hat_k^T
    This is how the exact log-det's parameter gradient  tr((I + J_g)^{-1} dJ_g/dtheta)  and
    the Neumann-series gradient of residual flows are computed, by hand.
    """

    def __init__(self, sizes, c=0.9, activation="lipswish", rng=None, dtype=np.float64):
        super().__init__()
        if len(sizes) < 2:
            raise ValueError(f"LipschitzMLP: expected sizes (n_in, ..., n_out), got {sizes!r}")
        if activation not in LIPSCHITZ_ACTIVATIONS:
            raise ValueError(f"LipschitzMLP: expected activation in "
                             f"{sorted(LIPSCHITZ_ACTIVATIONS)}, got {activation!r}")
        self.c = check_lipschitz_bound(c, "LipschitzMLP")
        rng = np.random.default_rng() if rng is None else rng
        self.sizes = tuple(int(s) for s in sizes)
        self.linears = [SpectralLinear(i, o, c, rng, dtype)
                        for i, o in zip(self.sizes[:-1], self.sizes[1:])]
        self.acts = [LIPSCHITZ_ACTIVATIONS[activation](dtype=dtype) for _ in self.linears[:-1]]

    def update(self, n=1):
        """``n`` power-iteration steps in every layer; returns the layers' sigma estimates."""
        return [layer.update(n) for layer in self.linears]

    def weights(self):
        """Every layer's ``(W_hat, s, u, v)`` (``SpectralLinear.weight``). A solver that
        evaluates g many times at the same parameters computes them once and passes them to
        ``value`` (in evaluation mode each is an SVD)."""
        return [layer.weight() for layer in self.linears]

    def value(self, x, weights=None):
        """g(x) alone (no cache, no derivatives): what a fixed-point iteration evaluates."""
        weights = self.weights() if weights is None else weights
        h = x
        for k, (layer, (W_hat, _, _, _)) in enumerate(zip(self.linears, weights)):
            h = h @ W_hat + layer.params["b"]
            if k < len(self.acts):
                h = self.acts[k].forward(h)[0]
        return h

    # ------------------------------------------------------------------ forward mode
    def jvp_forward(self, x, V=None, weights=None):
        r"""g(x) (N, D_out), G (N, m, D_out) (None if V is None), and the cache."""
        weights = self.weights() if weights is None else weights
        h, T = x, V
        caches = []
        for k, (layer, (W_hat, s, u, v)) in enumerate(zip(self.linears, weights)):
            a = h @ W_hat + layer.params["b"]
            # (N, m, I) -> (N m, I): one BLAS product instead of N small ones
            M = None if T is None else (T.reshape(-1, T.shape[2]) @ W_hat).reshape(
                T.shape[0], T.shape[1], -1)
            if k == len(self.linears) - 1:
                caches.append((h, T, (W_hat, s, u, v), a, None, None, M))
                return a, M, caches
            y, d1, d2 = self.acts[k].derivatives(a)
            caches.append((h, T, (W_hat, s, u, v), a, d1, d2, M))
            h = y
            T = None if M is None else M * d1[:, None, :]

    def jvp_backward(self, dg, dG, caches, params=True):
        r"""Reverse mode through ``jvp_forward``: returns dx and, if ``params``, adds the
        parameter gradients. ``dg`` or ``dG`` may be None (no gradient on that output)."""
        dh, dT = dg, dG
        for k in reversed(range(len(self.linears))):
            h, T, (W_hat, s, u, v), a, d1, d2, M = caches[k]
            if k == len(self.linears) - 1:
                da, dM = dh, dT
            else:
                dd1 = None
                da = None if dh is None else dh * d1
                dM = None
                if dT is not None:
                    dM = dT * d1[:, None, :]
                    dd1 = np.einsum("nro,nro->no", dT, M)
                    da = dd1 * d2 if da is None else da + dd1 * d2
                if params:
                    self.acts[k].param_backward(a, 0.0 if dh is None else dh, dd1)
            if da is None:
                da = np.zeros_like(a)
            if params:
                layer = self.linears[k]
                dW_hat = h.T @ da
                if dM is not None:  # sum over n and r of T^T dM, as one BLAS product
                    dW_hat += T.reshape(-1, T.shape[2]).T @ dM.reshape(-1, dM.shape[2])
                layer.weight_backward(dW_hat, W_hat, s, u, v)
                layer.grads["b"] += da.sum(axis=0)
            dh = da @ W_hat.T
            # the tangents start at the constant V: no gradient is needed below layer 0
            dT = None if (dM is None or k == 0) else (
                dM.reshape(-1, dM.shape[2]) @ W_hat.T).reshape(dM.shape[0], dM.shape[1], -1)
        return dh

    def vjp(self, dg, caches):
        """w^T J_g(x) for rows w of ``dg`` (N, D_out), no parameter gradients."""
        return self.jvp_backward(dg, None, caches, params=False)

    # ------------------------------------------------------------------ the Module pattern
    def forward(self, x):
        x = check_array(x, "LipschitzMLP", self.sizes[0])
        y, _, caches = self.jvp_forward(x)
        return y, caches

    def backward(self, dy, caches):
        return self.jvp_backward(dy, None, caches)

    def __repr__(self):
        return f"LipschitzMLP({self.sizes}, c={self.c}, {self.acts[0]!r})" if self.acts else \
            f"LipschitzMLP({self.sizes}, c={self.c})"
