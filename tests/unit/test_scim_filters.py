"""SCIM filters become SQL whose only inputs are bound parameters; bad filters are invalidFilter."""

from __future__ import annotations

import pytest
from sqlalchemy.dialects import postgresql

from controlplane.scim.errors import ScimError
from controlplane.scim.store import GROUP_FILTER, USER_FILTER

ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"


def sql(filter_text: str, translator=USER_FILTER) -> tuple[str, dict]:  # type: ignore[no-untyped-def]
    compiled = translator.where(filter_text).compile(dialect=postgresql.dialect())
    return str(compiled), dict(compiled.params)


@pytest.mark.parametrize(
    ("filter_text", "fragment", "params"),
    [
        ('userName eq "Bjensen"', "lower(users.email) = lower(", ["Bjensen"]),
        ('externalId eq "AbC"', "users.external_id = ", ["AbC"]),  # caseExact
        ('id eq "6f1c0a54-4b2b-4b0a-9a51-8c3a0f4f6c11"', "users.id::text = ", None),
        ("active eq false", "users.status <> 'active'", []),
        ("active eq true", "users.status = 'active'", []),
        ('name.familyName sw "Jen"', "LIKE", ["Jen%"]),
        ('displayName ew "sen"', "LIKE", ["%sen"]),
        ('title co "lead"', "->>", ["title", "%lead%"]),
        ('meta.lastModified gt "2011-05-13T04:42:34Z"', "users.updated_at >", None),
        (f'{ENTERPRISE}:employeeNumber eq "7"', "->", [ENTERPRISE, "employeeNumber", "7"]),
        ('emails[type eq "work"].value eq "a@b.c"', "jsonb_array_elements", ["emails", "type", "work", "value",
                                                                             "a@b.c"]),
        ('emails.value eq "a@b.c"', "EXISTS", ["emails", "value", "a@b.c"]),
        ("title pr", "IS NOT NULL", ["title"]),
    ],
)
def test_translations(filter_text: str, fragment: str, params: list | None) -> None:
    text, bound = sql(filter_text)
    assert fragment in text
    if params is not None:
        assert list(bound.values()) == params


def test_logic_and_grouping() -> None:
    text, bound = sql('not (userName eq "a" or userName eq "b") and active eq true')
    assert text.startswith("NOT (") and " OR " in text and " AND " in text
    assert list(bound.values()) == ["a", "b"]


def test_like_wildcards_in_values_are_escaped() -> None:
    _, bound = sql('userName co "50%_off\\\\"')
    assert list(bound.values()) == ["%50\\%\\_off\\\\%"]


@pytest.mark.parametrize("hostile", [
    "x' OR '1'='1", '"; DROP TABLE users; --', "') OR 1=1 --", "\\\\", "%%", "__",
])
def test_values_never_reach_the_sql_text(hostile: str) -> None:
    escaped = hostile.replace("\\", "\\\\").replace('"', '\\"')
    for op in ("eq", "ne", "co", "sw", "ew", "gt"):
        text, bound = sql(f'userName {op} "{escaped}"')
        assert hostile not in text
        assert any(hostile.replace("%", "\\%").replace("_", "\\_") in str(v) or hostile in str(v)
                   for v in bound.values())


@pytest.mark.parametrize("bad", [
    "", "userName", "userName eq", "eq \"x\"", "userName eq \"x\" and", "(userName eq \"x\"",
    "userName eq \"x\")", 'userName zz "x"', 'nosuch eq "x"', 'name.nosuch eq "x"', 'urn:evil:x:attr eq "1"',
    f'{ENTERPRISE}:nosuch eq "1"', "active eq \"maybe\"", "active gt true", 'meta.created gt "yesterday"',
    'meta.created co "2020"', "userName eq null", 'emails[type eq "work"', 'emails[value eq "x"][type eq "y"]',
    'userName eq "a" or ' * 60 + "userName pr", "u" * 3000, 'userName eq "\u0000', 'emails[nosuch eq "x"]',
    'emails[name.givenName eq "x"]',
])
def test_bad_filters_are_invalid_filter(bad: str) -> None:
    with pytest.raises(ScimError) as error:
        USER_FILTER.where(bad)
    assert error.value.status == 400
    assert error.value.scim_type == "invalidFilter"


def test_group_filters() -> None:
    text, bound = sql('members[value eq "6f1c0a54-4b2b-4b0a-9a51-8c3a0f4f6c11"]', GROUP_FILTER)
    assert "FROM memberships m" in text and "m.team_id = teams.id" in text
    assert list(bound.values()) == ["6f1c0a54-4b2b-4b0a-9a51-8c3a0f4f6c11"]
    text, _ = sql('displayName eq "Eng" and externalId eq "g-1"', GROUP_FILTER)
    assert "lower(teams.name)" in text and "teams.external_id =" in text
    with pytest.raises(ScimError):
        GROUP_FILTER.where('userName eq "x"')
    with pytest.raises(ScimError):
        GROUP_FILTER.where('members[nosuch eq "x"]')
