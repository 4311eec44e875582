r"""Batch normalisation as a bijector: of vectors (as used between the MADEs of MAF) and of
images per channel (RealNVP)."""
import numpy as np

from ..core import Bijector, check_images
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
        return self._forward(self._check(x))

    def _forward(self, x):
        """``forward`` on rows (N, D) that were checked already (``BatchNorm2d``'s pixels)."""
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
        return self._inverse(self._check(z))

    def _inverse(self, z):
        """``inverse`` on rows (N, D) that were checked already."""
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

    def check_state(self):
        var = self.buffers["running_var"]
        if not (np.isfinite(var).all() and (var >= 0).all()
                and np.isfinite(self.buffers["running_mean"]).all()):
            raise ValueError(f"{type(self).__name__}: expected finite running statistics with "
                             f"running_var >= 0, got running_var = {var.tolist()}")

    def __repr__(self):
        return f"BatchNorm(dim={self.dim}, {'training' if self.training else 'eval'})"



def _rows(x):
    """(N, C, H, W) -> (N H W, C): one row per pixel, the rows of image n contiguous."""
    n, c, h, w = x.shape
    return x.transpose(0, 2, 3, 1).reshape(n * h * w, c)


def _images(rows, shape):
    """The inverse of ``_rows``: (N H W, C) -> (N, C, H, W) of ``shape``."""
    n, c, h, w = shape
    return np.ascontiguousarray(rows.reshape(n, h, w, c).transpose(0, 3, 1, 2))


class BatchNorm2d(BatchNorm):
    r"""Batch normalisation of images per channel: ``BatchNorm`` applied to every pixel.

    Every pixel's channel vector is one row, u[(n, h, w), c] = x[n, c, h, w], so the
    statistics of channel c run over the N H W pixels of the batch:
        m_c = mean_{n,h,w} x[n, c, h, w],   v_c = mean_{n,h,w} (x[n, c, h, w] - m_c)^2
    (running averages in evaluation mode), and ``BatchNorm``'s math applies to the rows
    (RealNVP's batch normalisation of images, Dinh et al. 2016, section 3.7):
    Forward:  xhat = (x - m_c) / sigma_c,   sigma_c = sqrt(v_c + eps)
              z = exp(log_gamma_c) * xhat + beta_c
    Inverse:  x = (z - beta_c) * exp(-log_gamma_c) * sigma_c + m_c   (running averages)
    Log-det:  each pixel's row has log-det sum_c (log_gamma_c - log sigma_c), and an image is
              its H W pixels, so forward  H W sum_c (log_gamma_c - log sigma_c)  for every
              example;  inverse  minus that, with the running averages
    Backward: the image's dlogdet[n] reaches each of its H W rows (the log-det is their sum):
              drow_logdet[(n, h, w)] = dlogdet[n];   du = BatchNorm.backward(dz rows,
              drow_logdet); dx = du back to (N, C, H, W). In training mode that is, per
              channel, with P = N H W and S = H W sum_n dlogdet:
              dxhat = dz * exp(log_gamma);   dbeta = sum_{n,h,w} dz
              dlog_gamma = sum_{n,h,w} dz * exp(log_gamma) * xhat + S
              dx = (P dxhat - sum_{n,h,w} dxhat - xhat (sum_{n,h,w} dxhat * xhat + S)) / (P sigma)
              (evaluation mode: dx = dxhat / sigma)
    Inverse backward: ``BatchNorm.inverse_backward`` on the rows, dlogdet repeated the same way.

    As for ``BatchNorm``, in training mode each z depends on the whole batch and logdet is the
    per-example log-det with the statistics held fixed; the registry checks evaluation mode,
    the tests check the training-mode backward on a whole-batch loss.

    Shapes: x, z (N, C, H, W); logdet (N,). Parameters ``log_gamma``, ``beta`` (C,); buffers
    ``running_mean``, ``running_var`` (C,).

    References
    ----------
    Ioffe, Szegedy (2015), arXiv:1502.03167, section 3.2 (convolutional layers);
    Dinh, Sohl-Dickstein, Bengio (2016), arXiv:1605.08803, section 3.7.
    """

    def __init__(self, channels, momentum=0.1, eps=1e-5, dtype=np.float64):
        super().__init__(channels, momentum, eps, dtype)
        self.channels = int(channels)
        self.dim = None  # images: any H and W; see ``channels``

    def _check(self, x):
        return check_images(x, "BatchNorm2d", self.channels)

    def forward(self, x):
        x = self._check(x)
        z_rows, logdet_rows, cache = self._forward(_rows(x))
        logdet = logdet_rows.reshape(x.shape[0], -1).sum(axis=1)  # over each image's pixels
        return _images(z_rows, x.shape), logdet, (cache, x.shape)

    def inverse(self, z):
        z = self._check(z)
        x_rows, logdet_rows, cache = self._inverse(_rows(z))
        logdet = logdet_rows.reshape(z.shape[0], -1).sum(axis=1)  # over each image's pixels
        return _images(x_rows, z.shape), logdet, (cache, z.shape)

    def backward(self, dz, dlogdet, cache):
        rows_cache, shape = cache
        drow_logdet = np.repeat(dlogdet, shape[2] * shape[3])
        return _images(super().backward(_rows(dz), drow_logdet, rows_cache), shape)

    def inverse_backward(self, dx, dlogdet, cache):
        rows_cache, shape = cache
        drow_logdet = np.repeat(dlogdet, shape[2] * shape[3])
        return _images(super().inverse_backward(_rows(dx), drow_logdet, rows_cache), shape)

    def __repr__(self):
        return f"BatchNorm2d(channels={self.channels}, {'training' if self.training else 'eval'})"


def _randomize_eval(layer, rng, scale):
    """Parameters off zero and running statistics off (0, 1); variance kept positive."""
    d = layer.params["beta"].size  # the features, or an image layer's channels
    layer.params["log_gamma"] += scale * rng.standard_normal(d)
    layer.params["beta"] += scale * rng.standard_normal(d)
    layer.buffers["running_mean"] += rng.standard_normal(d)
    layer.buffers["running_var"] *= np.exp(rng.standard_normal(d))
    return layer


# evaluation mode: an example-wise map, so the registry's per-example Jacobian checks apply
register("BatchNorm(eval)", lambda d, r: BatchNorm(d).eval(), randomize=_randomize_eval)


def _images_input(layer, n, rng):
    """Small images (H, W <= 4): the numerical Jacobian has C H W columns."""
    h, w = (int(v) for v in rng.integers(1, 5, size=2))
    return rng.standard_normal((n, layer.channels, h, w))


register("BatchNorm2d(eval)", lambda d, r: BatchNorm2d(d).eval(), inputs=_images_input,
         randomize=_randomize_eval)
