"""The relying party: discovery, the authorization request, the code exchange and ID-token checks.

Built on Authlib (PKCE S256 challenge, the OpenID Connect ID-token claim rules: ``iss``, ``aud``,
``azp``, ``exp``, ``iat``, ``nonce``, ``at_hash``) and joserfc (JWS signatures against the issuer's
JWKS), with httpx for the three calls to the issuer:

* the discovery document, cached for an hour, whose ``issuer`` must be the configured one;
* the JWKS, cached for an hour and fetched again at once when a token names a key id the cached set
  lacks (the issuer rotated its keys), at most once per :data:`JWKS_REFETCH_SECONDS`;
* the token endpoint (``client_secret_basic`` for a confidential client, ``none`` for a public one)
  and, when the ID token lacks the e-mail or groups claims, the userinfo endpoint, whose ``sub`` must
  be the ID token's.

Only asymmetric signature algorithms are accepted: never ``none``, never an HMAC keyed with the client
secret.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote_plus, urlencode

import httpx
from authlib.oauth2.rfc7636 import create_s256_code_challenge  # type: ignore[import-untyped]
from authlib.oidc.core import CodeIDToken, IDToken  # type: ignore[import-untyped]
from joserfc import jwt
from joserfc.errors import InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet

from controlplane.errors import Code

#: Seconds the discovery document and the JWKS are trusted before they are read again.
METADATA_TTL_SECONDS = 3600.0
#: An unknown key id fetches the JWKS again, but not more often than this (a forged kid costs little).
JWKS_REFETCH_SECONDS = 2.0
#: Clock skew allowed on exp / iat.
LEEWAY_SECONDS = 60
ASYMMETRIC_ALGS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")


class OidcError(Exception):
    """A sign-in that cannot go on: ``code`` is stable, ``message`` is safe to show."""

    def __init__(self, code: Code, message: str, *, unavailable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        #: True when the issuer could not be reached (a 502, not the user's fault).
        self.unavailable = unavailable


@dataclass(frozen=True)
class LoginRequest:
    """What the authorization request carries and the callback must check: kept in a signed cookie
    (web) or in the CLI's memory."""

    state: str
    nonce: str
    code_verifier: str

    @classmethod
    def new(cls) -> LoginRequest:
        return cls(state=secrets.token_urlsafe(32), nonce=secrets.token_urlsafe(32),
                   code_verifier=secrets.token_urlsafe(64))

    @property
    def code_challenge(self) -> str:
        return str(create_s256_code_challenge(self.code_verifier))


@dataclass
class _Cached:
    value: dict[str, Any] | None = None
    fetched_at: float = 0.0

    def fresh(self) -> bool:
        return self.value is not None and time.monotonic() - self.fetched_at < METADATA_TTL_SECONDS


