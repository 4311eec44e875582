r"""Batch normalisation as a bijector (as used between the MADEs of MAF)."""
import numpy as np

from ..core import Bijector
from ..gradcheck import register


class BatchNorm(Bijector):
    r"""Batch normalisation with an exact log-determinant (Dinh et al. 2016, appendix E;
    Papamakarios et al. 2017, section 3.4).

    Statistics: in training mode (``train()``) the batch's own mean and (biased) variance,
        m = mean_n x_n,   v = mean_n (x_n - m)^2,
    and the running averages are updated in place (``running <- (1 - momentum) running +
    momentum * batch``); in evaluation mode (``eval()``) m and v are the running averages.
    Forward:  xhat = (x - m) / sigma,   sigma = sqrt(v + eps);   z = exp(log_gamma) * xhat + beta
    Inverse:  x = (z - beta) * exp(-log_gamma) * sigma + m     (always the running averages:
              a batch of noise has no data statistics, so sampling uses them in either mode)
    Log-det:  forward  sum_j (log_gamma_j - log sigma_j)   (the same for every example);
              inverse  minus that, with the running averages
    Backward (evaluation mode: m, v constants):
              dxhat = dz * exp(log_gamma);   dx = dxhat / sigma
              dbeta = sum_n dz;   dlog_gamma = sum_n dz * exp(log_gamma) * xhat + sum_n dlogdet
    Backward (training mode: m and v are functions of the whole batch), with S = sum_n dlogdet
              (log sigma's gradient through v) and the same dbeta, dlog_gamma:
              dx = (N dxhat - sum_n dxhat - xhat * (sum_n dxhat * xhat + S)) / (N sigma)
    Inverse backward (running averages):  xhat = (z - beta) * exp(-log_gamma)
              dz = dx * sigma * exp(-log_gamma);   dbeta = -sum_n dz
              dlog_gamma = -sum_n dx * xhat * sigma - sum_n dlogdet

    In training mode the map is not example-wise: each z_n depends on the whole batch, and
    logdet is log|det| of the per-example map with the statistics held fixed (the MAF paper's
    convention), not of the whole batch's Jacobian. The registry checks the evaluation-mode
    layer; the training-mode backward is checked on a whole-batch loss in the tests.

    Shapes: x, z (N, D); logdet (N,). Parameters ``log_gamma``, ``beta`` (D,); buffers
    ``running_mean``, ``running_var`` (D,), saved and loaded with the model.

    References
    ----------
    Ioffe, Szegedy (2015), arXiv:1502.03167; Dinh, Sohl-Dickstein, Bengio (2016),
    arXiv:1605.08803; Papamakarios, Pavlakou, Murray (2017), arXiv:1705.07057.
    """

    def __init__(self, dim, momentum=0.1, eps=1e-5, dtype=np.float64):
        super().__init__()
        self.dim = int(dim)
        self.momentum = float(momentum)
        self.eps = float(eps)
        self.add_param("log_gamma", np.zeros(dim, dtype=dtype))
        self.add_param("beta", np.zeros(dim, dtype=dtype))
        self.buffers["running_mean"] = np.zeros(dim, dtype=dtype)
        self.buffers["running_var"] = np.ones(dim, dtype=dtype)

    def forward(self, x):
        x = self._check(x)
        if self.training:
            m = x.mean(axis=0)
            v = ((x - m) ** 2).mean(axis=0)
            for name, batch in (("running_mean", m), ("running_var", v)):
                running = self.buffers[name]
                running *= 1 - self.momentum  # in place: the buffer arrays are kept
                running += self.momentum * batch
        else:
            m, v = self.buffers["running_mean"], self.buffers["running_var"]
        sigma = np.sqrt(v + self.eps)
        xhat = (x - m) / sigma
        log_gamma = self.params["log_gamma"]
        z = xhat * np.exp(log_gamma) + self.params["beta"]
        logdet = np.full(x.shape[0], (log_gamma - np.log(sigma)).sum(), dtype=z.dtype)
        return z, logdet, (xhat, sigma, self.training)

    def inverse(self, z):
        z = self._check(z)
        sigma = np.sqrt(self.buffers["running_var"] + self.eps)
        log_gamma = self.params["log_gamma"]
        xhat = (z - self.params["beta"]) * np.exp(-log_gamma)
        x = xhat * sigma + self.buffers["running_mean"]
        logdet = np.full(z.shape[0], -(log_gamma - np.log(sigma)).sum(), dtype=x.dtype)
        return x, logdet, (xhat, sigma)

    def backward(self, dz, dlogdet, cache):
        xhat, sigma, training = cache
        gamma = np.exp(self.params["log_gamma"])
        self.grads["beta"] += dz.sum(axis=0)
        self.grads["log_gamma"] += (dz * xhat).sum(axis=0) * gamma + dlogdet.sum()
        dxhat = dz * gamma
        if not training:
            return dxhat / sigma
        n = dz.shape[0]
        total = dlogdet.sum()
        return (n * dxhat - dxhat.sum(axis=0)
                - xhat * ((dxhat * xhat).sum(axis=0) + total)) / (n * sigma)

    def inverse_backward(self, dx, dlogdet, cache):
        xhat, sigma = cache
        dz = dx * sigma * np.exp(-self.params["log_gamma"])
        self.grads["beta"] -= dz.sum(axis=0)
        self.grads["log_gamma"] -= (dx * xhat).sum(axis=0) * sigma + dlogdet.sum()
        return dz

    def __repr__(self):
        return f"BatchNorm(dim={self.dim}, {'training' if self.training else 'eval'})"


def _randomize_eval(layer, rng, scale):
    """Parameters off zero and running statistics off (0, 1); variance kept positive."""
    layer.params["log_gamma"] += scale * rng.standard_normal(layer.dim)
    layer.params["beta"] += scale * rng.standard_normal(layer.dim)
    layer.buffers["running_mean"] += rng.standard_normal(layer.dim)
    layer.buffers["running_var"] *= np.exp(rng.standard_normal(layer.dim))
    return layer


# evaluation mode: an example-wise map, so the registry's per-example Jacobian checks apply
register("BatchNorm(eval)", lambda d, r: BatchNorm(d).eval(), randomize=_randomize_eval)


from ..assignment.catalogue import exercise  # noqa: E402

exercise("BatchNorm.backward", BatchNorm, "hard",
         "BatchNorm's VJP in both modes: batch statistics depend on every example",
         registry=("BatchNorm(eval)",), extra=("batchnorm_train",),
         shapes="dz (N, D), dlogdet (N,), cache (xhat, sigma, training) -> dx (N, D); add "
                "dlog_gamma (D,), dbeta (D,)")
