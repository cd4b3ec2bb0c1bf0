package oauth_test

import (
	"errors"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/oauth"
)

func TestParseResponseBodies(t *testing.T) {
	tests := []struct {
		name        string
		contentType string
		give        string
		want        *oauth.Token
		wantErr     error
	}{
		{name: "json", contentType: "application/json", give: `{"access_token":"a","token_type":"bearer"}`, want: &oauth.Token{AccessToken: "a", TokenType: "bearer"}},
		{name: "json with charset", contentType: "application/json; charset=utf-8", give: `{"access_token":"a"}`, want: &oauth.Token{AccessToken: "a"}},
		{name: "vendor +json", contentType: "application/vnd.idp.token+json", give: `{"access_token":"a"}`, want: &oauth.Token{AccessToken: "a"}},
		{name: "no content type", give: ` {"access_token":"a"}`, want: &oauth.Token{AccessToken: "a"}},
		{name: "octet-stream json", contentType: "application/octet-stream", give: `{"access_token":"a"}`, want: &oauth.Token{AccessToken: "a"}},
		{name: "text/plain json", contentType: "text/plain", give: `{"access_token":"a"}`, want: &oauth.Token{AccessToken: "a"}},
		{name: "byte order mark", contentType: "application/json", give: "\ufeff{\"access_token\":\"a\"}", want: &oauth.Token{AccessToken: "a"}},
		{name: "unknown fields", contentType: "application/json", give: `{"access_token":"a","x":{"y":[1,2]},"Access_Token":"b"}`, want: &oauth.Token{AccessToken: "a"}},
		{name: "nulls", contentType: "application/json", give: `{"access_token":"a","token_type":null,"scope":null,"error":null}`, want: &oauth.Token{AccessToken: "a"}},
		{
			name: "form", contentType: "application/x-www-form-urlencoded",
			give: "access_token=a%2Fb&token_type=bearer&scope=repo+user&expires_in=60&refresh_token=r",
			want: &oauth.Token{AccessToken: "a/b", TokenType: "bearer", Scope: "repo user", ExpiresIn: time.Minute, RefreshToken: "r"},
		},
		{name: "text/plain form", contentType: "text/plain; charset=utf-8", give: "access_token=a&token_type=bearer", want: &oauth.Token{AccessToken: "a", TokenType: "bearer"}},
		{name: "html", contentType: "text/html", give: "<html>hi</html>", wantErr: oauth.ErrBadResponse},
		{name: "xml", contentType: "application/xml", give: "<token/>", wantErr: oauth.ErrBadResponse},
		{name: "no content type form", give: "access_token=a", wantErr: oauth.ErrBadResponse},
		{name: "empty json", contentType: "application/json", give: "", wantErr: oauth.ErrBadResponse},
		{name: "json null", contentType: "application/json", give: "null", wantErr: oauth.ErrBadResponse},
		{name: "json array", contentType: "application/json", give: `[{"access_token":"a"}]`, wantErr: oauth.ErrBadResponse},
		{name: "trailing garbage", contentType: "application/json", give: `{"access_token":"a"}x`, wantErr: oauth.ErrBadResponse},
		{name: "bad form", contentType: "application/x-www-form-urlencoded", give: "access_token=%zz", wantErr: oauth.ErrBadResponse},
		{name: "access_token object", contentType: "application/json", give: `{"access_token":{}}`, wantErr: oauth.ErrBadResponse},
		{name: "access_token with a control byte", contentType: "application/json", give: `{"access_token":"a\u0007"}`, wantErr: oauth.ErrBadResponse},
		{name: "access_token non-ascii", contentType: "application/json", give: `{"access_token":"jéton"}`, wantErr: oauth.ErrBadResponse},
		{name: "refresh_token number", contentType: "application/json", give: `{"access_token":"a","refresh_token":1}`, wantErr: oauth.ErrBadResponse},
		{name: "scope array", contentType: "application/json", give: `{"access_token":"a","scope":["x"]}`, wantErr: oauth.ErrBadResponse},
		{name: "error object", contentType: "application/json", give: `{"access_token":"a","error":{"code":1}}`, wantErr: oauth.ErrBadResponse},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := oauth.ParseResponse(http.StatusOK, tt.contentType, []byte(tt.give), nil)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("ParseResponse() error = %v, want %v", err, tt.wantErr)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ParseResponse() = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestSanitize(t *testing.T) {
	tests := []struct {
		name    string
		give    string
		secrets []string
		want    string
	}{
		{name: "plain", give: "Client authentication failed", want: "Client authentication failed"},
		{name: "whitespace", give: " a\r\nb\tc ", want: "a  b c"},
		{name: "controls", give: "a\x00\x1b[2Jb\u200bc", want: "a[2Jbc"},
		{name: "invalid utf-8", give: "a\xff\xfeb", want: "ab"},
		{name: "unicode kept", give: "mot de passe érroné", want: "mot de passe érroné"},
		{name: "long", give: strings.Repeat("x", 300), want: strings.Repeat("x", 256)},
		{name: "cut at a rune", give: strings.Repeat("x", 255) + "é", want: strings.Repeat("x", 255)},
		{name: "secret", give: "secret s3cr3t is wrong", secrets: []string{"s3cr3t", ""}, want: "secret [redacted] is wrong"},
		{name: "short secret left alone", give: "is wrong", secrets: []string{"s", "is"}, want: "is wrong"},
		{name: "secret split by a control", give: "s3c\x00r3t", secrets: []string{"s3cr3t"}, want: "[redacted]"},
		{name: "secret past the cut", give: strings.Repeat("x", 250) + "s3cr3t", secrets: []string{"s3cr3t"}, want: strings.Repeat("x", 250) + "[redac"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := oauth.Sanitize(tt.give, tt.secrets); got != tt.want {
				t.Errorf("Sanitize(%q) = %q, want %q", tt.give, got, tt.want)
			}
		})
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		give string
		want time.Duration
	}{
		{give: "", want: 0},
		{give: "7", want: 7 * time.Second},
		{give: " 120 ", want: 2 * time.Minute},
		{give: "0", want: 0},
		{give: "-5", want: 0},
		{give: "1.5", want: 0},
		{give: "soon", want: 0},
		{give: "86400", want: time.Hour},
		{give: "99999999999999999999999", want: time.Hour},
		{give: "Sat, 01 Mar 2025 12:00:30 GMT", want: 30 * time.Second},
		{give: "Saturday, 01-Mar-25 12:01:00 GMT", want: time.Minute},
		{give: "Sat, 01 Mar 2025 11:00:00 GMT", want: 0},
		{give: "Sun, 02 Mar 2025 12:00:00 GMT", want: time.Hour},
	}
	for _, tt := range tests {
		t.Run(tt.give, func(t *testing.T) {
			if got := oauth.ParseRetryAfter(tt.give, now); got != tt.want {
				t.Errorf("ParseRetryAfter(%q) = %v, want %v", tt.give, got, tt.want)
			}
		})
	}
}

func TestErrorMethods(t *testing.T) {
	tests := []struct {
		give          oauth.Error
		wantString    string
		wantTemporary bool
	}{
		{give: oauth.Error{StatusCode: 401, Code: "invalid_client", Description: "Client authentication failed"}, wantString: "oauth: token endpoint answered 401: invalid_client: Client authentication failed"},
		{give: oauth.Error{StatusCode: 400, Code: "invalid_grant"}, wantString: "oauth: token endpoint answered 400: invalid_grant"},
		{give: oauth.Error{StatusCode: 502}, wantString: "oauth: token endpoint answered 502 Bad Gateway", wantTemporary: true},
		{give: oauth.Error{StatusCode: 503, Code: "temporarily_unavailable"}, wantString: "oauth: token endpoint answered 503: temporarily_unavailable", wantTemporary: true},
		{give: oauth.Error{StatusCode: 500, Code: "invalid_grant"}, wantString: "oauth: token endpoint answered 500: invalid_grant"},
		{give: oauth.Error{StatusCode: 400, Code: "server_error"}, wantString: "oauth: token endpoint answered 400: server_error", wantTemporary: true},
		{give: oauth.Error{StatusCode: 429, RetryAfter: time.Second}, wantString: "oauth: token endpoint answered 429 Too Many Requests", wantTemporary: true},
		{give: oauth.Error{StatusCode: 408}, wantString: "oauth: token endpoint answered 408 Request Timeout", wantTemporary: true},
		{give: oauth.Error{StatusCode: 404}, wantString: "oauth: token endpoint answered 404 Not Found"},
		{give: oauth.Error{StatusCode: 403, Description: "IP blocked"}, wantString: "oauth: token endpoint answered 403 Forbidden: IP blocked"},
		{give: oauth.Error{StatusCode: 599}, wantString: "oauth: token endpoint answered 599", wantTemporary: true},
		{give: oauth.Error{StatusCode: 200, Code: "bad_verification_code"}, wantString: "oauth: token endpoint answered 200: bad_verification_code"},
	}
	for _, tt := range tests {
		t.Run(tt.wantString, func(t *testing.T) {
			if got := tt.give.Error(); got != tt.wantString {
				t.Errorf("Error() = %q, want %q", got, tt.wantString)
			}
			if got := tt.give.Temporary(); got != tt.wantTemporary {
				t.Errorf("Temporary() = %v, want %v", got, tt.wantTemporary)
			}
		})
	}
}

func TestAuthStyle(t *testing.T) {
	tests := []struct {
		give    string
		want    oauth.AuthStyle
		wantErr bool
	}{
		{give: "basic", want: oauth.AuthBasic},
		{give: "post", want: oauth.AuthPost},
		{give: "basic+post", want: oauth.AuthBasicAndPost},
		{give: "private_key_jwt", want: oauth.AuthPrivateKeyJWT},
		{give: "", wantErr: true},
		{give: "Basic", wantErr: true},
		{give: "AuthStyle(0)", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.give, func(t *testing.T) {
			got, err := oauth.ParseAuthStyle(tt.give)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Fatalf("ParseAuthStyle(%q) = %v, %v; want %v, error %v", tt.give, got, err, tt.want, tt.wantErr)
			}
			if !tt.wantErr && got.String() != tt.give {
				t.Errorf("%d.String() = %q, want %q", int(got), got.String(), tt.give)
			}
		})
	}
	if got, want := oauth.AuthStyle(0).String(), "AuthStyle(0)"; got != want {
		t.Errorf("AuthStyle(0).String() = %q, want %q", got, want)
	}
}

