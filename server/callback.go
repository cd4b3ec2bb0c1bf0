package server

import (
	"errors"
	"html/template"
	"net/http"

	"go.uber.org/zap"
	"google.golang.org/grpc/status"

	"github.com/tokenbroker/tokenbroker/broker"
)

// CallbackPath is where providers send a person back after consent.
const CallbackPath = "/v1/oauth/callback"

var callbackPage = template.Must(template.New("callback").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tokenbroker: {{.Title}}</title>
<style>body{font-family:system-ui,sans-serif;max-width:40em;margin:4em auto;padding:0 1em}
.ok{color:#0a6b2d}.failed{color:#a3111b}</style></head>
<body><h1 class="{{.Class}}">{{.Title}}</h1><p>{{.Message}}</p>
<p>You can close this window.</p></body></html>
`))

type callbackView struct {
	Title, Class, Message string
}

// callbackHandler completes a consent flow the admin started with
// StartAuthorization. The single-use state in the query authenticates the
// request: a browser following the provider's redirect carries no broker
// credentials. The page tells the person plainly whether it worked; it
// never shows a token.
func callbackHandler(b *broker.Broker, log *zap.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		g, err := b.CompleteAuthorization(r.Context(), broker.Callback{
			State: q.Get("state"), Code: q.Get("code"), Error: q.Get("error"), ErrorDescription: q.Get("error_description"),
		})
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		w.Header().Set("Referrer-Policy", "no-referrer")
		w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
		view := callbackView{Title: "Authorization complete", Class: "ok"}
		if err != nil {
			st := status.Convert(toStatus(log, err))
			log.Info("authorization callback failed", zap.Stringer("code", st.Code()), zap.Error(err))
			view = callbackView{Title: "Authorization failed", Class: "failed", Message: st.Message()}
			w.WriteHeader(callbackStatus(err))
		} else {
			view.Message = "The broker now holds a grant for account " + g.Account + " of provider " + g.Provider + "."
		}
		if err := callbackPage.Execute(w, view); err != nil {
			log.Debug("write callback page", zap.Error(err))
		}
	})
}

func callbackStatus(err error) int {
	switch {
	case errors.Is(err, broker.ErrInvalidArgument):
		return http.StatusBadRequest
	case errors.Is(err, broker.ErrAuthorizationDenied):
		return http.StatusForbidden
	}
	return http.StatusBadGateway
}
