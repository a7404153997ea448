package fsm

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

func TestEnvelopeRoundTrip(t *testing.T) {
	now := time.Date(2025, 11, 2, 3, 4, 5, 6, time.UTC)
	next := now.Add(time.Minute)
	cursor := iccid(5)
	payloads := []any{
		UpsertAccount{Account: Account{ID: "a", Carrier: CarrierCisco, TTL: time.Hour}},
		&UpsertEnterprise{ID: "e", Accounts: map[string]string{CarrierCisco: "a"}},
		ImportCards{Cards: []CardImport{{ICCID: iccid(1), Enterprise: "e"}}},
		Claim{Shard: "g1-0", Node: "n", Epoch: 3, Lease: time.Second},
		StartTask{Shard: "g1-0", Node: "n", Epoch: 3, DepVersion: 9},
		Flush{Shard: "g1-0", Results: []CardResult{{ICCID: iccid(1), Data: &CardData{Status: "active", ActivatedAt: now}}}, NextRunAt: next},
		Release{Shard: "g1-0", NextRunAt: next},
		RevokeNode{Node: "n"},
		ForceRelease{Shard: "g1-0"},
		Resync{ICCIDs: []string{iccid(1)}},
		SetCheckpoint{Shard: "g1-0", Cursor: &cursor, NextRunAt: &next, NewTask: true},
		SetMaintenance{On: true, Reason: "upgrade"},
		SetAccountStatus{Account: "a", Valid: false, Reason: "expired"},
	}
	for _, p := range payloads {
		typ, _ := payloadType(p)
		t.Run(typ.String(), func(t *testing.T) {
			b, err := Encode(typ, p)
			if err != nil {
				t.Fatal(err)
			}
			c, err := Decode(b)
			if err != nil {
				t.Fatal(err)
			}
			if !c.Time.IsZero() || c.Type != typ {
				t.Fatalf("unstamped decode: %+v", c)
			}
			if err := Stamp(b, now); err != nil {
				t.Fatal(err)
			}
			if c, err = Decode(b); err != nil || !c.Time.Equal(now) {
				t.Fatalf("stamped decode: %+v %v", c, err)
			}
			got, err := DecodePayload(c)
			if err != nil {
				t.Fatal(err)
			}
			want := fmt.Sprintf("%+v", deref(p))
			if s := fmt.Sprintf("%+v", deref(got)); s != want {
				t.Fatalf("payload\n got %s\nwant %s", s, want)
			}
		})
	}
}

func deref(p any) any {
	switch v := p.(type) {
	case *UpsertEnterprise:
		return *v
	case *UpsertAccount:
		return *v
	case *ImportCards:
		return *v
	case *Claim:
		return *v
	case *StartTask:
		return *v
	case *Flush:
		return flushString(*v)
	case Flush:
		return flushString(v)
	case *Release:
		return *v
	case *RevokeNode:
		return *v
	case *ForceRelease:
		return *v
	case *Resync:
		return *v
	case *SetCheckpoint:
		return fmt.Sprintf("%s %s %s %t", v.Shard, *v.Cursor, v.NextRunAt.UTC(), v.NewTask)
	case SetCheckpoint:
		return fmt.Sprintf("%s %s %s %t", v.Shard, *v.Cursor, v.NextRunAt.UTC(), v.NewTask)
	case *SetMaintenance:
		return *v
	case *SetAccountStatus:
		return *v
	}
	return p
}

func TestEncodeRejectsMismatchedPayload(t *testing.T) {
	if _, err := Encode(TypeClaim, Release{}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("got %v, want ErrInvalid", err)
	}
	if _, err := Encode(Type(99), Claim{}); !errors.Is(err, ErrUnknownCommand) {
		t.Fatalf("got %v, want ErrUnknownCommand", err)
	}
}

