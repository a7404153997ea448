package node

import (
	"bytes"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"cardsync/fsm"
)

// FuzzParseImport feeds arbitrary bodies to the bulk import decoder (CSV and NDJSON): it
// must never panic, and every card it accepts has a well-formed ICCID and an enterprise.
func FuzzParseImport(f *testing.F) {
	f.Add([]byte("enterprise,iccid,account\nacme,8986001234567890123,ol-1\n"), "csv")
	f.Add([]byte("iccid,enterprise,account,msisdn,imsi,imei\n8986001234567890123,acme,,1380000,4600000,3500000\n"), "")
	f.Add([]byte(`{"enterprise":"acme","iccid":"8986001234567890123","account":"ol-1"}`+"\n"), "ndjson")
	f.Add([]byte("{\"iccid\":1}\n{}\n\n{"), "")
	f.Add([]byte("enterprise,iccid\n\"unterminated,x\n"), "csv")
	f.Add([]byte{0xff, 0xfe, 0, '\n'}, "bogus")
	f.Fuzz(func(t *testing.T, body []byte, format string) {
		cards, lines, err := ParseImport(bytes.NewReader(body), format)
		var ie *ImportError
		if err != nil && !errors.As(err, &ie) {
			return
		}
		if len(lines) != 0 && len(lines) != len(cards) {
			t.Fatalf("%d cards, %d line numbers", len(cards), len(lines))
		}
		for _, c := range cards {
			if !fsmICCID(c.ICCID) || strings.TrimSpace(c.Enterprise) == "" {
				t.Fatalf("accepted a bad card %+v", c)
			}
		}
	})
}

// FuzzDecodeBody feeds arbitrary bodies to the admin JSON decoder for every request type
// the API decodes: it answers 400 or 413 or decodes, never panics, and never reads past
// the body limit.
func FuzzDecodeBody(f *testing.F) {
	for _, s := range []string{
		`{"enterprise":"acme"}`, `{"iccids":["8986001234567890123"]}`, `{"on":true,"reason":"r"}`,
		`{"op":"install","key":"AAAAAAAAAAAAAAAAAAAAAA=="}`, `{"id":"ol-1","carrier":"onelink","ttl":1}`,
		`{"cursor":"x","next_run_at":"2024-01-01T00:00:00Z","new_task":true}`, `{"unknown":1}`, `[1,2`, `null`, ``,
	} {
		for k := uint8(0); k < 7; k++ {
			f.Add([]byte(s), k)
		}
	}
	f.Fuzz(func(t *testing.T, body []byte, kind uint8) {
		var v any
		switch kind % 7 {
		case 0:
			v = new(fsm.Resync)
		case 1:
			v = new(fsm.SetMaintenance)
		case 2:
			v = new(KeyringRequest)
		case 3:
			v = new(fsm.Account)
		case 4:
			v = new(fsm.UpsertEnterprise)
		case 5:
			v = new(struct {
				Cursor    *string    `json:"cursor"`
				NextRunAt *time.Time `json:"next_run_at"`
				NewTask   bool       `json:"new_task"`
			})
		default:
			v = new(struct {
				Reason string `json:"reason"`
				On     bool   `json:"on"`
				ID     string `json:"id"`
			})
		}
		r := httptest.NewRequest(http.MethodPost, "/v1/x", bytes.NewReader(body))
		w := httptest.NewRecorder()
		if decodeBody(w, r, v) {
			return
		}
		if w.Code != http.StatusBadRequest && w.Code != http.StatusRequestEntityTooLarge {
			t.Fatalf("rejected body answered %d", w.Code)
		}
	})
}
