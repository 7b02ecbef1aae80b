"""A CMA-ES (``cma.CMAEvolutionStrategy``) as arrays and JSON, rebuilt exactly without unpickling anything.

``cma`` keeps its state in a tree of plain Python objects: the mean, ``sigma``, the covariance (its diagonal
for sep-CMA-ES, ``C``, ``B`` and ``D`` for the full one), the evolution paths, the step-size control's state
(CSA's or TPA's, with the directions TPA injects into the next ``ask``), the counters, the best solution so
far, the fitness history the stopping rules read, and the ``RandomState`` its sampler draws from.
``es_to_arrays`` walks that whole tree and writes every piece of data in it: arrays into a dict of arrays,
everything else into a JSON tree that names them. ``es_from_arrays`` builds a new CMA-ES with the same
options and writes every piece back in place, so the rebuilt object equals the saved one in all its
data, down to which attributes share an array (``dC`` is ``D`` in sep-CMA-ES), and its next ``ask()`` is
the same bit for bit (tests/test_cma_state.py). Nothing is rebuilt from the file but data:

- the code of the CMA-ES (its functions, bound methods, its options, which ``cma`` evaluates as Python
  expressions, and its logger) is never read from the file: it comes from the new CMA-ES, and a file that
  has anything but a ``kept`` mark where the new one has code is refused;
- the file names no classes except for the objects the new CMA-ES already has in that place, and
  ``CREATABLE`` plain holders of values (``BlancClass``, ``ElapsedWCTime``) that appear after a generation;
- arrays are loaded with ``allow_pickle=False`` and must be numbers; text is only ever text.

The sampler draws from a ``RandomState`` of the CMA-ES's own (``new_sampler``), not NumPy's global one, so
nothing else in the process changes the candidates; its state travels as ``random.keys`` and JSON.

A state saved by another version of ``cma`` is loaded if its tree still fits (with a warning: the next
candidates may differ from an uninterrupted run's); one that does not fit is refused.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import cma
import numpy as np

from core.storage.artifacts import ArtifactError

log = logging.getLogger(__name__)

FORMAT = "cma-es-state"
FORMAT_VERSION = 1
VERBOSE = -9  # cma prints nothing
OPTIONS = {"popsize": int, "CMA_diagonal": bool}  # the options of this project's CMA-ES, and their types
KEPT_ATTRIBUTES = ("opts", "inopts", "inputargs", "logger")  # of the CMA-ES itself: options and output, not state
NUMBER_KINDS = "biufc"  # dtype kinds an array may have: booleans, integers, floats, complex numbers


def _classes(*names: str) -> dict[str, type]:
    found = {}
    for name in names:
        module, _, qualname = name.rpartition(".")
        cls = __import__(module, fromlist=[qualname])
        found[name] = getattr(cls, qualname)
    return found


# Classes the file may ask for where the new CMA-ES has nothing (or None) yet: holders of values whose
# construction runs no code (``__new__`` only) and that cma fills in after a generation.
CREATABLE = _classes("cma.utilities.utils.BlancClass", "cma.utilities.utils.ElapsedWCTime")
_LOGGER = cma.logger.CMADataLogger
_OPTIONS = cma.evolution_strategy.CMAOptions


def new_sampler(seed: int) -> np.random.RandomState:
    """The random state a new CMA-ES samples from; ``RandomState(seed)`` draws what ``np.random.seed(seed)``
    then ``np.random.randn`` would, so candidates are those of a CMA-ES given ``{"seed": seed}``."""
    return np.random.RandomState(seed)


def new_es(x0: np.ndarray, sigma0: float, popsize: int, diagonal: bool,
           sampler: np.random.RandomState) -> cma.CMAEvolutionStrategy:
    """A new CMA-ES around ``x0`` drawing from ``sampler`` (and not touching NumPy's global random state)."""
    return cma.CMAEvolutionStrategy(np.asarray(x0, np.float64), float(sigma0), {
        "popsize": int(popsize), "CMA_diagonal": bool(diagonal), "verbose": VERBOSE, "seed": np.nan,
        "randn": sampler.randn})


def _qualname(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _is_code(value: Any) -> bool:
    """Functions, methods, classes, cma's options (evaluated as Python) and its logger: never in the file."""
    if isinstance(value, (_OPTIONS, _LOGGER)):
        return True
    if _is_data_object(value) or isinstance(value, (np.ndarray, np.generic, list, tuple, dict, str)):
        return False
    return callable(value)


def _is_data_object(value: Any) -> bool:
    return type(value).__module__.split(".")[0] == "cma" and hasattr(value, "__dict__") \
        and not isinstance(value, (_OPTIONS, _LOGGER))


# --- saving -----------------------------------------------------------------------------------------------

class _Encoder:
    """Walks a CMA-ES depth first: ``tree`` is JSON, ``arrays`` the arrays it names by their path."""

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}
        self.numbered: dict[int, int] = {}  # id of a mutable node -> its number, in the order walked
        self.alive: list[Any] = []  # keeps the walked objects alive, so that their ids stay theirs

    def node(self, value: Any, path: str, kept: bool = False) -> Any:
        if kept or _is_code(value):
            return {"kept": True}
        if value is None or isinstance(value, (bool, int, float)) and not isinstance(value, np.generic):
            return value  # Python's JSON writes inf and nan as Infinity and NaN, and reads them back
        if isinstance(value, str):
            return {"text": value}
        if isinstance(value, np.generic):
            self.arrays[path] = np.asarray(value)
            return {"scalar": path}
        if id(value) in self.numbered:
            return {"same_as": self.numbered[id(value)]}
        self.numbered[id(value)] = len(self.numbered)
        self.alive.append(value)
        if isinstance(value, np.ndarray):
            if value.dtype.kind not in NUMBER_KINDS:
                raise TypeError(f"{path}: an array of {value.dtype}, not of numbers")
            self.arrays[path] = value
            return {"array": path}
        if _is_data_object(value):
            encoded: dict[str, Any] = {"object": _qualname(value)}
            if isinstance(value, list):
                encoded["items"] = [self.node(v, f"{path}[{i}]") for i, v in enumerate(value)]
            elif isinstance(value, dict):
                encoded["entries"] = self.entries(value, path)
            encoded["attributes"] = {name: self.node(v, f"{path}.{name}") for name, v in vars(value).items()}
            return encoded
        if type(value) in (list, tuple):
            return {type(value).__name__: [self.node(v, f"{path}[{i}]") for i, v in enumerate(value)]}
        if type(value) is dict:
            return {"dict": self.entries(value, path)}
        if type(value) is range:
            return {"range": [value.start, value.stop, value.step]}
        raise TypeError(f"{path}: {type(value).__name__} is not data this format knows")

    def entries(self, mapping: dict, path: str) -> list:
        return [[self.key(k, path), self.node(v, f"{path}[{i}]")] for i, (k, v) in enumerate(mapping.items())]

    def key(self, key: Any, path: str) -> Any:
        if isinstance(key, tuple):
            return {"tuple": [self.key(k, path) for k in key]}
        if isinstance(key, str):
            return {"text": key}
        if key is None or isinstance(key, (bool, int, float)) and not isinstance(key, np.generic):
            return key
        raise TypeError(f"{path}: a key of type {type(key).__name__} is not data this format knows")


def sampler_of(es: cma.CMAEvolutionStrategy) -> np.random.RandomState:
    """The ``RandomState`` the CMA-ES draws its candidates from."""
    state = getattr(es.opts["randn"], "__self__", None)
    if not isinstance(state, np.random.RandomState):
        raise TypeError(f"the CMA-ES samples with {es.opts['randn']!r}, not with a RandomState's randn")
    return state


def es_to_arrays(es: cma.CMAEvolutionStrategy) -> tuple[dict, dict[str, np.ndarray]]:
    """The CMA-ES as a JSON-able dict and the arrays it names (keys ``es.<path>`` and ``random.keys``)."""
    options = {"popsize": int(es.opts["popsize"]), "CMA_diagonal": es.opts["CMA_diagonal"]}
    if not isinstance(options["CMA_diagonal"], bool):
        raise TypeError(f"CMA_diagonal={options['CMA_diagonal']!r}: only True or False are saved")
    unknown = set(es.inopts) - {*OPTIONS, "verbose", "seed", "randn"}
    if unknown:
        raise TypeError(f"options {sorted(unknown)} are not saved by this format")
    encoder = _Encoder()
    encoder.numbered[id(es)] = 0  # the CMA-ES itself is node 0 of the walk
    tree = {"object": _qualname(es), "attributes": {
        name: encoder.node(value, f"es.{name}", kept=name in KEPT_ATTRIBUTES) for name, value in vars(es).items()}}
    kind, keys, pos, has_gauss, cached_gaussian = sampler_of(es).get_state()
    arrays = {**encoder.arrays, "start.x0": np.asarray(es.inputargs["x0"], np.float64),
              "random.keys": np.asarray(keys, np.uint32)}
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "cma": cma.__version__, "options": options,
              "sigma0": float(es.inputargs["sigma0"]),
              "random": {"kind": kind, "pos": int(pos), "has_gauss": int(has_gauss),
                         "cached_gaussian": float(cached_gaussian)},
              "tree": tree}
    return header, arrays


