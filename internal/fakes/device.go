package fakes

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// DeviceClientID and DeviceClientSecret are the credentials Device takes,
// in the form body (client_secret_post).
const (
	DeviceClientID     = "dev-client"
	DeviceClientSecret = "dev-secret"
	DeviceUserCode     = "WDJB-MJHT"
)

// DevicePoll is one request Device's token endpoint received.
type DevicePoll struct {
	At     time.Time
	Form   url.Values
	Agent  string // the User-Agent: tests give each replica its own
	Answer string // the error code answered; "" for a token
}

// Device is an RFC 8628 authorization server: POST /device hands out a
// device code (device-code-N for the Nth start) and the user code, POST
// /token answers each poll with the next code of the script
// (authorization_pending once the script is used up) until Approve, then
// with a token (device-at-N for the Nth poll, refresh token device-rt).
// A poll with another device code than the last one handed out gets
// invalid_grant.
type Device struct {
	*httptest.Server
	interval int // seconds, as the device authorization response says
	script   []string
	approved atomic.Bool

	mu      sync.Mutex
	starts  []url.Values
	started []time.Time
	polls   []DevicePoll
}

// NewDevice starts a Device that asks for polls every interval seconds,
// and stops it when the test ends.
func NewDevice(t testing.TB, interval int, script ...string) *Device {
	t.Helper()
	f := &Device{interval: interval, script: script}
	f.Server = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.Close)
	return f
}

// Approve makes the polls after the script's get a token: the person
// consented.
func (f *Device) Approve() { f.approved.Store(true) }

func (f *Device) serve(w http.ResponseWriter, r *http.Request) {
	now := time.Now()
	if err := r.ParseForm(); err != nil || r.Method != http.MethodPost {
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	if r.PostForm.Get("client_id") != DeviceClientID || r.PostForm.Get("client_secret") != DeviceClientSecret {
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = w.Write([]byte(`{"error":"invalid_client"}`))
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	switch r.URL.Path {
	case "/device":
		f.starts = append(f.starts, r.PostForm)
		f.started = append(f.started, now)
		_ = json.NewEncoder(w).Encode(map[string]any{
			"device_code": fmt.Sprintf("device-code-%d", len(f.starts)), "user_code": DeviceUserCode,
			"verification_uri": f.URL + "/activate", "verification_uri_complete": f.URL + "/activate?user_code=" + DeviceUserCode,
			"expires_in": 120, "interval": f.interval,
		})
	case "/token":
		p := DevicePoll{At: now, Form: r.PostForm, Agent: r.UserAgent()}
		switch {
		case r.PostForm.Get("grant_type") != "urn:ietf:params:oauth:grant-type:device_code":
			p.Answer = "unsupported_grant_type"
		case r.PostForm.Get("device_code") != fmt.Sprintf("device-code-%d", len(f.starts)):
			p.Answer = "invalid_grant"
		case len(f.polls) < len(f.script):
			p.Answer = f.script[len(f.polls)]
		case !f.approved.Load():
			p.Answer = "authorization_pending"
		}
		f.polls = append(f.polls, p)
		if p.Answer != "" {
			w.WriteHeader(http.StatusBadRequest)
			_, _ = fmt.Fprintf(w, `{"error":%q}`, p.Answer)
			return
		}
		_, _ = fmt.Fprintf(w, `{"access_token":"device-at-%d","token_type":"Bearer","expires_in":3600,"refresh_token":"device-rt"}`, len(f.polls))
	default:
		http.NotFound(w, r)
	}
}

// Polls returns the token requests so far.
func (f *Device) Polls() []DevicePoll {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]DevicePoll(nil), f.polls...)
}

// Starts returns the forms of the device authorization requests so far,
// and when each came.
func (f *Device) Starts() ([]url.Values, []time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]url.Values(nil), f.starts...), append([]time.Time(nil), f.started...)
}

// WaitPolls waits until the token endpoint got n polls and returns them.
func (f *Device) WaitPolls(t testing.TB, n int, within time.Duration) []DevicePoll {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		ps := f.Polls()
		if len(ps) >= n {
			return ps
		}
		if time.Now().After(deadline) {
			t.Fatalf("the token endpoint got %d polls within %v, want %d", len(ps), within, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
