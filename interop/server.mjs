// An independently written OAuth 2.0 / OpenID Connect authorization server
// (panva/oidc-provider, a certified OpenID provider) for tokenbroker's
// interoperability test. It listens on 127.0.0.1 and prints its issuer URL as
// the only line on stdout once it accepts connections; everything else
// (oidc-provider's notices included) goes to stderr.
//
// Environment:
//   PORT               port to listen on; 0 (any free port) when unset
//   REDIRECT_URI       the broker's callback, registered for both clients
//   CLIENT_SECRET      the secret of both clients
//   ACCESS_TOKEN_TTL   lifetime in seconds of access tokens from the
//                      authorization_code and refresh_token grants; 3600
//   CLIENT_CREDENTIALS_TTL  lifetime in seconds of client_credentials tokens; 600
//   DEVICE_INTERVAL    seconds between polls that device authorization
//                      answers ask for (oidc-provider names none: RFC
//                      8628's default of 5 applies)
//   MTLS_SERVER_CERT, MTLS_SERVER_KEY
//                      PEM certificate and key of a second, https listener
//                      for mutual TLS client authentication (RFC 8705),
//                      which asks every client for a certificate; its URL
//                      is at GET /_interop/mtls. Unset: no such listener.
//   MTLS_CA            PEM CA that issues broker-tls's certificate
//   MTLS_SUBJECT_DN    broker-tls's registered tls_client_auth_subject_dn
//   MTLS_SELF_SIGNED   PEM self-signed certificate registered (x5c) for
//                      broker-self-signed
//   REFRESH_TOKENS     when refresh tokens are issued:
//                      offline_access (default, oidc-provider's own policy):
//                        only for a granted offline_access scope, which
//                        OpenID Connect Core §11 grants only to an
//                        authorization request with prompt=consent
//                      client: to every authorization of a client allowed
//                        the refresh_token grant, not bound to the login
//                        session (as many servers do for confidential
//                        clients)
//
// Clients (both confidential, both allowed every grant the test uses):
//   broker-basic  client_secret_basic at the token, introspection and
//                 revocation endpoints
//   broker-post   client_secret_post at the same endpoints
//   broker-pkj    private_key_jwt (ES256) at the same endpoints, with the
//                 broker's public keys at BROKER_JWKS_URI; client_credentials
//                 only; registered only when BROKER_JWKS_URI is set
//
// Device flow client (features.deviceFlow):
//   broker-device  client_secret_post; the device_code and refresh_token
//                  grants
//
// Mutual TLS clients (features.mTLS, certificate-bound access tokens), at
// the https listener only:
//   broker-tls          tls_client_auth: a certificate MTLS_CA issued with
//                       the subject MTLS_SUBJECT_DN
//   broker-self-signed  self_signed_tls_client_auth: MTLS_SELF_SIGNED
//
// Besides the provider's own routes, GET /_interop/requests returns what
// the token, introspection and revocation endpoints received and answered,
// so that the test can assert on what the server saw: the grant type, how
// the client authenticated, whether a PKCE verifier came, and a digest of
// the refresh token presented (never a token itself).

import { createHash, generateKeyPairSync, randomBytes, X509Certificate } from 'node:crypto';
import { createServer } from 'node:http';
import { createServer as createTLSServer } from 'node:https';

import Provider from 'oidc-provider';

// oidc-provider prints its development notices with console.info, which
// would share stdout with the issuer line.
console.info = console.error;

const env = (name, fallback) => process.env[name] || fallback;
const seconds = (name, fallback) => {
  const v = Number.parseInt(env(name, String(fallback)), 10);
  if (!Number.isInteger(v) || v <= 0) {
    throw new Error(`${name} must be a positive number of seconds`);
  }
  return v;
};

const redirectURI = env('REDIRECT_URI', 'http://127.0.0.1:1/v1/oauth/callback');
const clientSecret = env('CLIENT_SECRET', 'interop-secret');
const accessTokenTTL = seconds('ACCESS_TOKEN_TTL', 3600);
const clientCredentialsTTL = seconds('CLIENT_CREDENTIALS_TTL', 600);
const refreshTokens = env('REFRESH_TOKENS', 'offline_access');
if (!['offline_access', 'client'].includes(refreshTokens)) {
  throw new Error('REFRESH_TOKENS must be offline_access or client');
}

const server = createServer();
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(Number.parseInt(env('PORT', '0'), 10), '127.0.0.1', resolve);
});
const issuer = `http://127.0.0.1:${server.address().port}`;

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: 'interop', alg: 'RS256', use: 'sig' };