def same_state(a: cma.CMAEvolutionStrategy, b: cma.CMAEvolutionStrategy, ignore: tuple[str, ...] = ()) -> bool:
    """Whether two CMA-ES hold the same data everywhere (``es_to_arrays`` of both, arrays bit for bit, the
    random state included), but for the attributes of the CMA-ES named in ``ignore`` (``timer``, say)."""
    (json_a, arrays_a), (json_b, arrays_b) = es_to_arrays(a), es_to_arrays(b)
    for tree in (json_a["tree"], json_b["tree"]):
        for name in ignore:
            tree["attributes"].pop(name, None)
    arrays_a, arrays_b = ({k: v for k, v in arrays.items() if k.split(".")[1].split("[")[0] not in ignore}
                          for arrays in (arrays_a, arrays_b))
    return (json.dumps(json_a) == json.dumps(json_b) and arrays_a.keys() == arrays_b.keys()
            and all(arrays_a[k].dtype == arrays_b[k].dtype and arrays_a[k].shape == arrays_b[k].shape
                    and arrays_a[k].tobytes() == arrays_b[k].tobytes() for k in arrays_a))


# --- loading ----------------------------------------------------------------------------------------------

class StateMismatch(ValueError):
    """The saved tree does not fit the CMA-ES being filled: a damaged file, or another version of cma."""


