package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"cardsync/carrier"
	"cardsync/fsm"
	"cardsync/node"
)

// FileConfig is the agent's configuration file (YAML). Flags given on the command line
// override the node settings in it.
type FileConfig struct {
	Node struct {
		Name            string   `yaml:"name"`
		DataDir         string   `yaml:"data_dir"`
		Bind            string   `yaml:"bind"`
		RaftAddr        string   `yaml:"raft_addr"`
		HTTPAddr        string   `yaml:"http_addr"`
		Join            []string `yaml:"join"`
		BootstrapExpect int      `yaml:"bootstrap_expect"`
		Profile         string   `yaml:"profile"`
		RaftMultiplier  float64  `yaml:"raft_multiplier"`
		ClusterSecret   string   `yaml:"cluster_secret"`
		// Encrypt is the base64 gossip key (see cardsync keygen); EncryptEnv names an
		// environment variable holding it instead.
		Encrypt    string `yaml:"encrypt"`
		EncryptEnv string `yaml:"encrypt_env"`
		// AdminToken guards mutating API requests; AdminTokenEnv names an environment
		// variable holding it instead.
		AdminToken    string `yaml:"admin_token"`
		AdminTokenEnv string `yaml:"admin_token_env"`
		// TLSCert, TLSKey and TLSCA are PEM files that turn on TLS for Raft and the API.
		TLSCert  string `yaml:"tls_cert"`
		TLSKey   string `yaml:"tls_key"`
		TLSCA    string `yaml:"tls_ca"`
		LogLevel string `yaml:"log_level"`
	} `yaml:"node"`
	Sync struct {
		PollInterval time.Duration `yaml:"poll_interval"`
		Lease        time.Duration `yaml:"lease"`
		MaxWorkers   int           `yaml:"max_workers"`
		MaxDueWait   time.Duration `yaml:"max_due_wait"`
		Groups       int           `yaml:"groups"`
		ShardSize    int           `yaml:"shard_size"`
	} `yaml:"sync"`
	Accounts    []AccountFile    `yaml:"accounts"`
	Enterprises []EnterpriseFile `yaml:"enterprises"`
}

// AccountFile is one carrier account in the configuration file. Credentials may be given
// inline or, better, as the name of an environment variable or a file (secret_file) holding
// them. Credentials never enter the replicated state: each node reads its own.
type AccountFile struct {
	ID          string        `yaml:"id"`
	Carrier     string        `yaml:"carrier"`
	Endpoint    string        `yaml:"endpoint"`
	AppID       string        `yaml:"app_id"`
	AppIDEnv    string        `yaml:"app_id_env"`
	Secret      string        `yaml:"secret"`
	SecretEnv   string        `yaml:"secret_env"`
	SecretFile  string        `yaml:"secret_file"`
	OpenID      string        `yaml:"open_id"`
	CustNumber  string        `yaml:"cust_number"`
	RatePerSec  float64       `yaml:"rate_per_sec"`
	Burst       int           `yaml:"burst"`
	Concurrency int           `yaml:"concurrency"`
	TTL         time.Duration `yaml:"ttl"`
	Timeout     time.Duration `yaml:"timeout"`
	line        int
}

// EnterpriseFile is one enterprise in the configuration file.
type EnterpriseFile struct {
	ID             string            `yaml:"id"`
	Name           string            `yaml:"name"`
	Accounts       map[string]string `yaml:"accounts"`
	InventoryReady *bool             `yaml:"inventory_ready"`
	line           int
}

// LoadConfigFile reads and validates a configuration file, reporting every problem with
// its location.
func LoadConfigFile(path string) (*FileConfig, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ParseConfig(path, data)
}

// ParseConfig parses and validates configuration text; name is used in messages.
func ParseConfig(name string, data []byte) (*FileConfig, error) {
	var cfg FileConfig
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	// Record lines for semantic errors.
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err == nil && len(root.Content) > 0 {
		lines := func(key string) []int {
			m := root.Content[0]
			for i := 0; i+1 < len(m.Content); i += 2 {
				if m.Content[i].Value == key && m.Content[i+1].Kind == yaml.SequenceNode {
					var ls []int
					for _, it := range m.Content[i+1].Content {
						ls = append(ls, it.Line)
					}
					return ls
				}
			}
			return nil
		}
		for i, l := range lines("accounts") {
			if i < len(cfg.Accounts) {
				cfg.Accounts[i].line = l
			}
		}
		for i, l := range lines("enterprises") {
			if i < len(cfg.Enterprises) {
				cfg.Enterprises[i].line = l
			}
		}
	}
	if err := cfg.Validate(name); err != nil {
		return nil, err
	}
	return &cfg, nil
}

