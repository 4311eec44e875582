r"""Pictures of 2-D flows: the density on a grid, samples against data, how each layer warps
the plane, and the training curve.

Every ``plot_*`` function draws into an ``ax`` you pass (or a new figure if you do not) and
returns it, so a notebook can arrange panels as it likes. This module never chooses a
matplotlib backend: notebooks show figures inline, and ``nflows-edu`` (``cli.py``) selects
the non-interactive ``Agg`` backend itself before importing this module.

>>> import numpy as np
>>> from nflows_edu import models
>>> flow = models.realnvp(2, n_layers=2, hidden=(8,), rng=np.random.default_rng(0))
>>> X, Y, P = density_grid(flow, lim=3.0, n=50)
>>> X.shape, P.shape
((50, 50), (50, 50))
"""
import os

import matplotlib.pyplot as plt
import numpy as np

DENSITY_CMAP = "viridis"  # perceptually uniform, readable on a projector
WARP_CMAP = "hsv"         # cyclic, so the colour of a point follows its angle all the way round
DATA_COLOR = "0.55"       # light grey: the data sits behind, the model's samples on top
SAMPLE_COLOR = "tab:red"


def _clean(ax, lim, title):
    """Square panel over [-lim, lim]^2 with a few ticks, so distances can be read off."""
    if lim is not None:
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ticks = np.arange(-np.floor(lim), np.floor(lim) + 1, max(1.0, np.floor(lim / 2)))
        ax.set_xticks(ticks)
        ax.set_yticks(ticks)
    ax.set_aspect("equal")
    ax.tick_params(labelsize="small")
    if title is not None:
        ax.set_title(title)
    return ax


def _new_ax(ax, size=4.0):
    if ax is None:
        _, ax = plt.subplots(figsize=(size, size))
    return ax


def density_grid(flow, lim=4.0, n=200):
    r"""Evaluate the flow's density on a regular ``n x n`` grid over ``[-lim, lim]^2``.

    Parameters
    ----------
    flow : Flow with ``dim == 2``
    lim : float
        Half-width of the square.
    n : int
        Points per axis (the end points ``-lim`` and ``lim`` are included).

    Returns
    -------
    X, Y : ndarray (n, n)
        ``np.meshgrid`` of the axis points: ``X[i, j]`` is the j-th x value, ``Y[i, j]`` the
        i-th y value (so ``P`` can be drawn with ``imshow(P, origin="lower")``).
    P : ndarray (n, n)
        ``P[i, j] = exp(flow.log_prob([X[i, j], Y[i, j]]))``.
    """
    if flow.dim != 2:
        raise ValueError(f"density_grid: expected a 2-D flow, got dim {flow.dim}")
    axis = np.linspace(-lim, lim, int(n))
    X, Y = np.meshgrid(axis, axis)
    points = np.column_stack([X.ravel(), Y.ravel()])
    # In chunks, so a fine grid does not need one huge hidden-layer activation array.
    chunk = 16384
    log_p = np.concatenate([flow.log_prob(points[i:i + chunk])
                            for i in range(0, len(points), chunk)])
    return X, Y, np.exp(log_p).reshape(X.shape)


def grid_integral(flow, lim=4.0, n=200):
    r"""Riemann sum of the density over ``[-lim, lim]^2``: ``sum_ij P_ij * h^2``.

    ``h = 2 lim / (n - 1)`` is the grid spacing of ``density_grid``. For a correct flow the
    result approaches 1 as ``lim`` and ``n`` grow (the mass outside the square is lost).

    >>> import numpy as np
    >>> from nflows_edu import models
    >>> flow = models.realnvp(2, rng=np.random.default_rng(0))  # untrained: N(0, I)
    >>> round(grid_integral(flow, lim=6.0, n=121), 4)
    1.0
    """
    _, _, P = density_grid(flow, lim, n)
    h = 2 * lim / (int(n) - 1)
    return float(P.sum() * h * h)


def plot_density(flow, ax=None, lim=4.0, n=200, title=None, vmax=None, colorbar=True):
    r"""Heat map of ``p(x) = exp(flow.log_prob(x))`` over ``[-lim, lim]^2``, with a colour bar;
    returns ``ax``. ``flow`` may be anything with a ``log_prob`` of (N, 2) points."""
    _, _, P = density_grid(flow, lim, n)
    return _draw_density(P, ax, lim, title, vmax, colorbar)


