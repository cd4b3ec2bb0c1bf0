package oauth

import (
	"strings"
	"testing"
)

func TestCheckTokenURLRequiresHTTPS(t *testing.T) {
	tests := []struct {
		give         string
		requireHTTPS bool
		wantErr      bool
	}{
		{"https://idp.example.com/token", true, false},
		{"https://idp.example.com/token", false, false},
		{"http://idp.example.com/token", false, true},
		{"http://10.0.0.1/token", false, true},
		{"http://127.0.0.1:8080/token", false, false},
		{"http://localhost:8080/token", false, false},
		{"http://[::1]:8080/token", false, false},
		{"http://127.0.0.1:8080/token", true, true},
		{"http://localhost.evil.example/token", false, true},
	}
	for _, tt := range tests {
		err := checkTokenURL(tt.give, tt.requireHTTPS)
		if (err != nil) != tt.wantErr {
			t.Errorf("checkTokenURL(%q, requireHTTPS=%v) = %v, want error %v", tt.give, tt.requireHTTPS, err, tt.wantErr)
		}
		if err != nil && strings.Contains(err.Error(), tt.give) {
			t.Errorf("error %q repeats the URL", err)
		}
	}
}
