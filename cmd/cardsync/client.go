package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"
)

func jsonEncoder(w io.Writer) *json.Encoder {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc
}

// apiClient talks to a node's HTTP API.
type apiClient struct {
	base string
	hc   *http.Client
}

// apiError is an error answer of the API.
type apiError struct {
	Status int
	Body   map[string]any
}

func (e *apiError) Error() string {
	if msg, ok := e.Body["error"].(string); ok {
		return fmt.Sprintf("%s (HTTP %d)", msg, e.Status)
	}
	return fmt.Sprintf("HTTP %d", e.Status)
}

func (c *apiClient) do(ctx context.Context, method, path string, body io.Reader, contentType string, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach cardsync at %s: %w", c.base, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		e := &apiError{Status: resp.StatusCode, Body: map[string]any{}}
		_ = json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&e.Body)
		return e
	}
	if w, ok := out.(io.Writer); ok {
		_, err = io.Copy(w, resp.Body)
		return err
	}
	if out == nil {
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

func (c *apiClient) get(ctx context.Context, path string, out any) error {
	return c.do(ctx, http.MethodGet, path, nil, "", out)
}

func (c *apiClient) post(ctx context.Context, path string, in, out any) error {
	b, err := json.Marshal(in)
	if err != nil {
		return err
	}
	return c.do(ctx, http.MethodPost, path, bytes.NewReader(b), "application/json", out)
}

func runClient(ctx context.Context, cmd string, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	def := os.Getenv("CARDSYNC_HTTP_ADDR")
	if def == "" {
		def = "127.0.0.1:8700"
	}
	addr := fs.String("http-addr", def, "node HTTP API address")
	asJSON := fs.Bool("json", false, "print raw JSON")
	sec := addClientSecurityFlags(fs)
	var (
		group, owner, state, reason  *string
		iccid, shard, enterprise     *string
		after                        *uint64
		follow                       *bool
		cursor, nextRun, format, why *string
		newTask, force               *bool
	)
	switch cmd {
	case "shards":
		group = fs.String("group", "", "only this group")
		owner = fs.String("owner", "", "only shards claimed by this node")
		state = fs.String("state", "", "running, due, done or idle")
		reason = fs.String("reason", "", "only shards whose reason contains this text")
	case "resync":
		iccid = fs.String("iccid", "", "resync one card")
		shard = fs.String("shard", "", "resync every card of a shard")
		enterprise = fs.String("enterprise", "", "resync every card of an enterprise")
	case "changes":
		after = fs.Uint64("after", 0, "start after this sequence number")
		follow = fs.Bool("follow", false, "keep waiting for new changes")
		enterprise = fs.String("enterprise", "", "only this enterprise")
	case "checkpoint":
		cursor = fs.String("cursor", "", "set the cursor (last ICCID finished); '-' to reset")
		nextRun = fs.String("next-run", "", "set the next run time (RFC 3339 or 'now')")
		newTask = fs.Bool("new-task", false, "end the current task so the next round starts a new one")
	case "import":
		format = fs.String("format", "", "csv or ndjson (default: by file extension)")
	case "restore":
		force = fs.Bool("force", false, "restore even though the cluster already holds cards")
	case "maintenance", "release":
		why = fs.String("reason", "", "reason recorded with the change")
	}
	// Allow flags after positional arguments (cardsync card ICCID -http-addr X).
	var pos []string
	rest := args
	for cmd != "webhooks" { // webhooks parses its own flags after the subcommand
		if err := fs.Parse(rest); err != nil {
			return err
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		rest = fs.Args()[1:]
	}
	hc := &http.Client{Timeout: 15 * time.Minute}
	scheme, err := sec.secureClient(hc)
	if err != nil {
		return err
	}
	if cmd == "webhooks" {
		if err := fs.Parse(args); err != nil {
			return err
		}
		pos = fs.Args()
	}
	base := *addr
	if !strings.Contains(base, "://") {
		base = scheme + "://" + base
	}
	c := &apiClient{base: strings.TrimRight(base, "/"), hc: hc}
	need := func(n int, what string) error {
		if len(pos) != n {
			return fmt.Errorf("%s: usage: cardsync %s %s", cmd, cmd, what)
		}
		return nil
	}
	printJSON := func(v any) error { return jsonEncoder(stdout).Encode(v) }

	switch cmd {
	case "webhooks":
		return runWebhooks(ctx, c, pos, stdout, stderr)
	case "status":
		var s map[string]any
		if err := c.get(ctx, "/v1/status", &s); err != nil {
			return err
		}
		if *asJSON {
			return printJSON(s)
		}
		tw := tabwriter.NewWriter(stdout, 0, 2, 2, ' ', 0)
		for _, k := range []string{"node", "leader", "raft_state", "term", "applied_index", "commit_index", "ready", "voters", "nonvoters", "alive_members", "members", "ring_members", "maintenance", "http_addr", "raft_addr", "gossip_addr"} {
			fmt.Fprintf(tw, "%s\t%v\n", k, s[k])
		}
		return tw.Flush()
	case "members":
		var r struct {
			Members []map[string]any `json:"members"`
		}
		if err := c.get(ctx, "/v1/members", &r); err != nil {
			return err
		}
		if *asJSON {
			return printJSON(r)
		}
		tw := tabwriter.NewWriter(stdout, 0, 2, 2, ' ', 0)
		fmt.Fprintln(tw, "Node\tAddress\tStatus\tRaft\tLeader\tReady\tRing share\tHTTP")
		for _, m := range r.Members {
			fmt.Fprintf(tw, "%v\t%v\t%v\t%v\t%v\t%v\t%.1f%%\t%v\n", m["name"], m["gossip_addr"], m["status"], m["suffrage"], m["leader"], m["ready"], toFloat(m["ring_share"])*100, m["http_addr"])
		}
		return tw.Flush()
	case "operator":
		if len(pos) >= 2 && pos[0] == "raft" && pos[1] == "list-peers" {
			var r struct {
				Peers []map[string]any `json:"peers"`
			}
			if err := c.get(ctx, "/v1/operator/raft/peers", &r); err != nil {
				return err
			}
			tw := tabwriter.NewWriter(stdout, 0, 2, 2, ' ', 0)
			fmt.Fprintln(tw, "Node\tID\tAddress\tState\tVoter")
			for _, p := range r.Peers {
				fmt.Fprintf(tw, "%v\t%v\t%v\t%v\t%v\n", p["node"], p["id"], p["address"], p["state"], p["voter"])
			}
			return tw.Flush()
		}
		if len(pos) == 3 && pos[0] == "raft" && pos[1] == "remove-peer" {
			return c.post(ctx, "/v1/operator/raft/remove-peer", map[string]string{"id": pos[2]}, nil)
		}
		return errors.New("usage: cardsync operator raft list-peers | remove-peer ID")
	case "ring":
		var r map[string]any
		if err := c.get(ctx, "/v1/ring", &r); err != nil {
			return err
		}
		if *asJSON {
			return printJSON(r)
		}
		tw := tabwriter.NewWriter(stdout, 0, 2, 2, ' ', 0)
		fmt.Fprintf(tw, "vnodes per member: %v\n", r["vnodes"])
		fmt.Fprintln(tw, "Member\tShare\tShards")
		if ms, ok := r["members"].([]any); ok {
			for _, m := range ms {
				mm, _ := m.(map[string]any)
				fmt.Fprintf(tw, "%v\t%.1f%%\t%v\n", mm["name"], toFloat(mm["share"])*100, mm["shards"])
			}
		}
		if ss, ok := r["seats"].([]any); ok && len(ss) > 0 {
			var order []string
			for _, s := range ss {
				sm, _ := s.(map[string]any)
				name := fmt.Sprint(sm["name"])
				if absent, _ := sm["absent"].(bool); absent {
					name += " (absent)"
				}
				order = append(order, name)
			}
			fmt.Fprintf(tw, "join order: %s\n", strings.Join(order, ", "))
		}
		return tw.Flush()
	case "shards":
		q := url.Values{}
		for k, v := range map[string]*string{"group": group, "owner": owner, "state": state, "reason": reason} {
			if *v != "" {
				q.Set(k, *v)
			}
		}
		var r struct {
			Shards []map[string]any `json:"shards"`
			Count  int              `json:"count"`
		}
		if err := c.get(ctx, "/v1/shards?"+q.Encode(), &r); err != nil {
			return err
		}
		if *asJSON {
			return printJSON(r)
		}
		tw := tabwriter.NewWriter(stdout, 0, 2, 2, ' ', 0)
		fmt.Fprintln(tw, "Shard\tGroup\tCards\tEpoch\tOwner\tTask\tState\tSynced\tFailed\tReason")
		for _, s := range r.Shards {
			ck, _ := s["checkpoint"].(map[string]any)
			fmt.Fprintf(tw, "%v\t%v\t%v\t%v\t%v\t%v\t%v\t%v\t%v\t%v\n", s["id"], s["group"], s["cards"], s["epoch"], orDash(s["owner"]), ck["task_id"], ck["state"], ck["synced"], ck["failed"], s["reason"])
		}
		fmt.Fprintf(tw, "%d shards\n", r.Count)
		return tw.Flush()
	case "shard":
		if err := need(1, "ID"); err != nil {
			return err
		}
		var r map[string]any
		if err := c.get(ctx, "/v1/shards/"+url.PathEscape(pos[0]), &r); err != nil {
			return err
		}
		return printJSON(r)
	case "card":
		if err := need(1, "ICCID"); err != nil {
			return err
		}
		var r map[string]any
		if err := c.get(ctx, "/v1/cards/"+url.PathEscape(pos[0]), &r); err != nil {
			return err
		}
		return printJSON(r)
	case "import":
		if err := need(1, "FILE"); err != nil {
			return err
		}
		return importFile(ctx, c, pos[0], *format, stdout)
	case "resync":
		req := map[string]any{}
		switch {
		case *iccid != "":
			req["iccids"] = []string{*iccid}
		case *shard != "":
			req["shard"] = *shard
		case *enterprise != "":
			req["enterprise"] = *enterprise
		default:
			return errors.New("resync: give -iccid, -shard or -enterprise")
		}
		var r map[string]any
		if err := c.post(ctx, "/v1/resync", req, &r); err != nil {
			return err
		}
		return printJSON(r)
	case "release":
		if err := need(1, "SHARD"); err != nil {
			return err
		}
		var r map[string]any
		if err := c.post(ctx, "/v1/shards/"+url.PathEscape(pos[0])+"/release", map[string]string{"reason": *why}, &r); err != nil {
			return err
		}
		return printJSON(r)
	case "checkpoint":
		if err := need(1, "SHARD"); err != nil {
			return err
		}
		req := map[string]any{"new_task": *newTask}
		if *cursor != "" {
			cur := *cursor
			if cur == "-" {
				cur = ""
			}
			req["cursor"] = cur
		}
		if *nextRun != "" {
			t := time.Now()
			if *nextRun != "now" {
				var err error
				if t, err = time.Parse(time.RFC3339, *nextRun); err != nil {
					return fmt.Errorf("checkpoint: -next-run: %w", err)
				}
			}
			req["next_run_at"] = t
		}
		var r map[string]any
		if err := c.post(ctx, "/v1/shards/"+url.PathEscape(pos[0])+"/checkpoint", req, &r); err != nil {
			return err
		}
		return printJSON(r)
	case "maintenance", "drain":
		if len(pos) != 1 || (pos[0] != "on" && pos[0] != "off") {
			return fmt.Errorf("usage: cardsync %s on|off", cmd)
		}
		req := map[string]any{"on": pos[0] == "on"}
		path := "/v1/drain"
		if cmd == "maintenance" {
			path = "/v1/maintenance"
			req["reason"] = *why
		}
		var r map[string]any
		if err := c.post(ctx, path, req, &r); err != nil {
			return err
		}
		return printJSON(r)
	case "changes":
		seq := *after
		for {
			q := url.Values{"after": {fmt.Sprint(seq)}, "limit": {"1000"}}
			if *enterprise != "" {
				q.Set("enterprise", *enterprise)
			}
			if *follow {
				q.Set("wait", "30s")
			}
			var r struct {
				Changes []map[string]any `json:"changes"`
				Last    uint64           `json:"last"`
			}
			if err := c.get(ctx, "/v1/changes?"+q.Encode(), &r); err != nil {
				return err
			}
			enc := json.NewEncoder(stdout)
			for _, ch := range r.Changes {
				if err := enc.Encode(ch); err != nil {
					return err
				}
			}
			seq = r.Last
			if !*follow && len(r.Changes) == 0 {
				return nil
			}
			if ctx.Err() != nil {
				return nil
			}
		}
	case "restore":
		if err := need(1, "FILE"); err != nil {
			return err
		}
		f, err := os.Open(pos[0])
		if err != nil {
			return err
		}
		defer f.Close()
		path := "/v1/restore"
		if *force {
			path += "?force=true"
		}
		var r map[string]any
		if err := c.do(ctx, http.MethodPost, path, f, "application/octet-stream", &r); err != nil {
			return err
		}
		return printJSON(r)
	case "backup":
		if err := need(1, "FILE"); err != nil {
			return err
		}
		tmp := pos[0] + ".partial"
		f, err := os.Create(tmp)
		if err != nil {
			return err
		}
		if err := c.do(ctx, http.MethodGet, "/v1/backup", nil, "", f); err != nil {
			f.Close()
			os.Remove(tmp)
			return err
		}
		if err := f.Sync(); err != nil {
			f.Close()
			return err
		}
		f.Close()
		if err := os.Rename(tmp, pos[0]); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "backup written to %s\n", pos[0])
		return nil
	}
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("unknown subcommand %q", cmd)
}

func importFile(ctx context.Context, c *apiClient, path, format string, stdout io.Writer) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if format == "" {
		switch strings.ToLower(filepath.Ext(path)) {
		case ".ndjson", ".jsonl", ".json":
			format = "ndjson"
		default:
			format = "csv"
		}
	}
	pr := &progressReader{r: f, total: st.Size(), out: stdout, start: time.Now()}
	var r map[string]any
	err = c.do(ctx, http.MethodPost, "/v1/cards?format="+format, pr, "text/"+format, &r)
	fmt.Fprintln(stdout)
	var ae *apiError
	if errors.As(err, &ae) {
		if lines, ok := ae.Body["lines"].([]any); ok {
			tw := tabwriter.NewWriter(stdout, 0, 2, 2, ' ', 0)
			fmt.Fprintln(tw, "Line\tICCID\tError")
			for _, l := range lines {
				m, _ := l.(map[string]any)
				fmt.Fprintf(tw, "%v\t%v\t%v\n", m["line"], orDash(m["iccid"]), m["error"])
			}
			tw.Flush()
		}
		return err
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "imported %v cards (%v new, %v updated) in %.1fs\n", r["cards"], r["added"], r["updated"], time.Since(pr.start).Seconds())
	return nil
}

// progressReader prints an upload progress bar.
type progressReader struct {
	r     io.Reader
	total int64
	done  int64
	last  time.Time
	start time.Time
	out   io.Writer
}

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	p.done += int64(n)
	if time.Since(p.last) > 200*time.Millisecond || err == io.EOF {
		p.last = time.Now()
		pct := 100.0
		if p.total > 0 {
			pct = float64(p.done) * 100 / float64(p.total)
		}
		bar := strings.Repeat("#", int(pct/4)) + strings.Repeat(".", 25-int(pct/4))
		fmt.Fprintf(p.out, "\rupload [%s] %5.1f%% %d/%d bytes", bar, pct, p.done, p.total)
	}
	return n, err
}

func toFloat(v any) float64 {
	f, _ := v.(float64)
	return f
}

func orDash(v any) any {
	if v == nil || v == "" {
		return "-"
	}
	return v
}