func FuzzParseTokenResponse(f *testing.F) {
	seeds := []struct{ contentType, body string }{
		{"application/json", `{"access_token":"mh-access","token_type":"bearer","expires_in":86400,"scope":"public"}`},
		{"application/json;charset=UTF-8", `{"access_token":"a","refresh_token":"r","token_type":"Bearer","expires_in":3600,"state":"s"}`},
		{"application/json", `{"access_token":"a","expires_in":"7200","id_token":"x.y.z"}`},
		{"application/json", `{"access_token":"a","expires_in":1e400}`},
		{"application/json", `{"access_token":"a","expires_in":"-0.5e1"}`},
		{"application/json", `{"error":"invalid_grant","error_description":"expired\n"}`},
		{"application/json", `{"access_token":""}`},
		{"application/json", `null`},
		{"", `{"access_token":"a"}`},
		{"application/x-www-form-urlencoded", "access_token=a&expires_in=60&scope=a+b"},
		{"text/plain", "error=bad_verification_code"},
		{"text/html", "<html></html>"},
		{"application/problem+json", `{"type":"about:blank"}`},
		{"multipart/form-data; boundary=", "\ufeff{}"},
	}
	for _, s := range seeds {
		f.Add(s.contentType, []byte(s.body))
	}
	f.Fuzz(func(t *testing.T, contentType string, body []byte) {
		tok, err := oauth.ParseResponse(http.StatusOK, contentType, body, []string{"secret"})
		var e *oauth.Error
		switch {
		case err == nil && (tok == nil || tok.AccessToken == ""):
			t.Fatalf("ParseResponse() = %+v, nil; want a token with an access token", tok)
		case err == nil && (tok.ExpiresIn < 0 || tok.ExpiresIn > 10*365*24*time.Hour):
			t.Fatalf("ParseResponse() ExpiresIn = %v, want within [0, 10y]", tok.ExpiresIn)
		case err != nil && tok != nil:
			t.Fatalf("ParseResponse() = %+v, %v; want no token with an error", tok, err)
		case err != nil && !errors.Is(err, oauth.ErrBadResponse) && !errors.As(err, &e):
			t.Fatalf("ParseResponse() error = %v (%T), want ErrBadResponse or *Error", err, err)
		case e != nil && (len(e.Description) > 256 || strings.Contains(e.Error(), "secret")):
			t.Fatalf("ParseResponse() error = %q, want a sanitized description", e.Error())
		}
	})
}
