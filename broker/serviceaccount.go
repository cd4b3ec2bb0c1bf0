package broker

import (
	"encoding/json"
	"strings"
)

// GoogleTokenURL is the token endpoint of Google's service accounts, when
// their key names none.
const GoogleTokenURL = "https://oauth2.googleapis.com/token"

// serviceAccountKey holds the members of a Google service account key file
// (the JSON a console or `gcloud iam service-accounts keys create` gives)
// that the JWT-bearer grant uses.
type serviceAccountKey struct {
	Type         string `json:"type"`
	PrivateKeyID string `json:"private_key_id"`
	PrivateKey   string `json:"private_key"`
	ClientEmail  string `json:"client_email"`
	TokenURI     string `json:"token_uri"`
}

// ApplyServiceAccountKey configures p for the JWT-bearer grant of the
// Google service account whose key file is data: the private key becomes
// p's client key (RS256, kid the key's private_key_id, sealed like every
// client key), iss is client_email (also the client_id when p has none),
// aud and the token endpoint are token_uri, the scopes asked for go in the
// assertion's scope claim, and no client authentication is sent. Fields p
// sets already win, as with every preset. Errors wrap ErrInvalidArgument
// and never quote the file.
func ApplyServiceAccountKey(p *Provider, data []byte) error {
	var sa serviceAccountKey
	if err := json.Unmarshal(data, &sa); err != nil {
		return invalidf("service account key: not a JSON key file")
	}
	if sa.Type != "service_account" {
		return invalidf("service account key: type is %s, want \"service_account\"", quote(sa.Type))
	}
	if sa.ClientEmail == "" || sa.PrivateKey == "" {
		return invalidf("service account key: client_email and private_key are required")
	}
	if !strings.HasPrefix(strings.TrimSpace(sa.PrivateKey), "-----BEGIN") {
		return invalidf("service account key: private_key is not a PEM private key")
	}
	k, err := ParseClientKey([]byte(sa.PrivateKey), KeyRS256)
	if err != nil {
		return invalidf("service account key: private_key: %v", strings.TrimPrefix(err.Error(), ErrInvalidArgument.Error()+": "))
	}
	if sa.PrivateKeyID != "" {
		k.KeyID = sa.PrivateKeyID
	}
	tokenURL := orString(sa.TokenURI, GoogleTokenURL)
	if err := validateURL(tokenURL); err != nil {
		return invalidf("service account key: token_uri: %v", err)
	}
	p.ClientKeys = []ClientKey{k}
	fill(&p.ClientID, sa.ClientEmail)
	fill(&p.JWTBearer.Issuer, sa.ClientEmail)
	return ApplyStaticPreset(p, "google-service-account", strings.TrimSuffix(tokenURL, "/token"))
}
