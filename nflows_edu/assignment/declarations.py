r"""The exercises of the library's layers: one ``exercise(...)`` per method a student could
write, grouped by the layer's module, in the order ``nflows-edu assignment list`` prints them.

The layers know nothing of the course: this module imports them (and ``catalogue``'s
``exercise``) and declares, for each exercise, the registry entries that grade it
(``register(...)`` stays next to each layer), the TODO line of the stub (``shapes``) and the
helpers kept out of the student's module (``hide``). Nothing in the library imports this
module; ``assignment/__init__.py`` does, so the catalogue is complete as soon as
``nflows_edu.assignment`` is imported.
"""
import numpy as np

from ..bijectors.autoregressive import MAF
from ..bijectors.cnf import CNF, TimeField
from ..bijectors.coupling import AdditiveCoupling, AffineCoupling
from ..bijectors.elementwise import Scaling
from ..bijectors.glow import ActNorm, Invertible1x1Conv, LUInvertible1x1Conv
from ..bijectors.image_coupling import ImageAffineCoupling
from ..bijectors.multiscale import MultiScale
from ..bijectors.normalization import BatchNorm
from ..bijectors.permutation import Permutation
from ..bijectors.preprocess import Logit
from ..bijectors.reshape import Squeeze
from ..bijectors.residual import ResidualBlock
from ..bijectors.spline import RQSpline
from ..nn import MADE, MLP, Linear, MaskedLinear, SpectralLinear
from .catalogue import exercise


# ------------------------------------------------------------------ nn
# (graded inside the registry's layers that use these networks)
def _made_use_own_masks(made):
    """Rebuild a MADE's MaskedLinear masks with its own ``masks()`` (a student's version)."""
    masks = made.masks()
    layers = made.masked_layers
    if len(masks) != len(layers):
        raise ValueError(f"MADE.masks: expected {len(layers)} masks, got {len(masks)}")
    for layer, mask in zip(layers, masks):
        mask = np.asarray(mask)
        if mask.shape != layer.mask.shape:
            raise ValueError(f"MADE.masks: expected a mask of shape {layer.mask.shape}, got "
                             f"shape {mask.shape}")
        layer.mask = mask.astype(layer.mask.dtype)


exercise("Linear.backward", Linear, "easy",
         "the VJP of y = x @ W + b: dx, and dW, db added into grads",
         registry=("AffineCoupling", "AdditiveCoupling"),
         shapes="dy (N, O) -> dx (N, I); add dW (I, O) and db (O,) into self.grads")
exercise("MLP.backward", MLP, "easy",
         "backpropagation through a stack of layers, last to first",
         registry=("AffineCoupling",),
         shapes="dy (N, n_out), caches (one per layer) -> dx (N, n_in)")
exercise("MaskedLinear.backward", MaskedLinear, "easy",
         "the VJP of a masked affine layer: masked-out weights get zero gradient",
         registry=("MAF",),
         shapes="dy (N, O), cache (x, W * M) -> dx (N, I); add dW (I, O) (masked), db (O,)")
exercise("MADE.masks", MADE, "medium",
         "MADE's masks from the degrees: each output sees only the features before it",
         registry=("MAF", "MAF(reference)"), setup=_made_use_own_masks,
         shapes="-> list of binary arrays, mask k of shape (len(degrees[k]), "
                "len(degrees[k+1])), from self.degrees")
exercise("SpectralLinear.weight_backward", SpectralLinear, "hard",
         "the gradient through spectral normalisation W_hat = W / max(1, u^T W v / c)",
         registry=("ResidualBlock(sigma>c)",),
         shapes="dW_hat (I, O), W_hat (I, O), s float, u (I,), v (O,) -> None; "
                "add dW (I, O) into self.grads['W']")


# ------------------------------------------------------------------ bijectors.coupling
_VJP = ("dz (N, D), dlogdet (N,), cache (as forward returns it) -> dx (N, D); add the net's "
        "gradients (net.backward)")
_IVJP = ("dx (N, D), dlogdet (N,), cache (as inverse returns it) -> dz (N, D); add the "
         "net's gradients (net.backward)")
exercise("AdditiveCoupling.forward", AdditiveCoupling, "easy",
         "NICE's coupling: z_a = x_a, z_b = x_b + t(x_a), log-det 0",
         registry=("AdditiveCoupling",),
         shapes="x (N, D) -> z (N, D), logdet (N,) zeros, cache = the net's cache (what "
                "backward reads)")
exercise("AdditiveCoupling.inverse", AdditiveCoupling, "easy",
         "NICE's inverse: x_b = z_b - t(z_a)", registry=("AdditiveCoupling",),
         shapes="z (N, D) -> x (N, D), logdet (N,) zeros, cache = the net's cache")
