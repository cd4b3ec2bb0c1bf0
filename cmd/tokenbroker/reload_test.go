package main

import (
	"testing"
)

// TestApplyProvidersKeepsSecretsRotatedThroughTheAPI: applying the config
// again (as SIGHUP does) does not put back a secret the file declared
// before over one rotated through the API; a secret the file changed is
// applied.
func TestApplyProvidersKeepsSecretsRotatedThroughTheAPI(t *testing.T) {
	fake := startFake(t)
	cfg := appConfig(fake.url, t.TempDir())
	app, _ := startApp(t, cfg)
	ctx := t.Context()
	fingerprint := func() string {
		p, err := app.Broker().GetProvider(ctx, providerName)
		if err != nil {
			t.Fatal(err)
		}
		return app.Broker().Fingerprint(p.ClientSecret)
	}
	if got, want := fingerprint(), app.Broker().Fingerprint(fakeClientSecret); got != want {
		t.Fatalf("after start the fingerprint is %s, want the file's %s", got, want)
	}
	const rotated = "rotated-through-the-api-93"
	if _, err := app.Broker().RotateClientSecret(ctx, providerName, rotated, false, 0); err != nil {
		t.Fatal(err)
	}
	if err := app.ApplyProviders(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if got, want := fingerprint(), app.Broker().Fingerprint(rotated); got != want {
		t.Errorf("after applying the unchanged file the fingerprint is %s, want the rotated secret's %s", got, want)
	}
	changed := cfg
	changed.Providers = append([]ProviderConfig(nil), cfg.Providers...)
	changed.Providers[0].ClientSecret = "changed-in-the-file-17"
	if err := app.ApplyProviders(ctx, changed); err != nil {
		t.Fatal(err)
	}
	if got, want := fingerprint(), app.Broker().Fingerprint("changed-in-the-file-17"); got != want {
		t.Errorf("after the file changed the secret the fingerprint is %s, want the file's new %s", got, want)
	}
}
