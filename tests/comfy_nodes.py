"""A validator for ComfyUI API-format graphs written from ``tests/data/comfy_interop/node_inputs.json`` (what ComfyUI
reports for each node class): the checks ComfyUI's ``validate_prompt`` makes before it runs a graph, plus the widget
steps its page snaps to. ``problems(graph)`` lists everything wrong (empty: ComfyUI accepts the graph as it is)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

NODE_INPUTS = Path(__file__).parent / "data" / "comfy_interop" / "node_inputs.json"


@cache
def node_inputs() -> dict[str, Any]:
    return json.loads(NODE_INPUTS.read_text())


def _check_value(where: str, spec: list[Any], value: Any, file_list: bool) -> list[str]:
    kind = spec[0]
    options = spec[1] if len(spec) > 1 else {}
    if isinstance(kind, list):  # a choice (a file list: the install's own names, so any non-empty name)
        if file_list:
            return [] if isinstance(value, str) and value else [f"{where}: {value!r} is not a file name"]
        return [] if value in kind else [f"{where}: {value!r} is not one of {kind}"]
    if kind == "INT":
        if not isinstance(value, int) or isinstance(value, bool):
            return [f"{where}: {value!r} is not an INT"]
    elif kind == "FLOAT":
        if not isinstance(value, int | float) or isinstance(value, bool):
            return [f"{where}: {value!r} is not a FLOAT"]
    elif kind == "STRING":
        return [] if isinstance(value, str) else [f"{where}: {value!r} is not a STRING"]
    elif kind == "BOOLEAN":
        return [] if isinstance(value, bool) else [f"{where}: {value!r} is not a BOOLEAN"]
    else:
        return [f"{where}: a {kind} input needs a link, got the value {value!r}"]
    found = []
    if "min" in options and value < options["min"]:
        found.append(f"{where}: {value!r} is below the minimum {options['min']}")
    if "max" in options and value > options["max"]:
        found.append(f"{where}: {value!r} is above the maximum {options['max']}")
    if kind == "INT" and options.get("step", 1) > 1 and value % options["step"]:
        found.append(f"{where}: {value!r} is not a multiple of the widget step {options['step']}")
    return found


def _check_link(graph: dict[str, Any], where: str, spec: list[Any], value: Any) -> list[str]:
    if not (isinstance(value, list) and len(value) == 2 and isinstance(value[1], int)):
        return [f"{where}: a {spec[0]} input must be a link [node id, output], got {value!r}"]
    source = graph.get(str(value[0]))
    if source is None:
        return [f"{where}: links to node {value[0]}, which is not in the graph"]
    outputs = node_inputs()["nodes"].get(source.get("class_type"), {}).get("return_types", [])
    if not 0 <= value[1] < len(outputs):
        return [f"{where}: node {value[0]} has no output {value[1]}"]
    if outputs[value[1]] != spec[0]:
        return [f"{where}: node {value[0]}'s output {value[1]} is {outputs[value[1]]}, not {spec[0]}"]
    return []


def problems(graph: dict[str, Any]) -> list[str]:
    """Everything ComfyUI would refuse in ``graph`` (unknown nodes, missing or extra inputs, values outside the
    allowed ones, links to the wrong type); empty when it accepts the graph."""
    data = node_inputs()
    file_lists = set(data["file_list_inputs"])
    found: list[str] = []
    if not isinstance(graph, dict) or not graph:
        return ["not an API-format graph"]
    outputs = 0
    for node_id, node in graph.items():
        class_type = node.get("class_type")
        spec = data["nodes"].get(class_type)
        if spec is None:
            found.append(f"node {node_id}: unknown class_type {class_type!r}")
            continue
        outputs += bool(spec.get("output_node"))
        inputs = node.get("inputs", {})
        required = spec["input"].get("required", {})
        optional = spec["input"].get("optional", {})
        for name in inputs:
            if name not in required and name not in optional:
                found.append(f"node {node_id} ({class_type}): unexpected input {name!r}")
        for name, input_spec in {**required, **optional}.items():
            where = f"node {node_id} ({class_type}).{name}"
            if name not in inputs:
                if name in required:
                    found.append(f"{where}: required input missing")
                continue
            value = inputs[name]
            link_kind = isinstance(input_spec[0], str) and input_spec[0] not in ("INT", "FLOAT", "STRING", "BOOLEAN")
            if link_kind:
                found.extend(_check_link(graph, where, input_spec, value))
            elif isinstance(value, list):  # a widget fed from another node's output
                found.extend(_check_link(graph, where, [_widget_type(input_spec)], value))
            else:
                found.extend(_check_value(where, input_spec, value, f"{class_type}.{name}" in file_lists))
    if outputs == 0:
        found.append("the graph has no output node (ComfyUI refuses a prompt without outputs)")
    return found


def _widget_type(spec: list[Any]) -> str:
    return "COMBO" if isinstance(spec[0], list) else spec[0]
