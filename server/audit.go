package server

import (
	"strings"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc/status"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
)

// AuditLoggerName names the logger of audit events.
const AuditLoggerName = "audit"

var adminPrefix = "/" + tokenbrokerv1.AdminService_ServiceDesc.ServiceName + "/"

// audited reports whether method changes something: every AdminService
// method but the Get and List ones, including methods added later.
func audited(method string) bool {
	name, ok := strings.CutPrefix(method, adminPrefix)
	return ok && !strings.HasPrefix(name, "Get") && !strings.HasPrefix(name, "List") && !strings.HasPrefix(name, "Watch")
}

// auditCall logs one admin change, whatever its outcome (refused ones
// included): who, what, when, from where, and the outcome. It names what
// was changed and whether a secret was set, never a secret, a key or a
// token.
func (g *guard) auditCall(st *callState, method string, req, resp any, err error, start time.Time) {
	fields := []zap.Field{
		zap.String("caller", st.caller.Identity),
		zap.String("via", st.caller.Via),
		zap.String("method", method),
		zap.Time("time", start.UTC()),
		zap.Stringer("peer", st.peer),
		zap.Stringer("code", status.Code(err)),
	}
	if st.caller.KeyID != "" {
		fields = append(fields, zap.String("caller_key_id", st.caller.KeyID))
	}
	switch r := req.(type) {
	case *tokenbrokerv1.PutProviderRequest:
		fields = append(fields, zap.String("provider", r.GetProvider().GetName()), zap.Bool("secret_set", r.GetClientSecret() != ""),
			zap.Bool("client_key_imported", r.GetClientKey() != "" || r.GetServiceAccountKey() != ""),
			zap.Bool("certificate_key_set", r.GetClientCertificateKey() != ""))
	case *tokenbrokerv1.RotateClientSecretRequest:
		fields = append(fields, zap.String("provider", r.GetProvider()), zap.Bool("validated", !r.GetSkipValidation()),
			zap.Duration("overlap", r.GetOverlap().AsDuration()))
	case *tokenbrokerv1.RotateClientKeyRequest:
		fields = append(fields, zap.String("provider", r.GetProvider()), zap.Bool("client_key_imported", r.GetClientKey() != ""),
			zap.Duration("overlap", r.GetOverlap().AsDuration()))
	case *tokenbrokerv1.DeleteProviderRequest:
		fields = append(fields, zap.String("provider", r.GetName()))
	case *tokenbrokerv1.PutAccountRequest:
		fields = append(fields, zap.String("provider", r.GetProvider()), zap.String("account", r.GetAccount()), zap.Bool("password_set", r.GetPassword() != ""))
	case *tokenbrokerv1.StartAuthorizationRequest:
		fields = append(fields, zap.String("provider", r.GetProvider()), zap.String("account", r.GetAccount()))
	case *tokenbrokerv1.RevokeGrantRequest:
		fields = append(fields, zap.String("provider", r.GetProvider()), zap.String("account", r.GetAccount()))
	case *tokenbrokerv1.CreateApiKeyRequest:
		fields = append(fields, zap.String("key_identity", r.GetIdentity()))
		if cr, ok := resp.(*tokenbrokerv1.CreateApiKeyResponse); ok && err == nil {
			fields = append(fields, zap.String("key_id", cr.GetApiKey().GetId()))
		}
	case *tokenbrokerv1.RetireApiKeyRequest:
		fields = append(fields, zap.String("key_id", r.GetId()))
	}
	g.audit.Info("admin change", fields...)
}
