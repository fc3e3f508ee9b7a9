"""The checks the HTTP guard makes on a KServe-v2 inference request before Triton's HTTP parser sees it.

Triton 2.51 sizes the buffer of a JSON input from its declared shape before it counts the values
(`http_server.cc`, `ParseJsonTritonIO`): one input declaring `"shape": [1099511627776]` with one value aborts the
whole server with `std::bad_alloc`. The rules here make every input's declared size agree with the bytes that carry
it, so nothing Triton sizes from a shape can exceed what the client actually sent:

* `shape`: a list of integers in [0, max_elements], whose product is at most max_elements;
* exactly one source of data, as Triton requires: `data`, `parameters.binary_data_size` or
  `parameters.shared_memory_region`;
* `data`: as many values (nested lists flattened) as the shape has elements, integers within their datatype's range;
* `binary_data_size`: elements x the datatype's size (BYTES: at least 4 bytes, the length prefix, per element), and
  the sizes of all inputs add up to the binary part of the body exactly;
* `shared_memory_byte_size`: the same rule as `binary_data_size`.

Outputs carry no shapes, and Triton's `generate` endpoints size their tensors from the values sent, not from a
declared shape: neither is checked.

The JSON is parsed strictly where Python's parser is laxer than rapidjson's, or reads it differently: duplicate keys
are refused (rapidjson reads the first, Python keeps the last, so a second `shape` could smuggle the first past us),
so are NaN/Infinity and nesting deeper than Python's recursion limit (rapidjson's recursive parser has no bound).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from wan22_triton.errors import shown

# Triton's datatypes and their element sizes; BYTES elements are length-prefixed strings of any size.
DATATYPE_SIZES: dict[str, int | None] = {
    "BOOL": 1, "UINT8": 1, "INT8": 1,
    "UINT16": 2, "INT16": 2, "FP16": 2, "BF16": 2,
    "UINT32": 4, "INT32": 4, "FP32": 4,
    "UINT64": 8, "INT64": 8, "FP64": 8,
    "BYTES": None,
}
BYTES_LENGTH_PREFIX = 4  # each serialized BYTES element starts with its uint32 length
# Integer datatypes and their ranges: Triton's JSON parser wraps a value outside them (4294967301 becomes INT32 5).
INTEGER_RANGES: dict[str, tuple[int, int]] = {
    **{f"INT{bits}": (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) for bits in (8, 16, 32, 64)},
    **{f"UINT{bits}": (0, (1 << bits) - 1) for bits in (8, 16, 32, 64)},
}
FLOAT_TYPES = ("FP16", "BF16", "FP32", "FP64")


def _integer_rule(low: int, high: int) -> tuple[str, Any]:
    return (f"an integer in [{low}, {high}]; Triton's parser would wrap it",
            lambda v: type(v) is int and low <= v <= high)


# What each datatype's JSON values must be, described: Triton wraps an integer out of range and answers 500 to a
# float given as a string, where these are a 400 naming the input.
LEAF_RULES: dict[str, tuple[str, Any]] = {
    **{datatype: _integer_rule(*bounds) for datatype, bounds in INTEGER_RANGES.items()},
    **{datatype: ("a JSON number", lambda v: type(v) in (int, float)) for datatype in FLOAT_TYPES},
    "BOOL": ("true or false", lambda v: type(v) is bool),
    "BYTES": ("a JSON string", lambda v: type(v) is str),
}


class Rejected(Exception):
    """A request the guard answers itself, with `status` and Triton's error JSON."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def bad_request(message: str) -> Rejected:
    return Rejected(400, message)


@dataclass(frozen=True)
class InferenceLimits:
    """Bounds on what one inference request may declare."""

    max_elements: int = 1 << 28  # per input; 28x the largest of a 720p A14B request (expert hidden_states, 9.7M)
    max_json_bytes: int = 8 << 20  # the JSON part; big tensors belong in the binary part (parsed here in Python)


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise bad_request(f"inference request JSON repeats the key '{key}'")
        obj[key] = value
    return obj


def _refuse_constant(name: str) -> Any:
    raise bad_request(f"inference request JSON holds {name}, which is not JSON")


