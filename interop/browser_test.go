package interop_test

import (
	"html"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"
)

// browser is a person at a web browser: it keeps cookies, follows
// redirects, and submits the forms the authorization server shows it
// (oidc-provider's login and consent pages).
type browser struct {
	c     *http.Client
	login string
}

func newBrowser(t *testing.T, login string) *browser {
	t.Helper()
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	return &browser{c: &http.Client{Jar: jar, Timeout: 10 * time.Second}, login: login}
}

var (
	formTag  = regexp.MustCompile(`(?is)<form\b([^>]*)>(.*?)</form>`)
	inputTag = regexp.MustCompile(`(?is)<input\b([^>]*)>`)
	attr     = regexp.MustCompile(`(?is)\b([a-z_-]+)\s*=\s*"([^"]*)"`)
)

// page is a response the browser read to the end.
type page struct {
	URL    *url.URL
	Status int
	Body   string
}

// authorize opens authorizeURL and, while the server answers with a form,
// fills it in (the login form with b.login and any password) and submits
// it, until a page outside the server (the broker's callback) answers. It
// returns that page, and the pages it passed on the way.
func (b *browser) authorize(t *testing.T, authorizeURL string, leave func(*url.URL) bool) (*page, []*page) {
	t.Helper()
	p := b.do(t, http.MethodGet, authorizeURL, nil)
	var trail []*page
	for range 5 {
		if leave(p.URL) {
			return p, trail
		}
		trail = append(trail, p)
		action, form := b.fill(t, p)
		p = b.do(t, http.MethodPost, action, form)
	}
	t.Fatalf("browser: still at %s after 5 forms; last page %d:\n%s", p.URL, p.Status, p.Body)
	return nil, nil
}

// fill reads the one form on p and answers it: hidden fields as they are,
// "login" with b.login, "password" with anything.
func (b *browser) fill(t *testing.T, p *page) (string, url.Values) {
	t.Helper()
	m := formTag.FindStringSubmatch(p.Body)
	if m == nil {
		t.Fatalf("browser: page %s (%d) has no form:\n%s", p.URL, p.Status, p.Body)
	}
	attrs := attributes(m[1])
	action, err := p.URL.Parse(attrs["action"])
	if err != nil || !strings.EqualFold(attrs["method"], "post") {
		t.Fatalf("browser: page %s has a form with action %q, method %q", p.URL, attrs["action"], attrs["method"])
	}
	form := url.Values{}
	for _, in := range inputTag.FindAllStringSubmatch(m[2], -1) {
		a := attributes(in[1])
		switch a["name"] {
		case "":
		case "login":
			form.Set("login", b.login)
		case "password":
			form.Set("password", "any password will do")
		default:
			form.Set(a["name"], a["value"])
		}
	}
	return action.String(), form
}

func attributes(tag string) map[string]string {
	out := map[string]string{}
	for _, a := range attr.FindAllStringSubmatch(tag, -1) {
		out[strings.ToLower(a[1])] = html.UnescapeString(a[2])
	}
	return out
}

func (b *browser) do(t *testing.T, method, target string, form url.Values) *page {
	t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, target, body)
	if err != nil {
		t.Fatalf("browser: %s %s: %v", method, target, err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	req.Header.Set("Accept", "text/html")
	resp, err := b.c.Do(req)
	if err != nil {
		t.Fatalf("browser: %s %s: %v", method, target, err)
	}
	defer resp.Body.Close()
	text, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		t.Fatalf("browser: read %s: %v", resp.Request.URL, err)
	}
	return &page{URL: resp.Request.URL, Status: resp.StatusCode, Body: string(text)}
}
