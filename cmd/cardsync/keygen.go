package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strings"
	"time"

	"cardsync/node"
)

// securityFlags are the agent's security settings: gossip key, admin token and TLS files.
type securityFlags struct {
	encrypt, adminToken, tlsCert, tlsKey, tlsCA *string
}

func addSecurityFlags(fs *flag.FlagSet) *securityFlags {
	return &securityFlags{
		encrypt:    fs.String("encrypt", "", "gossip encryption key, base64 of 16, 24 or 32 bytes (cardsync keygen makes one)"),
		adminToken: fs.String("admin-token", os.Getenv("CARDSYNC_ADMIN_TOKEN"), "bearer token required by mutating API requests (default $CARDSYNC_ADMIN_TOKEN)"),
		tlsCert:    fs.String("tls-cert", "", "PEM certificate for Raft and the HTTP API (with -tls-key and -tls-ca)"),
		tlsKey:     fs.String("tls-key", "", "PEM private key of -tls-cert"),
		tlsCA:      fs.String("tls-ca", "", "PEM CA that signs every member's certificate"),
	}
}

// fromFile fills the settings the command line did not give from the config file.
func (s *securityFlags) fromFile(fc *FileConfig, set map[string]bool) {
	n := fc.Node
	pick := func(flagName string, dst *string, v, env string) {
		if set[flagName] {
			return
		}
		if env != "" {
			v = os.Getenv(env)
		}
		if v != "" {
			*dst = v
		}
	}
	pick("encrypt", s.encrypt, n.Encrypt, n.EncryptEnv)
	pick("admin-token", s.adminToken, n.AdminToken, n.AdminTokenEnv)
	pick("tls-cert", s.tlsCert, n.TLSCert, "")
	pick("tls-key", s.tlsKey, n.TLSKey, "")
	pick("tls-ca", s.tlsCA, n.TLSCA, "")
}

func (s *securityFlags) apply(c *node.Config) error {
	if *s.encrypt != "" {
		k, err := node.ParseGossipKey(*s.encrypt)
		if err != nil {
			return fmt.Errorf("-encrypt: %w", err)
		}
		c.GossipKey = k
	}
	c.AdminToken = strings.TrimSpace(*s.adminToken)
	c.TLSCertFile, c.TLSKeyFile, c.TLSCAFile = *s.tlsCert, *s.tlsKey, *s.tlsCA
	return nil
}

// runKeygen prints a new random 32-byte gossip key in base64.
func runKeygen(stdout io.Writer) error {
	var k [32]byte
	if _, err := rand.Read(k[:]); err != nil {
		return fmt.Errorf("keygen: %w", err)
	}
	_, err := fmt.Fprintln(stdout, base64.StdEncoding.EncodeToString(k[:]))
	return err
}

// clientSecurity holds the CLI's token and TLS settings.
type clientSecurity struct {
	token, caFile, certFile, keyFile *string
}

func addClientSecurityFlags(fs *flag.FlagSet) *clientSecurity {
	env := func(k string) string { return os.Getenv(k) }
	return &clientSecurity{
		token:    fs.String("token", env("CARDSYNC_ADMIN_TOKEN"), "admin bearer token (default $CARDSYNC_ADMIN_TOKEN)"),
		caFile:   fs.String("tls-ca", env("CARDSYNC_TLS_CA"), "PEM CA to verify the API's certificate (https; default $CARDSYNC_TLS_CA)"),
		certFile: fs.String("tls-cert", env("CARDSYNC_TLS_CERT"), "PEM client certificate (default $CARDSYNC_TLS_CERT)"),
		keyFile:  fs.String("tls-key", env("CARDSYNC_TLS_KEY"), "PEM client key (default $CARDSYNC_TLS_KEY)"),
	}
}

