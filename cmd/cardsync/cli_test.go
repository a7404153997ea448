package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"cardsync/fsm"
	"cardsync/testcluster"
)

// cli runs one cardsync client command against addr and returns its output.
func cli(t *testing.T, addr string, args ...string) (string, error) {
	t.Helper()
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	err := run(ctx, append(args, "-http-addr", addr), &out, &errb)
	return out.String() + errb.String(), err
}

func TestCLICommands(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{Nodes: 1, Cards: 600})
	n := c.Members[0].Node()
	addr := n.HTTPAddr()
	testcluster.WaitFor(t, 30*time.Second, "inventory imported", func() bool {
		cnt, _ := n.FSM().Counts()
		return cnt.Cards > 0
	})
	card := c.Catalog.Cards[0]
	shards, _ := n.FSM().Shards(fsm.ShardFilter{})
	shard := shards[0].ID

	tests := []struct {
		args []string
		want []string
	}{
		{[]string{"status"}, []string{"leader", n.Name(), "applied_index"}},
		{[]string{"members"}, []string{"Node", n.Name(), "alive"}},
		{[]string{"operator", "raft", "list-peers"}, []string{n.Name(), "leader", "true"}},
		{[]string{"ring"}, []string{"vnodes per member", n.Name()}},
		{[]string{"shards"}, []string{"Shard", shard, "shards"}},
		{[]string{"shards", "-group", "1"}, []string{"Shard"}},
		{[]string{"shard", shard}, []string{`"id": "` + shard + `"`, "checkpoint"}},
		{[]string{"card", card.ICCID}, []string{card.ICCID, card.Enterprise}},
		{[]string{"resync", "-iccid", card.ICCID}, []string{`"ok": true`}},
		{[]string{"resync", "-shard", shard}, []string{`"ok": true`}},
		{[]string{"resync", "-enterprise", card.Enterprise}, []string{`"ok": true`}},
		{[]string{"checkpoint", shard, "-next-run", "now"}, []string{`"ok": true`}},
		{[]string{"release", shard, "-reason", "operator test"}, []string{`"ok": true`}},
		{[]string{"maintenance", "on", "-reason", "deploy"}, []string{`"ok": true`}},
		{[]string{"status"}, []string{"maintenance", "true"}},
		{[]string{"maintenance", "off"}, []string{`"ok": true`}},
		{[]string{"changes", "-after", "0"}, nil},
	}
	for _, tc := range tests {
		out, err := cli(t, addr, tc.args...)
		if err != nil {
			t.Fatalf("cardsync %v: %v\n%s", tc.args, err, out)
		}
		for _, w := range tc.want {
			if !strings.Contains(out, w) {
				t.Errorf("cardsync %v: output lacks %q:\n%s", tc.args, w, out)
			}
		}
	}

	// Errors are clear and exit non-zero.
	for _, args := range [][]string{
		{"card", "NOT-AN-ICCID"},
		{"card", "89860000000000000001"},
		{"shard", "g999-0"},
		{"resync"},
		{"maintenance", "maybe"},
		{"nosuchcommand"},
	} {
		out, err := cli(t, addr, args...)
		if err == nil {
			t.Errorf("cardsync %v succeeded:\n%s", args, out)
		}
	}

	// Backup writes a file that opens as the replicated state.
	path := filepath.Join(t.TempDir(), "backup.db")
	if out, err := cli(t, addr, "backup", path); err != nil {
		t.Fatalf("backup: %v\n%s", err, out)
	}
	f, err := fsm.Open(fsm.Config{Path: path}, nil)
	if err != nil {
		t.Fatalf("open backup: %v", err)
	}
	cnt, _ := f.Counts()
	f.Close()
	if cnt.Cards != len(c.Catalog.Cards) {
		t.Fatalf("backup holds %d cards, want %d", cnt.Cards, len(c.Catalog.Cards))
	}
}