def parse_json(raw: bytes) -> dict[str, Any]:
    """The JSON part of an inference request, parsed strictly (see the module docstring)."""
    try:
        # Decoded as UTF-8 first: given bytes, json.loads would also guess UTF-16/32, which Triton reads as UTF-8.
        parsed = json.loads(raw.decode("utf-8"), object_pairs_hook=_refuse_duplicate_keys,
                            parse_constant=_refuse_constant)
    except RecursionError:
        raise bad_request("inference request JSON is nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise bad_request(f"inference request is not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise bad_request("inference request JSON must be an object")
    return parsed


def _is_count(value: Any) -> bool:
    return type(value) is int and value >= 0  # bool is an int subclass: refused


def _checked_leaf_count(name: str, data: list[Any], datatype: str) -> int:
    """Values in a nested list, without recursion (the JSON parser already bounded the depth); each must follow its
    datatype's rule (LEAF_RULES)."""
    kind, is_leaf = LEAF_RULES[datatype]
    count, pending = 0, [data]
    while pending:
        for item in pending.pop():
            if isinstance(item, list):
                pending.append(item)
                continue
            count += 1
            if not is_leaf(item):
                raise bad_request(f"input {shown(name)}: {shown(item)} is not a valid {datatype} value ({kind})")
    return count


def _element_count(name: str, shape: Any, limits: InferenceLimits) -> int:
    if not isinstance(shape, list):
        raise bad_request(f"input {shown(name)}: 'shape' must be a list of integers")
    for dim in shape:
        if not _is_count(dim) or dim > limits.max_elements:
            raise bad_request(
                f"input {shown(name)}: shape {shown(shape)} has the dimension {shown(dim)}; every dimension must "
                f"be an integer in [0, {limits.max_elements}]"
            )
    elements = math.prod(shape)
    if elements > limits.max_elements:
        raise bad_request(
            f"input {shown(name)}: shape {shown(shape)} has {elements} elements, more than the limit of "
            f"{limits.max_elements}"
        )
    return elements


def _check_byte_size(name: str, field: str, size: Any, datatype: str, elements: int) -> int:
    """`binary_data_size` or `shared_memory_byte_size` against the shape; returns the size."""
    if not _is_count(size):
        raise bad_request(f"input {shown(name)}: '{field}' must be a non-negative integer")
    item_size = DATATYPE_SIZES[datatype]
    if item_size is not None and size != elements * item_size:
        raise bad_request(
            f"input {shown(name)}: {field} is {size} bytes, but {elements} {datatype} elements take "
            f"{elements * item_size}"
        )
    if item_size is None and size < elements * BYTES_LENGTH_PREFIX:
        raise bad_request(
            f"input {shown(name)}: {field} is {size} bytes, too few for {elements} BYTES elements (each has a "
            f"{BYTES_LENGTH_PREFIX}-byte length prefix)"
        )
    return size


def _binary_size_of_input(tensor: Any, index: int, limits: InferenceLimits) -> int:
    """Check one entry of `inputs`; returns the bytes it takes from the binary part of the body."""
    if not isinstance(tensor, dict):
        raise bad_request(f"inputs[{index}] must be an object")
    name = tensor.get("name")
    if not isinstance(name, str):
        raise bad_request(f"inputs[{index}]: 'name' must be a string")
    datatype = tensor.get("datatype")
    if datatype not in DATATYPE_SIZES:
        raise bad_request(f"input {shown(name)}: unknown datatype {shown(datatype)}")
    elements = _element_count(name, tensor.get("shape"), limits)
    parameters = tensor.get("parameters", {})
    if not isinstance(parameters, dict):
        raise bad_request(f"input {shown(name)}: 'parameters' must be an object")

    sources = [s for s, present in (("data", "data" in tensor), ("binary_data_size", "binary_data_size" in parameters),
                                    ("shared_memory_region", "shared_memory_region" in parameters)) if present]
    if len(sources) != 1:
        raise bad_request(
            f"input {shown(name)}: must set exactly one of 'data', 'binary_data_size' or 'shared_memory_region' "
            f"(set: {', '.join(sources) or 'none'})"
        )
    if sources == ["data"]:
        data = tensor["data"]
        if not isinstance(data, list):
            raise bad_request(f"input {shown(name)}: 'data' must be a list")
        values = _checked_leaf_count(name, data, datatype)
        if values != elements:
            raise bad_request(
                f"input {shown(name)}: 'data' holds {values} values but shape {shown(tensor['shape'])} has "
                f"{elements} elements"
            )
        return 0
    if sources == ["binary_data_size"]:
        return _check_byte_size(name, "binary_data_size", parameters["binary_data_size"], datatype, elements)
    _check_byte_size(name, "shared_memory_byte_size", parameters.get("shared_memory_byte_size"), datatype, elements)
    if not _is_count(parameters.get("shared_memory_offset", 0)):
        raise bad_request(f"input {shown(name)}: 'shared_memory_offset' must be a non-negative integer")
    return 0


def check_inference_request(request: dict[str, Any], binary_length: int, limits: InferenceLimits) -> None:
    """Raise `Rejected` unless every input's shape is bounded and agrees with its data, and the inputs' binary
    sizes add up to `binary_length`, the body's bytes after the JSON part."""
    inputs = request.get("inputs")
    if not isinstance(inputs, list):
        raise bad_request("inference request: 'inputs' must be a list")
    declared = sum(_binary_size_of_input(tensor, i, limits) for i, tensor in enumerate(inputs))
    if declared != binary_length:
        raise bad_request(
            f"inference request: the inputs' binary_data_size add up to {declared} bytes, but the body carries "
            f"{binary_length} bytes after the JSON part (Inference-Header-Content-Length)"
        )