def _draw_density(P, ax, lim, title, vmax, colorbar):
    """``plot_density``'s picture of an evaluated grid ``P`` (n, n)."""
    ax = _new_ax(ax)
    image = ax.imshow(P, origin="lower", extent=(-lim, lim, -lim, lim), cmap=DENSITY_CMAP,
                      interpolation="bilinear", vmin=0, vmax=vmax)
    if colorbar:
        ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="density")
    return _clean(ax, lim, "model density $p(x)$" if title is None else title)


class _TrueDensity:
    """A toy density with a known log-density, shaped like a flow for ``density_grid``."""

    dim = 2

    def __init__(self, name):
        from . import datasets
        self.name = name
        self.log_prob = lambda x: datasets.toy_log_prob(name, x)


def plot_density_comparison(flow, name, lim=4.0, n=200):
    r"""The true density of toy data set ``name`` next to the model's, on one colour scale.

    Returns the figure (two panels, one colour bar). Each grid is evaluated once.
    """
    P_true, P_model = (density_grid(f, lim, n)[2] for f in (_TrueDensity(name), flow))
    vmax = max(P_true.max(), P_model.max())
    fig, axes = plt.subplots(1, 2, figsize=(9, 4), constrained_layout=True)
    _draw_density(P_true, axes[0], lim, f"true density ({name})", vmax, colorbar=False)
    _draw_density(P_model, axes[1], lim, None, vmax, colorbar=False)
    fig.colorbar(axes[1].images[0], ax=axes, fraction=0.046, pad=0.02, label="density")
    return fig


def plot_samples(samples, data=None, ax=None, lim=4.0, title=None):
    r"""Scatter ``samples`` (N, 2); if ``data`` (M, 2) is given, outline where it lies (a
    contour of its smoothed histogram), so that neither hides the other. Returns ``ax``.

    ``lim=None`` lets matplotlib choose the limits.
    """
    ax = _new_ax(ax)
    samples = np.asarray(samples)
    ax.scatter(samples[:, 0], samples[:, 1], color=SAMPLE_COLOR, s=3, alpha=0.35,
               linewidths=0, rasterized=True, label="flow samples")
    if data is not None:
        data = np.asarray(data)
        span = lim if lim is not None else float(np.abs(data).max())
        edges = np.linspace(-span, span, 41)
        counts, _, _ = np.histogram2d(data[:, 0], data[:, 1], bins=[edges, edges])
        # a 3 x 3 box blur, so the outline follows the data rather than the counting noise
        padded = np.pad(counts, 1)
        smooth = sum(padded[i:i + 40, j:j + 40] for i in range(3) for j in range(3)) / 9
        centres = 0.5 * (edges[1:] + edges[:-1])
        if smooth.max() > 0:
            level = 0.3 * smooth.max()
            ax.contourf(centres, centres, smooth.T, levels=[level, np.inf], colors=DATA_COLOR,
                        alpha=0.35, zorder=0)
            ax.contour(centres, centres, smooth.T, levels=[level], colors="k", linewidths=1.0)
        ax.plot([], [], color="k", lw=1.0, label="where the data is (shaded)")
        # Below the panel, so it hides no points.
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2, markerscale=4,
                  fontsize="small", frameon=False)
    return _clean(ax, lim, "samples $x = f^{-1}(z)$" if title is None else title)


def _forward_finite(layer, points):
    """``layer.forward`` on the finite rows of ``points`` (N, 2); other rows stay NaN.

    Far-out grid lines can overflow after a few layers; a NaN just leaves a gap in the line.
    """
    out = np.full(points.shape, np.nan)
    ok = np.isfinite(points).all(axis=1)
    if ok.any():
        out[ok] = layer.forward(points[ok])[0]
    return out


def _panel_lim(points):
    """Half-width of a square panel that holds nearly all of ``points`` (robust to outliers)."""
    finite = points[np.isfinite(points).all(axis=1)]
    if len(finite) == 0:
        return 4.0
    return max(1.0, 1.1 * float(np.percentile(np.abs(finite), 99.5)))


def _layer_title(layer, k):
    """'layer k: Name' and, for a coupling, which coordinate it changes given which."""
    name = type(layer).__name__
    mask = getattr(layer, "buffers", {}).get("mask")
    if mask is not None and mask.size == 2:
        changed, kept = np.flatnonzero(mask == 0)[0] + 1, np.flatnonzero(mask == 1)[0] + 1
        return f"layer {k}: {name}\nchanges $x_{changed}$ given $x_{kept}$"
    if name == "Scaling":
        return f"layer {k}: {name}\nscales $x_1$ and $x_2$"
    if name in ("Permutation", "Reverse"):
        return f"layer {k}: {name}\nreorders the coordinates"
    return f"layer {k}: {name}"