func TestDecodeErrors(t *testing.T) {
	good, _ := Encode(TypeClaim, Claim{Shard: "g0-0"})
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"empty", nil, ErrBadCommand},
		{"short header", good[:5], ErrBadCommand},
		{"version 2", append([]byte{2}, good[1:]...), ErrUnknownCommand},
		{"type 0", append([]byte{1, 0}, good[2:]...), ErrUnknownCommand},
		{"type 200", append([]byte{1, 200}, good[2:]...), ErrUnknownCommand},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Decode(tc.in); !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
	// A header with a corrupt payload decodes; its payload does not.
	bad := append(append([]byte{}, good[:headerLen]...), 0xc1, 0xff, 0x00)
	c, err := Decode(bad)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := DecodePayload(c); !errors.Is(err, ErrBadCommand) {
		t.Fatalf("corrupt payload: got %v, want ErrBadCommand", err)
	}
	if err := Stamp(nil, time.Now()); !errors.Is(err, ErrBadCommand) {
		t.Fatalf("stamp short: %v", err)
	}
}

func TestTypeString(t *testing.T) {
	for typ := TypeUpsertAccount; typ <= lastType; typ++ {
		if s := typ.String(); s == "" || s[0] == 't' && s[1] == 'y' {
			t.Errorf("type %d has no name: %q", typ, s)
		}
		if p := newPayload(typ); p == nil {
			t.Errorf("type %s has no payload", typ)
		} else if pt, ok := payloadType(p); !ok || pt != typ {
			t.Errorf("payload of %s maps to %s", typ, pt)
		}
	}
	if s := Type(0).String(); s != "type(0)" {
		t.Errorf("unknown type: %q", s)
	}
}

func TestErrorCodes(t *testing.T) {
	sentinels := []error{ErrStaleEpoch, ErrNotOwner, ErrClaimedElsewhere, ErrGroupBusy, ErrMaintenance,
		ErrNotFound, ErrInvalid, ErrUnknownCommand, ErrBadCommand, ErrCursorBack}
	seen := map[string]bool{}
	for _, s := range sentinels {
		wrapped := fmt.Errorf("%w: shard g1-0 at epoch 4", s)
		code := ErrorCode(wrapped)
		if code == "" || code == CodeInternal || seen[code] {
			t.Fatalf("%v: bad code %q", s, code)
		}
		seen[code] = true
		back := ErrorFromCode(code, wrapped.Error())
		if !errors.Is(back, s) || back.Error() != wrapped.Error() {
			t.Fatalf("%s: rebuilt %v does not match %v", code, back, wrapped)
		}
		for _, other := range sentinels {
			if other != s && errors.Is(back, other) {
				t.Fatalf("%s also matches %v", code, other)
			}
		}
	}
	if ErrorCode(nil) != "" || ErrorFromCode("", "x") != nil {
		t.Fatal("nil error must map to empty code and back")
	}
	if ErrorCode(errors.New("disk")) != CodeInternal {
		t.Fatal("plain error must be internal")
	}
	if err := ErrorFromCode("no_such_code", "boom"); err == nil || err.Error() != "boom" {
		t.Fatalf("unknown code: %v", err)
	}
}

func TestParseShardID(t *testing.T) {
	tests := []struct {
		id   string
		g, n int
		ok   bool
	}{
		{"g0-0", 0, 0, true}, {"g63-12", 63, 12, true}, {"g-1", 0, 0, false}, {"x1-0", 0, 0, false},
		{"g01-0", 0, 0, false}, {"g1-", 0, 0, false}, {"g1", 0, 0, false}, {"g1--2", 0, 0, false},
	}
	for _, tc := range tests {
		g, n, err := ParseShardID(tc.id)
		if (err == nil) != tc.ok || (tc.ok && (g != tc.g || n != tc.n)) {
			t.Errorf("%q: got %d %d %v", tc.id, g, n, err)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		mod  func(*Config)
		ok   bool
	}{
		{"default with path", func(c *Config) { c.Path = "x" }, true},
		{"no path", func(*Config) {}, false},
		{"negative history", func(c *Config) { c.Path = "x"; c.HistoryPerShard = -1 }, false},
		{"negative retention", func(c *Config) { c.Path = "x"; c.ChangeRetention = -1 }, false},
		{"negative mmap", func(c *Config) { c.Path = "x"; c.MmapSize = -1 }, false},
	}
	for _, tc := range tests {
		c := DefaultConfig()
		tc.mod(&c)
		if err := c.Validate(); (err == nil) != tc.ok {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
}

func flushString(f Flush) string {
	d := *f.Results[0].Data
	f.Results = []CardResult{{ICCID: f.Results[0].ICCID}}
	return fmt.Sprintf("%+v %+v", f, d)
}