const client = (id, method) => ({
  client_id: id,
  client_secret: clientSecret,
  token_endpoint_auth_method: method,
  grant_types: ['authorization_code', 'refresh_token', 'client_credentials'],
  response_types: ['code'],
  redirect_uris: [redirectURI],
  scope: 'openid offline_access api',
});

// The broker as a client without a secret: it signs client assertions
// with its own keys, which the provider fetches from the broker's jwks_uri.
const privateKeyJWTClients = process.env.BROKER_JWKS_URI ? [{
  client_id: 'broker-pkj',
  token_endpoint_auth_method: 'private_key_jwt',
  token_endpoint_auth_signing_alg: 'ES256',
  jwks_uri: process.env.BROKER_JWKS_URI,
  grant_types: ['client_credentials'],
  response_types: [],
  redirect_uris: [],
  scope: 'api',
}] : [];

// The device flow's client.
const deviceClients = [{
  client_id: 'broker-device',
  client_secret: clientSecret,
  token_endpoint_auth_method: 'client_secret_post',
  grant_types: ['urn:ietf:params:oauth:grant-type:device_code', 'refresh_token'],
  response_types: [],
  redirect_uris: [],
  scope: 'openid offline_access api',
}];

// The mutual TLS clients, when the https listener runs.
const mtls = process.env.MTLS_SERVER_CERT ? {
  cert: process.env.MTLS_SERVER_CERT,
  key: process.env.MTLS_SERVER_KEY,
  ca: process.env.MTLS_CA,
  subjectDN: env('MTLS_SUBJECT_DN', 'CN=broker-tls'),
  selfSigned: process.env.MTLS_SELF_SIGNED,
} : undefined;
const mtlsClient = (id, method, extra) => ({
  client_id: id,
  token_endpoint_auth_method: method,
  grant_types: ['client_credentials'],
  response_types: [],
  redirect_uris: [],
  scope: 'api',
  tls_client_certificate_bound_access_tokens: true,
  ...extra,
});
const mtlsClients = !mtls ? [] : [
  mtlsClient('broker-tls', 'tls_client_auth', { tls_client_auth_subject_dn: mtls.subjectDN }),
  ...(mtls.selfSigned ? [mtlsClient('broker-self-signed', 'self_signed_tls_client_auth', {
    jwks: {
      keys: [{
        ...new X509Certificate(mtls.selfSigned).publicKey.export({ format: 'jwk' }),
        x5c: [new X509Certificate(mtls.selfSigned).raw.toString('base64')],
      }],
    },
  })] : []),
];
// The PEM client certificate presented on the request's TLS connection.
const peerCertificate = (ctx) => {
  const peer = ctx.req.socket.getPeerCertificate?.();
  return peer?.raw ? new X509Certificate(peer.raw).toString() : undefined;
};

const provider = new Provider(issuer, {
  clients: [client('broker-basic', 'client_secret_basic'), client('broker-post', 'client_secret_post'), ...privateKeyJWTClients, ...deviceClients, ...mtlsClients],
  clientAuthMethods: ['client_secret_basic', 'client_secret_post', 'private_key_jwt', 'tls_client_auth', 'self_signed_tls_client_auth'],
  // "api" is a plain OAuth scope: client_credentials tokens carry it.
  scopes: ['openid', 'offline_access', 'api'],
  jwks: { keys: [signingKey] },
  cookies: { keys: [randomBytes(32).toString('base64url')] },
  features: {
    // Login with any name and password, then a consent form: both plain
    // HTML forms that a cookie-keeping HTTP client can submit.
    devInteractions: { enabled: true },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    deviceFlow: { enabled: true },
    mTLS: {
      enabled: true,
      certificateBoundAccessTokens: true,
      tlsClientAuth: true,
      selfSignedTlsClientAuth: true,
      getCertificate: peerCertificate,
      // The https listener checks the chain against MTLS_CA.
      certificateAuthorized: (ctx) => ctx.req.socket.authorized === true,
      certificateSubjectMatches: (ctx, property, expected) => property === 'tls_client_auth_subject_dn'
        && new X509Certificate(peerCertificate(ctx)).subject.split('\n').join(',') === expected,
    },
  },
  pkce: { required: () => true }, // S256 is the only method oidc-provider takes
  // Every refresh rotates: the presented refresh token is consumed, and
  // presenting it again revokes the whole grant (reuse detection).
  rotateRefreshToken: true,
  ttl: {
    AccessToken: accessTokenTTL,
    ClientCredentials: clientCredentialsTTL,
    AuthorizationCode: 60,
    RefreshToken: 3600,
    IdToken: 3600,
    Grant: 3600,
    Session: 3600,
    Interaction: 600,
  },
  clientBasedCORS: () => false,
  ...(refreshTokens === 'client' && {
    issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
    expiresWithSession: async () => false,
  }),
  findAccount: (ctx, sub) => ({ accountId: sub, claims: () => ({ sub }) }),
  // The broker's jwks_uri is on 127.0.0.1 here, which oidc-provider's own
  // fetch refuses (SSRF protection against special-use addresses).
  ...(privateKeyJWTClients.length > 0 && {
    fetch: (url, options) => globalThis.fetch(url, { ...options, dispatcher: undefined }),
  }),
});

