package server

import (
	"context"
	"fmt"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tokenbroker/tokenbroker/broker"
	"github.com/tokenbroker/tokenbroker/broker/event"
	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
)

func (s *adminServer) ListEvents(ctx context.Context, req *tokenbrokerv1.ListEventsRequest) (*tokenbrokerv1.ListEventsResponse, error) {
	f, err := eventFilter(req.GetTypes(), req.GetProvider())
	if err != nil {
		return nil, toStatus(s.log, err)
	}
	evs, _, err := s.broker.ListEvents(ctx, req.GetAfterId(), int(req.GetPageSize()), f)
	if err != nil {
		return nil, toStatus(s.log, err)
	}
	out := make([]*tokenbrokerv1.Event, len(evs))
	for i, e := range evs {
		out[i] = toEvent(e)
	}
	return &tokenbrokerv1.ListEventsResponse{Events: out}, nil
}

func (s *adminServer) WatchEvents(req *tokenbrokerv1.WatchEventsRequest, stream tokenbrokerv1.AdminService_WatchEventsServer) error {
	f, err := eventFilter(req.GetTypes(), req.GetProvider())
	if err != nil {
		return toStatus(s.log, err)
	}
	err = s.broker.WatchEvents(stream.Context(), req.GetAfterId(), f, func(e event.Event) error {
		return stream.Send(&tokenbrokerv1.WatchEventsResponse{Event: toEvent(e)})
	})
	return toStatus(s.log, err)
}

// eventFilter checks the types a caller asked for.
func eventFilter(types []string, provider string) (broker.EventFilter, error) {
	f := broker.EventFilter{Provider: provider}
	if provider != "" {
		if err := broker.ValidateProviderName(provider); err != nil {
			return f, err
		}
	}
	for _, t := range types {
		if !event.Type(t).Valid() {
			if len(t) > 40 {
				t = t[:40] + "…"
			}
			return f, fmt.Errorf("%w: unknown event type %q (want one of %v)", broker.ErrInvalidArgument, t, event.Types)
		}
		f.Types = append(f.Types, event.Type(t))
	}
	return f, nil
}

// toEvent converts an event for an answer.
func toEvent(e event.Event) *tokenbrokerv1.Event {
	return &tokenbrokerv1.Event{
		Id: e.ID, Type: string(e.Type), Time: timestamppb.New(e.Time),
		Provider: e.Provider, Account: e.Account,
		HealthBefore: grantHealth[broker.GrantHealth(e.HealthBefore)],
		HealthAfter:  grantHealth[broker.GrantHealth(e.HealthAfter)],
		Subject:      e.Subject, Detail: e.Detail,
	}
}
