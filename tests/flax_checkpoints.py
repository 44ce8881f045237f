"""Tiny checkpoints in the layouts transformers' Flax models save, written without those models.

transformers 5 no longer has Flax model classes, yet emojax still reads every checkpoint layout
they left on the hub. transformers 4.x's ``FlaxPreTrainedModel.save_pretrained`` writes

- ``flax_model.msgpack``: ``flax.serialization.to_bytes(params)``, the nested parameter dict;
- ``flax_model-0000i-of-0000n.msgpack`` + ``flax_model.msgpack.index.json`` when sharded: each
  shard the ``to_bytes`` of the parameters it holds (nested), the index mapping each ``/``-joined
  parameter path to its shard;
- ``model.safetensors`` with ``safe_serialization=True``: ``flatten_dict(params, sep=".")``,
  metadata ``{"format": "flax"}``;

each beside the model's ``config.json``. The functions here write the same files from parameters
drawn with NumPy for the parameter structure (names and shapes) of a transformers Flax model, as
frozen in ``tests/fixtures/flax_oracles/structures.json``, together with those models' outputs,
by ``tests/scripts/make_flax_oracles.py`` (which needs transformers 4.x; it also checks that these
writers give byte-identical files to ``save_pretrained``). So the same weights, and the frozen
reference outputs for them, are available under any transformers version.
"""
from __future__ import annotations

import json
import pathlib
from typing import Any, Iterable, Mapping, Optional

import jax
import numpy as np
from flax import serialization
from flax.traverse_util import flatten_dict, unflatten_dict

ORACLES = pathlib.Path(__file__).resolve().parent / "fixtures" / "flax_oracles"
STRUCTURES = ORACLES / "structures.json"
MSGPACK = "flax_model.msgpack"
MSGPACK_INDEX = "flax_model.msgpack.index.json"


def oracle_path(*parts: str) -> pathlib.Path:
    """A file of the frozen oracle fixtures (regenerate them with tests/scripts/make_flax_oracles.py)."""
    path = ORACLES.joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing frozen fixture; run tests/scripts/make_flax_oracles.py "
                                "under transformers 4.x to write it")
    return path


def oracle_arrays(name: str) -> dict[str, np.ndarray]:
    """The arrays of ``<name>.npz`` among the frozen fixtures."""
    with np.load(oracle_path(f"{name}.npz")) as data:
        return {k: data[k] for k in data.files}


def oracle_json(name: str) -> Any:
    return json.loads(oracle_path(f"{name}.json").read_text())


def structure(name: str) -> dict:
    """The frozen parameter structure ``name``: a nested dict of float32 ``jax.ShapeDtypeStruct``
    with exactly the names and shapes of the transformers Flax model it was taken from."""
    shapes = json.loads(oracle_path("structures.json").read_text())
    if name not in shapes:
        raise KeyError(f"{STRUCTURES}: no structure {name!r}; add it to tests/scripts/make_flax_oracles.py")
    return shapes_from_json(shapes[name])


def shapes_from_json(flat: Mapping[str, Iterable[int]]) -> dict:
    """A ``/``-joined path -> shape mapping (:func:`structure_json`) as a nested dict of float32
    ``jax.ShapeDtypeStruct``."""
    return unflatten_dict({tuple(k.split("/")): jax.ShapeDtypeStruct(tuple(s), np.float32) for k, s in flat.items()})


def structure_json(shapes: Mapping) -> dict[str, list[int]]:
    """A parameter tree (arrays or shape structs) as the ``/``-joined path -> shape mapping that
    ``structures.json`` stores."""
    return {"/".join(map(str, k)): [int(d) for d in v.shape] for k, v in flatten_dict(dict(shapes)).items()}


def random_params(shapes: Mapping, rng: np.random.Generator | int, std: float,
                  ones: Iterable[str] = ("scale", "weight_g")) -> dict:
    """Float32 NumPy parameters with the structure of ``shapes``: normal with standard deviation
    ``std`` around 1 for the leaves named in ``ones`` (norm scales, weight-norm magnitudes) and
    around 0 for the rest, so every parameter really matters. Drawn in the pytree's (sorted) leaf
    order, so a seed always gives the same values."""
    rng = np.random.default_rng(rng) if isinstance(rng, (int, np.integer)) else rng
    suffixes = tuple(f"[{name!r}]" for name in ones)

    def draw(path, leaf):
        centre = 1.0 if jax.tree_util.keystr(path).endswith(suffixes) else 0.0
        return rng.normal(centre, std, leaf.shape).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, dict(shapes))


def write_config(folder: pathlib.Path, config: Any) -> None:
    """``config.json``: a dict as it is, or a transformers config through its ``save_pretrained``."""
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(config, Mapping):
        (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    else:
        config.save_pretrained(str(folder))


def _numpy_tree(params: Mapping) -> dict:
    return jax.tree_util.tree_map(np.asarray, dict(params))


def save_msgpack(folder: pathlib.Path, params: Mapping, config: Any = None) -> pathlib.Path:
    """``flax_model.msgpack`` (and ``config.json`` when given), as ``save_pretrained`` writes them."""
    folder = pathlib.Path(folder)
    if config is not None:
        write_config(folder, config)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MSGPACK).write_bytes(serialization.to_bytes(_numpy_tree(params)))
    return folder


def save_msgpack_shards(folder: pathlib.Path, params: Mapping, weight_map: Mapping[str, str],
                        config: Any = None) -> pathlib.Path:
    """Sharded msgpack files and their index, each parameter in the shard ``weight_map`` (``/``-joined
    path -> file name) assigns it, as ``save_pretrained(max_shard_size=...)`` splits them."""
    folder = pathlib.Path(folder)
    if config is not None:
        write_config(folder, config)
    folder.mkdir(parents=True, exist_ok=True)
    flat = flatten_dict(_numpy_tree(params), sep="/")
    if set(flat) != set(weight_map):
        raise ValueError(f"the shard map names other parameters than these: {sorted(set(flat) ^ set(weight_map))}")
    shards: dict[str, dict] = {}
    for name, value in flat.items():
        shards.setdefault(weight_map[name], {})[name] = value
    for shard, values in shards.items():
        (folder / shard).write_bytes(serialization.to_bytes(unflatten_dict(values, sep="/")))
    total = int(sum(v.size * v.dtype.itemsize for v in flat.values()))
    index = {"metadata": {"total_size": total}, "weight_map": dict(weight_map)}
    (folder / MSGPACK_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return folder


def save_flax_safetensors(folder: pathlib.Path, params: Mapping, config: Any = None,
                          metadata: Optional[dict[str, str]] = None) -> pathlib.Path:
    """``model.safetensors`` with ``.``-joined Flax names and format ``flax``, as
    ``save_pretrained(safe_serialization=True)`` writes it."""
    from safetensors.numpy import save_file

    folder = pathlib.Path(folder)
    if config is not None:
        write_config(folder, config)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(flatten_dict(_numpy_tree(params), sep="."), str(folder / "model.safetensors"),
              metadata=metadata or {"format": "flax"})
    return folder
