package main

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
)

// authStyles are the --auth-style values.
var authStyles = map[string]tokenbrokerv1.ClientAuthStyle{
	"basic":           tokenbrokerv1.ClientAuthStyle_CLIENT_AUTH_STYLE_BASIC,
	"post":            tokenbrokerv1.ClientAuthStyle_CLIENT_AUTH_STYLE_POST,
	"basic+post":      tokenbrokerv1.ClientAuthStyle_CLIENT_AUTH_STYLE_BASIC_AND_POST,
	"private_key_jwt": tokenbrokerv1.ClientAuthStyle_CLIENT_AUTH_STYLE_PRIVATE_KEY_JWT,
	"none":            tokenbrokerv1.ClientAuthStyle_CLIENT_AUTH_STYLE_NONE,

	"tls_client_auth":             tokenbrokerv1.ClientAuthStyle_CLIENT_AUTH_STYLE_TLS_CLIENT_AUTH,
	"self_signed_tls_client_auth": tokenbrokerv1.ClientAuthStyle_CLIENT_AUTH_STYLE_SELF_SIGNED_TLS_CLIENT_AUTH,
}

// grantTypeNames are the --grant values: the OAuth2 grant_type names.
var grantTypeNames = map[string]tokenbrokerv1.GrantType{
	"client_credentials": tokenbrokerv1.GrantType_GRANT_TYPE_CLIENT_CREDENTIALS,
	"password":           tokenbrokerv1.GrantType_GRANT_TYPE_PASSWORD,
	"authorization_code": tokenbrokerv1.GrantType_GRANT_TYPE_AUTHORIZATION_CODE,
	"refresh_token":      tokenbrokerv1.GrantType_GRANT_TYPE_REFRESH_TOKEN,
	"jwt_bearer":         tokenbrokerv1.GrantType_GRANT_TYPE_JWT_BEARER,
	"device_code":        tokenbrokerv1.GrantType_GRANT_TYPE_DEVICE_CODE,
	"token_exchange":     tokenbrokerv1.GrantType_GRANT_TYPE_TOKEN_EXCHANGE,
}

func parseGrantType(flag, s string) (tokenbrokerv1.GrantType, error) {
	g, ok := grantTypeNames[strings.ReplaceAll(strings.ToLower(s), "-", "_")]
	if !ok {
		return 0, usageErrorf("--%s %q: want one of %s", flag, s, strings.Join(slices.Sorted(maps.Keys(grantTypeNames)), ", "))
	}
	return g, nil
}

func grantTypeCell(g tokenbrokerv1.GrantType) string { return enumCell(g.String(), "GRANT_TYPE_") }

func authStyleCell(s tokenbrokerv1.ClientAuthStyle) string {
	for name, v := range authStyles {
		if v == s {
			return name
		}
	}
	return "basic (default)"
}

func (c *cli) providerCommand() *cobra.Command {
	return group("provider", "Register providers and rotate their client secrets",
		`Providers are the upstream OAuth2 authorization servers and the broker's client
registration with each. Client secrets are write-only: they are read from
stdin or an environment variable, never from a flag, and never printed.`,
		c.providerPutCommand(), c.providerGetCommand(), c.providerListCommand(),
		c.providerDeleteCommand(), c.providerRotateSecretCommand(), c.providerRotateKeyCommand())
}

