"""Sign-in with OpenID Connect, for engineers (their own tokens at ``/me``) and admins (roles from an
IdP groups claim), in the browser and through ``keyward login``.

* :mod:`.client` — the relying party: discovery, authorization code with PKCE, state and nonce, the
  code exchange, ID-token checks against the issuer's JWKS (fetched again when keys rotate);
* :mod:`.signin` — who may sign in and in which role, sessions and CLI credentials;
* :mod:`.selfservice` — a signed-in user's own teams and tokens, through :mod:`controlplane.tokens`;
* :mod:`.web` — the browser routes: ``/auth/login``, ``/auth/callback``, ``/auth/logout`` and ``/me``.

The JSON side (``/api/v1/me…`` and the ``keyward login`` exchange) is in
:mod:`controlplane.api.routes.me`; the command is :mod:`controlplane.cli_login`.
"""