// Validate reports every problem in the file, each with its location.
func (c *FileConfig) Validate(name string) error {
	var errs []error
	bad := func(line int, format string, a ...any) {
		loc := name
		if line > 0 {
			loc = fmt.Sprintf("%s:%d", name, line)
		}
		errs = append(errs, fmt.Errorf("%s: "+format, append([]any{loc}, a...)...))
	}
	ids := map[string]string{}
	for i, a := range c.Accounts {
		where := fmt.Sprintf("accounts[%d]", i)
		if a.ID == "" {
			bad(a.line, "%s: id is required", where)
		} else if _, dup := ids[a.ID]; dup {
			bad(a.line, "%s: duplicate account id %q", where, a.ID)
		}
		ids[a.ID] = a.Carrier
		switch a.Carrier {
		case "onelink", "unicom", "telecom", "cisco":
		default:
			bad(a.line, "%s: carrier %q: want onelink, unicom, telecom or cisco", where, a.Carrier)
		}
		if a.Endpoint == "" {
			bad(a.line, "%s: endpoint is required", where)
		}
		if a.SecretEnv != "" && os.Getenv(a.SecretEnv) == "" {
			bad(a.line, "%s: environment variable %s (secret_env) is empty", where, a.SecretEnv)
		}
		if a.SecretFile != "" {
			if b, err := os.ReadFile(a.SecretFile); err != nil || strings.TrimSpace(string(b)) == "" {
				bad(a.line, "%s: secret_file %s is unreadable or empty", where, a.SecretFile)
			}
		}
		if a.SecretEnv == "" && a.Secret == "" && a.SecretFile == "" {
			bad(a.line, "%s: secret, secret_env or secret_file is required", where)
		}
		if a.RatePerSec <= 0 {
			bad(a.line, "%s: rate_per_sec must be positive", where)
		}
		if a.TTL < 0 {
			bad(a.line, "%s: ttl must not be negative", where)
		}
	}
	eids := map[string]bool{}
	for i, e := range c.Enterprises {
		where := fmt.Sprintf("enterprises[%d]", i)
		if e.ID == "" {
			bad(e.line, "%s: id is required", where)
		} else if eids[e.ID] {
			bad(e.line, "%s: duplicate enterprise id %q", where, e.ID)
		}
		eids[e.ID] = true
		for carrierName, acct := range e.Accounts {
			got, ok := ids[acct]
			switch {
			case !ok:
				bad(e.line, "%s: account %q is not defined under accounts", where, acct)
			case got != carrierName:
				bad(e.line, "%s: account %q is a %s account, not %s", where, acct, got, carrierName)
			}
		}
	}
	if k := c.Node.Encrypt; k != "" {
		if _, err := node.ParseGossipKey(k); err != nil {
			bad(0, "node.encrypt: %v", err)
		}
	}
	if (c.Node.TLSCert != "" || c.Node.TLSKey != "" || c.Node.TLSCA != "") && (c.Node.TLSCert == "" || c.Node.TLSKey == "" || c.Node.TLSCA == "") {
		bad(0, "node.tls_cert, node.tls_key and node.tls_ca go together")
	}
	if p := c.Node.Profile; p != "" && p != "lan" && p != "fast" {
		bad(0, "node.profile %q: want lan or fast", p)
	}
	return errors.Join(errs...)
}

// carrierConfig builds the carrier client configuration, resolving credentials.
func (a AccountFile) carrierConfig() carrier.AccountConfig {
	cfg := carrier.DefaultAccountConfig()
	cfg.ID, cfg.Carrier, cfg.Endpoint = a.ID, a.Carrier, strings.TrimRight(a.Endpoint, "/")
	cfg.AppID, cfg.Secret, cfg.OpenID, cfg.CustNumber = a.AppID, a.Secret, a.OpenID, a.CustNumber
	if a.AppIDEnv != "" {
		cfg.AppID = os.Getenv(a.AppIDEnv)
	}
	if a.SecretEnv != "" {
		cfg.Secret = os.Getenv(a.SecretEnv)
	}
	if a.SecretFile != "" {
		if b, err := os.ReadFile(a.SecretFile); err == nil {
			cfg.Secret = strings.TrimSpace(string(b))
		}
	}
	cfg.RatePerSec = a.RatePerSec
	if a.Burst > 0 {
		cfg.Burst = a.Burst
	}
	if a.Concurrency > 0 {
		cfg.Concurrency = a.Concurrency
	}
	if a.Timeout > 0 {
		cfg.Timeout = a.Timeout
	}
	return cfg
}

// fsmAccount is the replicated record of the account (no credentials).
func (a AccountFile) fsmAccount() fsm.Account {
	ttl := a.TTL
	if ttl == 0 {
		ttl = time.Hour
	}
	return fsm.Account{ID: a.ID, Carrier: a.Carrier, TTL: ttl, RatePerSec: a.RatePerSec, Burst: max(a.Burst, 1),
		Concurrency: max(a.Concurrency, 1), BatchSize: carrier.DefaultBatchSize(a.Carrier), CredentialsValid: true}
}
