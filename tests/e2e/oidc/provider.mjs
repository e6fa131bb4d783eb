// A real OpenID Connect provider for Keyward's end-to-end tests: panva/oidc-provider (OpenID
// Certified), configured like a small company IdP.
//
//   node provider.mjs <config.json>
//
// config.json: {"issuer", "port", "controlSecret", "cookieKey", "accounts": [{"sub", "email",
// "password", "name", "groups", "email_verified"}], "clients": [oidc-provider client metadata]}
//
// * authorization code only, PKCE (S256) required for every client, RS256-signed ID tokens;
// * dynamic client registration (RFC 7591) behind the initial access token controlSecret, so a test
//   registers a web client once it knows the control plane's port;
// * sign-in and consent are this file's own small HTML forms (devInteractions are off): the password
//   is checked against the static accounts, whose claims are email, email_verified, name and groups
//   (ID tokens carry only what OIDC requires; the rest comes from userinfo, as with many IdPs);
// * POST /__control__/rotate (Bearer controlSecret) replaces the signing key with a fresh one: a new
//   kid, the old one gone from the JWKS. Registered clients, grants and sessions survive: they live in
//   this file's in-memory adapter, which every provider instance shares.
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';

import Provider from 'oidc-provider';

const config = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const accountsByEmail = new Map(config.accounts.map((a) => [a.email.toLowerCase(), a]));
const accountsBySub = new Map(config.accounts.map((a) => [a.sub, a]));

// The storage adapter (oidc-provider's own in-memory one is per instance): payloads by model and id,
// with expiry, and the indexes the provider asks for (session uid, user code, grant members).
const store = new Map();
const grants = new Map();

class Adapter {
  constructor(model) {
    this.model = model;
  }

  key(id) {
    return `${this.model}:${id}`;
  }

  async upsert(id, payload, expiresIn) {
    const key = this.key(id);
    store.set(key, { payload, expiresAt: expiresIn ? Date.now() + expiresIn * 1000 : Infinity });
    if (this.model === 'Session') store.set(`sessionUid:${payload.uid}`, { payload: id, expiresAt: Infinity });
    if (payload.userCode) store.set(`userCode:${payload.userCode}`, { payload: id, expiresAt: Infinity });
    if (payload.grantId) {
      if (!grants.has(payload.grantId)) grants.set(payload.grantId, new Set());
      grants.get(payload.grantId).add(key);
    }
  }

  async find(id) {
    const entry = store.get(this.key(id));
    if (!entry || entry.expiresAt < Date.now()) return undefined;
    return entry.payload;
  }

  async findByUid(uid) {
    const id = store.get(`sessionUid:${uid}`)?.payload;
    return id === undefined ? undefined : this.find(id);
  }

  async findByUserCode(userCode) {
    const id = store.get(`userCode:${userCode}`)?.payload;
    return id === undefined ? undefined : this.find(id);
  }

  async consume(id) {
    const entry = store.get(this.key(id));
    if (entry) entry.payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) {
    store.delete(this.key(id));
  }

  async revokeByGrantId(grantId) {
    for (const key of grants.get(grantId) ?? []) store.delete(key);
    grants.delete(grantId);
  }
}

function signingKey() {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...privateKey.export({ format: 'jwk' }), kid: crypto.randomUUID(), alg: 'RS256', use: 'sig' };
}

