package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
)

func (c *cli) eventsCommand() *cobra.Command {
	return group("events", "List and follow grant lifecycle events",
		`The broker records an event with every change that matters to operators: a
grant failing, needing reauthorization or recovering, consent completed, a grant
revoked, a provider changed or its secret rotated, an API key issued or retired,
a refresh answer lost. Events carry no secret; they are kept for a bounded count
and age.`,
		c.eventsListCommand(), c.eventsWatchCommand())
}

// eventFlags are the filters list and watch share.
type eventFlags struct {
	types    []string
	provider string
	after    string
}

func (f *eventFlags) bind(cmd *cobra.Command) {
	cmd.Flags().StringSliceVar(&f.types, "type", nil, "only events of this type (repeat or comma-separate), e.g. grant.reauthorization_required")
	cmd.Flags().StringVar(&f.provider, "provider", "", "only events of this provider")
	cmd.Flags().StringVar(&f.after, "after", "", "only events after this event id")
}

func (c *cli) eventsListCommand() *cobra.Command {
	var f eventFlags
	var limit int32
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List recorded events, oldest first",
		Args:  cobra.NoArgs,
		RunE: c.run(func(ctx context.Context, cmd *cobra.Command, _ []string) error {
			admin, err := c.admin(cmd)
			if err != nil {
				return err
			}
			resp, err := admin.ListEvents(ctx, &tokenbrokerv1.ListEventsRequest{AfterId: f.after, Types: f.types, Provider: f.provider, PageSize: limit})
			if err != nil {
				return err
			}
			if c.output == outputJSON {
				return c.printJSON(resp)
			}
			rows := [][]string{eventHeader}
			for _, e := range resp.GetEvents() {
				rows = append(rows, eventRow(e))
			}
			return c.table(rows)
		}),
	}
	f.bind(cmd)
	cmd.Flags().Int32Var(&limit, "limit", 0, "at most this many events (default and most: 1000)")
	return cmd
}

func (c *cli) eventsWatchCommand() *cobra.Command {
	var f eventFlags
	cmd := &cobra.Command{
		Use:   "watch",
		Short: "Print events as they are recorded, until interrupted",
		Long: `Print the events recorded after --after (every kept one when not given), then
each new one as the broker records it, one per line (-o json: one JSON object per
line), until interrupted. Restart it with --after set to the last id printed and
nothing still kept is missed; when the broker cuts the watch off because it fell
behind, it resumes after the last id printed by itself.`,
		Args: cobra.NoArgs,
		RunE: c.stream(func(ctx context.Context, cmd *cobra.Command, _ []string) error {
			admin, err := c.admin(cmd)
			if err != nil {
				return err
			}
			req := &tokenbrokerv1.WatchEventsRequest{AfterId: f.after, Types: f.types, Provider: f.provider}
			stream, err := admin.WatchEvents(ctx, req)
			if err != nil {
				return err
			}
			for {
				resp, err := stream.Recv()
				if status.Code(err) == codes.Aborted && ctx.Err() == nil {
					// Fell behind (a burst the terminal could not print in
					// time): resume after the last event printed.
					fmt.Fprintf(c.stderr, "tokenbroker: %s; resuming\n", status.Convert(err).Message())
					if stream, err = admin.WatchEvents(ctx, req); err != nil {
						return err
					}
					continue
				}
				if err != nil {
					return err
				}
				req.AfterId = resp.GetEvent().GetId()
				if c.output == outputJSON {
					b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(resp.GetEvent())
					if err != nil {
						return err
					}
					fmt.Fprintln(c.stdout, string(b))
					continue
				}
				fmt.Fprintln(c.stdout, strings.Join(eventRow(resp.GetEvent()), "  "))
			}
		}),
	}
	f.bind(cmd)
	return cmd
}

var eventHeader = []string{"ID", "TIME", "TYPE", "PROVIDER", "ACCOUNT", "HEALTH", "DETAIL"}

func eventRow(e *tokenbrokerv1.Event) []string {
	health := ""
	if e.GetHealthBefore() != 0 || e.GetHealthAfter() != 0 {
		health = healthName(e.GetHealthBefore()) + "→" + healthName(e.GetHealthAfter())
	}
	about := e.GetAccount()
	if e.GetSubject() != "" {
		about = e.GetSubject()
	}
	return []string{e.GetId(), timeCell(e.GetTime()), e.GetType(), cell(e.GetProvider()), cell(about), cell(health), cell(oneLine(e.GetDetail()))}
}

func healthName(h tokenbrokerv1.GrantHealth) string {
	if h == tokenbrokerv1.GrantHealth_GRANT_HEALTH_UNSPECIFIED {
		return "-"
	}
	return strings.ToLower(strings.TrimPrefix(h.String(), "GRANT_HEALTH_"))
}