func (c *cli) providerPutCommand() *cobra.Command {
	var (
		p           tokenbrokerv1.Provider
		secretStdin bool
		secretEnv   string
		authStyle   string
		grants      []string
		lifetime    time.Duration
		tokenParams map[string]string
		grantURLs   map[string]string
		redirectURI string
		keyFile     string
		keyStdin    bool
		saKeyFile   string
		jwtb        tokenbrokerv1.JwtBearerGrant
		jwtbLife    time.Duration
		certFile    string
		certKeyFile string
		exchange    tokenbrokerv1.TokenExchange
	)
	cmd := &cobra.Command{
		Use:   "put NAME",
		Short: "Create or replace a provider",
		Long: `Create or replace a provider. Put replaces the whole provider with what the
flags say; only the client secret is kept when none is given. A --preset fills
the endpoints, client authentication, grants and scopes of a known provider
from --base-url; flags given explicitly win over the preset.`,
		Example: `  printf %s "$SECRET" | tokenbroker provider put acme --token-url https://idp.example/token \
      --client-id broker --client-secret-stdin --auth-style post --scope read --scope write
  tokenbroker provider put media --preset mediahaven --base-url https://integration.mediahaven.com \
      --client-id broker --client-secret-env MEDIAHAVEN_SECRET
  tokenbroker provider put corp --token-url https://idp.example/oauth2/token --client-id broker \
      --auth-style private_key_jwt --client-key-file corp.pem
  tokenbroker provider put gcp --preset google-service-account --service-account-key-file sa.json \
      --scope https://www.googleapis.com/auth/cloud-platform`,
		Args: exactArgs("NAME"),
		RunE: c.run(func(ctx context.Context, cmd *cobra.Command, args []string) error {
			p.Name = args[0]
			if authStyle != "" {
				s, ok := authStyles[authStyle]
				if !ok {
					return usageErrorf("--auth-style %q: want basic, post, basic+post, private_key_jwt, none, tls_client_auth or self_signed_tls_client_auth", authStyle)
				}
				p.ClientAuthStyle = s
			}
			for _, g := range grants {
				gt, err := parseGrantType("grant", g)
				if err != nil {
					return err
				}
				p.GrantTypes = append(p.GrantTypes, gt)
			}
			d, err := durationFlag(cmd, "default-token-lifetime", lifetime)
			if err != nil {
				return err
			}
			p.DefaultTokenLifetime, p.TokenParams, p.GrantTokenUrls, p.RedirectUri = d, tokenParams, grantURLs, redirectURI
			req := &tokenbrokerv1.PutProviderRequest{Provider: &p}
			if exchange.SubjectProvider != "" || cmd.Flags().Changed("subject-account") || len(exchange.Audience) > 0 || len(exchange.Resource) > 0 ||
				exchange.RequestedTokenType != "" || exchange.SubjectTokenType != "" || len(exchange.SubjectScopes) > 0 {
				p.TokenExchange = &exchange
			}
			if certFile != "" {
				data, err := os.ReadFile(certFile)
				if err != nil {
					return usageErrorf("--client-certificate-file: %v", err)
				}
				p.ClientCertificate = string(data)
			}
			if certKeyFile != "" {
				data, err := os.ReadFile(certKeyFile)
				if err != nil {
					return usageErrorf("--client-certificate-key-file: %v", err)
				}
				req.ClientCertificateKey = string(data)
			}
			if secretStdin || secretEnv != "" {
				if req.ClientSecret, err = c.readSecret("client secret", secretStdin, secretEnv); err != nil {
					return err
				}
			}
			if req.ClientKey, err = c.readClientKey(keyStdin, keyFile); err != nil {
				return err
			}
			if saKeyFile != "" {
				if req.ServiceAccountKey, err = c.readClientKey(false, saKeyFile); err != nil {
					return err
				}
			}
			if d, err := durationFlag(cmd, "assertion-lifetime", jwtbLife); err != nil {
				return err
			} else if d != nil || jwtb.Issuer != "" || jwtb.Subject != "" || jwtb.Audience != "" || jwtb.ScopeClaim {
				jwtb.Lifetime = d
				p.JwtBearer = &jwtb
			}
			admin, err := c.admin(cmd)
			if err != nil {
				return err
			}
			resp, err := admin.PutProvider(ctx, req)
			if err != nil {
				return err
			}
			return c.printProvider(resp.GetProvider())
		}),
	}
	f := cmd.Flags()
	f.StringVar(&p.TokenUrl, "token-url", "", "token endpoint URL")
	f.StringVar(&p.AuthorizeUrl, "authorize-url", "", "authorization endpoint URL (authorization_code grant)")
	f.StringVar(&p.IntrospectionUrl, "introspection-url", "", "RFC 7662 introspection endpoint URL")
	f.StringVar(&p.RevocationUrl, "revocation-url", "", "RFC 7009 revocation endpoint URL")
	f.StringVar(&p.DeviceAuthorizationUrl, "device-authorization-url", "", "RFC 8628 device authorization endpoint URL (device_code grant)")
	f.StringVar(&p.ClientId, "client-id", "", "the broker's client_id at the provider")
	f.BoolVar(&secretStdin, "client-secret-stdin", false, "read the client secret from stdin")
	f.StringVar(&secretEnv, "client-secret-env", "", "read the client secret from this environment variable")
	f.StringVar(&authStyle, "auth-style", "", "client authentication at the token endpoint: basic, post, basic+post, private_key_jwt, none, tls_client_auth or self_signed_tls_client_auth (default basic)")
	f.StringVar(&keyFile, "client-key-file", "", "private_key_jwt: import the private key (PEM or JWK) from this file (default: the stored key, or a generated one)")
	f.BoolVar(&keyStdin, "client-key-stdin", false, "private_key_jwt: read the private key (PEM or JWK) from stdin")
	f.StringVar(&p.ClientKeyAlgorithm, "client-key-algorithm", "", "private_key_jwt: algorithm of a generated key: RS256, ES256 or EdDSA (default ES256)")
	f.StringVar(&p.ClientAssertionAudience, "client-assertion-audience", "", "private_key_jwt: the aud of client assertions (default: the token endpoint)")
	f.StringVar(&saKeyFile, "service-account-key-file", "", "google-service-account: the service account's JSON key file (its private key is stored sealed)")
	f.StringVar(&jwtb.Issuer, "assertion-issuer", "", "jwt_bearer grant: the iss of its assertions (default: the client id)")
	f.StringVar(&jwtb.Subject, "assertion-subject", "", "jwt_bearer grant: the sub of the provider's own token (default: none)")
	f.StringVar(&jwtb.Audience, "assertion-audience", "", "jwt_bearer grant: the aud of its assertions (default: the token endpoint)")
	f.BoolVar(&jwtb.ScopeClaim, "assertion-scope-claim", false, "jwt_bearer grant: send the scopes in a scope claim, not a parameter")
	f.DurationVar(&jwtbLife, "assertion-lifetime", 0, "jwt_bearer grant: how long each assertion is valid (default 1m)")
	f.StringVar(&certFile, "client-certificate-file", "", "PEM client certificate chain presented with tls_client_auth and self_signed_tls_client_auth")
	f.StringVar(&certKeyFile, "client-certificate-key-file", "", "PEM private key of --client-certificate-file (sent once, never shown)")
	f.StringVar(&exchange.SubjectProvider, "subject-provider", "", "token_exchange grant: the provider whose token is the subject token")
	f.StringVar(&exchange.SubjectAccount, "subject-account", "", "token_exchange grant: the account of --subject-provider")
	f.StringSliceVar(&exchange.SubjectScopes, "subject-scope", nil, "token_exchange grant: scope of the subject token, repeatable")
	f.StringVar(&exchange.SubjectTokenType, "subject-token-type", "", "token_exchange grant: subject_token_type URI (default the access_token type)")
	f.StringVar(&exchange.RequestedTokenType, "requested-token-type", "", "token_exchange grant: requested_token_type URI")
	f.StringSliceVar(&exchange.Audience, "audience", nil, "token_exchange grant: audience, repeatable")
	f.StringSliceVar(&exchange.Resource, "resource", nil, "token_exchange grant: resource URI, repeatable")
	f.StringSliceVar(&p.DefaultScopes, "scope", nil, "default scope, repeatable or comma-separated")
	f.StringSliceVar(&grants, "grant", nil, "allowed grant, repeatable: client_credentials, password, authorization_code, device_code, token_exchange, refresh_token, jwt_bearer (default client_credentials)")
	f.StringVar(&p.Preset, "preset", "", "preset of a known provider: mediacore, mediahound, mediavalet, mediaflow, mediahaven, google-service-account, or oidc or oauth (OpenID Connect discovery or RFC 8414 metadata from --base-url, the issuer)")
	f.StringVar(&p.BaseUrl, "base-url", "", "the preset's base URL: the instance, or the OIDC issuer")
	f.BoolVar(&p.Pkce, "pkce", false, "send an S256 PKCE challenge with authorization requests")
	f.StringVar(&redirectURI, "redirect-uri", "", "callback registered at the provider (default: the broker's own /v1/oauth/callback)")
	f.StringToStringVar(&tokenParams, "token-param", nil, "extra form parameter for every token request, KEY=VALUE, repeatable (e.g. audience=api)")
	f.StringToStringVar(&grantURLs, "grant-token-url", nil, "token endpoint of one grant where it differs, GRANT=URL, repeatable")
	f.DurationVar(&lifetime, "default-token-lifetime", 0, "lifetime assumed when a token response has no expires_in (default 1h)")
	cmd.MarkFlagsMutuallyExclusive("client-secret-stdin", "client-secret-env")
	cmd.MarkFlagsMutuallyExclusive("client-key-file", "client-key-stdin", "service-account-key-file")
	cmd.MarkFlagsMutuallyExclusive("client-secret-stdin", "client-key-stdin")
	return cmd
}