exercise("AdditiveCoupling.backward", AdditiveCoupling, "easy",
         "the VJP of the additive coupling, through the shift network",
         registry=("AdditiveCoupling",), shapes=_VJP)
exercise("AffineCoupling.forward", AffineCoupling, "easy",
         "RealNVP's coupling: z_b = x_b * exp(s) + t, log-det sum s",
         registry=("AffineCoupling",),
         shapes="x (N, D) -> z (N, D), logdet (N,), cache = (x_b, s, net_cache) (what "
                "backward reads)", hide=("affine_forward",))
exercise("AffineCoupling.inverse", AffineCoupling, "easy",
         "RealNVP's inverse: x_b = (z_b - t) * exp(-s), log-det -sum s",
         registry=("AffineCoupling", "Inverse(AffineCoupling)"),
         shapes="z (N, D) -> x (N, D), logdet (N,), cache = (x_b, s, net_cache) (what "
                "inverse_backward reads)", hide=("affine_inverse",))
exercise("AffineCoupling.backward", AffineCoupling, "medium",
         "the VJP of the affine coupling: through exp(s), the log-det and the soft bound",
         registry=("AffineCoupling",), shapes=_VJP, hide=("affine_backward",))
exercise("AffineCoupling.inverse_backward", AffineCoupling, "medium",
         "the VJP of the affine coupling's inverse (signs and exp(-s) everywhere)",
         registry=("AffineCoupling", "Inverse(AffineCoupling)"), shapes=_IVJP,
         hide=("affine_inverse_backward",))


# ------------------------------------------------------------------ bijectors.autoregressive
exercise("MAF.backward", MAF, "medium",
         "MAF's density-direction VJP: through exp(-alpha), the log-det and the MADE",
         registry=("MAF",),
         shapes="dz (N, D), dlogdet (N,), cache (z, alpha, exp(-alpha), made_cache) -> "
                "dx (N, D); add the MADE's gradients (made.backward)")
exercise("MAF.inverse", MAF, "medium",
         "MAF's sampling direction: the sequential loop, one feature at a time in the order",
         registry=("MAF(reference)",),
         shapes="z (N, D) -> x (N, D), logdet (N,) = +sum_i alpha_i, cache None; "
                "loop over self.made.order, one MADE pass (self.made._forward) per feature",
         hide=("maf_inverse_reference",))  # the loop itself, beside MAF


# ------------------------------------------------------------------ bijectors.cnf
exercise("TimeField.jvp_forward", TimeField, "hard",
         "Jacobian-vector products of the field's MLP in forward mode: the tangents through "
         "each linear layer (x's rows of W_1 only: t has no tangent) and each tanh'",
         registry=("CNF",),
         shapes="x (N, D), t a float or (N,), V (N, m, D) -> v (N, D), G (N, m, D) with "
                "G[n, r] = J_n V[n, r], caches: one (h, T, d1, d2, M) per linear layer, as "
                "jvp_backward reads them (d1, d2 = tanh', tanh'' from tanh_derivatives; None "
                "for the last layer)")
exercise("TimeField.trace_forward", TimeField, "easy",
         "the exact trace of the field's Jacobian from D forward-mode JVPs (V = I), or "
         "Hutchinson's estimate from the given tangents",
         registry=("CNF",),
         shapes="x (N, D), t, V None or (N, m, D) -> v (N, D), tr (N,), cache (caches, V) "
                "as trace_backward reads it; jvp_forward gives G = J V")
exercise("CNF.forward", CNF, "medium",
         "the augmented state [x, 0] integrated by classical RK4 in n_steps fixed steps from "
         "t = 0 to 1: z and the log-det int_0^1 tr(dv/dx) dt",
         registry=("CNF",), hide=("rk4",),
         shapes="x (N, D) -> z (N, D), logdet (N,), cache dict(states=[y_0, ..., y_n] (N, "
                "D + 1) each, t0=0.0, t1=1.0, nfe, V); V = self._probes(x) (None: the exact "
                "trace) and self._augmented(t, y, V) is F = [v, tr]; the adjoint option may "
                "call self._integrate(x, 0.0, 1.0)")
exercise("CNF.backward", CNF, "hard",
         "discretise-then-optimise: the VJP of every RK4 step of forward, last to first, "
         "with the gradient of the log-det carried in the augmented state",
         registry=("CNF",), hide=("rk4_step_backward",),
         shapes="dz (N, D), dlogdet (N,), cache (forward's: states, t0, t1, V) -> dx (N, D); "
                "self._augmented_cached(t, y, V) and self._augmented_backward are F and its "
                "VJP; the adjoint option may call self._adjoint_backward")


