r"""Save and load flows: one ``.npz`` file holding every parameter and buffer by qualified name
plus the builder's JSON config under the key ``__config__``. Loading never unpickles
(``allow_pickle=False``): the file can only contain arrays and a JSON string.
"""
import json
import os
import zipfile

import numpy as np

from . import models

CONFIG_KEY = "__config__"


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


def load(path):
    r"""Rebuild the flow saved at ``path``; its ``log_prob`` and ``sample`` match the saved one's
    exactly.

    Raises ``FileNotFoundError`` if there is no such file and ``ValueError`` if it is not an
    nflows_edu model (not an npz, no config, missing or misshapen arrays).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"load: no model file at {path}")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {key: f[key] for key in f.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        raise ValueError(f"load: {path} is not a readable .npz model file ({err})") from None
    if CONFIG_KEY not in arrays:
        raise ValueError(f"load: {path} has no {CONFIG_KEY} entry; expected a file written by "
                         "nflows_edu.save")
    try:
        config = json.loads(str(arrays.pop(CONFIG_KEY)))
    except json.JSONDecodeError as err:
        raise ValueError(f"load: the config in {path} is not valid JSON ({err})") from None
    try:
        flow = models.build(config)
        flow.load_state_dict(arrays)
    except (TypeError, ValueError, AttributeError) as err:
        raise ValueError(f"load: {path} does not describe a model this version can rebuild "
                         f"({err})") from None
    return flow