// readClientKey reads a private key from stdin or a file; "" when neither
// is asked for. The key is never printed.
func (c *cli) readClientKey(fromStdin bool, file string) (string, error) {
	switch {
	case fromStdin:
		return c.readSecret("client key", true, "")
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			return "", usageErrorf("--client-key-file: %v", err)
		}
		if len(b) > 64<<10 {
			return "", usageErrorf("--client-key-file %s: larger than 64 KiB", file)
		}
		return string(b), nil
	}
	return "", nil
}

func (c *cli) providerRotateKeyCommand() *cobra.Command {
	var (
		keyStdin  bool
		keyFile   string
		algorithm string
		overlap   time.Duration
	)
	cmd := &cobra.Command{
		Use:   "rotate-key NAME [--client-key-file FILE | --client-key-stdin] [--algorithm ALG] [--overlap D]",
		Short: "Replace the key a provider's client assertions are signed with",
		Long: `Replace the key the broker signs a provider's client assertions with
(private_key_jwt). The new key, imported or generated, signs at once; the one
it replaces stays in the broker's JWKS for --overlap, so that a provider that
caches the JWKS keeps verifying until it fetches it again. The private key is
read from a file or stdin and never printed.`,
		Example: `  tokenbroker provider rotate-key corp --algorithm EdDSA --overlap 24h
  tokenbroker provider rotate-key corp --client-key-file corp-2027.pem --overlap 1h`,
		Args: exactArgs("NAME"),
		RunE: c.run(func(ctx context.Context, cmd *cobra.Command, args []string) error {
			key, err := c.readClientKey(keyStdin, keyFile)
			if err != nil {
				return err
			}
			d, err := durationFlag(cmd, "overlap", overlap)
			if err != nil {
				return err
			}
			admin, err := c.admin(cmd)
			if err != nil {
				return err
			}
			resp, err := admin.RotateClientKey(ctx, &tokenbrokerv1.RotateClientKeyRequest{
				Provider: args[0], ClientKey: key, Algorithm: algorithm, Overlap: d,
			})
			if err != nil {
				return err
			}
			return c.printProvider(resp.GetProvider())
		}),
	}
	f := cmd.Flags()
	f.StringVar(&keyFile, "client-key-file", "", "import the new private key (PEM or JWK) from this file")
	f.BoolVar(&keyStdin, "client-key-stdin", false, "read the new private key (PEM or JWK) from stdin")
	f.StringVar(&algorithm, "algorithm", "", "RS256, ES256 or EdDSA: of the generated key (default: the provider's), or what the imported one must be")
	f.DurationVar(&overlap, "overlap", 0, "how long the replaced key stays in the JWKS (e.g. 24h)")
	cmd.MarkFlagsMutuallyExclusive("client-key-file", "client-key-stdin")
	return cmd
}