# ------------------------------------------------------------------ bijectors.elementwise
exercise("Scaling.forward", Scaling, "easy",
         "z = x * exp(log_s), every feature scaled, and the log-det sum_j log_s[j]",
         registry=("Scaling",),
         shapes="x (N, D) -> z (N, D), logdet (N,), cache (x, z)")
exercise("Scaling.inverse", Scaling, "easy",
         "x = z * exp(-log_s), every feature unscaled, and the log-det -sum_j log_s[j]",
         registry=("Scaling",),
         shapes="z (N, D) -> x (N, D), logdet (N,), cache (z, x)")
exercise("Scaling.backward", Scaling, "easy",
         "the VJP of z = x * exp(log_s), with the gradient of the log-det sum log_s",
         registry=("Scaling",),
         shapes="dz (N, D), dlogdet (N,), cache (x, z) -> dx (N, D); add dlog_s (D,) into "
                "self.grads['log_s']")
exercise("Scaling.inverse_backward", Scaling, "easy",
         "the VJP of x = z * exp(-log_s), log-det -sum log_s", registry=("Scaling",),
         shapes="dx (N, D), dlogdet (N,), cache (z, x) -> dz (N, D); add dlog_s (D,)")


# ------------------------------------------------------------------ bijectors.glow
exercise("ActNorm.forward", ActNorm, "easy",
         "Glow's per-channel affine map on images, log-det H W sum log_s",
         registry=("ActNorm",),
         shapes="x (N, C, H, W) -> z (N, C, H, W), logdet (N,), cache = x (what backward "
                "reads)")
exercise("ActNorm.backward", ActNorm, "easy",
         "ActNorm's VJP: sums over examples and pixels, the H W factor of the log-det",
         registry=("ActNorm",),
         shapes="dz (N, C, H, W), dlogdet (N,), cache x -> dx (N, C, H, W); add dlog_s (C,), "
                "db (C,)")
exercise("ActNorm.inverse_backward", ActNorm, "easy",
         "the VJP of ActNorm's inverse", registry=("ActNorm",),
         shapes="dx (N, C, H, W), dlogdet (N,), cache x -> dz (N, C, H, W); add dlog_s (C,), "
                "db (C,)")
exercise("Invertible1x1Conv.backward", Invertible1x1Conv, "medium",
         "the VJP of a per-pixel channel mix, and the gradient of H W log|det W|",
         registry=("Invertible1x1Conv",),
         shapes="dz (N, C, H, W), dlogdet (N,), cache (x, W, factors) -> dx (N, C, H, W); add "
                "dW (C, C) (through self.weight_backward, which takes the factors)")
exercise("Invertible1x1Conv.inverse_backward", Invertible1x1Conv, "hard",
         "the VJP of the inverse: through V = W^{-1}, dW = -V^T dV V^T",
         registry=("Invertible1x1Conv",),
         shapes="dx (N, C, H, W), dlogdet (N,), cache (z, V, factors) -> dz (N, C, H, W); add "
                "dW (C, C) (through self.weight_backward, which takes the factors)")
exercise("LUInvertible1x1Conv.log_abs_det", LUInvertible1x1Conv, "easy",
         "log|det W| of W = P L U in O(C): only the diagonal of U counts",
         registry=("LUInvertible1x1Conv",),
         shapes="no argument -> float, read off self.params")
exercise("LUInvertible1x1Conv.weight_backward", LUInvertible1x1Conv, "hard",
         "gradients of the LU factors (L, U, log_s) from dW and the log-det's gradient",
         registry=("LUInvertible1x1Conv",),
         shapes="dW (C, C), dlogabsdet float, factors (L_1, U_s), each (C, C), from the "
                "cache -> None; add dL, dU (C, C), dlog_s (C,) into self.grads")


# ------------------------------------------------------------------ bijectors.spline
exercise("RQSpline.forward", RQSpline, "medium",
         "the rational-quadratic spline: knots from softmax and softplus, the bin of each "
         "point, g(x) and log g'(x) (equations 4 and 5), identity tails",
         registry=("RQSpline",), extra=("spline_knots",), hide=("rq_forward",),
         shapes="x (N, D) -> z (N, D), logdet (N,) summed over features, cache (what "
                "backward reads); the parameters uw, uh (D, K), ud (D, K - 1) are "
                "self.params; spline_knots gives the knots")
exercise("RQSpline.inverse", RQSpline, "hard",
         "the spline's inverse: the bin among the y-knots, then the root of a quadratic in "
         "its stable form (equations 6-8)",
         registry=("RQSpline",), extra=("spline_knots",), hide=("rq_inverse",),
         shapes="z (N, D) -> x (N, D), logdet (N,) = -sum log g'(x), cache (what "
                "inverse_backward reads)")
