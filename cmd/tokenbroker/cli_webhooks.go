package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
)

func (c *cli) webhooksCommand() *cobra.Command {
	return group("webhooks", "Push events to receivers over HTTPS",
		`A webhook subscription has the broker POST each event it selects to a URL,
signed as the Standard Webhooks specification says (webhook-id,
webhook-timestamp, webhook-signature: HMAC-SHA256 with the subscription's
whsec_ secret). Delivery is at least once, in order, retried for about a day,
then dead-lettered; 'deliveries' shows where each stands and 'redeliver' sends
a dead letter again. The signing secret is write-only.`,
		c.webhooksCreateCommand(), c.webhooksGetCommand(), c.webhooksListCommand(), c.webhooksDeleteCommand(),
		c.webhooksDeliveriesCommand(), c.webhooksRedeliverCommand())
}

func (c *cli) webhooksCreateCommand() *cobra.Command {
	var (
		w           tokenbrokerv1.Webhook
		secretStdin bool
		secretEnv   string
	)
	cmd := &cobra.Command{
		Use:   "create ID --url URL",
		Short: "Create or replace a subscription; print a generated secret once",
		Long: `Create a subscription, or replace the one of that id. Without
--secret-stdin or --secret-env, a new subscription gets a generated secret,
printed alone on stdout, once (-o json: with the subscription), so that
SECRET=$(tokenbroker webhooks create ...) works; a replaced one keeps its
secret.`,
		Example: `  tokenbroker webhooks create oncall --url https://hooks.example.com/tokenbroker \
      --type grant.reauthorization_required --type grant.failing --type grant.recovered`,
		Args: exactArgs("ID"),
		RunE: c.run(func(ctx context.Context, cmd *cobra.Command, args []string) error {
			admin, err := c.admin(cmd)
			if err != nil {
				return err
			}
			req := &tokenbrokerv1.PutWebhookRequest{Webhook: &w}
			w.Id = args[0]
			if secretStdin || secretEnv != "" {
				if req.Secret, err = c.readSecret("signing secret", secretStdin, secretEnv); err != nil {
					return err
				}
			}
			resp, err := admin.PutWebhook(ctx, req)
			if err != nil {
				return err
			}
			if c.output == outputJSON {
				return c.printJSON(resp)
			}
			if s := resp.GetGeneratedSecret(); s != "" {
				fmt.Fprintf(c.stderr, "webhook %s: its signing secret is shown only now:\n", w.Id)
				_, err = fmt.Fprintln(c.stdout, s)
				return err
			}
			return c.printWebhook(resp.GetWebhook())
		}),
	}
	f := cmd.Flags()
	f.StringVar(&w.Url, "url", "", "where deliveries are POSTed: https, or http to a loopback address in development (required)")
	f.StringSliceVar(&w.EventTypes, "type", nil, "only events of this type (repeat or comma-separate); all when none")
	f.StringSliceVar(&w.Providers, "provider", nil, "only events of this provider (repeat or comma-separate); all when none")
	f.BoolVar(&secretStdin, "secret-stdin", false, "read the signing secret (whsec_...) from stdin")
	f.StringVar(&secretEnv, "secret-env", "", "read the signing secret (whsec_...) from this environment variable")
	_ = cmd.MarkFlagRequired("url") // the flag exists
	cmd.MarkFlagsMutuallyExclusive("secret-stdin", "secret-env")
	return cmd
}

func (c *cli) webhooksGetCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "get ID",
		Short: "Show a subscription and where its delivery stands, without its secret",
		Args:  exactArgs("ID"),
		RunE: c.run(func(ctx context.Context, cmd *cobra.Command, args []string) error {
			admin, err := c.admin(cmd)
			if err != nil {
				return err
			}
			resp, err := admin.GetWebhook(ctx, &tokenbrokerv1.GetWebhookRequest{Id: args[0]})
			if err != nil {
				return err
			}
			if c.output == outputJSON {
				return c.printJSON(resp)
			}
			return c.printWebhook(resp.GetWebhook())
		}),
	}
}

// printWebhook prints one subscription as NAME VALUE lines.
func (c *cli) printWebhook(w *tokenbrokerv1.Webhook) error {
	return c.table([][]string{
		{"ID", w.GetId()},
		{"URL", w.GetUrl()},
		{"EVENT TYPES", allCell(w.GetEventTypes())},
		{"PROVIDERS", allCell(w.GetProviders())},
		{"SECRET", secretCell(w.GetSecret())},
		{"LAST EVENT", cell(w.GetLastEventId())},
		{"FAILURES", strconv.Itoa(int(w.GetConsecutiveFailures()))},
		{"PAUSED UNTIL", timeCell(w.GetPausedUntil())},
		{"UPDATED", timeCell(w.GetUpdateTime())},
	})
}