def plot_warp(flow, x, lim=None, n_lines=9, per_row=3):
    r"""Follow points and grid lines through the flow, one layer at a time (data to noise).

    Panel 0 shows the points ``x`` (N, 2) over a grid of ``n_lines`` horizontal and
    ``n_lines`` vertical lines spanning ``[-lim, lim]^2`` in data space. Panel k shows their
    images after ``flow.bijector.layers[k-1].forward``; the last panel is ``z = f(x)``, with
    contours of the base density: the points should look like a sample of it. Points keep
    the colour of their starting angle ``atan2(x_1, x_0)``, so one can see where each part of
    the data goes. Every panel has the same axis scale; titles say what each layer changes.

    Parameters
    ----------
    flow : Flow with ``dim == 2`` (its bijector a ``Chain``, or a single layer)
    x : ndarray (N, 2)
    lim : float, optional
        Extent of the grid; by default it covers ``x``.
    n_lines : int
        Grid lines per direction.
    per_row : int
        Panels per row (rows read well on a projector; one long strip does not).

    Returns
    -------
    fig : matplotlib Figure with ``len(layers) + 1`` panels
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != 2:
        raise ValueError(f"plot_warp: expected points of shape (N, 2), got {x.shape}")
    layers = getattr(flow.bijector, "layers", [flow.bijector])
    if lim is None:
        lim = _panel_lim(x)

    # Grid lines, densely sampled so they bend smoothly; NaN rows separate the lines.
    m = 200
    t = np.linspace(-lim, lim, m)
    levels = np.linspace(-lim, lim, int(n_lines))
    lines = []
    for c in levels:
        lines += [np.column_stack([t, np.full(m, c)]), np.full((1, 2), np.nan),
                  np.column_stack([np.full(m, c), t]), np.full((1, 2), np.nan)]
    grid = np.vstack(lines)

    panels = [(x, grid)]
    for layer in layers:
        panels.append((_forward_finite(layer, panels[-1][0]), _forward_finite(layer, panels[-1][1])))
    shared = max(lim, max(_panel_lim(p) for p, _ in panels[1:]))

    colour = np.arctan2(x[:, 1], x[:, 0])
    n_panels = len(panels)
    rows = -(-n_panels // per_row)
    fig, axes = plt.subplots(rows, per_row, figsize=(3.3 * per_row, 3.5 * rows), squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        if k >= n_panels:
            ax.set_visible(False)
            continue
        points, lines_k = panels[k]
        ax.plot(lines_k[:, 0], lines_k[:, 1], color="0.7", lw=0.6, zorder=1)
        ax.scatter(points[:, 0], points[:, 1], c=colour, cmap=WARP_CMAP, vmin=-np.pi,
                   vmax=np.pi, s=3, alpha=0.7, linewidths=0, zorder=2, rasterized=True)
        title = "data $x$" if k == 0 else _layer_title(layers[k - 1], k)
        if k == n_panels - 1:
            axis = np.linspace(-shared, shared, 200)
            X, Y = np.meshgrid(axis, axis)
            log_p = flow.base.log_prob(np.column_stack([X.ravel(), Y.ravel()]))
            ax.contour(X, Y, np.exp(log_p).reshape(X.shape), levels=4, colors="k",
                       linewidths=0.8, zorder=3)
            title += "\n$z = f(x)$; contours: base density"
        _clean(ax, shared, None)
        ax.set_title(title, fontsize="small")
    fig.suptitle("forward pass $x \\to z$, layer by layer (same scale in every panel)")
    fig.tight_layout()
    return fig


def plot_loss(history, ax=None, entropy=None):
    r"""Training curve from the ``history`` dict of ``nflows_edu.train.fit`` (or of
    ``train.fit_flow_matching``: its regression loss, ``train_loss``); returns ``ax``.

    Thin line: the minibatch loss at every step. Thick line: ``train_nll`` (its mean over each
    reporting interval). Dashed: ``val_nll`` when it was recorded. Dotted: the entropy
    ``H(p)`` of the data when it is known, the lowest NLL any model can reach on average; the
    gap to it is the KL divergence.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.5))
    matching = "train_loss" in history  # flow matching's loss, not an NLL
    what = "flow matching loss" if matching else "NLL"
    loss = np.asarray(history["loss"], dtype=np.float64)
    steps = np.arange(1, len(loss) + 1)
    ax.plot(steps, loss, color="tab:blue", alpha=0.3, lw=0.7, label=f"minibatch {what}")
    if len(history.get("step", [])):
        ax.plot(history["step"], history["train_loss" if matching else "train_nll"],
                color="tab:blue", lw=2, marker="o", ms=3, label=f"train {what} (interval mean)")
    if len(history.get("val_nll", [])):
        ax.plot(history["step"], history["val_nll"], color="tab:orange", lw=2, ls="--",
                marker="s", ms=3, label="validation NLL")
    if len(loss) > 20:
        # The first few steps can be far above the rest; do not let them flatten the curve.
        finite = loss[np.isfinite(loss)]
        lo, hi = finite.min(), np.percentile(finite, 99)
        if entropy is not None:
            lo = min(lo, entropy)
        pad = 0.05 * (hi - lo if hi > lo else 1.0)
        ax.set_ylim(lo - pad, hi + pad)
    if entropy is not None:
        ax.axhline(entropy, color="k", ls=":", lw=1.2, label="entropy $H(p)$ (best possible)")
    ax.set_xlabel("step")
    ax.set_ylabel(what if matching else "NLL (nats per point)")
    ax.set_title("training loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return ax


def save_pictures(flow, data, out_dir, rng=None, lim=4.0, data_name=None):
    r"""Write ``density.png``, ``samples.png`` and ``warp.png`` for a 2-D flow into ``out_dir``.

    ``density.png`` shows the true density of ``data_name`` beside the model's when it is
    known (8gaussians, checkerboard); ``samples.png`` shows 2000 flow samples under contours
    of (up to) 20,000 rows of ``data`` (N, 2); ``warp.png`` follows (up to) 1000 rows of
    ``data`` through the layers. ``out_dir`` is created if needed; every figure is closed.

    Returns
    -------
    paths : dict
        ``{"density": path, "samples": path, "warp": path}``.
    """
    from . import datasets
    rng = np.random.default_rng() if rng is None else rng
    data = np.asarray(data)
    os.makedirs(out_dir, exist_ok=True)

    def subset(k):
        return data if len(data) <= k else data[rng.choice(len(data), size=k, replace=False)]

    paths = {}

    def save(name, fig):
        paths[name] = os.path.join(out_dir, f"{name}.png")
        fig.savefig(paths[name], dpi=120, bbox_inches="tight")
        plt.close(fig)

    if data_name in datasets.CLOSED_FORM_NAMES:
        save("density", plot_density_comparison(flow, data_name, lim=lim))
    else:
        save("density", plot_density(flow, lim=lim).figure)
    ax = plot_samples(flow.sample(2000, rng), data=subset(20000), lim=lim)
    save("samples", ax.figure)
    save("warp", plot_warp(flow, subset(1000), lim=lim))
    return paths


def digits_grid(v, levels=17, cols=8):
    """A figure of 8x8 images, one per row of ``v`` (pixel values, clipped to
    [0, levels - 1]: a flow's samples may fall slightly outside), ``cols`` per row."""
    images = np.clip(np.asarray(v, dtype=float), 0, levels - 1).reshape(-1, 8, 8)
    rows = -(-len(images) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.6, rows * 0.6), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, image in zip(axes.ravel(), images):
        ax.imshow(image, cmap="gray_r", vmin=0, vmax=levels - 1)
    return fig


def digits_temperatures(samples, levels=17, cols=8):
    """One panel of 8x8 images per sampling temperature, side by side.

    ``samples`` maps a temperature T to pixel values (n, 64) drawn at T (``flow.sample(n,
    rng, temperature=T)``); each panel tiles its images ``cols`` per row with a one-pixel gap.
    """
    fig, axes = plt.subplots(1, len(samples), figsize=(3.2 * len(samples), 3.4), squeeze=False)
    for ax, (t, v) in zip(axes[0], samples.items()):
        images = np.clip(np.asarray(v, dtype=float), 0, levels - 1).reshape(-1, 8, 8)
        rows = -(-len(images) // cols)
        mosaic = np.full((rows * 9 + 1, cols * 9 + 1), np.nan)  # NaN: the gaps, left blank
        for k, image in enumerate(images):
            r, c = divmod(k, cols)
            mosaic[1 + 9 * r:9 * (r + 1), 1 + 9 * c:9 * (c + 1)] = image
        ax.imshow(mosaic, cmap="gray_r", vmin=0, vmax=levels - 1)
        ax.set_title(f"T = {t:g}")
        ax.axis("off")
    return fig
