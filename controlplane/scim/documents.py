"""SCIM documents in memory: PATCH operations (RFC 7644 §3.5.2) and value-filter matching.

PATCH is applied to the resource's current SCIM representation, and the result goes through the
same validation and storage as a PUT, so both paths share one set of rules. Accepted shapes include
what Okta and Entra ID really send: ops in any case (``Replace``), path-less operations whose value
is an object (with dotted keys such as ``name.givenName``), string booleans (``"False"``), member
removal by value list or by filter path.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from scim2_models import ScimFilter
from scim2_models.path.expressions import (
    AttrPath,
    Comparison,
    FilterNode,
    LogicalExpr,
    LogicalOperator,
    Not,
    Present,
)

from controlplane.scim.errors import ScimError

PATCH_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
BOOLEAN_ATTRIBUTES = {"active", "primary"}
MAX_OPERATIONS = 1000


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def matches(node: FilterNode, element: dict[str, Any]) -> bool:
    """Evaluate a value filter (``type eq "work"``) against one element of a multi-valued attribute."""
    if isinstance(node, LogicalExpr):
        results = (matches(term, element) for term in node.terms)
        return all(results) if node.op == LogicalOperator.and_ else any(results)
    if isinstance(node, Not):
        return not matches(node.expr, element)
    if isinstance(node, Present):
        return element.get(node.attr_path.attr) not in (None, "", [])
    if isinstance(node, Comparison):
        actual, wanted = element.get(node.attr_path.attr), node.value
        if isinstance(actual, str) and isinstance(wanted, bool):
            actual = actual.lower() == "true"
        a, w = _lower(actual), _lower(wanted)
        op = node.op.value
        if op == "eq":
            return a == w
        if op == "ne":
            return a != w
        if not isinstance(a, str) or not isinstance(w, str):
            return False
        return {"co": w in a, "sw": a.startswith(w), "ew": a.endswith(w), "gt": a > w, "ge": a >= w,
                "lt": a < w, "le": a <= w}[op]
    raise ScimError.invalid_filter(f"unsupported value filter {node}")


def _coerce(attribute: str, value: Any) -> Any:
    # Entra ID sends booleans as the strings "True" / "False".
    if attribute in BOOLEAN_ATTRIBUTES and isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return value


_VALUE_PATH = re.compile(r"^(?P<attr>[^\[\]]+)\[(?P<filter>.+)\](?:\.(?P<sub>[A-Za-z][\w$-]*))?$", re.S)


def _attr_path(text: str, path: str) -> AttrPath:
    try:
        node = ScimFilter(f"{text} pr").ast
    except Exception as exc:  # the grammar's own exceptions
        raise ScimError.invalid_path(f"invalid path {path!r}: {exc}") from exc
    if not isinstance(node, Present):
        raise ScimError.invalid_path(f"invalid path {path!r}")
    return node.attr_path


def _parse_path(path: str) -> tuple[str | None, str, FilterNode | None, str | None]:
    """``(urn, attribute, value_filter, sub_attribute)`` for a PATCH path (RFC 7644 §3.5.2 ``PATH``):
    ``attrPath`` or ``valuePath [subAttr]`` such as ``emails[type eq "work"].value``."""
    match = _VALUE_PATH.match(path.strip())
    if match is None:
        attr = _attr_path(path, path)
        return attr.uri, attr.attr, None, attr.sub_attr
    attr = _attr_path(match["attr"], path)
    if attr.sub_attr:
        raise ScimError.invalid_path(f"invalid path {path!r}: a value filter follows an attribute, not a sub-attribute")
    try:
        value_filter = ScimFilter(match["filter"]).ast
    except Exception as exc:  # the grammar's own exceptions
        raise ScimError.invalid_path(f"invalid value filter in {path!r}: {exc}") from exc
    return attr.uri, attr.attr, value_filter, match["sub"]


def _container(document: dict[str, Any], urn: str | None, core_schemas: set[str]) -> dict[str, Any]:
    if urn is None or urn in core_schemas:
        return document
    container = document.setdefault(urn, {})
    if not isinstance(container, dict):
        raise ScimError.invalid_path(f"{urn} is not an extension object")
    return container


def _set_dotted(document: dict[str, Any], key: str, value: Any, core_schemas: set[str], *, merge: bool) -> None:
    """Path-less add/replace: ``{"name.givenName": …}`` and ``{"urn:…:User:employeeNumber": …}`` keys."""
    urn = None
    for schema in sorted(core_schemas | {s for s in document.get("schemas", []) if ":" in s}, key=len, reverse=True):
        if key.startswith(schema + ":"):
            urn, key = schema, key[len(schema) + 1 :]
            break
    target = _container(document, urn, core_schemas)
    head, _, sub = key.partition(".")
    if sub:
        inner = target.setdefault(head, {})
        if not isinstance(inner, dict):
            raise ScimError.invalid_path(f"{head} is not a complex attribute")
        inner[sub] = _coerce(sub, value)
        return
    value = _coerce(head, value)
    if merge and isinstance(value, list) and isinstance(target.get(head), list):
        target[head] = _union(target[head], value)
    elif merge and isinstance(value, dict) and isinstance(target.get(head), dict) and head not in core_schemas:
        target[head] = {**target[head], **value}
    else:
        target[head] = value


def _union(current: list[Any], new: list[Any]) -> list[Any]:
    seen = [item.get("value") if isinstance(item, dict) else item for item in current]
    result = list(current)
    for item in new:
        key = item.get("value") if isinstance(item, dict) else item
        if key not in seen:
            result.append(item)
            seen.append(key)
    return result


def apply_patch(document: dict[str, Any], body: dict[str, Any], core_schemas: set[str],
                extensions: set[str] = frozenset()) -> dict[str, Any]:  # type: ignore[assignment]
    """Return a new document with the PatchOp ``body`` applied; the input is not modified."""
    if not isinstance(body, dict) or PATCH_SCHEMA not in (body.get("schemas") or []):
        raise ScimError.invalid_syntax(f"a PATCH body must carry the {PATCH_SCHEMA} schema")
    operations = body.get("Operations")
    if not isinstance(operations, list) or not operations:
        raise ScimError.invalid_syntax("a PATCH body needs a non-empty Operations list")
    if len(operations) > MAX_OPERATIONS:
        raise ScimError(413, f"at most {MAX_OPERATIONS} operations per request", "tooMany")
    result = copy.deepcopy(document)
    for operation in operations:
        if not isinstance(operation, dict):
            raise ScimError.invalid_syntax("each operation must be an object")
        op = str(operation.get("op", "")).lower()
        if op not in ("add", "replace", "remove"):
            raise ScimError.invalid_syntax(f"unknown op {operation.get('op')!r}")
        path = operation.get("path")
        value = operation.get("value")
        if path is None or path == "":
            if op == "remove":
                raise ScimError.no_target("remove needs a path")
            if not isinstance(value, dict):
                raise ScimError.invalid_value("an operation without a path needs an object value")
            for key, item in value.items():
                _set_dotted(result, key, item, core_schemas, merge=op == "add")
            continue
        if not isinstance(path, str):
            raise ScimError.invalid_path("path must be a string")
        if path in extensions:
            # The whole extension object: {"op": "add", "path": "urn:…:enterprise:2.0:User", "value": {…}}
            _apply_extension(result, op, path, value)
        else:
            _apply_path(result, op, path, value, operation, core_schemas)
    return result


def _apply_extension(document: dict[str, Any], op: str, urn: str, value: Any) -> None:
    if op == "remove":
        document.pop(urn, None)
        return
    if not isinstance(value, dict):
        raise ScimError.invalid_value(f"{urn} needs an object value")
    existing = document.get(urn)
    current: dict[str, Any] = existing if isinstance(existing, dict) else {}
    document[urn] = {**current, **value} if op == "add" else dict(value)


def _apply_path(document: dict[str, Any], op: str, path: str, value: Any, operation: dict[str, Any],
                core_schemas: set[str]) -> None:
    urn, attr, value_filter, sub = _parse_path(path)
    target = _container(document, urn, core_schemas)
    if value_filter is None:
        if op == "remove":
            if sub:
                if isinstance(target.get(attr), dict):
                    target[attr].pop(sub, None)
                return
            if value is not None and isinstance(target.get(attr), list):
                # Entra ID: {"op":"Remove","path":"members","value":[{"value":"<id>"}]}
                doomed = {item.get("value") if isinstance(item, dict) else item
                          for item in (value if isinstance(value, list) else [value])}
                target[attr] = [item for item in target[attr]
                                if (item.get("value") if isinstance(item, dict) else item) not in doomed]
                return
            target.pop(attr, None)
            return
        if "value" not in operation:
            raise ScimError.invalid_value(f"{op} needs a value")
        if sub:
            inner = target.setdefault(attr, {})
            if not isinstance(inner, dict):
                raise ScimError.invalid_path(f"{attr} is not a complex attribute")
            inner[sub] = _coerce(sub, value)
        elif op == "add" and isinstance(target.get(attr), list):
            target[attr] = _union(target[attr], value if isinstance(value, list) else [value])
        else:
            target[attr] = _coerce(attr, value)
        return
    elements = target.get(attr)
    if not isinstance(elements, list):
        elements = []
    chosen = [element for element in elements if isinstance(element, dict) and matches(value_filter, element)]
    if op == "remove":
        if sub:
            for element in chosen:
                element.pop(sub, None)
        else:
            target[attr] = [element for element in elements if element not in chosen]
        return
    if not chosen:
        if op == "replace":
            raise ScimError.no_target(f"no {attr} value matches {path!r}")
        new_element = _element_from_filter(value_filter)
        elements.append(new_element)
        target[attr] = elements
        chosen = [new_element]
    for element in chosen:
        if sub:
            element[sub] = _coerce(sub, value)
        elif isinstance(value, dict):
            element.update(value)
        else:
            raise ScimError.invalid_value(f"{path!r} needs an object value")


def _element_from_filter(node: FilterNode) -> dict[str, Any]:
    """``add`` to ``emails[type eq "work"].value`` on a user with no work email creates one."""
    element: dict[str, Any] = {}
    terms = node.terms if isinstance(node, LogicalExpr) and node.op == LogicalOperator.and_ else (node,)
    for term in terms:
        if isinstance(term, Comparison) and term.op.value == "eq":
            element[term.attr_path.attr] = term.value
    return element


def project(document: dict[str, Any], attributes: list[str] | None, excluded: list[str] | None) -> dict[str, Any]:
    """``attributes`` / ``excludedAttributes`` (RFC 7644 §3.4.2.5); id and schemas always stay."""
    always = {"id", "schemas"}
    if attributes:
        wanted: dict[str, set[str] | None] = {}
        for name in attributes:
            head, _, sub = name.rsplit(":", 1)[-1].partition(".")
            if sub:
                if wanted.get(head, set()) is not None:
                    wanted.setdefault(head, set()).add(sub)  # type: ignore[union-attr]
            else:
                wanted[head] = None
        projected: dict[str, Any] = {}
        for key, value in document.items():
            if key in always:
                projected[key] = value
            elif key in wanted:
                subs = wanted[key]
                projected[key] = value if subs is None or not isinstance(value, dict) else {
                    k: v for k, v in value.items() if k in subs}
        return projected
    if excluded:
        names = {name.rsplit(":", 1)[-1].split(".")[0] for name in excluded}
        return {key: value for key, value in document.items() if key in always or key not in names}
    return document