_MISSING = object()


class _Decoder:
    """Fills a new CMA-ES in place from a tree ``_Encoder`` wrote, numbering its nodes in the same order."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.arrays = arrays
        self.numbered: list[Any] = []

    def node(self, encoded: Any, fresh: Any, path: str) -> Any:
        if encoded is None or isinstance(encoded, (bool, int, float)):
            return encoded
        if not isinstance(encoded, dict) or not encoded:
            raise StateMismatch(f"{path}: {type(encoded).__name__} is not a node of this format")
        kind = next(iter(encoded))
        if fresh is not _MISSING and _is_code(fresh) != (kind == "kept"):
            raise StateMismatch(f"{path}: the file has {kind!r} where the CMA-ES has "
                                f"{'code' if _is_code(fresh) else 'data'}")
        if kind == "kept":
            if fresh is _MISSING:
                raise StateMismatch(f"{path}: kept from a new CMA-ES, which has none")
            return fresh
        if kind == "text":
            return self.text(encoded["text"], path)
        if kind == "scalar":
            return self.array(encoded["scalar"], path, ndim=0)[()]
        if kind == "same_as":
            number = encoded["same_as"]
            if not isinstance(number, int) or isinstance(number, bool) or not 0 <= number < len(self.numbered) \
                    or self.numbered[number] is _MISSING:
                raise StateMismatch(f"{path}: refers to node {number!r}, which comes later or not at all")
            return self.numbered[number]
        number = len(self.numbered)
        self.numbered.append(_MISSING)
        if kind == "array":
            value = self.array(encoded["array"], path)
        elif kind == "object":
            value = self.object(encoded, fresh, path, number)
        elif kind in ("list", "tuple"):
            items = self.sequence(encoded[kind], fresh, path)
            value = items if kind == "list" else tuple(items)
        elif kind == "dict":
            value = dict(self.entries(encoded["dict"], fresh, path))
        elif kind == "range":
            bounds = encoded["range"]
            if not (isinstance(bounds, list) and len(bounds) == 3 and all(type(b) is int for b in bounds)):
                raise StateMismatch(f"{path}: {bounds!r} is not a range's start, stop and step")
            value = range(*bounds)
        else:
            raise StateMismatch(f"{path}: unknown node {kind!r}")
        self.numbered[number] = value
        return value

    def object(self, encoded: dict, fresh: Any, path: str, number: int) -> Any:
        name = encoded["object"]
        if fresh is not _MISSING and _qualname(fresh) == name:
            obj = fresh
        elif name in CREATABLE:
            obj = CREATABLE[name].__new__(CREATABLE[name])
        else:
            have = "nothing" if fresh is _MISSING else _qualname(fresh)
            raise StateMismatch(f"{path}: a {name} where the CMA-ES has {have}")
        self.numbered[number] = obj  # its attributes may refer to it
        if isinstance(obj, list):
            items = self.sequence(encoded.get("items", []), obj, path)
            list.clear(obj)
            list.extend(obj, items)
        elif isinstance(obj, dict):
            entries = self.entries(encoded.get("entries", []), obj, path)
            dict.clear(obj)
            dict.update(obj, entries)
        attributes = encoded.get("attributes")
        if not isinstance(attributes, dict):
            raise StateMismatch(f"{path}: no attributes")
        for attr, value in attributes.items():
            self.check_attribute(obj, attr, path)
            if number == 0 and attr in KEPT_ATTRIBUTES:  # the CMA-ES's options and logger are the new one's
                if value != {"kept": True}:
                    raise StateMismatch(f"{path}.{attr}: the file has data where the CMA-ES keeps its own")
                continue
            setattr(obj, attr, self.node(value, getattr(obj, attr, _MISSING), f"{path}.{attr}"))
        return obj

    @staticmethod
    def check_attribute(obj: Any, attr: str, path: str) -> None:
        """Only an instance's own data may be set: no dunder names, nothing that shadows a method or property."""
        if not isinstance(attr, str) or not attr.isidentifier() or attr.startswith("__"):
            raise StateMismatch(f"{path}: {attr!r} is not an attribute name")
        import inspect
        on_class = inspect.getattr_static(type(obj), attr, None)
        if callable(on_class) or hasattr(on_class, "__get__") or hasattr(on_class, "__set__"):
            raise StateMismatch(f"{path}.{attr}: names code of {type(obj).__name__}, not data")

    def sequence(self, encoded: Any, fresh: Any, path: str) -> list:
        if not isinstance(encoded, list):
            raise StateMismatch(f"{path}: not a list of nodes")
        twins = fresh if isinstance(fresh, (list, tuple)) else ()
        return [self.node(v, twins[i] if i < len(twins) else _MISSING, f"{path}[{i}]") for i, v in enumerate(encoded)]

    def entries(self, encoded: Any, fresh: Any, path: str) -> list[tuple]:
        if not isinstance(encoded, list) or not all(isinstance(e, list) and len(e) == 2 for e in encoded):
            raise StateMismatch(f"{path}: not a list of [key, value] pairs")
        twins = fresh if isinstance(fresh, dict) else {}
        pairs = []
        for i, (k, v) in enumerate(encoded):
            key = self.key(k, f"{path}[{i}]")
            pairs.append((key, self.node(v, twins.get(key, _MISSING), f"{path}[{i}]")))
        return pairs

    def key(self, encoded: Any, path: str) -> Any:
        if encoded is None or isinstance(encoded, (bool, int, float)):
            return encoded
        if isinstance(encoded, dict) and len(encoded) == 1:
            (kind, value), = encoded.items()
            if kind == "tuple" and isinstance(value, list):
                return tuple(self.key(k, path) for k in value)
            if kind == "text":
                return self.text(value, path)
        raise StateMismatch(f"{path}: {encoded!r} is not a key")

    def array(self, key: Any, path: str, ndim: int | None = None) -> np.ndarray:
        if not isinstance(key, str) or key not in self.arrays:
            raise StateMismatch(f"{path}: names an array {key!r} the file does not have")
        value = self.arrays[key]
        if value.dtype.kind not in NUMBER_KINDS or (ndim is not None and value.ndim != ndim):
            raise StateMismatch(f"{path}: {key} is a {value.dtype} array of shape {value.shape}")
        return value

    @staticmethod
    def text(value: Any, path: str) -> str:
        if not isinstance(value, str):
            raise StateMismatch(f"{path}: text expected, found {type(value).__name__}")
        return value