func (c *cli) providerGetCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "get NAME",
		Short: "Show a provider, without its secret",
		Args:  exactArgs("NAME"),
		RunE: c.run(func(ctx context.Context, cmd *cobra.Command, args []string) error {
			admin, err := c.admin(cmd)
			if err != nil {
				return err
			}
			resp, err := admin.GetProvider(ctx, &tokenbrokerv1.GetProviderRequest{Name: args[0]})
			if err != nil {
				return err
			}
			return c.printProvider(resp.GetProvider())
		}),
	}
}

func (c *cli) providerListCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List the providers",
		Args:  cobra.NoArgs,
		RunE: c.run(func(ctx context.Context, cmd *cobra.Command, _ []string) error {
			admin, err := c.admin(cmd)
			if err != nil {
				return err
			}
			resp, err := admin.ListProviders(ctx, &tokenbrokerv1.ListProvidersRequest{})
			if err != nil {
				return err
			}
			if c.output == outputJSON {
				return c.printJSON(resp)
			}
			rows := [][]string{{"NAME", "TOKEN URL", "CLIENT ID", "AUTH STYLE", "GRANTS", "CLIENT SECRET", "UPDATED"}}
			for _, p := range resp.GetProviders() {
				rows = append(rows, []string{p.GetName(), cell(p.GetTokenUrl()), cell(p.GetClientId()), authStyleCell(p.GetClientAuthStyle()),
					grantsCell(p.GetGrantTypes()), secretCell(p.GetClientSecret()), timeCell(p.GetUpdateTime())})
			}
			return c.table(rows)
		}),
	}
}

