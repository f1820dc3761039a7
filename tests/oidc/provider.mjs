// The certified `oidc-provider` (panva/node-oidc-provider) as the login tests' identity
// provider. Configured from environment variables by tests/src/oidc_provider.rs; prints one
// line `ready <port>` on stdout once it listens. Development interactions (any login and
// password) stand in for a real sign-in page; keys are the library's development keys.
import { pathToFileURL } from 'node:url';

const env = (name, fallback) => {
  const value = process.env[name] ?? fallback;
  if (value === undefined) { console.error(`${name} is not set`); process.exit(2); }
  return value;
};
const { default: Provider, errors } = await import(pathToFileURL(env('OIDC_PROVIDER_ENTRY')).href);

const issuer = env('OIDC_ISSUER');
const port = Number(env('OIDC_PORT'));
const clientId = env('OIDC_CLIENT_ID');
const audience = env('OIDC_AUDIENCE');
const groups = JSON.parse(env('OIDC_GROUPS', '["eng"]'));
const accessTtl = Number(env('OIDC_ACCESS_TOKEN_TTL', '600'));
const deviceTtl = Number(env('OIDC_DEVICE_CODE_TTL', '600'));

const provider = new Provider(issuer, {
  clients: [{
    client_id: clientId,
    application_type: 'native',
    token_endpoint_auth_method: 'none',
    grant_types: ['authorization_code', 'refresh_token', 'urn:ietf:params:oauth:grant-type:device_code'],
    response_types: ['code'],
    // Native clients may use any port on a loopback redirect (RFC 8252 §7.3).
    redirect_uris: ['http://127.0.0.1/callback'],
  }],
  scopes: ['openid', 'offline_access', 'email'],
  claims: { openid: ['sub'], email: ['email'] },
  cookies: { keys: ['synthetic-test-cookie-key-not-a-secret'] },
  pkce: { required: () => true },
  ttl: {
    AccessToken: accessTtl,
    DeviceCode: deviceTtl,
    AuthorizationCode: 60,
    IdToken: 600,
    RefreshToken: 3600,
    Grant: 3600,
    Interaction: 600,
    Session: 3600,
  },
  features: {
    devInteractions: { enabled: true },
    deviceFlow: { enabled: true },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => audience,
      useGrantedResource: () => true,
      getResourceServerInfo: (_ctx, indicator) => {
        if (indicator !== audience) throw new errors.InvalidTarget();
        return { scope: 'scrim', audience, accessTokenFormat: 'jwt', accessTokenTTL: accessTtl, jwt: { sign: { alg: 'RS256' } } };
      },
    },
  },
  // A refresh token for every grant of a client allowed to refresh (no consent dance for
  // offline_access in the tests).
  issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
  // The gateway authorises on this claim (groups_claim: "groups").
  extraTokenClaims: async (_ctx, token) => (token.kind === 'AccessToken' ? { groups, email: `${token.accountId}@oidc.test` } : undefined),
  findAccount: async (_ctx, sub) => ({ accountId: sub, claims: async () => ({ sub, email: `${sub}@oidc.test` }) }),
});
provider.proxy = false;
const server = provider.listen(port, '127.0.0.1', () => console.log(`ready ${port}`));
server.on('error', (e) => { console.error(`cannot listen: ${e.message}`); process.exit(1); });
