"""PATCH as RFC 7644 §3.5.2 defines it, and as Okta and Entra ID actually send it."""

from __future__ import annotations

import pytest

from controlplane.scim.documents import PATCH_SCHEMA, apply_patch, project
from controlplane.scim.errors import ScimError

USER = "urn:ietf:params:scim:schemas:core:2.0:User"
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"


def patch(document: dict, *operations: dict, core: str = USER) -> dict:
    return apply_patch(document, {"schemas": [PATCH_SCHEMA], "Operations": list(operations)}, {core},
                       extensions={ENTERPRISE})


def user() -> dict:
    return {"schemas": [USER], "userName": "ada@example.com", "active": True,
            "name": {"givenName": "Ada", "familyName": "Lovelace"},
            "emails": [{"value": "ada@example.com", "type": "work", "primary": True},
                       {"value": "ada@home.example", "type": "home"}]}


def group(*members: str) -> dict:
    return {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "Eng",
            "members": [{"value": m} for m in members]}


def test_okta_pathless_deactivation() -> None:
    assert patch(user(), {"op": "replace", "value": {"active": False}})["active"] is False


@pytest.mark.parametrize("value", ["False", "false", False])
def test_entra_capitalised_op_and_string_boolean(value: object) -> None:
    assert patch(user(), {"op": "Replace", "path": "active", "value": value})["active"] is False


def test_entra_value_path_and_sub_attribute_paths() -> None:
    result = patch(user(),
                   {"op": "Replace", "path": 'emails[type eq "work"].value', "value": "new@example.com"},
                   {"op": "Replace", "path": "name.familyName", "value": "Byron"},
                   {"op": "Add", "path": "nickName", "value": "Countess"},
                   {"op": "Add", "path": f"{ENTERPRISE}:employeeNumber", "value": "1815"})
    assert [e["value"] for e in result["emails"]] == ["new@example.com", "ada@home.example"]
    assert result["name"] == {"givenName": "Ada", "familyName": "Byron"}
    assert result["nickName"] == "Countess" and result[ENTERPRISE] == {"employeeNumber": "1815"}


def test_pathless_dotted_keys_from_entra_with_the_flag() -> None:
    result = patch(user(), {"op": "replace", "value": {"displayName": "A. L.", "name.givenName": "Augusta"}})
    assert result["displayName"] == "A. L." and result["name"]["givenName"] == "Augusta"


def test_whole_extension_object() -> None:
    result = patch(user(), {"op": "add", "path": ENTERPRISE, "value": {"department": "Math"}})
    result = patch(result, {"op": "add", "path": ENTERPRISE, "value": {"costCenter": "42"}})
    assert result[ENTERPRISE] == {"department": "Math", "costCenter": "42"}
    assert ENTERPRISE not in patch(result, {"op": "remove", "path": ENTERPRISE})


def test_member_add_and_the_three_removal_shapes() -> None:
    added = patch(group("a"), {"op": "add", "path": "members", "value": [{"value": "b"}, {"value": "a"}]})
    assert [m["value"] for m in added["members"]] == ["a", "b"]
    by_filter = patch(added, {"op": "remove", "path": 'members[value eq "a"]'})
    by_list = patch(added, {"op": "Remove", "path": "members", "value": [{"value": "a"}]})
    assert [m["value"] for m in by_filter["members"]] == ["b"] == [m["value"] for m in by_list["members"]]
    assert "members" not in patch(added, {"op": "remove", "path": "members"})
    replaced = patch(added, {"op": "replace", "path": "members", "value": [{"value": "z"}]})
    assert [m["value"] for m in replaced["members"]] == ["z"]


def test_add_through_a_filter_that_matches_nothing_creates_the_element() -> None:
    result = patch(user(), {"op": "add", "path": 'phoneNumbers[type eq "work"].value', "value": "+1 555"})
    assert result["phoneNumbers"] == [{"type": "work", "value": "+1 555"}]


def test_the_input_document_is_not_modified() -> None:
    original = user()
    patch(original, {"op": "replace", "path": "name.familyName", "value": "X"})
    assert original == user()


@pytest.mark.parametrize(("body", "scim_type"), [
    ({"Operations": [{"op": "add", "path": "title", "value": "x"}]}, "invalidSyntax"),
    ({"schemas": [PATCH_SCHEMA], "Operations": []}, "invalidSyntax"),
    ({"schemas": [PATCH_SCHEMA], "Operations": [{"op": "move", "path": "title"}]}, "invalidSyntax"),
    ({"schemas": [PATCH_SCHEMA], "Operations": ["add"]}, "invalidSyntax"),
    ({"schemas": [PATCH_SCHEMA], "Operations": [{"op": "remove"}]}, "noTarget"),
    ({"schemas": [PATCH_SCHEMA], "Operations": [{"op": "replace", "value": "flat"}]}, "invalidValue"),
    ({"schemas": [PATCH_SCHEMA], "Operations": [{"op": "replace", "path": "title"}]}, "invalidValue"),
    ({"schemas": [PATCH_SCHEMA], "Operations": [{"op": "replace", "path": 'emails[type eq "fax"].value',
                                                  "value": "x"}]}, "noTarget"),
    ({"schemas": [PATCH_SCHEMA], "Operations": [{"op": "add", "path": "emails[type eq", "value": "x"}]},
     "invalidPath"),
    ({"schemas": [PATCH_SCHEMA], "Operations": [{"op": "add", "path": 42, "value": "x"}]}, "invalidPath"),
])
def test_bad_patches_are_precise_400s(body: dict, scim_type: str) -> None:
    with pytest.raises(ScimError) as error:
        apply_patch(user(), body, {USER})
    assert error.value.status == 400 and error.value.scim_type == scim_type


def test_projection() -> None:
    document = {"schemas": [USER], "id": "1", "userName": "a", "name": {"givenName": "A", "familyName": "B"},
                "title": "x"}
    assert project(document, ["userName", "name.givenName"], None) == {
        "schemas": [USER], "id": "1", "userName": "a", "name": {"givenName": "A"}}
    assert project(document, None, ["title", "name"]) == {"schemas": [USER], "id": "1", "userName": "a"}
    assert project(document, [f"{USER}:userName"], None) == {"schemas": [USER], "id": "1", "userName": "a"}
