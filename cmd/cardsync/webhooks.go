package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"text/tabwriter"
)

// runWebhooks implements `cardsync webhooks [list | add -id ID -url URL [-enterprise E]
// [-kinds k1,k2] [-secret S] | delete ID | pause ID | resume ID]`.
func runWebhooks(ctx context.Context, c *apiClient, args []string, stdout, stderr io.Writer) error {
	sub := "list"
	if len(args) > 0 {
		sub, args = args[0], args[1:]
	}
	switch sub {
	case "list":
		var r struct {
			Webhooks []map[string]any `json:"webhooks"`
		}
		if err := c.get(ctx, "/v1/webhooks", &r); err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 0, 2, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tURL\tEnterprise\tCursor\tPending\tLag (s)\tDelivered\tOwner\tPaused\tLast error")
		for _, w := range r.Webhooks {
			paused := "no"
			if p, _ := w["paused"].(bool); p {
				paused = fmt.Sprint("yes: ", w["pause_reason"])
			}
			fmt.Fprintf(tw, "%v\t%v\t%v\t%v\t%v\t%.1f\t%v\t%v\t%v\t%v\n", w["id"], w["url"], orDash(w["enterprise"]), w["cursor"], w["pending"],
				toFloat(w["lag_seconds"]), w["delivered"], orDash(w["owner"]), paused, orDash(w["last_error"]))
		}
		return tw.Flush()
	case "add":
		fs := flag.NewFlagSet("webhooks add", flag.ContinueOnError)
		fs.SetOutput(stderr)
		id := fs.String("id", "", "subscription id")
		u := fs.String("url", "", "receiver URL")
		ent := fs.String("enterprise", "", "only this enterprise's changes")
		kinds := fs.String("kinds", "", "comma-separated event kinds (status, rate_plan, usage, error)")
		secret := fs.String("secret", "", "HMAC secret the receiver verifies X-Cardsync-Signature with")
		if err := fs.Parse(args); err != nil {
			return err
		}
		req := map[string]any{"id": *id, "url": *u, "enterprise": *ent, "secret": *secret}
		if *kinds != "" {
			req["kinds"] = strings.Split(*kinds, ",")
		}
		var r map[string]any
		if err := c.post(ctx, "/v1/webhooks", req, &r); err != nil {
			return err
		}
		return jsonEncoder(stdout).Encode(r)
	case "delete", "pause", "resume":
		if len(args) != 1 {
			return fmt.Errorf("usage: cardsync webhooks %s ID", sub)
		}
		path := "/v1/webhooks/" + url.PathEscape(args[0])
		method := http.MethodPost
		switch sub {
		case "delete":
			method = http.MethodDelete
		default:
			path += "/" + sub
		}
		var r map[string]any
		if err := c.do(ctx, method, path, strings.NewReader("{}"), "application/json", &r); err != nil {
			return err
		}
		return jsonEncoder(stdout).Encode(r)
	}
	return errors.New("usage: cardsync webhooks [list | add ... | delete ID | pause ID | resume ID]")
}
