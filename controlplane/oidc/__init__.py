"""Sign-in with OpenID Connect, for engineers (their own tokens at ``/me``) and admins (roles from an
IdP groups claim), in the browser and through ``keyward login``.

* :mod:`.client` — the relying party: discovery, authorization code with PKCE, state and nonce, the
  code exchange, ID-token checks against the issuer's JWKS (fetched again when keys rotate);
* :mod:`.signin` — who may sign in and in which role, sessions and CLI credentials.

The routes are :mod:`controlplane.api.routes.web` (the browser: ``/auth/…`` and ``/me``) and
:mod:`controlplane.api.routes.me` (``/api/v1/me…`` and the ``keyward login`` exchange); a signed-in
user's own tokens go through :mod:`controlplane.services.selfservice`; the command is
:mod:`controlplane.cli.session`.
"""
