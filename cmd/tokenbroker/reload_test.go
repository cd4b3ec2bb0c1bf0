package main

import (
	"testing"

	"github.com/tokenbroker/tokenbroker/app"
)

// TestApplyProvidersKeepsSecretsRotatedThroughTheAPI: applying the config
// again (as SIGHUP does) does not put back a secret the file declared
// before over one rotated through the API; a secret the file changed is
// applied.
func TestApplyProvidersKeepsSecretsRotatedThroughTheAPI(t *testing.T) {
	fake := startFake(t)
	cfg := appConfig(fake.url, t.TempDir())
	inst, _ := startApp(t, cfg)
	ctx := t.Context()
	fingerprint := func() string {
		p, err := inst.Broker().GetProvider(ctx, providerName)
		if err != nil {
			t.Fatal(err)
		}
		return inst.Broker().Fingerprint(p.ClientSecret)
	}
	if got, want := fingerprint(), inst.Broker().Fingerprint(fakeClientSecret); got != want {
		t.Fatalf("after start the fingerprint is %s, want the file's %s", got, want)
	}
	const rotated = "rotated-through-the-api-93"
	if _, err := inst.Broker().RotateClientSecret(ctx, providerName, rotated, false, 0); err != nil {
		t.Fatal(err)
	}
	if err := inst.ApplyProviders(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if got, want := fingerprint(), inst.Broker().Fingerprint(rotated); got != want {
		t.Errorf("after applying the unchanged file the fingerprint is %s, want the rotated secret's %s", got, want)
	}
	changed := cfg
	changed.Providers = append([]app.ProviderConfig(nil), cfg.Providers...)
	changed.Providers[0].ClientSecret = "changed-in-the-file-17"
	if err := inst.ApplyProviders(ctx, changed); err != nil {
		t.Fatal(err)
	}
	if got, want := fingerprint(), inst.Broker().Fingerprint("changed-in-the-file-17"); got != want {
		t.Errorf("after the file changed the secret the fingerprint is %s, want the file's new %s", got, want)
	}
}
