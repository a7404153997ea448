package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"cardsync/node"
	"cardsync/testcluster"
)

const cliToken = "cli-admin-token-0123456789"

func TestKeygen(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), []string{"keygen"}, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	k, err := node.ParseGossipKey(out.String())
	if err != nil || len(k) != 32 {
		t.Fatalf("keygen printed %q: %v", out.String(), err)
	}
}

func TestAgentSecurityFlagsAndFile(t *testing.T) {
	key := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{5}, 32))
	fileKey := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{6}, 16))
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "c.yaml")
	t.Setenv("TEST_CARDSYNC_TOKEN", "token-from-the-environment")
	if err := os.WriteFile(cfgPath, []byte("node:\n  encrypt: "+fileKey+"\n  admin_token_env: TEST_CARDSYNC_TOKEN\n  tls_cert: c.pem\n  tls_key: k.pem\n  tls_ca: ca.pem\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		args    []string
		wantKey int
		token   string
		cert    string
		wantErr string
	}{
		{name: "flags", args: []string{"-encrypt", key, "-admin-token", cliToken}, wantKey: 32, token: cliToken},
		{name: "file", args: []string{"-config", cfgPath}, wantKey: 16, token: "token-from-the-environment", cert: "c.pem"},
		{name: "flags override file", args: []string{"-config", cfgPath, "-encrypt", key, "-admin-token", cliToken}, wantKey: 32, token: cliToken, cert: "c.pem"},
		{name: "bad key", args: []string{"-encrypt", "bm90IGEga2V5"}, wantErr: "gossip key is 9 bytes"},
		{name: "not base64", args: []string{"-encrypt", "%%%"}, wantErr: "not base64"},
		{name: "short token", args: []string{"-admin-token", "abc"}, wantErr: "admin token"},
		{name: "partial tls", args: []string{"-tls-cert", "c.pem"}, wantErr: "tls needs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("CARDSYNC_ADMIN_TOKEN", "")
			o, err := parseAgentFlags(append([]string{"-data-dir", dir}, tc.args...), io.Discard)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("want error %q, got %v", tc.wantErr, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(o.node.GossipKey) != tc.wantKey || o.node.AdminToken != tc.token || o.node.TLSCertFile != tc.cert {
				t.Fatalf("key %d bytes, token %q, cert %q", len(o.node.GossipKey), o.node.AdminToken, o.node.TLSCertFile)
			}
		})
	}
}

func TestConfigFileSecurityValidation(t *testing.T) {
	for _, tc := range []struct {
		name, yaml, wantErr string
	}{
		{"bad encrypt", "node:\n  encrypt: abc\n", "node.encrypt"},
		{"partial tls", "node:\n  tls_cert: a.pem\n", "go together"},
		{"ok", "node:\n  encrypt: " + base64.StdEncoding.EncodeToString(make([]byte, 24)) + "\n  admin_token: " + cliToken + "\n", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseConfig("c.yaml", []byte(tc.yaml))
			if (err == nil) != (tc.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("want %q, got %v", tc.wantErr, err)
			}
		})
	}
}

// The CLI sends -token or $CARDSYNC_ADMIN_TOKEN; without it mutations fail with 401.
func TestCLISendsAdminToken(t *testing.T) {
	key := bytes.Repeat([]byte{8}, 32)
	cfg := node.DefaultConfig()
	cfg.DataDir = t.TempDir()
	cfg.Dev = true
	cfg.Profile = "fast"
	cfg.FSMNoSync = true
	cfg.GossipAddr, cfg.RaftAddr, cfg.HTTPAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.AdminToken = cliToken
	cfg.GossipKey = key
	n, err := node.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Shutdown()
	testcluster.WaitFor(t, 15*time.Second, "node ready", n.Ready)
	ctx := testcluster.Ctx(t, 30*time.Second)
	addr := []string{"-http-addr", n.HTTPAddr()}
	cli := func(args ...string) (string, error) {
		var out bytes.Buffer
		err := run(ctx, append(args, addr...), &out, io.Discard)
		return out.String(), err
	}
	t.Setenv("CARDSYNC_ADMIN_TOKEN", "")
	if _, err := cli("maintenance", "on"); err == nil || !strings.Contains(err.Error(), "401") {
		t.Fatalf("maintenance without a token: %v", err)
	}
	if _, err := cli("status"); err != nil {
		t.Fatalf("status without a token on loopback: %v", err)
	}
	if _, err := cli("maintenance", "on", "-token", cliToken); err != nil {
		t.Fatalf("maintenance with -token: %v", err)
	}
	t.Setenv("CARDSYNC_ADMIN_TOKEN", cliToken)
	if _, err := cli("maintenance", "off"); err != nil {
		t.Fatalf("maintenance with $CARDSYNC_ADMIN_TOKEN: %v", err)
	}
	newKey := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{9}, 16))
	if _, err := cli("operator", "keyring", "-install", newKey); err != nil {
		t.Fatalf("keyring install: %v", err)
	}
	out, err := cli("operator", "keyring", "-list")
	if err != nil || !strings.Contains(out, node.KeyFingerprint(key)+" (primary)") || !strings.Contains(out, node.KeyFingerprint(bytes.Repeat([]byte{9}, 16))) {
		t.Fatalf("keyring list: %v\n%s", err, out)
	}
	if _, err := cli("operator", "keyring", "-use", newKey); err != nil {
		t.Fatalf("keyring use: %v", err)
	}
	if _, err := cli("operator", "keyring", "-remove", base64.StdEncoding.EncodeToString(key)); err != nil {
		t.Fatalf("keyring remove: %v", err)
	}
	if keys := n.Membership().Keys(); len(keys) != 1 || len(keys[0]) != 16 {
		t.Fatalf("keys after rotation: %x", keys)
	}
	t.Setenv("CARDSYNC_ADMIN_TOKEN", "")
	if _, err := cli("operator", "keyring", "-install", newKey); err == nil || !strings.Contains(err.Error(), "401") {
		t.Fatalf("keyring without a token: %v", err)
	}
	if _, err := cli("operator", "keyring"); err == nil {
		t.Fatal("keyring without an operation succeeded")
	}
}

// Carrier secrets can come from a file; they stay out of the replicated account record.
func TestAccountSecretFile(t *testing.T) {
	dir := t.TempDir()
	sf := filepath.Join(dir, "secret")
	if err := os.WriteFile(sf, []byte("file-secret-value\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	acct := func(extra string) string {
		return "accounts:\n  - id: ol-1\n    carrier: onelink\n    endpoint: http://127.0.0.1:1\n    rate_per_sec: 5\n" + extra
	}
	cfg, err := ParseConfig("c.yaml", []byte(acct("    secret_file: "+sf+"\n")))
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Accounts[0].carrierConfig().Secret; got != "file-secret-value" {
		t.Fatalf("secret from file: %q", got)
	}
	if b, _ := json.Marshal(cfg.Accounts[0].fsmAccount()); strings.Contains(string(b), "file-secret-value") {
		t.Fatalf("replicated account record holds the secret: %s", b)
	}
	for _, bad := range []string{"    secret_file: " + filepath.Join(dir, "missing") + "\n", ""} {
		if _, err := ParseConfig("c.yaml", []byte(acct(bad))); err == nil || !strings.Contains(err.Error(), "secret") {
			t.Fatalf("config %q: %v", bad, err)
		}
	}
}
