r"""Save and load flows: one ``.npz`` file holding every parameter and buffer by qualified name
plus the builder's JSON config under the key ``__config__``. Loading never unpickles
(``allow_pickle=False``): the file can only contain arrays and a JSON string.
"""
import json
import os
import zipfile

import numpy as np

from . import models
from .bijectors import Scaling

CONFIG_KEY = "__config__"

# Parameters renamed since a model could first be saved: (layer class, old name, new name).
# ``load`` gives a file with the old name the new one, so models saved before keep loading.
RENAMED = [
    (Scaling, "s", "log_s"),  # one log-scale name, as ActNorm and LUInvertible1x1Conv have
]


def save(flow, path, overwrite=False):
    r"""Write ``flow`` to ``path`` (``.npz`` is appended if missing); returns the path written.

    Raises ``FileExistsError`` if the file exists and ``overwrite`` is False, and
    ``ValueError`` if the flow was not built by ``nflows_edu.models`` (it has no config).
    """
    if not getattr(flow, "config", None):
        raise ValueError("save: expected a flow built by nflows_edu.models (flow.config is empty),"
                         " so that load() can rebuild its architecture")
    path = os.fspath(path)
    if not path.endswith(".npz"):
        path += ".npz"
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"save: {path} exists; pass overwrite=True to replace it")
    arrays = flow.state_dict()
    arrays[CONFIG_KEY] = np.array(json.dumps(flow.config))
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)  # a crash mid-write never leaves half a model behind
    return path


def _integers(value):
    """Every integer in a JSON value (lists and dicts searched), booleans excluded."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, (list, tuple)):
        return [i for v in value for i in _integers(v)]
    if isinstance(value, dict):
        return [i for v in value.values() for i in _integers(v)]
    return []


def _check_config(config, arrays, path):
    r"""Refuse a config that could not have come with these arrays, before building anything.

    A config is a description of sizes, and every size a model has shows in its arrays: no
    integer in it (a width, a dim, a layer count) can exceed both the number of stored arrays
    and the largest dimension of any of them. That keeps a doctored file (``hidden`` of 1e7)
    from allocating gigabytes.
    """
    if not isinstance(config, dict) or config.get("model") not in models.MODELS:
        raise ValueError(f"load: {path}: field 'model' must be one of {sorted(models.MODELS)}, "
                         f"got {config.get('model') if isinstance(config, dict) else config!r}")
    if config.get("dtype", "float64") not in ("float32", "float64"):
        raise ValueError(f"load: {path}: field 'dtype' must be 'float32' or 'float64', got "
                         f"{config.get('dtype')!r}")
    bound = max([len(arrays)] + [max(a.shape, default=1) for a in arrays.values()])
    for key, value in config.items():
        if any(i < 0 or i > bound for i in _integers(value)):
            raise ValueError(f"load: {path}: field {key!r} = {value!r} does not fit the stored "
                             f"arrays (sizes at most {bound})")


def _check_arrays(flow, arrays, path):
    """Refuse stored arrays of the wrong kind or with non-finite values, naming the array."""
    expected = {name: p for name, p, _ in flow.parameters()}
    expected.update(dict(flow.named_buffers()))
    for name, value in arrays.items():
        target = expected.get(name)
        if target is None:
            continue  # load_state_dict names unexpected arrays
        if value.dtype.kind != target.dtype.kind or (value.dtype.kind == "f"
                                                     and value.dtype != target.dtype):
            raise ValueError(f"load: {path}: array {name!r} has dtype {value.dtype}, expected "
                             f"{target.dtype}")
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise ValueError(f"load: {path}: array {name!r} has NaN or infinite values")


def _named_modules(module, prefix=""):
    """Yield ``(prefix, module)`` over ``module`` and its sub-modules, ``prefix`` the start of
    their parameters' qualified names ("" for ``module``, "bijector.layers.4." below)."""
    yield prefix, module
    for name, child in module.children():
        yield from _named_modules(child, prefix + name + ".")


def _rename_old_keys(flow, arrays):
    """Rename, in ``arrays``, the keys an older version saved under a name in ``RENAMED``."""
    for prefix, module in _named_modules(flow):
        for cls, old, new in RENAMED:
            if isinstance(module, cls) and prefix + old in arrays and prefix + new not in arrays:
                arrays[prefix + new] = arrays.pop(prefix + old)


def load(path):
    r"""Rebuild the flow saved at ``path``; its ``log_prob`` and ``sample`` match the saved one's
    exactly. ``path`` may be a directory holding ``model.npz`` (what ``nflows-edu train``
    writes). A file saved before a parameter was renamed (``RENAMED``: ``Scaling``'s ``s``,
    now ``log_s``) loads too.

    Raises ``FileNotFoundError`` if there is no such file and ``ValueError``, naming the file
    and the field or array, if it is not an nflows_edu model: not an npz of plain arrays, no
    config, a config that does not fit the arrays, arrays of the wrong shape or dtype, or
    non-finite parameters.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "model.npz")
    if not os.path.exists(path):
        raise FileNotFoundError(f"load: no model file at {path}")
    try:
        with np.load(path, allow_pickle=False) as f:
            if not isinstance(f, np.lib.npyio.NpzFile):
                raise ValueError("a single array, not an archive")
            arrays = {key: f[key] for key in f.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, AttributeError, TypeError) as err:
        reason = ("it holds Python objects, which this library never loads"
                  if "allow_pickle" in str(err) else str(err))
        raise ValueError(f"load: {path} is not an .npz model file written by nflows_edu.save "
                         f"({reason})") from None
    if CONFIG_KEY not in arrays:
        raise ValueError(f"load: {path} has no {CONFIG_KEY} entry; expected a file written by "
                         "nflows_edu.save")
    try:
        config = json.loads(str(arrays.pop(CONFIG_KEY)))
    except json.JSONDecodeError as err:
        raise ValueError(f"load: the config in {path} is not valid JSON ({err})") from None
    _check_config(config, arrays, path)
    try:
        flow = models.build(config)
    except (TypeError, ValueError, AttributeError, MemoryError) as err:
        raise ValueError(f"load: {path}: the config does not describe a model this version can "
                         f"rebuild ({err})") from None
    _rename_old_keys(flow, arrays)
    _check_arrays(flow, arrays, path)
    try:
        flow.load_state_dict(arrays)
    except ValueError as err:
        raise ValueError(f"load: {path}: {err}") from None
    return flow
