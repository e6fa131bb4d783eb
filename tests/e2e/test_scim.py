"""SCIM 2.0 as Okta and Entra ID really send it (../shared/IDP_SCIM_SHAPES.md), through to the gateway."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.conftest import Gateway

pytestmark = pytest.mark.e2e

PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
USER = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
SCIM_JSON = {"content-type": "application/scim+json; charset=utf-8", "accept": "application/scim+json"}


def connection(gateway: Gateway, idp: str) -> tuple[dict, str]:
    reply = gateway.admin.post("/scim-connections", json={"name": f"{idp}-{uuid.uuid4().hex[:6]}", "idp": idp})
    assert reply.status_code == 201, reply.text
    body = reply.json()
    return body["connection"], body["credential"]["token"]


@pytest.fixture
def okta(gateway: Gateway) -> Iterator[httpx.Client]:
    _, token = connection(gateway, "okta")
    with httpx.Client(base_url=f"{gateway.info.api_url}/scim/v2", timeout=10,
                      headers={"Authorization": f"Bearer {token}", "User-Agent": "Okta SCIM Client 1.0.0",
                               **SCIM_JSON}) as client:
        yield client


@pytest.fixture
def entra(gateway: Gateway) -> Iterator[httpx.Client]:
    _, token = connection(gateway, "entra")
    with httpx.Client(base_url=f"{gateway.info.api_url}/scim/v2", timeout=10,
                      headers={"Authorization": f"Bearer {token}", **SCIM_JSON}) as client:
        yield client


def scim_error(response: httpx.Response, status: int, scim_type: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/scim+json")
    body = response.json()
    assert body["schemas"] == ["urn:ietf:params:scim:api:messages:2.0:Error"]
    assert body["status"] == str(status)
    if scim_type:
        assert body["scimType"] == scim_type
    return body


def grant_profile(gateway: Gateway, group_id: str) -> None:
    """An admin gives the pushed group (a team) an access profile."""
    reply = gateway.admin.patch(f"/teams/{group_id}", json={"profile_id": gateway.profile()["id"]})
    assert reply.status_code == 200, reply.text


def mint_for(gateway: Gateway, user_id: str, team_id: str) -> str:
    reply = gateway.admin.post("/tokens", json={"user_id": user_id, "team_id": team_id, "name": "laptop"})
    assert reply.status_code == 201, reply.text
    secret = reply.json()["token"]
    gateway.wait_until(lambda: gateway.status_of(secret) == 200, timeout=2, what="new token")
    return secret


def _provision(gateway: Gateway, client: httpx.Client) -> tuple[dict, str, str]:
    """A user and a group pushed by ``client``, the group given a profile, and a token for the user."""
    login = f"sam.{uuid.uuid4().hex[:8]}@example.com"
    user = client.post("/Users", json={"schemas": [USER], "userName": login, "active": True}).json()
    group = client.post("/Groups", json={"schemas": [GROUP], "displayName": f"g-{uuid.uuid4().hex[:8]}",
                                         "members": [{"value": user["id"]}]}).json()
    grant_profile(gateway, group["id"])
    return user, group["id"], mint_for(gateway, user["id"], group["id"])


def test_deactivating_an_admin_suspended_user_revokes_and_reactivation_revives_nothing(
        gateway: Gateway, okta: httpx.Client) -> None:
    user, _group, secret = _provision(gateway, okta)
    assert gateway.admin.patch(f"/users/{user['id']}", json={"status": "suspended"}).status_code == 200
    gateway.wait_until(lambda: gateway.status_of(secret) == 401, timeout=2, what="suspension")
    deactivated = okta.patch(f"/Users/{user['id']}", json={"schemas": [PATCH], "Operations": [
        {"op": "replace", "value": {"active": False}}]})
    assert deactivated.status_code == 200, deactivated.text
    [token] = gateway.admin.get("/tokens", params={"user_id": user["id"]}).json()["items"]
    assert token["revoked_at"] is not None  # revoked, not merely refused while suspended
    reactivated = okta.patch(f"/Users/{user['id']}", json={"schemas": [PATCH], "Operations": [
        {"op": "replace", "value": {"active": True}}]})
    assert reactivated.status_code == 200 and reactivated.json()["active"] is True
    assert gateway.admin.get(f"/users/{user['id']}").json()["status"] == "active"
    reply = gateway.chat(secret)
    assert reply.status_code == 401 and reply.json()["error"]["code"] == "token_revoked"


def test_the_idp_saying_active_does_not_lift_an_admin_suspension(gateway: Gateway, okta: httpx.Client) -> None:
    user, _group, secret = _provision(gateway, okta)
    assert gateway.admin.patch(f"/users/{user['id']}", json={"status": "suspended"}).status_code == 200
    put = okta.put(f"/Users/{user['id']}", json={"schemas": [USER], "userName": user["userName"], "active": True})
    assert put.status_code == 200, put.text
    assert gateway.admin.get(f"/users/{user['id']}").json()["status"] == "suspended"
    assert gateway.status_of(secret) == 401


def test_okta_lifecycle(gateway: Gateway, okta: httpx.Client) -> None:
    login = f"Dana.{uuid.uuid4().hex[:6]}@Example.com"
    # Connection test and "does the user exist?"
    listing = okta.get("/Users", params={"startIndex": 1, "count": 2})
    assert listing.status_code == 200 and listing.json()["schemas"] == [
        "urn:ietf:params:scim:api:messages:2.0:ListResponse"]
    assert isinstance(listing.json()["totalResults"], int)
    absent = okta.get("/Users", params={"filter": f'userName eq "{login}"', "startIndex": 1, "count": 100})
    assert absent.json()["totalResults"] == 0
    created = okta.post("/Users", json={
        "schemas": [USER], "userName": login, "name": {"givenName": "Dana", "familyName": "Scully"},
        "emails": [{"primary": True, "value": login, "type": "work"}], "displayName": "Dana Scully",
        "locale": "en-US", "externalId": "00u1abcd", "groups": [], "password": "t1meMa$heen", "active": True})
    assert created.status_code == 201, created.text
    user = created.json()
    assert created.headers["content-type"].startswith("application/scim+json")
    assert user["id"] and user["active"] is True and user["userName"] == login and "password" not in user
    scim_error(okta.post("/Users", json={"schemas": [USER], "userName": login.upper()}), 409, "uniqueness")
    # Group push, then membership.
    group = okta.post("/Groups", json={"schemas": [GROUP], "displayName": f"eng-{login[:10]}", "members": []})
    assert group.status_code == 201, group.text
    group_id = group.json()["id"]
    added = okta.patch(f"/Groups/{group_id}", json={"schemas": [PATCH], "Operations": [
        {"op": "add", "path": "members", "value": [{"value": user["id"], "display": login}]}]})
    assert added.status_code in (200, 204), added.text
    grant_profile(gateway, group_id)
    secret = mint_for(gateway, user["id"], group_id)

    # Deactivate the way OIN apps do it: a path-less replace.
    deactivated = okta.patch(f"/Users/{user['id']}", json={"schemas": [PATCH], "Operations": [
        {"op": "replace", "value": {"active": False}}]})
    assert deactivated.status_code == 200 and deactivated.json()["active"] is False
    gateway.wait_until(lambda: gateway.status_of(secret) == 401, timeout=1, what="SCIM deprovision")
    assert okta.get(f"/Users/{user['id']}").json()["active"] is False
    inactive = okta.get("/Users", params={"filter": f'userName eq "{login}" and active eq false'}).json()
    assert inactive["totalResults"] == 1 and inactive["Resources"][0]["active"] is False
    [event] = gateway.admin.get("/audit/events", params={"target_id": user["id"],
                                                         "action": "scim.deprovision"}).json()["items"]
    assert event["mechanism"] == "scim" and event["actor"].startswith("scim:okta-")

    # Reactivation restores the account but never the old token.
    okta.patch(f"/Users/{user['id']}", json={"schemas": [PATCH], "Operations": [
        {"op": "replace", "value": {"active": True}}]})
    assert gateway.status_of(secret) == 401
    fresh = mint_for(gateway, user["id"], group_id)

    # Okta removes a member by filter path (often together with a rename).
    renamed = okta.patch(f"/Groups/{group_id}", json={"schemas": [PATCH], "Operations": [
        {"op": "replace", "value": {"id": group_id, "displayName": f"engineering-{login[:8]}"}},
        {"op": "remove", "path": f'members[value eq "{user["id"]}"]'}]})
    assert renamed.status_code in (200, 204), renamed.text
    gateway.wait_until(lambda: gateway.status_of(fresh) == 403, timeout=1, what="membership removal")
    assert okta.get(f"/Groups/{group_id}").json()["displayName"] == f"engineering-{login[:8]}"

    # AIW apps deactivate with a full PUT.
    okta.patch(f"/Groups/{group_id}", json={"schemas": [PATCH], "Operations": [
        {"op": "add", "path": "members", "value": [{"value": user["id"]}]}]})
    gateway.wait_until(lambda: gateway.status_of(fresh) == 200, timeout=1, what="membership restored")
    current = okta.get(f"/Users/{user['id']}").json()
    put = okta.put(f"/Users/{user['id']}", json={**current, "active": False})
    assert put.status_code == 200 and put.json()["active"] is False
    gateway.wait_until(lambda: gateway.status_of(fresh) == 401, timeout=1, what="PUT deprovision")


def test_entra_lifecycle(gateway: Gateway, entra: httpx.Client) -> None:
    upn = f"alex.{uuid.uuid4().hex[:6]}@contoso.example"
    probe = entra.get("/Users", params={"filter": f'userName eq "{uuid.uuid4()}"'})
    assert probe.status_code == 200 and probe.json()["totalResults"] == 0
    created = entra.post("/Users", json={
        "schemas": [USER, ENTERPRISE], "externalId": "8b1f-aad", "userName": upn, "active": True,
        "emails": [{"primary": True, "type": "work", "value": upn}], "meta": {"resourceType": "User"},
        "name": {"formatted": "Alex Wu", "familyName": "Wu", "givenName": "Alex"}, "roles": []})
    assert created.status_code == 201, created.text
    user = created.json()
    by_email = entra.get("/Users", params={"filter": f'emails[type eq "work"].value eq "{upn.upper()}"'}).json()
    assert [u["id"] for u in by_email["Resources"]] == [user["id"]]
    assert entra.get("/Users", params={"filter": 'externalId eq "8b1f-aad"'}).json()["totalResults"] >= 1

    updated = entra.patch(f"/Users/{user['id']}", json={"schemas": [PATCH], "Operations": [
        {"op": "Replace", "path": 'emails[type eq "work"].value', "value": f"new.{upn}"},
        {"op": "Replace", "path": "name.familyName", "value": "Wu-Li"},
        {"op": "Add", "path": "nickName", "value": "Lex"},
        {"op": "Add", "path": f"{ENTERPRISE}:employeeNumber", "value": "1042"}]})
    assert updated.status_code == 200, updated.text
    body = updated.json()
    assert body["emails"][0]["value"] == f"new.{upn}"
    assert body["name"]["familyName"] == "Wu-Li" and body["nickName"] == "Lex"
    assert body[ENTERPRISE]["employeeNumber"] == "1042"
    assert entra.get("/Users", params={"filter": f'{ENTERPRISE}:employeeNumber eq "1042"'}).json()[
        "totalResults"] == 1

    # Groups: Entra looks the group up without members, creates it empty, then adds members.
    name = f"Contoso Eng {upn[:10]}"
    assert entra.get("/Groups", params={"excludedAttributes": "members",
                                        "filter": f'displayName eq "{name}"'}).json()["totalResults"] == 0
    group = entra.post("/Groups", json={
        "schemas": [GROUP, "http://schemas.microsoft.com/2006/11/ResourceManagement/ADSCIM/2.0/Group"],
        "externalId": "grp-1", "displayName": name, "meta": {"resourceType": "Group"}})
    assert group.status_code == 201, group.text
    group_id = group.json()["id"]
    added = entra.patch(f"/Groups/{group_id}", json={"schemas": [PATCH], "Operations": [
        {"op": "Add", "path": "members", "value": [{"$ref": None, "value": user["id"]}]}]})
    assert added.status_code in (200, 204)
    without = entra.get(f"/Groups/{group_id}", params={"excludedAttributes": "members"}).json()
    assert "members" not in without and without["displayName"] == name
    assert [m["value"] for m in entra.get(f"/Groups/{group_id}").json()["members"]] == [user["id"]]
    grant_profile(gateway, group_id)
    secret = mint_for(gateway, user["id"], group_id)

    # Default Entra deactivation: capitalised op, string boolean.
    off = entra.patch(f"/Users/{user['id']}", json={"schemas": [PATCH], "Operations": [
        {"op": "Replace", "path": "active", "value": "False"}]})
    assert off.status_code == 200 and off.json()["active"] is False
    gateway.wait_until(lambda: gateway.status_of(secret) == 401, timeout=1, what="Entra deprovision")
    entra.patch(f"/Users/{user['id']}", json={"schemas": [PATCH], "Operations": [
        {"op": "Replace", "path": "active", "value": "True"}]})
    assert entra.get(f"/Users/{user['id']}").json()["active"] is True
    fresh = mint_for(gateway, user["id"], group_id)
    # Member removal by value list.
    entra.patch(f"/Groups/{group_id}", json={"schemas": [PATCH], "Operations": [
        {"op": "Remove", "path": "members", "value": [{"value": user["id"]}]}]})
    gateway.wait_until(lambda: gateway.status_of(fresh) == 403, timeout=1, what="member removal")
    # Hard delete.
    assert entra.delete(f"/Users/{user['id']}").status_code == 204
    scim_error(entra.get(f"/Users/{user['id']}"), 404)
    assert entra.get("/Users", params={"filter": f'userName eq "{upn}"'}).json()["totalResults"] == 0
    assert gateway.status_of(fresh) == 401


def test_scim_and_admin_credentials_do_not_mix(gateway: Gateway, okta: httpx.Client) -> None:
    base = f"{gateway.info.api_url}/scim/v2"
    scim_error(httpx.get(f"{base}/Users"), 401)
    scim_error(httpx.get(f"{base}/Users", headers={"Authorization": f"Bearer {gateway.info.admin_token}"}), 401)
    scim_token = okta.headers["Authorization"].split()[1]
    assert httpx.get(f"{gateway.info.api_url}/api/v1/users",
                     headers={"Authorization": f"Bearer {scim_token}"}).status_code == 401
    # Rotation with overlap: two valid credentials, then the old one retired.
    conn, old = connection(gateway, "okta")
    second = gateway.admin.post(f"/scim-connections/{conn['id']}/credentials").json()
    for token in (old, second["token"]):
        assert httpx.get(f"{base}/Users", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    credentials = gateway.admin.get(f"/scim-connections/{conn['id']}/credentials").json()
    first_id = next(c["id"] for c in credentials if c["id"] != second["id"])
    gateway.admin.post(f"/scim-connections/{conn['id']}/credentials/{first_id}/revoke")
    scim_error(httpx.get(f"{base}/Users", headers={"Authorization": f"Bearer {old}"}), 401)
    assert httpx.get(f"{base}/Users", headers={"Authorization": f"Bearer {second['token']}"}).status_code == 200


@pytest.mark.parametrize("bad", [
    "userName eq", "USERNAME", 'userName eq "x" and', 'userName zz "x"', "(userName eq \"x\"",
    'nosuch eq "x"', 'emails[type eq "work"', 'userName eq "x" or ' * 60 + "userName pr",
    'urn:evil:schema:attr eq "x"', "a" * 3000,
])
def test_malformed_or_hostile_filters_are_400_invalid_filter(okta: httpx.Client, bad: str) -> None:
    scim_error(okta.get("/Users", params={"filter": bad}), 400, "invalidFilter")


@pytest.mark.parametrize("value", ["x' OR '1'='1", 'x"; DROP TABLE users; --', "%", "_", "\\", "\u0000"[:0] + "Ω"])
def test_filter_values_are_data_not_sql(okta: httpx.Client, value: str) -> None:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    for op in ("eq", "co", "sw", "ew"):
        reply = okta.get("/Users", params={"filter": f'userName {op} "{escaped}"'})
        assert reply.status_code == 200, reply.text
        assert all(value.lower() in u["userName"].lower() for u in reply.json()["Resources"])


def test_bad_bodies_get_scim_errors_and_write_nothing(gateway: Gateway, okta: httpx.Client) -> None:
    before = okta.get("/Users", params={"count": 0}).json()["totalResults"]
    scim_error(okta.post("/Users", content=b"{not json"), 400, "invalidSyntax")
    scim_error(okta.post("/Users", json={"schemas": [USER]}), 400, "invalidValue")
    scim_error(okta.post("/Users", json={"schemas": [USER], "userName": 42}), 400, "invalidValue")
    scim_error(okta.post("/Users", content=b"{}", headers={"content-type": "text/plain"}), 415)
    scim_error(okta.patch(f"/Users/{uuid.uuid4()}", json={"schemas": [PATCH], "Operations": []}), 404)
    user = okta.post("/Users", json={"schemas": [USER], "userName": f"p-{uuid.uuid4().hex[:6]}@x.io"}).json()
    scim_error(okta.patch(f"/Users/{user['id']}", json={"Operations": [{"op": "replace"}]}), 400, "invalidSyntax")
    scim_error(okta.patch(f"/Users/{user['id']}", json={"schemas": [PATCH], "Operations": [
        {"op": "replace", "path": 'emails[type eq "home"].value', "value": "x"}]}), 400, "noTarget")
    scim_error(okta.patch(f"/Users/{user['id']}", json={"schemas": [PATCH], "Operations": [
        {"op": "frobnicate", "path": "title", "value": "x"}]}), 400, "invalidSyntax")
    assert okta.get("/Users", params={"count": 0}).json()["totalResults"] == before + 1


def test_pagination_and_projection(okta: httpx.Client) -> None:
    tag = uuid.uuid4().hex[:6]
    for n in range(5):
        okta.post("/Users", json={"schemas": [USER], "userName": f"page-{tag}-{n}@x.io", "title": "Engineer"})
    seen = []
    start = 1
    while True:
        page = okta.get("/Users", params={"filter": f'userName sw "page-{tag}"', "startIndex": start,
                                          "count": 2}).json()
        assert page["totalResults"] == 5 and page["startIndex"] == start
        seen += [u["userName"] for u in page["Resources"]]
        if start + page["itemsPerPage"] > page["totalResults"] or not page["Resources"]:
            break
        start += page["itemsPerPage"]
    assert seen == [f"page-{tag}-{n}@x.io" for n in range(5)]
    projected = okta.get("/Users", params={"filter": f'userName eq "page-{tag}-0@x.io"',
                                           "attributes": "userName,name.givenName"}).json()["Resources"][0]
    assert set(projected) == {"id", "schemas", "userName"}
    trimmed = okta.get("/Users", params={"filter": f'userName eq "page-{tag}-0@x.io"',
                                         "excludedAttributes": "title,emails"}).json()["Resources"][0]
    assert "title" not in trimmed and "emails" not in trimmed and trimmed["userName"] == f"page-{tag}-0@x.io"


def test_discovery_endpoints(okta: httpx.Client) -> None:
    config = okta.get("/ServiceProviderConfig").json()
    assert config["patch"]["supported"] is True and config["filter"]["supported"] is True
    types = {t["id"] for t in okta.get("/ResourceTypes").json()["Resources"]}
    assert types == {"User", "Group"}
    schema_ids = {s["id"] for s in okta.get("/Schemas").json()["Resources"]}
    assert {USER, GROUP, ENTERPRISE} <= schema_ids
    assert okta.get(f"/Schemas/{USER}").json()["id"] == USER


# -- each connection manages only what it provisioned ---------------------------------------------


def test_a_connection_cannot_see_or_change_people_it_did_not_provision(gateway: Gateway, okta: httpx.Client,
                                                                      entra: httpx.Client) -> None:
    admins_user = gateway.user()
    entras_user, entras_group, entras_secret = _provision(gateway, entra)
    for user in (admins_user, entras_user):
        scim_error(okta.get(f"/Users/{user['id']}"), 404)
        scim_error(okta.patch(f"/Users/{user['id']}", json={"schemas": [PATCH], "Operations": [
            {"op": "replace", "value": {"active": False}}]}), 404)
        scim_error(okta.delete(f"/Users/{user['id']}"), 404)
        email = user.get("email") or user["userName"]
        assert okta.get("/Users", params={"filter": f'userName eq "{email}"'}).json()["totalResults"] == 0
        taken = scim_error(okta.post("/Users", json={"schemas": [USER], "userName": email}), 409, "uniqueness")
        assert "not provisioned by this connection" in taken["detail"]
    scim_error(okta.get(f"/Groups/{entras_group}"), 404)
    mine = okta.post("/Groups", json={"schemas": [GROUP], "displayName": f"okta-{uuid.uuid4().hex[:8]}"}).json()
    enlisted = okta.patch(f"/Groups/{mine['id']}", json={"schemas": [PATCH], "Operations": [
        {"op": "add", "path": "members", "value": [{"value": admins_user["id"]}]}]})
    scim_error(enlisted, 400, "invalidValue")
    assert gateway.status_of(entras_secret) == 200  # nothing Okta sent touched Entra's user
    assert gateway.admin.get(f"/users/{admins_user['id']}").json()["status"] == "active"


def test_an_admin_hands_a_person_over_to_a_connection(gateway: Gateway) -> None:
    okta_connection, token = connection(gateway, "okta")
    user = gateway.user()
    team = gateway.team()
    secret = gateway.mint(user, team).secret
    with httpx.Client(base_url=f"{gateway.info.api_url}/scim/v2", timeout=10,
                      headers={"Authorization": f"Bearer {token}", **SCIM_JSON}) as okta:
        scim_error(okta.get(f"/Users/{user['id']}"), 404)
        handed = gateway.admin.post(f"/scim-connections/{okta_connection['id']}/adopt",
                                    json={"user_ids": [user["id"]], "team_ids": [team["id"]]})
        assert handed.status_code == 200 and handed.json() == {"users": 1, "teams": 1}, handed.text
        [event] = gateway.admin.get("/audit/events", params={"target_id": user["id"],
                                                             "action": "scim.handed_over"}).json()["items"]
        assert event["before"] == {"scim_connection_id": None}
        assert event["after"]["scim_connection_id"] == okta_connection["id"]
        assert okta.get(f"/Users/{user['id']}").status_code == 200
        assert okta.get(f"/Groups/{team['id']}").status_code == 200
        deactivated = okta.patch(f"/Users/{user['id']}", json={"schemas": [PATCH], "Operations": [
            {"op": "replace", "value": {"active": False}}]})
        assert deactivated.status_code == 200, deactivated.text
    gateway.wait_until(lambda: gateway.status_of(secret) == 401, timeout=2, what="deprovision after handover")