// transport returns the HTTP transport and the URL scheme the CLI should use.
func (s *clientSecurity) transport() (http.RoundTripper, string, error) {
	if *s.caFile == "" && *s.certFile == "" {
		return http.DefaultTransport, "http", nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if *s.caFile != "" {
		pem, err := os.ReadFile(*s.caFile)
		if err != nil {
			return nil, "", fmt.Errorf("tls ca: %w", err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, "", fmt.Errorf("tls ca %s: no PEM certificate", *s.caFile)
		}
	}
	if *s.certFile != "" {
		cert, err := tls.LoadX509KeyPair(*s.certFile, *s.keyFile)
		if err != nil {
			return nil, "", fmt.Errorf("tls client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = cfg
	return tr, "https", nil
}

// tokenTransport adds the admin token to every request.
type tokenTransport struct {
	token string
	next  http.RoundTripper
}

func (t *tokenTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if t.token == "" {
		return t.next.RoundTrip(r)
	}
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+t.token)
	return t.next.RoundTrip(r)
}

// secureClient wraps the CLI's HTTP client with the token and TLS settings and returns
// the scheme for addresses given without one.
func (s *clientSecurity) secureClient(hc *http.Client) (string, error) {
	tr, scheme, err := s.transport()
	if err != nil {
		return "", err
	}
	hc.Transport = &tokenTransport{token: strings.TrimSpace(*s.token), next: tr}
	return scheme, nil
}

// runKeyring runs `cardsync operator keyring -install KEY | -use KEY | -remove KEY | -list`.
func runKeyring(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("operator keyring", flag.ContinueOnError)
	fs.SetOutput(stderr)
	def := os.Getenv("CARDSYNC_HTTP_ADDR")
	if def == "" {
		def = "127.0.0.1:8700"
	}
	addr := fs.String("http-addr", def, "node HTTP API address")
	asJSONFlag := fs.Bool("json", false, "print raw JSON")
	sec := addClientSecurityFlags(fs)
	install := fs.String("install", "", "install a gossip key on every member")
	use := fs.String("use", "", "make an installed key the primary one on every member")
	remove := fs.String("remove", "", "remove a key from every member")
	list := fs.Bool("list", false, "list every member's keys (fingerprints)")
	local := fs.Bool("local-only", false, "change only the node -http-addr points at")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("operator keyring: unexpected arguments %v", fs.Args())
	}
	asJSON := *asJSONFlag
	hc := &http.Client{Timeout: time.Minute}
	scheme, err := sec.secureClient(hc)
	if err != nil {
		return err
	}
	base := *addr
	if !strings.Contains(base, "://") {
		base = scheme + "://" + base
	}
	c := &apiClient{base: strings.TrimRight(base, "/"), hc: hc}
	var req node.KeyringRequest
	n := 0
	for op, v := range map[string]string{node.KeyringInstall: *install, node.KeyringUse: *use, node.KeyringRemove: *remove} {
		if v != "" {
			req.Op, req.Key = op, v
			n++
		}
	}
	if *list {
		n++
	}
	if n != 1 {
		return errors.New("usage: cardsync operator keyring -install KEY | -use KEY | -remove KEY | -list [-local-only]")
	}
	var rep struct {
		OK    bool                        `json:"ok"`
		Nodes map[string]node.NodeKeyring `json:"nodes"`
	}
	if *list {
		path := "/v1/operator/keyring"
		if *local {
			path += "?local=1"
		}
		err = c.get(ctx, path, &rep)
	} else {
		req.LocalOnly = *local
		err = c.post(ctx, "/v1/operator/keyring", req, &rep)
	}
	var ae *apiError
	if errors.As(err, &ae) && ae.Status == http.StatusBadGateway {
		// Some members failed: the body still lists every member's answer.
		if b, ok := ae.Body["nodes"].(map[string]any); ok {
			for name, v := range b {
				m, _ := v.(map[string]any)
				msg, _ := m["error"].(string)
				fmt.Fprintf(stdout, "%s\tERROR %s\n", name, msg)
			}
		}
		return fmt.Errorf("keyring: not applied on every member: run it with -local-only against the ones listed")
	}
	if err != nil {
		return err
	}
	if asJSON {
		return jsonEncoder(stdout).Encode(rep)
	}
	names := make([]string, 0, len(rep.Nodes))
	for name := range rep.Nodes {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		nk := rep.Nodes[name]
		if nk.Error != "" {
			fmt.Fprintf(stdout, "%s\tERROR %s\n", name, nk.Error)
			continue
		}
		var ks []string
		for _, k := range nk.Keys {
			s := k.Fingerprint
			if k.Primary {
				s += " (primary)"
			}
			ks = append(ks, s)
		}
		fmt.Fprintf(stdout, "%s\t%s\n", name, strings.Join(ks, ", "))
	}
	return nil
}