func (c *cli) providerDeleteCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "delete NAME",
		Short: "Delete a provider and every token cached for it",
		Args:  exactArgs("NAME"),
		RunE: c.run(func(ctx context.Context, cmd *cobra.Command, args []string) error {
			admin, err := c.admin(cmd)
			if err != nil {
				return err
			}
			resp, err := admin.DeleteProvider(ctx, &tokenbrokerv1.DeleteProviderRequest{Name: args[0]})
			if err != nil {
				return err
			}
			return c.printDone(resp, "provider %q deleted", args[0])
		}),
	}
}

func (c *cli) providerRotateSecretCommand() *cobra.Command {
	var (
		secretStdin    bool
		secretEnv      string
		skipValidation bool
		overlap        time.Duration
	)
	cmd := &cobra.Command{
		Use:   "rotate-secret NAME (--client-secret-stdin | --client-secret-env VAR)",
		Short: "Replace a provider's client secret, proving the new one first",
		Long: `Replace a provider's client secret. The broker first proves the new secret
with a client_credentials token request; a refused secret leaves the old one
in place and the command fails with the provider's error (exit code 5).
During --overlap, token requests the new secret fails are retried with the
old one.`,
		Example: `  vault read -field=secret kv/acme | tokenbroker provider rotate-secret acme --client-secret-stdin --overlap 5m`,
		Args:    exactArgs("NAME"),
		RunE: c.run(func(ctx context.Context, cmd *cobra.Command, args []string) error {
			secret, err := c.readSecret("client secret", secretStdin, secretEnv)
			if err != nil {
				return err
			}
			d, err := durationFlag(cmd, "overlap", overlap)
			if err != nil {
				return err
			}
			admin, err := c.admin(cmd)
			if err != nil {
				return err
			}
			resp, err := admin.RotateClientSecret(ctx, &tokenbrokerv1.RotateClientSecretRequest{
				Provider: args[0], ClientSecret: secret, SkipValidation: skipValidation, Overlap: d,
			})
			if err != nil {
				return err
			}
			return c.printProvider(resp.GetProvider())
		}),
	}
	f := cmd.Flags()
	f.BoolVar(&secretStdin, "client-secret-stdin", false, "read the new client secret from stdin")
	f.StringVar(&secretEnv, "client-secret-env", "", "read the new client secret from this environment variable")
	f.BoolVar(&skipValidation, "skip-validation", false, "store the secret without proving it against the provider first")
	f.DurationVar(&overlap, "overlap", 0, "how long the old secret is still tried when the new one is refused (e.g. 5m)")
	cmd.MarkFlagsMutuallyExclusive("client-secret-stdin", "client-secret-env")
	cmd.MarkFlagsOneRequired("client-secret-stdin", "client-secret-env")
	return cmd
}