func allCell(s []string) string {
	if len(s) == 0 {
		return "all"
	}
	return strings.Join(s, ",")
}

func (c *cli) webhooksListCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List the subscriptions, without their secrets",
		Args:  cobra.NoArgs,
		RunE: c.run(func(ctx context.Context, cmd *cobra.Command, _ []string) error {
			admin, err := c.admin(cmd)
			if err != nil {
				return err
			}
			resp, err := admin.ListWebhooks(ctx, &tokenbrokerv1.ListWebhooksRequest{})
			if err != nil {
				return err
			}
			if c.output == outputJSON {
				return c.printJSON(resp)
			}
			rows := [][]string{{"ID", "URL", "EVENT TYPES", "PROVIDERS", "SECRET", "UPDATED"}}
			for _, w := range resp.GetWebhooks() {
				rows = append(rows, []string{w.GetId(), w.GetUrl(), allCell(w.GetEventTypes()), allCell(w.GetProviders()),
					secretCell(w.GetSecret()), timeCell(w.GetUpdateTime())})
			}
			return c.table(rows)
		}),
	}
}

func (c *cli) webhooksDeleteCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "delete ID",
		Short: "Delete a subscription with its deliveries and dead letters",
		Args:  exactArgs("ID"),
		RunE: c.run(func(ctx context.Context, cmd *cobra.Command, args []string) error {
			admin, err := c.admin(cmd)
			if err != nil {
				return err
			}
			resp, err := admin.DeleteWebhook(ctx, &tokenbrokerv1.DeleteWebhookRequest{Id: args[0]})
			if err != nil {
				return err
			}
			return c.printDone(resp, "webhook %q deleted", args[0])
		}),
	}
}

func (c *cli) webhooksDeliveriesCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "deliveries ID",
		Short: "List a subscription's recent deliveries and dead letters, newest first",
		Args:  exactArgs("ID"),
		RunE: c.run(func(ctx context.Context, cmd *cobra.Command, args []string) error {
			admin, err := c.admin(cmd)
			if err != nil {
				return err
			}
			resp, err := admin.ListWebhookDeliveries(ctx, &tokenbrokerv1.ListWebhookDeliveriesRequest{Id: args[0]})
			if err != nil {
				return err
			}
			if c.output == outputJSON {
				return c.printJSON(resp)
			}
			rows := [][]string{{"EVENT", "TYPE", "STATUS", "ATTEMPTS", "HTTP", "LAST ERROR", "LAST ATTEMPT", "NEXT ATTEMPT"}}
			for _, d := range resp.GetDeliveries() {
				httpStatus := "-"
				if d.GetLastHttpStatus() != 0 {
					httpStatus = strconv.Itoa(int(d.GetLastHttpStatus()))
				}
				rows = append(rows, []string{d.GetEventId(), d.GetEventType(), deliveryStatusCell(d.GetStatus()),
					strconv.Itoa(int(d.GetAttempts())), httpStatus, cell(oneLine(d.GetLastError())),
					timeCell(d.GetLastAttemptTime()), timeCell(d.GetNextAttemptTime())})
			}
			return c.table(rows)
		}),
	}
}

func deliveryStatusCell(s tokenbrokerv1.WebhookDeliveryStatus) string {
	if s == tokenbrokerv1.WebhookDeliveryStatus_WEBHOOK_DELIVERY_STATUS_UNSPECIFIED {
		return "-"
	}
	return strings.ToLower(strings.TrimPrefix(s.String(), "WEBHOOK_DELIVERY_STATUS_"))
}

func (c *cli) webhooksRedeliverCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "redeliver ID EVENT_ID",
		Short: "Deliver a dead letter again, with a fresh retry schedule",
		Args:  exactArgs("ID", "EVENT_ID"),
		RunE: c.run(func(ctx context.Context, cmd *cobra.Command, args []string) error {
			admin, err := c.admin(cmd)
			if err != nil {
				return err
			}
			resp, err := admin.RedeliverWebhook(ctx, &tokenbrokerv1.RedeliverWebhookRequest{Id: args[0], EventId: args[1]})
			if err != nil {
				return err
			}
			return c.printDone(resp, "event %s queued for redelivery to webhook %q", args[1], args[0])
		}),
	}
}
