package main

import (
	"testing"
)

// FuzzParseConfig feeds arbitrary text to the configuration file parser: it must never
// panic, and whatever it accepts passes validation.
func FuzzParseConfig(f *testing.F) {
	f.Add([]byte("node:\n  name: n1\n  bind: 127.0.0.1:7946\n  join: [127.0.0.1:7956]\n"))
	f.Add([]byte("node:\n  encrypt: AAAAAAAAAAAAAAAAAAAAAA==\n  admin_token: 0123456789abcdef0123\n  tls_cert: c.pem\n  tls_key: k.pem\n  tls_ca: ca.pem\n"))
	f.Add([]byte("accounts:\n  - id: ol-1\n    carrier: onelink\n    endpoint: http://127.0.0.1:1\n    secret: s\n    rate_per_sec: 5\nenterprises:\n  - id: acme\n    accounts: {onelink: ol-1}\n"))
	f.Add([]byte("sync:\n  poll_interval: 5s\n  lease: -1s\n"))
	f.Add([]byte("node: [1, 2\n"))
	f.Add([]byte("&a [*a]"))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := ParseConfig("fuzz.yaml", data)
		if err != nil {
			return
		}
		if err := cfg.Validate("fuzz.yaml"); err != nil {
			t.Fatalf("accepted a config that fails validation: %v", err)
		}
	})
}
