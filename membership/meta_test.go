package membership

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestMetaRoundTrip(t *testing.T) {
	tests := []Meta{
		{},
		{RaftAddr: "127.0.0.1:8300", HTTPAddr: "127.0.0.1:8700", BootstrapExpect: 3, Ready: true, Voter: true, Version: 1},
		{RaftAddr: "[::1]:8300", Draining: true, Leaving: true, Version: -2, BootstrapExpect: 5},
		{RaftAddr: strings.Repeat("r", 240), HTTPAddr: strings.Repeat("h", 240)},
	}
	for _, m := range tests {
		b, err := EncodeMeta(m)
		if err != nil {
			t.Fatalf("EncodeMeta(%+v): %v", m, err)
		}
		got, err := DecodeMeta(b)
		if err != nil || got != m {
			t.Fatalf("round trip of %+v = %+v, %v", m, got, err)
		}
		// Fields appended by a later format are ignored.
		if got, err := DecodeMeta(append(b, 0xff, 0x01)); err != nil || got != m {
			t.Fatalf("with trailing bytes: %+v, %v", got, err)
		}
	}
	typical, _ := EncodeMeta(tests[1])
	if len(typical) > 40 {
		t.Errorf("typical meta encodes to %d bytes", len(typical))
	}
}

func TestMetaLimit(t *testing.T) {
	tests := []struct {
		name    string
		raftLen int
		wantErr bool
	}{
		{"fits", MetaMaxSize - 20, false},
		{"just over", MetaMaxSize, true},
		{"far over", 4096, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := EncodeMeta(Meta{RaftAddr: strings.Repeat("a", tt.raftLen)})
			if tt.wantErr {
				if !errors.Is(err, ErrMetaTooLarge) {
					t.Fatalf("err = %v, want ErrMetaTooLarge", err)
				}
				return
			}
			if err != nil || len(b) > MetaMaxSize {
				t.Fatalf("len %d err %v", len(b), err)
			}
		})
	}
}

func TestDecodeMetaRejectsGarbage(t *testing.T) {
	good, _ := EncodeMeta(Meta{RaftAddr: "127.0.0.1:8300", HTTPAddr: "127.0.0.1:8700"})
	tests := map[string][]byte{
		"nil":            nil,
		"one byte":       {1},
		"format zero":    {0, 0, 0, 0, 0, 0},
		"truncated":      good[:len(good)-3],
		"huge length":    {1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f},
		"bad varint":     {1, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
		"missing fields": {1, 0, 2},
	}
	for name, b := range tests {
		if _, err := DecodeMeta(b); !errors.Is(err, ErrBadMeta) {
			t.Errorf("%s: err = %v, want ErrBadMeta", name, err)
		}
	}
}

func FuzzDecodeMeta(f *testing.F) {
	good, _ := EncodeMeta(Meta{RaftAddr: "127.0.0.1:8300", HTTPAddr: "x", Ready: true})
	f.Add(good)
	f.Add([]byte{1, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeMeta(b)
		if err != nil {
			return
		}
		// Whatever decodes re-encodes and decodes to the same value.
		b2, err := EncodeMeta(m)
		if err != nil {
			if len(m.RaftAddr)+len(m.HTTPAddr) < MetaMaxSize-30 {
				t.Fatalf("re-encode: %v", err)
			}
			return
		}
		if m2, err := DecodeMeta(b2); err != nil || m2 != m {
			t.Fatalf("re-decode %+v vs %+v (%v)", m2, m, err)
		}
	})
}

func TestConfigValidate(t *testing.T) {
	base := DefaultConfig()
	base.Name = "n1"
	if err := base.Validate(); err != nil {
		t.Fatalf("default config with a name: %v", err)
	}
	tests := []struct {
		name   string
		mutate func(*Config)
	}{
		{"no name", func(c *Config) { c.Name = "" }},
		{"long name", func(c *Config) { c.Name = strings.Repeat("n", 129) }},
		{"bind without port", func(c *Config) { c.BindAddr = "127.0.0.1" }},
		{"bind hostname", func(c *Config) { c.BindAddr = "localhost:7946" }},
		{"bind bad port", func(c *Config) { c.BindAddr = "127.0.0.1:70000" }},
		{"bad advertise", func(c *Config) { c.AdvertiseAddr = "example.com:1" }},
		{"bad profile", func(c *Config) { c.Profile = "wan" }},
		{"oversize meta", func(c *Config) { c.Meta.HTTPAddr = strings.Repeat("h", 600) }},
		{"leaving meta", func(c *Config) { c.Meta.Leaving = true }},
		{"negative reclaim", func(c *Config) { c.DeadNodeReclaimTime = -time.Second }},
		{"bad key", func(c *Config) { c.SecretKey = make([]byte, 15) }},
		{"zero retry interval", func(c *Config) { c.JoinRetryInterval = 0 }},
		{"max interval below interval", func(c *Config) { c.JoinRetryMaxInterval = c.JoinRetryInterval / 2 }},
		{"negative retry max", func(c *Config) { c.JoinRetryMax = -1 }},
		{"zero broadcast timeout", func(c *Config) { c.BroadcastTimeout = 0 }},
		{"zero event buffer", func(c *Config) { c.EventBuffer = 0 }},
		{"zero tombstone ttl", func(c *Config) { c.TombstoneTTL = 0 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := base
			tt.mutate(&c)
			if err := c.Validate(); !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("Validate = %v, want ErrInvalidConfig", err)
			}
		})
	}
	ok := []func(*Config){
		func(c *Config) { c.AdvertiseAddr = "10.0.0.5" },
		func(c *Config) { c.AdvertiseAddr = "10.0.0.5:7000" },
		func(c *Config) { c.Profile = ProfileFast; c.BindAddr = "[::1]:0" },
		func(c *Config) { c.SecretKey = make([]byte, 32); c.JoinRetryMax = 0 },
	}
	for i, mutate := range ok {
		c := base
		mutate(&c)
		if err := c.Validate(); err != nil {
			t.Errorf("valid case %d: %v", i, err)
		}
	}
}

func TestProfiles(t *testing.T) {
	c := DefaultConfig()
	c.Name = "p"
	lan := c.memberlistConfig()
	c.Profile = ProfileFast
	fast := c.memberlistConfig()
	if lan.ProbeInterval != time.Second || lan.SuspicionMult != 4 {
		t.Errorf("lan: probe %s mult %d", lan.ProbeInterval, lan.SuspicionMult)
	}
	if fast.ProbeInterval != 400*time.Millisecond || fast.ProbeTimeout != 200*time.Millisecond ||
		fast.SuspicionMult != 2 || fast.GossipInterval != 100*time.Millisecond {
		t.Errorf("fast: %+v", fast)
	}
	if lan.DeadNodeReclaimTime != 30*time.Second || lan.BindPort != 7946 || lan.AdvertiseAddr != "" {
		t.Errorf("lan: reclaim %s port %d advertise %q", lan.DeadNodeReclaimTime, lan.BindPort, lan.AdvertiseAddr)
	}
	c.BindAddr = "127.0.0.1:0"
	c.AdvertiseAddr = "10.1.2.3:7000"
	adv := c.memberlistConfig()
	if adv.AdvertiseAddr != "10.1.2.3" || adv.AdvertisePort != 7000 {
		t.Errorf("advertise %s:%d", adv.AdvertiseAddr, adv.AdvertisePort)
	}
}