exercise("RQSpline.backward", RQSpline, "hard",
         "the spline's VJP for x and for uw, uh, ud: through the bin's six numbers, the "
         "knots (a reversed cumulative sum), the softmax and the softplus",
         registry=("RQSpline",), hide=("rq_backward",),
         shapes="dz (N, D), dlogdet (N,), cache (as forward returns it) -> dx (N, D); add "
                "the gradients of uw (D, K), uh (D, K), ud (D, K - 1), summed over the batch")


# ------------------------------------------------------------------ bijectors.image_coupling
exercise("ImageAffineCoupling.backward", ImageAffineCoupling, "medium",
         "RealNVP's affine coupling on images: the VJP through the mask, the soft bound and "
         "the convolutional net", registry=("ImageCoupling(checkerboard)",
                                            "ImageCoupling(channel)"),
         shapes="dz (N, C, H, W), dlogdet (N,), cache (x, s, m, net_cache) -> dx (N, C, H, W)")


# ------------------------------------------------------------------ bijectors.residual
exercise("ResidualBlock.inverse", ResidualBlock, "medium",
         "the fixed-point inverse x <- z - g(x) of a contractive residual block",
         registry=("ResidualBlock",),
         shapes="z (N, D) -> x (N, D), logdet (N,) = -log det(I + J_g(x)), cache as forward's "
                "(plus iterations, steps); stop at self.tol, raise after self.max_iter",
         hide=("fixed_point", "anderson"))
exercise("ResidualBlock._logdet_backward", ResidualBlock, "hard",
         "the exact log-det's gradient: d log det A = tr(A^{-1} dA), through g's Jacobian",
         registry=("ResidualBlock", "ResidualBlock(sigma>c)"),
         shapes="dg (N, D) or None, dlogdet (N,), lcache (mode 'exact', gcache, A (N, D, D)) "
                "-> dx (N, D); use self.g.jvp_backward(dg, dG, gcache) with dG (N, D, D)")


# ------------------------------------------------------------------ bijectors.reshape
exercise("Squeeze.forward", Squeeze, "medium",
         "space to depth: each 2 x 2 block of pixels becomes 4 channels",
         registry=("Squeeze",),
         shapes="x (N, C, H, W) -> z (N, 4 C, H / 2, W / 2), logdet (N,) zeros, cache None",
         hide=("squeeze",),
         train=False)
exercise("Squeeze.backward", Squeeze, "easy",
         "the VJP of a permutation of the entries is its inverse", registry=("Squeeze",),
         shapes="dz (N, 4 C, H / 2, W / 2), dlogdet (N,), cache -> dx (N, C, H, W)",
         hide=("unsqueeze",),
         train=False)


# ------------------------------------------------------------------ bijectors.multiscale
exercise("MultiScale.forward", MultiScale, "medium",
         "the multi-scale forward: levels in turn, half of the channels factored out after "
         "every level but the last, z the flattened parts concatenated",
         registry=("MultiScale(Glow)",),
         shapes="x (N, C H W) -> z (N, C H W), logdet (N,), caches (the list of the levels' "
                "caches, in level order: what backward reads)")
exercise("MultiScale.backward", MultiScale, "medium",
         "the VJP of factoring out: cut dz into the parts, re-join each factored-out "
         "gradient to its level's output gradient on the way back",
         registry=("MultiScale(Glow)",),
         shapes="dz (N, C H W), dlogdet (N,), caches (list, level order) -> dx (N, C H W)")


# ------------------------------------------------------------------ bijectors.normalization
exercise("BatchNorm.backward", BatchNorm, "hard",
         "BatchNorm's VJP in both modes: batch statistics depend on every example",
         registry=("BatchNorm(eval)",), extra=("batchnorm_train",),
         shapes="dz (N, D), dlogdet (N,), cache (xhat, sigma, training) -> dx (N, D); add "
                "dlog_gamma (D,), dbeta (D,)")


# ------------------------------------------------------------------ bijectors.permutation
exercise("Permutation.backward", Permutation, "easy",
         "the VJP of a permutation: the inverse permutation of the upstream gradient",
         registry=("Permutation",), shapes="dz (N, D), dlogdet (N,), cache None -> dx (N, D)",
         train=False)


# ------------------------------------------------------------------ bijectors.preprocess
exercise("Logit.forward", Logit, "easy",
         "RealNVP's logit preprocessing and its log-det", registry=("Logit",),
         shapes="x (N, D) in (0, 1) -> z (N, D), logdet (N,), cache = y (what backward reads)",
         train=False)
exercise("Logit.backward", Logit, "medium",
         "the logit's VJP, with the gradient of its log-det (which depends on x)",
         registry=("Logit",), shapes="dz (N, D), dlogdet (N,), cache y -> dx (N, D)",
         train=False)