function build(keys) {
  const provider = new Provider(config.issuer, {
    adapter: Adapter,
    clients: config.clients,
    jwks: { keys },
    cookies: { keys: [config.cookieKey] },
    pkce: { required: () => true },
    features: {
      devInteractions: { enabled: false },
      registration: { enabled: true, initialAccessToken: config.controlSecret },
    },
    scopes: ['openid', 'email', 'profile', 'groups'],
    claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'], groups: ['groups'] },
    enabledJWA: { idTokenSigningAlgValues: ['RS256'] },
    interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
    async findAccount(_ctx, sub) {
      const account = accountsBySub.get(sub);
      if (!account) return undefined;
      return {
        accountId: sub,
        async claims() {
          return {
            sub,
            email: account.email,
            email_verified: account.email_verified ?? true,
            name: account.name,
            groups: account.groups ?? [],
          };
        },
      };
    },
    renderError(ctx, out) {
      ctx.type = 'html';
      ctx.body = `<!doctype html><title>error</title><pre id="error">${escape(JSON.stringify(out))}</pre>`;
    },
  });
  provider.on('server_error', (_ctx, error) => console.error('server_error', error));
  return provider;
}

let keys = [signingKey()];
let provider = build(keys);
let handler = provider.callback();

function escape(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function html(res, status, body) {
  res.writeHead(status, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
  res.end(`<!doctype html><html><head><meta charset="utf-8"><title>Test IdP</title></head><body>${body}</body></html>`);
}

async function readForm(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

function loginForm(uid, error) {
  return `<h1>Sign in to the test IdP</h1>${error ? `<p id="error">${escape(error)}</p>` : ''}
<form method="post" action="/interaction/${uid}/login">
  <input name="email" type="email" required> <input name="password" type="password" required>
  <button type="submit">Sign in</button>
</form>`;
}

async function interaction(req, res, uid, action) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) return html(res, 400, '<p id="error">interaction mismatch</p>');
  const { prompt, params, session } = details;
  if (req.method === 'GET' && !action) {
    if (prompt.name === 'login') return html(res, 200, loginForm(uid));
    const scopes = escape([...new Set(prompt.details.missingOIDCScope ?? [])].join(' '));
    return html(res, 200, `<h1>Allow ${escape(params.client_id)}?</h1><p>Scopes: ${scopes}</p>
<form method="post" action="/interaction/${uid}/confirm"><button type="submit">Allow</button></form>`);
  }
  if (req.method === 'POST' && action === 'login') {
    const form = await readForm(req);
    const account = accountsByEmail.get((form.get('email') ?? '').toLowerCase());
    if (!account || account.password !== form.get('password')) {
      return html(res, 401, loginForm(uid, 'Wrong e-mail or password.'));
    }
    return provider.interactionFinished(req, res, { login: { accountId: account.sub } },
      { mergeWithLastSubmission: false });
  }
  if (req.method === 'POST' && action === 'confirm') {
    let grant = details.grantId ? await provider.Grant.find(details.grantId) : undefined;
    grant ??= new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    if (prompt.details.missingOIDCScope) grant.addOIDCScope(prompt.details.missingOIDCScope.join(' '));
    if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
    const grantId = await grant.save();
    return provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
  }
  return html(res, 405, '<p id="error">method not allowed</p>');
}

function controlled(req) {
  const expected = Buffer.from(`Bearer ${config.controlSecret}`);
  const presented = Buffer.from(req.headers.authorization ?? '');
  return presented.length === expected.length && crypto.timingSafeEqual(presented, expected);
}

const server = http.createServer(async (req, res) => {
  try {
    const url = new URL(req.url, config.issuer);
    const match = url.pathname.match(/^\/interaction\/([\w-]+)(?:\/(login|confirm))?$/);
    if (match) {
      await interaction(req, res, match[1], match[2]);
      return;
    }
    if (url.pathname === '/__control__/rotate' && req.method === 'POST') {
      if (!controlled(req)) {
        res.writeHead(401).end();
        return;
      }
      keys = [signingKey()];
      provider = build(keys);
      handler = provider.callback();
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ kid: keys[0].kid }));
      return;
    }
    handler(req, res);
  } catch (error) {
    console.error(error);
    if (!res.headersSent) html(res, 500, `<pre id="error">${escape(error.message)}</pre>`);
  }
});

server.listen(config.port, '127.0.0.1', () => console.log(`listening on ${config.issuer}`));
for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => server.close(() => process.exit(0)));