// printProvider prints one provider: JSON, or a field per line.
func (c *cli) printProvider(p *tokenbrokerv1.Provider) error {
	if c.output == outputJSON {
		return c.printJSON(p)
	}
	kv := func(m map[string]string) string {
		var parts []string
		for _, k := range slices.Sorted(maps.Keys(m)) {
			parts = append(parts, k+"="+m[k])
		}
		return listCell(parts)
	}
	return c.table([][]string{
		{"NAME", p.GetName()},
		{"PRESET", cell(p.GetPreset())},
		{"BASE URL", cell(p.GetBaseUrl())},
		{"TOKEN URL", cell(p.GetTokenUrl())},
		{"GRANT TOKEN URLS", kv(p.GetGrantTokenUrls())},
		{"AUTHORIZE URL", cell(p.GetAuthorizeUrl())},
		{"INTROSPECTION URL", cell(p.GetIntrospectionUrl())},
		{"REVOCATION URL", cell(p.GetRevocationUrl())},
		{"DEVICE AUTHORIZATION URL", cell(p.GetDeviceAuthorizationUrl())},
		{"REDIRECT URI", cell(p.GetRedirectUri())},
		{"CLIENT ID", cell(p.GetClientId())},
		{"CLIENT SECRET", secretCell(p.GetClientSecret())},
		{"SECRET UPDATED", timeCell(p.GetClientSecret().GetUpdateTime())},
		{"AUTH STYLE", authStyleCell(p.GetClientAuthStyle())},
		{"CLIENT KEYS", clientKeysCell(p.GetClientKeys())},
		{"ASSERTION AUDIENCE", cell(p.GetClientAssertionAudience())},
		{"JWT BEARER", jwtBearerCell(p.GetJwtBearer())},
		{"CLIENT CERTIFICATE", certificateCell(p.GetClientCertificate())},
		{"CERTIFICATE KEY", secretCell(p.GetClientCertificateKey())},
		{"TOKEN EXCHANGE", exchangeCell(p.GetTokenExchange())},
		{"GRANTS", grantsCell(p.GetGrantTypes())},
		{"SCOPES", listCell(p.GetDefaultScopes())},
		{"TOKEN PARAMS", kv(p.GetTokenParams())},
		{"PKCE", fmt.Sprint(p.GetPkce())},
		{"TOKEN LIFETIME", durationCell(p.GetDefaultTokenLifetime())},
		{"CREATED", timeCell(p.GetCreateTime())},
		{"UPDATED", timeCell(p.GetUpdateTime())},
	})
}

// clientKeysCell lists the client keys by kid and algorithm, the signing
// one first and the others with the time they leave the JWKS.
func clientKeysCell(keys []*tokenbrokerv1.ClientKeyInfo) string {
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k.GetKeyId() + " " + k.GetAlgorithm()
		if k.GetRetireTime() != nil {
			parts[i] += " (until " + timeCell(k.GetRetireTime()) + ")"
		}
	}
	return listCell(parts)
}

// jwtBearerCell says what a JWT-bearer grant's assertions claim.
func jwtBearerCell(j *tokenbrokerv1.JwtBearerGrant) string {
	if j == nil {
		return "-"
	}
	parts := []string{"iss=" + cell(j.GetIssuer()), "sub=" + cell(j.GetSubject()), "aud=" + cell(j.GetAudience())}
	if j.GetScopeClaim() {
		parts = append(parts, "scope claim")
	}
	return strings.Join(parts, " ")
}

// exchangeCell says where a token exchange's subject token comes from
// and for which audiences and resources.
func exchangeCell(x *tokenbrokerv1.TokenExchange) string {
	if x == nil {
		return "-"
	}
	from := "file " + x.GetSubjectTokenFile()
	if x.GetSubjectProvider() != "" {
		from = "provider " + x.GetSubjectProvider()
		if x.GetSubjectAccount() != "" {
			from += " account " + x.GetSubjectAccount()
		}
	}
	return fmt.Sprintf("subject from %s; audience %s; resource %s", from, listCell(x.GetAudience()), listCell(x.GetResource()))
}

// certificateCell names a PEM certificate chain's leaf and its expiry.
func certificateCell(chain string) string {
	block, _ := pem.Decode([]byte(chain))
	if block == nil {
		return "-"
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return "(does not parse)"
	}
	return fmt.Sprintf("%s (expires %s)", c.Subject, c.NotAfter.UTC().Format(time.RFC3339))
}

func grantsCell(gs []tokenbrokerv1.GrantType) string {
	names := make([]string, len(gs))
	for i, g := range gs {
		names[i] = grantTypeCell(g)
	}
	return listCell(names)
}

// printDone reports a change that returns nothing: "{}" in JSON, else the
// sentence.
func (c *cli) printDone(resp proto.Message, format string, args ...any) error {
	if c.output == outputJSON {
		return c.printJSON(resp)
	}
	_, err := fmt.Fprintf(c.stdout, format+"\n", args...)
	return err
}

// exactArgs requires the named positional arguments, naming the missing
// ones in its error.
func exactArgs(names ...string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		switch {
		case len(args) < len(names):
			return usageErrorf("%s: missing %s", commandName(cmd), strings.Join(names[len(args):], " and "))
		case len(args) > len(names):
			return usageErrorf("%s: unexpected argument %q (want %s)", commandName(cmd), args[len(names)], strings.Join(names, " "))
		}
		return nil
	}
}