// Why a client failed to authenticate, on stderr (the test shows it when
// it fails): a client's JWKS that cannot be fetched, a bad assertion.
provider.on('grant.error', (ctx, err) => {
  if (err.error === 'invalid_client') console.error('grant.error', err.error_detail, err.cause?.cause?.message ?? err.cause?.message ?? '');
});

// What the endpoints the broker calls received, in order.
const seen = [];
const digest = (v) => (v ? createHash('sha256').update(v).digest('hex').slice(0, 16) : undefined);
const endpoints = new Map([
  [new URL(provider.urlFor('token')).pathname, 'token'],
  [new URL(provider.urlFor('introspection')).pathname, 'introspection'],
  [new URL(provider.urlFor('revocation')).pathname, 'revocation'],
  [new URL(provider.urlFor('device_authorization')).pathname, 'device_authorization'],
]);

provider.use(async (ctx, next) => {
  await next();
  const endpoint = endpoints.get(ctx.path);
  if (!endpoint || ctx.method !== 'POST') return;
  const params = ctx.oidc?.params ?? {};
  const body = ctx.oidc?.body ?? {};
  const auth = [];
  if ((ctx.get('authorization') || '').toLowerCase().startsWith('basic ')) auth.push('basic');
  if (body.client_secret !== undefined) auth.push('post');
  if (body.client_assertion !== undefined) auth.push('private_key_jwt');
  const cert = peerCertificate(ctx);
  if (cert) auth.push('tls');
  seen.push({
    endpoint,
    status: ctx.status,
    error: typeof ctx.body === 'object' && ctx.body ? ctx.body.error : undefined,
    active: endpoint === 'introspection' && typeof ctx.body === 'object' && ctx.body ? ctx.body.active : undefined,
    client_id: ctx.oidc?.client?.clientId,
    auth: auth.join('+'),
    grant_type: params.grant_type,
    scope: params.scope,
    code_verifier: params.code_verifier !== undefined,
    redirect_uri: params.redirect_uri,
    refresh_token: digest(params.refresh_token),
    token: digest(params.token),
    token_type_hint: params.token_type_hint,
    client_cert: cert ? createHash('sha256').update(new X509Certificate(cert).raw).digest('base64url') : undefined,
    device_code: digest(params.device_code),
    at: Date.now(),
  });
});

// Device authorization answers name the interval DEVICE_INTERVAL asks.
const deviceInterval = process.env.DEVICE_INTERVAL ? seconds('DEVICE_INTERVAL', 5) : undefined;
provider.use(async (ctx, next) => {
  await next();
  if (deviceInterval && ctx.path === new URL(provider.urlFor('device_authorization')).pathname
    && ctx.status === 200 && typeof ctx.body === 'object') {
    ctx.body = { ...ctx.body, interval: deviceInterval };
  }
});

const callback = provider.callback();
let mtlsURL;
server.on('request', (req, res) => {
  if (req.method === 'GET' && req.url === '/_interop/requests') {
    res.setHeader('Content-Type', 'application/json');
    res.end(JSON.stringify(seen));
    return;
  }
  if (req.method === 'GET' && req.url === '/_interop/mtls') {
    res.setHeader('Content-Type', 'application/json');
    res.end(JSON.stringify({ url: mtlsURL }));
    return;
  }
  callback(req, res);
});

// The https listener: every client is asked for a certificate, which
// MTLS_CA may or may not have issued (self-signed ones are checked by
// oidc-provider against the client's keys).
let tlsServer;
if (mtls) {
  tlsServer = createTLSServer({
    cert: mtls.cert, key: mtls.key, ca: mtls.ca ? [mtls.ca] : undefined, requestCert: true, rejectUnauthorized: false,
  }, callback);
  await new Promise((resolve, reject) => {
    tlsServer.once('error', reject);
    tlsServer.listen(0, '127.0.0.1', resolve);
  });
  mtlsURL = `https://127.0.0.1:${tlsServer.address().port}`;
}

process.stdout.write(`${issuer}\n`);

const stop = () => {
  tlsServer?.close();
  server.close(() => process.exit(0));
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
