"""Minting users and tokens through the admin API, for the phases that need a real PAT.

Tokens act for a team with an access profile where the control plane has teams (``/profiles`` and
``/teams`` exist); against an older control plane a token is minted for a user alone.
"""

from __future__ import annotations

import uuid

import httpx


class Minter:
    """Creates (once) an open profile and a bench team, then users and tokens acting for that team."""

    def __init__(self, admin: httpx.Client, team_name: str = "bench") -> None:
        self._admin = admin
        self._team_name = f"{team_name}-{uuid.uuid4().hex[:6]}"
        self._team: dict | None = None
        self._teams_api: bool | None = None

    def _has_teams(self) -> bool:
        if self._teams_api is None:
            self._teams_api = self._admin.get("/profiles").status_code != 404
        return self._teams_api

    def team(self) -> dict | None:
        if not self._has_teams():
            return None
        if self._team is None:
            profile = self._admin.post("/profiles", json={
                "name": f"{self._team_name}-open", "catalog": [{"provider": "*", "pattern": "*"}],
                "environments": ["dev", "staging", "prod", "ci"], "default_token_days": 30,
                "max_token_days": 365})
            profile.raise_for_status()
            team = self._admin.post("/teams", json={"name": self._team_name, "profile_id": profile.json()["id"]})
            team.raise_for_status()
            self._team = team.json()
        return self._team

    def user(self, prefix: str = "bench") -> dict:
        reply = self._admin.post("/users", json={"email": f"{prefix}-{uuid.uuid4().hex[:10]}@example.com"})
        reply.raise_for_status()
        user = reply.json()
        team = self.team()
        if team is not None:
            joined = self._admin.put(f"/teams/{team['id']}/members/{user['id']}", json={"role": "member"})
            joined.raise_for_status()
        return user

    def token(self, user: dict, name: str) -> dict:
        """``{"id": …, "token": …}`` (and whatever else the API answers) for a new PAT of ``user``."""
        body: dict = {"user_id": user["id"], "name": name}
        team = self.team()
        if team is not None:
            body["team_id"] = team["id"]
        reply = self._admin.post("/tokens", json=body)
        reply.raise_for_status()
        return reply.json()
