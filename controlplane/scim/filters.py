"""SCIM filters → SQL conditions with bound parameters.

The filter text is parsed by ``scim2-models`` (the RFC 7644 §3.4.2.2 grammar: ``eq ne co sw ew pr gt
ge lt le``, ``and or not``, grouping, attribute paths, value paths such as
``emails[type eq "work"].value``). This module only walks the resulting tree. Every value becomes a
bound parameter; attribute names are never copied into SQL: each is looked up in a fixed map or
checked against the resource schema and used as a JSON key parameter. Unknown attributes, and
operators that make no sense for an attribute, are ``invalidFilter`` errors, never silently ignored.

String comparisons are case-insensitive except for ``id`` and ``externalId`` (caseExact in RFC 7643).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from scim2_models import (
    Address,
    Email,
    EnterpriseUser,
    Entitlement,
    Group,
    Im,
    Manager,
    Meta,
    Name,
    PhoneNumber,
    Photo,
    Role,
    ScimFilter,
    User,
    X509Certificate,
)
from scim2_models.path.expressions import (
    AttrPath,
    CompareOperator,
    Comparison,
    FilterNode,
    LogicalExpr,
    LogicalOperator,
    Not,
    Present,
    ValuePath,
)
from sqlalchemy import Boolean, ColumnElement, and_, bindparam, not_, or_, text, true, type_coerce

from controlplane.scim.errors import ScimError

ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
CORE_USER = "urn:ietf:params:scim:schemas:core:2.0:User"
CORE_GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
MAX_FILTER_LENGTH = 2000
MAX_TERMS = 50


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _attributes(model: type[BaseModel]) -> set[str]:
    return {_camel(name) for name in model.model_fields if name != "schemas"}


#: Sub-attributes of the complex attributes filters may name (from the RFC 7643 models).
SUB_ATTRIBUTES: dict[str, set[str]] = {
    attr: _attributes(model) for attr, model in (
        ("name", Name), ("emails", Email), ("phoneNumbers", PhoneNumber), ("ims", Im), ("photos", Photo),
        ("addresses", Address), ("entitlements", Entitlement), ("roles", Role),
        ("x509Certificates", X509Certificate), ("manager", Manager), ("meta", Meta),
    )
}
USER_ATTRIBUTES = _attributes(User)
ENTERPRISE_ATTRIBUTES = _attributes(EnterpriseUser)
GROUP_ATTRIBUTES = _attributes(Group)
MULTI_VALUED = {"emails", "phoneNumbers", "ims", "photos", "addresses", "entitlements", "roles", "x509Certificates"}


class _Params:
    """Unique bound-parameter names for one translated filter."""

    def __init__(self) -> None:
        self._counter = itertools.count()

    def bind(self, value: Any) -> tuple[str, Any]:
        name = f"f{next(self._counter)}"
        return name, bindparam(name, value)


@dataclass(frozen=True)
class Column:
    """A SCIM attribute stored in a real column: its SQL, its kind, and whether it is caseExact."""

    sql: str
    kind: str = "string"  # string | datetime | active | uuid
    case_exact: bool = False


def condition(sql: str, *binds: Any) -> ColumnElement[bool]:
    """A trusted SQL fragment with its bound parameters, usable in and_/or_/not_."""
    return type_coerce(text(sql).bindparams(*binds), Boolean)


def _like(value: str, op: CompareOperator) -> str:
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return {"co": f"%{escaped}%", "sw": f"{escaped}%", "ew": f"%{escaped}"}[op.value]


def _compare(sql: str, op: CompareOperator, value: Any, params: _Params, *, case_exact: bool,
             kind: str = "string", extra: tuple[Any, ...] = ()) -> ColumnElement[bool]:
    """``sql`` is a trusted SQL expression (from our map); ``value`` is bound; ``extra`` are binds
    that ``sql`` itself uses (JSON keys)."""
    if kind == "active":
        if not isinstance(value, bool) or op.value not in ("eq", "ne"):
            raise ScimError.invalid_filter("active compares with eq or ne to true or false")
        wanted = value if op.value == "eq" else not value
        return condition(f"({sql} = 'active')") if wanted else condition(f"({sql} <> 'active')")
    if kind == "datetime":
        if not isinstance(value, str):
            raise ScimError.invalid_filter("dates compare with an RFC 3339 string")
        try:
            stamp = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as exc:
            raise ScimError.invalid_filter(f"{value!r} is not a date-time") from exc
        if op.value in ("co", "sw", "ew"):
            raise ScimError.invalid_filter("co, sw and ew apply to strings only")
        name, param = params.bind(stamp)
        return condition(f"({sql} {_SQL_OPS[op.value]} :{name})", param, *extra)
    if value is None:
        raise ScimError.invalid_filter("compare with null by 'pr' or 'not (… pr)'")
    if isinstance(value, bool):
        value = "true" if value else "false"
    value = str(value)
    if kind == "uuid":
        sql, case_exact = f"{sql}::text", True
    left, right = (sql, ":{}") if case_exact else (f"lower({sql})", "lower(:{})")
    if op.value in ("co", "sw", "ew"):
        name, param = params.bind(_like(value, op))
        return condition(f"({left} LIKE {right.format(name)} ESCAPE '\\')", param, *extra)
    name, param = params.bind(value)
    return condition(f"({left} {_SQL_OPS[op.value]} {right.format(name)})", param, *extra)


_SQL_OPS = {"eq": "=", "ne": "<>", "gt": ">", "ge": ">=", "lt": "<", "le": "<="}


class Translator:
    """Translate a parsed filter for one resource type. ``columns`` maps attribute paths stored in
    columns (``userName``, ``meta.created`` …) to SQL; everything else lives in ``json_column``."""

    def __init__(self, *, columns: dict[str, Column], json_column: str, allowed: set[str],
                 extension: tuple[str, set[str]] | None,
                 relations: dict[str, Callable[[FilterNode | None, _Params], ColumnElement[bool]]]) -> None:
        self.columns = columns
        self.json_column = json_column
        self.allowed = allowed
        self.extension = extension
        self.relations = relations

    def where(self, filter_text: str) -> ColumnElement[bool]:
        # The walk keeps small counters on self; it never awaits, so requests cannot interleave in it.
        if len(filter_text) > MAX_FILTER_LENGTH:
            raise ScimError.invalid_filter(f"filters are limited to {MAX_FILTER_LENGTH} characters")
        try:
            node = ScimFilter(filter_text).ast
        except Exception as exc:  # the grammar raises its own exception types; all mean "bad filter"
            raise ScimError.invalid_filter(str(exc)) from exc
        self._terms = 0
        self._element_parent = ""
        return self.node(node, _Params())

    def node(self, node: FilterNode, params: _Params, element: str | None = None) -> ColumnElement[bool]:
        self._terms += 1
        if self._terms > MAX_TERMS:
            raise ScimError.invalid_filter(f"filters are limited to {MAX_TERMS} terms")
        if isinstance(node, LogicalExpr):
            parts = [self.node(term, params, element) for term in node.terms]
            return and_(*parts) if node.op == LogicalOperator.and_ else or_(*parts)
        if isinstance(node, Not):
            return not_(self.node(node.expr, params, element))
        if isinstance(node, ValuePath):
            if element is not None:
                raise ScimError.invalid_filter("value paths do not nest")
            return self.value_path(node.attr_path, node.val_filter, params)
        if isinstance(node, Present | Comparison):
            return self.leaf(node, params, element)
        raise ScimError.invalid_filter(f"unsupported expression {node}")

    # -- leaves -----------------------------------------------------------------------------------

    def _json_key(self, path: AttrPath) -> str:
        if path.sub_attr is not None and path.sub_attr not in SUB_ATTRIBUTES.get(path.attr, set()):
            raise ScimError.invalid_filter(f"unknown attribute {path}")
        if path.uri is not None:
            if self.extension is None or path.uri != self.extension[0]:
                if path.uri in (CORE_USER, CORE_GROUP):
                    return path.attr
                raise ScimError.invalid_filter(f"unknown schema {path.uri}")
            if path.attr not in self.extension[1]:
                raise ScimError.invalid_filter(f"unknown attribute {path}")
            return path.attr
        if path.attr not in self.allowed:
            raise ScimError.invalid_filter(f"unknown attribute {path.attr}")
        return path.attr

    def leaf(self, node: Present | Comparison, params: _Params, element: str | None) -> ColumnElement[bool]:
        path = node.attr_path
        if element is not None:  # inside a value path: attributes of one array element
            if path.attr not in SUB_ATTRIBUTES.get(self._element_parent, set()) or path.sub_attr or path.uri:
                raise ScimError.invalid_filter(f"{self._element_parent} has no attribute {path}")
            name, key = params.bind(path.attr)
            sql = f"({element} ->> :{name})"
            return self._apply(node, sql, params, key, case_exact=False)
        dotted = str(AttrPath(path.attr, path.sub_attr))
        if path.uri in (None, CORE_USER, CORE_GROUP) and dotted in self.columns:
            column = self.columns[dotted]
            if isinstance(node, Present):
                return condition(f"({column.sql} IS NOT NULL)")
            return _compare(column.sql, node.op, node.value, params, case_exact=column.case_exact, kind=column.kind)
        if path.uri is None and path.attr in self.relations:
            related = None if isinstance(node, Present) else Comparison(
                AttrPath(path.sub_attr or "value"), node.op, node.value)
            return self.relations[path.attr](related, params)
        key_name = self._json_key(path)
        if path.attr in MULTI_VALUED:
            sub = path.sub_attr or "value"
            item: FilterNode = Present(AttrPath(sub)) if isinstance(node, Present) else Comparison(
                AttrPath(sub), node.op, node.value)
            return self.value_path(AttrPath(path.attr, uri=path.uri), item, params)
        keys = [key_name] if path.uri is None or path.uri in (CORE_USER, CORE_GROUP) else [path.uri, key_name]
        if path.sub_attr:
            keys.append(path.sub_attr)
        binds = [params.bind(k) for k in keys]
        sql = self.json_column + "".join(f" -> :{n}" for n, _ in binds[:-1]) + f" ->> :{binds[-1][0]}"
        return self._apply(node, f"({sql})", params, *[p for _, p in binds], case_exact=False)

    def _apply(self, node: Present | Comparison, sql: str, params: _Params, *keys: Any,
               case_exact: bool) -> ColumnElement[bool]:
        if isinstance(node, Present):
            return condition(f"({sql} IS NOT NULL AND {sql} <> '')", *keys)
        return _compare(sql, node.op, node.value, params, case_exact=case_exact, extra=keys)

    def value_path(self, path: AttrPath, inner: FilterNode | None, params: _Params) -> ColumnElement[bool]:
        if path.attr in self.relations:
            return self.relations[path.attr](inner, params)
        key_name = self._json_key(path)
        if path.attr not in MULTI_VALUED:
            raise ScimError.invalid_filter(f"{path.attr} is not multi-valued")
        name, key = params.bind(key_name)
        self._element_parent = path.attr
        matched = self.node(inner, params, element="elem") if inner is not None else true()
        source = f"jsonb_array_elements(COALESCE({self.json_column} -> :{name}, '[]'::jsonb))"
        sql, binds = embed(matched)
        return condition(f"EXISTS (SELECT 1 FROM {source} AS elem WHERE {sql})", key, *binds)  # noqa: S608


def embed(condition: ColumnElement[bool]) -> tuple[str, list[Any]]:
    """A condition as SQL text plus its bound parameters, to nest inside a ``text()`` subquery."""
    compiled = condition.compile()
    return str(compiled), [bindparam(name, bound.value) for name, bound in compiled.binds.items()]


def member_relation(inner: FilterNode | None, params: _Params) -> ColumnElement[bool]:
    """Group ``members[value eq "<user id>"]`` / ``members.value eq …``: a membership exists."""
    matched: ColumnElement[bool] = true()
    if inner is not None:
        if not isinstance(inner, Comparison) or inner.attr_path.attr not in ("value", "display"):
            raise ScimError.invalid_filter("members filters compare value or display")
        by_value = inner.attr_path.attr == "value"
        matched = _compare("m.user_id" if by_value else "u.email", inner.op, inner.value, params,
                           case_exact=by_value, kind="uuid" if by_value else "string")
    sql, binds = embed(matched)
    return condition("EXISTS (SELECT 1 FROM memberships m JOIN users u ON u.id = m.user_id "  # noqa: S608
                     f"WHERE m.team_id = teams.id AND {sql})", *binds)
