package oauth_test

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/oauth"
)

// TestDeviceAuthorization reads RFC 8628 §3.2 answers: the interval
// defaults to 5 s, Google's verification_url is taken for
// verification_uri, and an answer without what a person needs is
// malformed, never quoting the device code.
func TestDeviceAuthorization(t *testing.T) {
	tests := []struct {
		name    string
		give    string
		status  int
		want    *oauth.DeviceAuthorization
		wantErr error
		wantMsg string // in the error
	}{
		{
			name: "full", status: 200,
			give: `{"device_code":"GmRhmhcxhwAzkoEqiMEg_DnyEysNkuNhszIySk9eS","user_code":"WDJB-MJHT","verification_uri":"https://example.com/device","verification_uri_complete":"https://example.com/device?user_code=WDJB-MJHT","expires_in":1800,"interval":7}`,
			want: &oauth.DeviceAuthorization{DeviceCode: "GmRhmhcxhwAzkoEqiMEg_DnyEysNkuNhszIySk9eS", UserCode: "WDJB-MJHT", VerificationURI: "https://example.com/device",
				VerificationURIComplete: "https://example.com/device?user_code=WDJB-MJHT", ExpiresIn: 30 * time.Minute, Interval: 7 * time.Second},
		},
		{
			name: "no interval, google's verification_url", status: 200,
			give: `{"device_code":"dc-secret-value","user_code":"ABCD","verification_url":"https://www.google.com/device","expires_in":"600"}`,
			want: &oauth.DeviceAuthorization{DeviceCode: "dc-secret-value", UserCode: "ABCD", VerificationURI: "https://www.google.com/device", ExpiresIn: 10 * time.Minute, Interval: oauth.DefaultDeviceInterval},
		},
		{name: "no user code", status: 200, give: `{"device_code":"dc-secret-value","verification_uri":"https://x/d","expires_in":600}`, wantErr: oauth.ErrBadResponse, wantMsg: "user_code is missing"},
		{name: "no expiry", status: 200, give: `{"device_code":"dc-secret-value","user_code":"A","verification_uri":"https://x/d"}`, wantErr: oauth.ErrBadResponse, wantMsg: "expires_in"},
		{name: "bad interval", status: 200, give: `{"device_code":"dc-secret-value","user_code":"A","verification_uri":"https://x/d","expires_in":600,"interval":"soon"}`, wantErr: oauth.ErrBadResponse, wantMsg: "interval"},
		{name: "refused client", status: 401, give: `{"error":"invalid_client","error_description":"secret s3cr3t-value is wrong"}`, wantMsg: "401: invalid_client"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newProvider(t, func(w http.ResponseWriter, _ *http.Request) { replyJSON(w, tt.status, tt.give) })
			c := &oauth.Client{}
			got, err := c.DeviceAuthorization(context.Background(), oauth.Request{
				TokenURL: p.URL + "/device", Auth: oauth.ClientSecret{ID: "tv", Secret: "s3cr3t-value", Style: oauth.AuthPost},
				Params: url.Values{"scope": {"openid offline_access"}},
			})
			req := p.only(t)
			if req.Form.Get("client_id") != "tv" || req.Form.Get("client_secret") != "s3cr3t-value" || req.Form.Get("scope") != "openid offline_access" || req.Form.Has("grant_type") {
				t.Errorf("device authorization request form = %v, want client_id, client_secret and scope, no grant_type", req.Form)
			}
			if tt.want != nil {
				if err != nil || *got != *tt.want {
					t.Fatalf("DeviceAuthorization = %+v, %v; want %+v", got, err, tt.want)
				}
				return
			}
			if err == nil || (tt.wantErr != nil && !errors.Is(err, tt.wantErr)) || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Fatalf("DeviceAuthorization error = %v, want %v saying %q", err, tt.wantErr, tt.wantMsg)
			}
			if strings.Contains(err.Error(), "dc-secret-value") || strings.Contains(err.Error(), "s3cr3t-value") {
				t.Errorf("error %q quotes a credential", err)
			}
		})
	}
}