def _fit(header: Any, arrays: dict[str, np.ndarray], n: int | None) -> tuple[dict, np.ndarray]:
    """The options and the start of a saved CMA-ES, checked; a StateMismatch says what does not fit."""
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise StateMismatch("not a CMA-ES state of this project")
    if header.get("format_version") != FORMAT_VERSION:
        raise StateMismatch(f"format version {header.get('format_version')!r}, this code reads {FORMAT_VERSION}")
    options = header.get("options")
    if not isinstance(options, dict) or set(options) != set(OPTIONS) or not all(
            type(options[k]) is kind for k, kind in OPTIONS.items()) or not 2 <= options["popsize"] <= 100_000:
        raise StateMismatch(f"options {options!r} are not {{popsize: a whole number >= 2, CMA_diagonal: true or "
                            "false}")
    x0 = arrays.get("start.x0")
    if x0 is None or x0.dtype != np.float64 or x0.ndim != 1 or (n is not None and x0.shape != (n,)) \
            or not np.all(np.isfinite(x0)):
        shape = None if x0 is None else x0.shape
        raise StateMismatch(f"its start x0 has shape {shape}, expected ({n if n is not None else 'n'},) of finite "
                            "numbers")
    sigma0 = header.get("sigma0")
    if not isinstance(sigma0, float) or not sigma0 > 0 or not math.isfinite(sigma0):
        raise StateMismatch(f"sigma0 = {sigma0!r} is not a positive number")
    return options, x0