@dataclass
class Issuer:
    """One OpenID Connect issuer as seen by one client configuration (web or CLI share it)."""

    issuer: str
    timeout: float = 10.0
    _metadata: _Cached = field(default_factory=_Cached)
    _jwks: _Cached = field(default_factory=_Cached)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def _get_json(self, url: str, **kwargs: Any) -> dict[str, Any]:
        try:
            async with httpx.AsyncClient(timeout=self.timeout) as client:
                reply = await client.get(url, **kwargs)
        except httpx.HTTPError as exc:
            raise OidcError(Code.ISSUER_UNREACHABLE, f"The identity provider did not answer ({type(exc).__name__}).",
                            unavailable=True) from exc
        if reply.status_code != 200:
            raise OidcError(Code.ISSUER_ERROR, f"The identity provider answered {reply.status_code} for {url}.",
                            unavailable=True)
        try:
            document = reply.json()
        except ValueError as exc:
            raise OidcError(Code.ISSUER_ERROR, f"The identity provider's {url} is not JSON.", unavailable=True) from exc
        if not isinstance(document, dict):
            raise OidcError(Code.ISSUER_ERROR, f"The identity provider's {url} is not a JSON object.", unavailable=True)
        return document

    async def metadata(self) -> dict[str, Any]:
        if self._metadata.fresh():
            assert self._metadata.value is not None
            return self._metadata.value
        async with self._lock:
            if not self._metadata.fresh():
                url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
                document = await self._get_json(url)
                if str(document.get("issuer", "")).rstrip("/") != self.issuer.rstrip("/"):
                    raise OidcError(Code.ISSUER_MISMATCH, f"The discovery document at {url} names issuer "
                                    f"{document.get('issuer')!r}, not {self.issuer!r}.", unavailable=True)
                for required in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
                    if not isinstance(document.get(required), str):
                        raise OidcError(Code.ISSUER_ERROR, f"The discovery document lacks {required}.",
                                        unavailable=True)
                self._metadata = _Cached(document, time.monotonic())
            assert self._metadata.value is not None
            return self._metadata.value

    async def _key_set(self, *, refetch: bool) -> KeySet:
        async with self._lock:
            stale = not self._jwks.fresh()
            may_refetch = time.monotonic() - self._jwks.fetched_at >= JWKS_REFETCH_SECONDS
            if stale or (refetch and may_refetch):
                metadata = self._metadata.value or {}
                document = await self._get_json(metadata["jwks_uri"])
                self._jwks = _Cached(document, time.monotonic())
            assert self._jwks.value is not None
            try:
                return KeySet.import_key_set(self._jwks.value)  # type: ignore[arg-type]
            except (JoseError, ValueError, KeyError, TypeError) as exc:
                raise OidcError(Code.ISSUER_ERROR, "The identity provider's JWKS cannot be read.",
                                unavailable=True) from exc

    # -- the authorization request ----------------------------------------------------------------

    async def authorization_url(self, *, client_id: str, redirect_uri: str, scopes: str,
                                request: LoginRequest, **extra: str) -> str:
        metadata = await self.metadata()
        query = {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "scope": scopes,
            "state": request.state,
            "nonce": request.nonce,
            "code_challenge": request.code_challenge,
            "code_challenge_method": "S256",
            **extra,
        }
        endpoint = metadata["authorization_endpoint"]
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{urlencode(query)}"

    async def exchange_code(self, *, client_id: str, client_secret: str | None, code: str, redirect_uri: str,
                            code_verifier: str) -> dict[str, Any]:
        """The token endpoint's answer for an authorization code (with the PKCE verifier)."""
        metadata = await self.metadata()
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
                "code_verifier": code_verifier}
        basic: httpx.BasicAuth | None = None
        if client_secret:
            methods = metadata.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
            if "client_secret_basic" in methods:
                # RFC 6749 §2.3.1: both parts form-urlencoded before Basic encoding.
                basic = httpx.BasicAuth(_form_quote(client_id), _form_quote(client_secret))
            else:
                form |= {"client_id": client_id, "client_secret": client_secret}
        else:
            form["client_id"] = client_id
        try:
            async with httpx.AsyncClient(timeout=self.timeout) as client:
                reply = await client.post(metadata["token_endpoint"], data=form,
                                          auth=basic if basic is not None else httpx.USE_CLIENT_DEFAULT,
                                          headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise OidcError(Code.ISSUER_UNREACHABLE, f"The identity provider did not answer ({type(exc).__name__}).",
                            unavailable=True) from exc
        try:
            answer = reply.json()
        except ValueError:
            answer = {}
        if reply.status_code != 200 or not isinstance(answer, dict):
            error = answer.get("error", "") if isinstance(answer, dict) else ""
            raise OidcError(Code.CODE_REJECTED, f"The identity provider refused the authorization code "
                            f"({reply.status_code} {error}).".replace(" )", ")"))
        if not isinstance(answer.get("id_token"), str):
            raise OidcError(Code.ID_TOKEN_MISSING, "The identity provider answered without an ID token.")
        return answer

    # -- the ID token -----------------------------------------------------------------------------

    async def verify_id_token(self, id_token: str, *, audience: str, nonce: str,
                              access_token: str | None = None) -> dict[str, Any]:
        """The ID token's claims once its signature, issuer, audience, expiry and nonce are checked."""
        metadata = await self.metadata()
        offered = metadata.get("id_token_signing_alg_values_supported") or ["RS256"]
        algorithms = [alg for alg in offered if alg in ASYMMETRIC_ALGS] or ["RS256"]
        try:
            try:
                token = jwt.decode(id_token, await self._key_set(refetch=False), algorithms=algorithms)
            except InvalidKeyIdError:
                token = jwt.decode(id_token, await self._key_set(refetch=True), algorithms=algorithms)
        except (JoseError, ValueError, KeyError, TypeError) as exc:
            raise OidcError(Code.ID_TOKEN_INVALID, f"The ID token's signature does not verify ({_why(exc)}).") from exc
        claims_cls = CodeIDToken if access_token else IDToken
        claims = claims_cls(
            token.claims, token.header,
            {"iss": {"essential": True, "value": metadata["issuer"]}, "aud": {"essential": True, "value": audience}},
            {"nonce": nonce, "client_id": audience, **({"access_token": access_token} if access_token else {})},
        )
        try:
            claims.validate(leeway=LEEWAY_SECONDS)
        except (JoseError, ValueError, KeyError, TypeError) as exc:
            raise OidcError(Code.ID_TOKEN_INVALID, f"The ID token was refused ({_why(exc)}).") from exc
        if not nonce or claims.get("nonce") != nonce:  # Authlib skips the check when no nonce is expected
            raise OidcError(Code.ID_TOKEN_INVALID, "The ID token was refused (nonce does not match).")
        return dict(claims)

    async def userinfo(self, access_token: str, subject: str) -> dict[str, Any]:
        """The userinfo claims for the ID token's subject (a different ``sub`` is refused)."""
        metadata = await self.metadata()
        endpoint = metadata.get("userinfo_endpoint")
        if not isinstance(endpoint, str):
            return {}
        document = await self._get_json(endpoint, headers={"Authorization": f"Bearer {access_token}",
                                                           "Accept": "application/json"})
        if document.get("sub") != subject:
            raise OidcError(Code.USERINFO_MISMATCH, "The userinfo response is about another subject.")
        return document

    async def identity(self, answer: dict[str, Any], *, audience: str, nonce: str,
                       wanted: tuple[str, ...]) -> dict[str, Any]:
        """The verified ID token's claims, completed from userinfo when a ``wanted`` claim is missing
        and the answer has an access token (ID-token claims win)."""
        access_token = answer.get("access_token") if isinstance(answer.get("access_token"), str) else None
        claims = await self.verify_id_token(answer["id_token"], audience=audience, nonce=nonce,
                                            access_token=access_token)
        if access_token and any(claim(claims, name) is None for name in wanted):
            claims = {**await self.userinfo(access_token, claims["sub"]), **claims}
        return claims


def claim(claims: dict[str, Any], path: str) -> Any:
    """A claim by name, or by dotted path into nested objects (``realm_access.roles``)."""
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _form_quote(value: str) -> str:
    return quote_plus(value)


def _why(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 200 else text[:200] + "…"


_issuers: dict[str, Issuer] = {}


def issuer_for(url: str) -> Issuer:
    """One cached :class:`Issuer` per issuer URL (its discovery document and JWKS are shared)."""
    if url not in _issuers:
        _issuers[url] = Issuer(url)
    return _issuers[url]
