package server

import (
	"context"
	"fmt"
	"time"

	"go.uber.org/zap"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tokenbroker/tokenbroker/broker"
	"github.com/tokenbroker/tokenbroker/broker/event"
	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
)

func (s *adminServer) PutWebhook(ctx context.Context, req *tokenbrokerv1.PutWebhookRequest) (*tokenbrokerv1.PutWebhookResponse, error) {
	in := req.GetWebhook()
	if in == nil {
		return nil, toStatus(s.log, fmt.Errorf("%w: webhook is required", broker.ErrInvalidArgument))
	}
	w := broker.Webhook{ID: in.GetId(), URL: in.GetUrl(), Providers: in.GetProviders()}
	for _, t := range in.GetEventTypes() {
		w.EventTypes = append(w.EventTypes, event.Type(t))
	}
	stored, generated, err := s.broker.PutWebhook(ctx, w, req.GetSecret())
	if err != nil {
		return nil, toStatus(s.log, err)
	}
	s.log.Info("webhook put", zap.String("webhook", stored.ID), zap.Bool("secret_changed", req.GetSecret() != "" || generated != ""))
	return &tokenbrokerv1.PutWebhookResponse{Webhook: s.toWebhook(stored), GeneratedSecret: generated}, nil
}

func (s *adminServer) GetWebhook(ctx context.Context, req *tokenbrokerv1.GetWebhookRequest) (*tokenbrokerv1.GetWebhookResponse, error) {
	w, err := s.broker.GetWebhook(ctx, req.GetId())
	if err != nil {
		return nil, toStatus(s.log, err)
	}
	return &tokenbrokerv1.GetWebhookResponse{Webhook: s.toWebhook(w)}, nil
}

func (s *adminServer) ListWebhooks(ctx context.Context, _ *tokenbrokerv1.ListWebhooksRequest) (*tokenbrokerv1.ListWebhooksResponse, error) {
	ws, err := s.broker.ListWebhooks(ctx)
	if err != nil {
		return nil, toStatus(s.log, err)
	}
	out := make([]*tokenbrokerv1.Webhook, len(ws))
	for i, w := range ws {
		out[i] = s.toWebhook(w)
	}
	return &tokenbrokerv1.ListWebhooksResponse{Webhooks: out}, nil
}

func (s *adminServer) DeleteWebhook(ctx context.Context, req *tokenbrokerv1.DeleteWebhookRequest) (*tokenbrokerv1.DeleteWebhookResponse, error) {
	if err := s.broker.DeleteWebhook(ctx, req.GetId()); err != nil {
		return nil, toStatus(s.log, err)
	}
	s.log.Info("webhook deleted", zap.String("webhook", req.GetId()))
	return &tokenbrokerv1.DeleteWebhookResponse{}, nil
}

func (s *adminServer) ListWebhookDeliveries(ctx context.Context, req *tokenbrokerv1.ListWebhookDeliveriesRequest) (*tokenbrokerv1.ListWebhookDeliveriesResponse, error) {
	ds, err := s.broker.ListWebhookDeliveries(ctx, req.GetId())
	if err != nil {
		return nil, toStatus(s.log, err)
	}
	out := make([]*tokenbrokerv1.WebhookDelivery, len(ds))
	for i, d := range ds {
		out[i] = &tokenbrokerv1.WebhookDelivery{
			EventId: d.EventID, EventType: string(d.EventType), Status: deliveryStatus[d.Status],
			Attempts: int32(d.Attempts), LastHttpStatus: int32(d.LastHTTPStatus), LastError: d.LastError,
			FirstAttemptTime: timestamp(d.FirstAttempt), LastAttemptTime: timestamp(d.LastAttempt),
			NextAttemptTime: timestamp(d.NextAttempt),
		}
	}
	return &tokenbrokerv1.ListWebhookDeliveriesResponse{Deliveries: out}, nil
}

func (s *adminServer) RedeliverWebhook(ctx context.Context, req *tokenbrokerv1.RedeliverWebhookRequest) (*tokenbrokerv1.RedeliverWebhookResponse, error) {
	if err := s.broker.RedeliverWebhook(ctx, req.GetId(), req.GetEventId()); err != nil {
		return nil, toStatus(s.log, err)
	}
	s.log.Info("webhook redelivery queued", zap.String("webhook", req.GetId()), zap.String("event", req.GetEventId()))
	return &tokenbrokerv1.RedeliverWebhookResponse{}, nil
}

var deliveryStatus = map[broker.DeliveryStatus]tokenbrokerv1.WebhookDeliveryStatus{
	broker.DeliveryRetrying:  tokenbrokerv1.WebhookDeliveryStatus_WEBHOOK_DELIVERY_STATUS_RETRYING,
	broker.DeliveryDelivered: tokenbrokerv1.WebhookDeliveryStatus_WEBHOOK_DELIVERY_STATUS_DELIVERED,
	broker.DeliveryDead:      tokenbrokerv1.WebhookDeliveryStatus_WEBHOOK_DELIVERY_STATUS_DEAD,
	broker.DeliveryQueued:    tokenbrokerv1.WebhookDeliveryStatus_WEBHOOK_DELIVERY_STATUS_QUEUED,
}

// toWebhook converts a subscription for an answer: never its secret.
func (s *adminServer) toWebhook(w *broker.Webhook) *tokenbrokerv1.Webhook {
	out := &tokenbrokerv1.Webhook{
		Id: w.ID, Url: w.URL, Providers: w.Providers,
		Secret:     s.secretInfo(w.Secret, w.SecretUpdateTime),
		CreateTime: timestamp(w.CreateTime), UpdateTime: timestamp(w.UpdateTime),
		LastEventId: w.Status.LastEventID, ConsecutiveFailures: int32(w.Status.ConsecutiveFailures),
		PausedUntil: timestamp(w.Status.PausedUntil),
	}
	for _, t := range w.EventTypes {
		out.EventTypes = append(out.EventTypes, string(t))
	}
	return out
}

// timestamp converts t; nil for the zero time.
func timestamp(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}