func TestCLIImport(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{Nodes: 1, Cards: 300})
	n := c.Members[0].Node()
	testcluster.WaitFor(t, 30*time.Second, "inventory imported", func() bool {
		cnt, _ := n.FSM().Counts()
		return cnt.Cards > 0
	})
	before, _ := n.FSM().Counts()
	ent := c.Catalog.Enterprises[0]
	var acct string
	for _, a := range ent.Accounts {
		acct = a
		break
	}
	dir := t.TempDir()
	good := filepath.Join(dir, "good.csv")
	os.WriteFile(good, []byte("enterprise,iccid,account,msisdn\n"+
		ent.ID+",89860000000000770001,"+acct+",1440000000001\n"+
		ent.ID+",89860000000000770002,"+acct+",1440000000002\n"), 0o600)
	out, err := cli(t, n.HTTPAddr(), "import", good)
	if err != nil || !strings.Contains(out, "imported 2 cards") {
		t.Fatalf("good import: %v\n%s", err, out)
	}

	bad := filepath.Join(dir, "bad.ndjson")
	os.WriteFile(bad, []byte(`{"enterprise":"`+ent.ID+`","iccid":"89860000000000770003","account":"`+acct+`"}
{"enterprise":"no-such-enterprise","iccid":"89860000000000770004","account":"`+acct+`"}
{"enterprise":"`+ent.ID+`","iccid":"12345","account":"`+acct+`"}
{"enterprise":"`+ent.ID+`","iccid":"89860000000000770003","account":"`+acct+`"}
`), 0o600)
	out, err = cli(t, n.HTTPAddr(), "import", bad)
	if err == nil {
		t.Fatalf("bad import accepted:\n%s", out)
	}
	out += err.Error()
	for _, want := range []string{"unknown enterprise", "invalid ICCID", "duplicate", "nothing was applied"} {
		if !strings.Contains(out, want) {
			t.Errorf("bad import output lacks %q:\n%s", want, out)
		}
	}
	after, _ := n.FSM().Counts()
	if after.Cards != before.Cards+2 {
		t.Fatalf("cards %d -> %d: a rejected import applied something", before.Cards, after.Cards)
	}
}

func TestConfigFileErrorsHaveLocations(t *testing.T) {
	src := []byte(`node:
  name: n1
accounts:
  - id: a1
    carrier: onelink
    endpoint: http://127.0.0.1:1
    secret: s
    rate_per_sec: 10
  - id: a1
    carrier: nokia
    rate_per_sec: 0
enterprises:
  - id: e1
    accounts: {onelink: missing}
`)
	_, err := ParseConfig("cardsync.yaml", src)
	if err == nil {
		t.Fatal("invalid config accepted")
	}
	for _, want := range []string{"cardsync.yaml:9", "duplicate account id", `carrier "nokia"`, "endpoint is required", "rate_per_sec must be positive", "cardsync.yaml:13", `account "missing" is not defined`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("config error lacks %q:\n%v", want, err)
		}
	}
	if _, err := ParseConfig("x.yaml", []byte("node:\n  nmae: typo\n")); err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Errorf("unknown field: %v", err)
	}
}

func TestFlagsOverrideConfigFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.yaml")
	os.WriteFile(path, []byte("node:\n  name: from-file\n  http_addr: 127.0.0.1:9999\n  profile: fast\n"), 0o600)
	var errb bytes.Buffer
	o, err := parseAgentFlags([]string{"-config", path, "-http-addr", "127.0.0.1:8888", "-data-dir", t.TempDir()}, &errb)
	if err != nil {
		t.Fatal(err)
	}
	if o.node.Name != "from-file" || o.node.HTTPAddr != "127.0.0.1:8888" || o.node.Profile != "fast" {
		t.Fatalf("merged config: name %q http %q profile %q", o.node.Name, o.node.HTTPAddr, o.node.Profile)
	}
}

func TestCLIWebhooks(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{Nodes: 1, NoSim: true})
	c.WaitStable(30 * time.Second)
	addr := c.Members[0].Node().HTTPAddr()
	var out string
	var err error
	run2 := func(args ...string) {
		t.Helper()
		var o, e bytes.Buffer
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		err = run(ctx, append([]string{"webhooks", "-http-addr", addr}, args...), &o, &e)
		out = o.String() + e.String()
	}
	run2("add", "-id", "crm", "-url", "http://127.0.0.1:9/hook", "-kinds", "status", "-secret", "s3cret")
	if err != nil {
		t.Fatalf("add: %v\n%s", err, out)
	}
	run2("list")
	if err != nil || !strings.Contains(out, "crm") || !strings.Contains(out, "http://127.0.0.1:9/hook") || strings.Contains(out, "s3cret") {
		t.Fatalf("list: %v\n%s", err, out)
	}
	run2("pause", "crm")
	if err != nil {
		t.Fatalf("pause: %v\n%s", err, out)
	}
	run2("list")
	if !strings.Contains(out, "yes") {
		t.Fatalf("paused webhook not shown as paused:\n%s", out)
	}
	run2("resume", "crm")
	if err != nil {
		t.Fatalf("resume: %v\n%s", err, out)
	}
	run2("delete", "crm")
	if err != nil {
		t.Fatalf("delete: %v\n%s", err, out)
	}
	run2("delete", "crm")
	if err == nil {
		t.Fatal("deleting a missing webhook succeeded")
	}
}