def _random_state(header: dict, arrays: dict[str, np.ndarray]) -> tuple:
    random = header.get("random")
    keys = arrays.get("random.keys")
    if not (isinstance(random, dict) and random.get("kind") == "MT19937" and keys is not None
            and keys.dtype == np.uint32 and keys.shape == (624,)
            and type(random.get("pos")) is int and 0 <= random["pos"] <= 624
            and random.get("has_gauss") in (0, 1) and isinstance(random.get("cached_gaussian"), float)):
        raise StateMismatch("its random state is not an MT19937 state (624 keys, a position, a cached gaussian)")
    return "MT19937", keys, random["pos"], random["has_gauss"], random["cached_gaussian"]


def _check_es(es: cma.CMAEvolutionStrategy, n: int, diagonal: bool) -> None:
    """What ``ask`` relies on, after the tree is in: a mean, step size and covariance of ``n`` parameters."""
    def vector(name: str, value: Any) -> None:
        if not (isinstance(value, np.ndarray) and value.shape == (n,) and value.dtype.kind == "f"
                and np.all(np.isfinite(value))):
            shape = getattr(value, "shape", type(value).__name__)
            raise StateMismatch(f"its {name} has shape {shape}, expected ({n},) of finite numbers")

    vector("mean", es.mean)
    vector("D", es.D)
    vector("pc", es.pc)
    if not isinstance(es.sigma, (float, np.floating)) or not (0 < es.sigma < math.inf):
        raise StateMismatch(f"its sigma {es.sigma!r} is not a positive number")
    if not diagonal:
        for name in ("C", "B"):
            value = getattr(es.sm, name, None)
            if not (isinstance(value, np.ndarray) and value.shape == (n, n) and np.all(np.isfinite(value))):
                raise StateMismatch(f"its {name} has shape {getattr(value, 'shape', None)}, expected ({n}, {n})")
    if not (type(es.countiter) is int and type(es.countevals) is int and es.countiter >= 0 and es.countevals >= 0):
        raise StateMismatch(f"its counters ({es.countiter!r}, {es.countevals!r}) are not whole numbers")


def es_from_arrays(header: Any, arrays: dict[str, np.ndarray], where: Path | str,
                   n: int | None = None) -> cma.CMAEvolutionStrategy:
    """The CMA-ES ``es_to_arrays`` saved (``where``: the file, for messages), of ``n`` parameters if given.

    A state that does not fit is an ArtifactError naming ``where``; one of another cma version is loaded if it
    fits, with a warning."""
    try:
        options, x0 = _fit(header, arrays, n)
        n = x0.shape[0]
        random = _random_state(header, arrays)
        sampler = np.random.RandomState()
        es = new_es(x0, header["sigma0"], options["popsize"], options["CMA_diagonal"], sampler)
        tree = header.get("tree")
        if not isinstance(tree, dict) or tree.get("object") != _qualname(es):
            raise StateMismatch("its tree is not a CMAEvolutionStrategy's")
        decoder = _Decoder(arrays)
        decoder.numbered.append(_MISSING)  # the CMA-ES itself is node 0 of the walk
        decoder.object(tree, es, "es", 0)
        _check_es(es, n, options["CMA_diagonal"])
        sampler.set_state(random)
    except (StateMismatch, KeyError, TypeError, ValueError, AttributeError, IndexError, RecursionError) as e:
        saved_by = header.get("cma") if isinstance(header, dict) else None
        version = (f" (saved by cma {saved_by}, this is cma {cma.__version__}: install cma=={saved_by})"
                   if isinstance(saved_by, str) and saved_by != cma.__version__ else "")
        raise ArtifactError(f"{where}: its CMA-ES state does not load ({e}){version}; delete it to start the "
                            "evolution over") from None
    if header.get("cma") != cma.__version__:
        log.warning("%s: CMA-ES state saved by cma %s, loaded with cma %s: the next candidates may differ from "
                    "those an uninterrupted run would have drawn", where, header.get("cma"), cma.__version__)
    return es

