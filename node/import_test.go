package node_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"cardsync/node"
	"cardsync/testcluster"
)

// send makes one request with a raw body and decodes the JSON answer into out (if any).
func send(t testing.TB, method, url, contentType string, body io.Reader, out any) int {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if out != nil && len(raw) > 0 {
		if err := json.Unmarshal(raw, out); err != nil {
			t.Fatalf("%s %s: decode %q: %v", method, url, raw, err)
		}
	}
	return resp.StatusCode
}

func postJSON(t testing.TB, url string, in, out any) int {
	t.Helper()
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	return send(t, http.MethodPost, url, "application/json", bytes.NewReader(b), out)
}

// iccid builds a valid 20-character ICCID from a number.
func iccid(i int) string { return fmt.Sprintf("8986%016d", i) }

// importResp is the body of POST /v1/cards, success or rejection.
type importResp struct {
	OK           bool                   `json:"ok"`
	Cards        int                    `json:"cards"`
	Added        int                    `json:"added"`
	Updated      int                    `json:"updated"`
	Error        string                 `json:"error"`
	InvalidLines int                    `json:"invalid_lines"`
	Lines        []node.ImportLineError `json:"lines"`
}

// importFixture is a single node with two enterprises and accounts created through the API.
func importFixture(t *testing.T) (base string, n *node.Node) {
	t.Helper()
	c := testcluster.New(t, testcluster.Options{Nodes: 1, NoSim: true})
	c.WaitStable(15 * time.Second)
	n = c.Members[0].Node()
	base = "http://" + n.HTTPAddr()
	for _, a := range []map[string]any{
		{"id": "cm-1", "carrier": "onelink", "ttl": int64(time.Hour), "rate_per_sec": 10, "burst": 1, "concurrency": 1, "batch_size": 50, "credentials_valid": true},
		{"id": "cu-1", "carrier": "unicom", "ttl": int64(time.Hour), "rate_per_sec": 10, "burst": 1, "concurrency": 1, "batch_size": 50, "credentials_valid": true},
	} {
		var body map[string]any
		if code := postJSON(t, base+"/v1/accounts", a, &body); code != 200 {
			t.Fatalf("create account %v: %d %v", a["id"], code, body)
		}
	}
	for _, e := range []map[string]any{
		{"id": "ent-a", "name": "A", "accounts": map[string]string{"onelink": "cm-1"}, "inventory_ready": true},
		{"id": "ent-b", "name": "B", "accounts": map[string]string{"unicom": "cu-1"}, "inventory_ready": true},
	} {
		var body map[string]any
		if code := postJSON(t, base+"/v1/enterprises", e, &body); code != 200 {
			t.Fatalf("create enterprise %v: %d %v", e["id"], code, body)
		}
	}
	return base, n
}

func cardCount(t testing.TB, n *node.Node) int {
	t.Helper()
	c, err := n.FSM().Counts()
	if err != nil {
		t.Fatal(err)
	}
	return c.Cards
}

func csvBody(rows ...string) string {
	return "enterprise,iccid,account,msisdn\n" + strings.Join(rows, "\n") + "\n"
}

func TestImportRejectsBadInputWhole(t *testing.T) {
	base, n := importFixture(t)
	good := fmt.Sprintf("ent-a,%s,cm-1,1380000", iccid(1))
	// One good import first, so "card of another enterprise" has something to hit.
	var ok importResp
	if code := send(t, "POST", base+"/v1/cards", "text/csv", strings.NewReader(csvBody(good)), &ok); code != 200 || ok.Added != 1 {
		t.Fatalf("seed import: %d %+v", code, ok)
	}
	cases := []struct {
		name, ct, body string
		wantLine       int    // a line the error list must name (0: any)
		wantMsg        string // text the first matching error must contain
	}{
		{"invalid ICCID", "text/csv", csvBody(fmt.Sprintf("ent-a,%s,cm-1,", iccid(2)), "ent-a,89XYZ,cm-1,"), 3, "invalid ICCID"},
		{"short ICCID", "text/csv", csvBody("ent-a,8986001,cm-1,"), 2, "invalid ICCID"},
		{"unknown enterprise", "text/csv", csvBody(fmt.Sprintf("ent-a,%s,cm-1,", iccid(3)), fmt.Sprintf("nope,%s,cm-1,", iccid(4))), 3, "unknown enterprise"},
		{"duplicate lines", "text/csv", csvBody(fmt.Sprintf("ent-a,%s,cm-1,", iccid(5)), fmt.Sprintf("ent-a,%s,cm-1,", iccid(6)), fmt.Sprintf("ent-a,%s,cm-1,", iccid(5))), 4, "duplicate ICCID (first on line 2)"},
		{"account of another enterprise", "text/csv", csvBody(fmt.Sprintf("ent-a,%s,cu-1,", iccid(7))), 2, "not a carrier account of enterprise"},
		{"card of another enterprise", "text/csv", csvBody(fmt.Sprintf("ent-b,%s,cu-1,", iccid(1))), 2, "already belongs to enterprise"},
		{"missing account", "text/csv", csvBody(fmt.Sprintf("ent-a,%s,,", iccid(8))), 2, "account is required"},
		{"missing column", "text/csv", "enterprise,iccid\nent-a," + iccid(9) + "\n", 1, "lacks column account"},
		{"malformed CSV", "text/csv", csvBody(fmt.Sprintf("ent-a,%s,cm-1,", iccid(10)), `ent-a,"8986,cm-1,`), 0, ""},
		{"malformed NDJSON", "application/x-ndjson", fmt.Sprintf(`{"enterprise":"ent-a","iccid":"%s","account":"cm-1"}`+"\n{\"enterprise\": \n", iccid(11)), 2, "malformed JSON"},
		{"unknown NDJSON field", "application/x-ndjson", fmt.Sprintf(`{"enterprise":"ent-a","iccid":"%s","account":"cm-1","colour":"red"}`+"\n", iccid(12)), 1, "unknown field"},
		{"NDJSON duplicate", "application/x-ndjson", fmt.Sprintf(`{"enterprise":"ent-a","iccid":"%s","account":"cm-1"}`+"\n"+`{"enterprise":"ent-a","iccid":"%s","account":"cm-1"}`+"\n", iccid(13), strings.ToLower(iccid(13))), 2, "duplicate ICCID"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := cardCount(t, n)
			var r importResp
			code := send(t, "POST", base+"/v1/cards", tc.ct, strings.NewReader(tc.body), &r)
			if code != 400 || r.OK {
				t.Fatalf("status %d, body %+v; want 400", code, r)
			}
			if !strings.Contains(r.Error, "nothing was applied") || r.InvalidLines == 0 || len(r.Lines) != r.InvalidLines {
				t.Fatalf("rejection must say nothing was applied and list every line: %+v", r)
			}
			if tc.wantLine > 0 {
				found := false
				for _, l := range r.Lines {
					if l.Line == tc.wantLine && strings.Contains(l.Error, tc.wantMsg) {
						found = true
					}
				}
				if !found {
					t.Fatalf("no error for line %d containing %q: %+v", tc.wantLine, tc.wantMsg, r.Lines)
				}
			}
			if after := cardCount(t, n); after != before {
				t.Fatalf("cards %d -> %d: a rejected import changed the inventory", before, after)
			}
		})
	}

	for _, tc := range []struct{ name, ct, body, want string }{
		{"empty body", "text/csv", "enterprise,iccid,account\n", "no cards"},
		{"unknown format", "", "x", "unknown format"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			url := base + "/v1/cards"
			if tc.ct == "" {
				url += "?format=xml"
			}
			var r importResp
			if code := send(t, "POST", url, tc.ct, strings.NewReader(tc.body), &r); code != 400 || !strings.Contains(r.Error, tc.want) {
				t.Fatalf("status %d %+v; want 400 with %q", code, r, tc.want)
			}
		})
	}
}

func TestImportCSVAndNDJSON(t *testing.T) {
	base, n := importFixture(t)
	var rows []string
	for i := 0; i < 120; i++ {
		rows = append(rows, fmt.Sprintf("ent-a,%s,cm-1,13800%05d", iccid(100+i), i))
	}
	var r importResp
	if code := send(t, "POST", base+"/v1/cards", "text/csv", strings.NewReader(csvBody(rows...)), &r); code != 200 || !r.OK || r.Added != 120 || r.Cards != 120 {
		t.Fatalf("csv import: %d %+v", code, r)
	}
	var nd strings.Builder
	for i := 0; i < 80; i++ {
		// Lower-case ICCIDs are normalised; blank lines are ignored.
		fmt.Fprintf(&nd, `{"enterprise":"ent-b","iccid":"%s","account":"cu-1","imsi":"46001%010d"}`+"\n\n", strings.ToLower(iccid(1000+i)), i)
	}
	if code := send(t, "POST", base+"/v1/cards", "application/x-ndjson", strings.NewReader(nd.String()), &r); code != 200 || r.Added != 80 {
		t.Fatalf("ndjson import: %d %+v", code, r)
	}
	if got := cardCount(t, n); got != 200 {
		t.Fatalf("cards after imports: %d, want 200", got)
	}
	// The same file again only updates.
	if code := send(t, "POST", base+"/v1/cards?format=csv", "", strings.NewReader(csvBody(rows...)), &r); code != 200 || r.Added != 0 || r.Updated+r.Added > 120 {
		t.Fatalf("re-import: %d %+v", code, r)
	}
	if got := cardCount(t, n); got != 200 {
		t.Fatalf("cards after re-import: %d, want 200", got)
	}

	// The imported cards read back, one and by enterprise in pages.
	var card struct {
		ICCID, Enterprise, Account, MSISDN, Shard string
	}
	if code := getJSON(t, base+"/v1/cards/"+strings.ToLower(iccid(100)), &card); code != 200 || card.Enterprise != "ent-a" || card.Account != "cm-1" || card.MSISDN != "1380000000" || card.Shard == "" {
		t.Fatalf("card: %d %+v", code, card)
	}
	seen := map[string]bool{}
	after := ""
	for page := 0; page < 10; page++ {
		var p struct {
			Cards []struct {
				ICCID string `json:"iccid"`
			} `json:"cards"`
			Next string `json:"next"`
		}
		if code := getJSON(t, base+"/v1/cards?enterprise=ent-b&limit=30&after="+after, &p); code != 200 {
			t.Fatalf("page %d: %d", page, code)
		}
		for _, c := range p.Cards {
			if seen[c.ICCID] {
				t.Fatalf("card %s on two pages", c.ICCID)
			}
			seen[c.ICCID] = true
		}
		if p.Next == "" {
			break
		}
		after = p.Next
	}
	if len(seen) != 80 {
		t.Fatalf("paged through %d cards of ent-b, want 80", len(seen))
	}
	var e map[string]any
	if code := getJSON(t, base+"/v1/cards?limit=-1", &e); code != 400 || e["error"] == nil {
		t.Fatalf("negative limit: %d %v", code, e)
	}
}

// zeros is an endless body of newlines (blank NDJSON lines) up to n bytes.
type zeros struct{ n int64 }

func (z *zeros) Read(p []byte) (int, error) {
	if z.n <= 0 {
		return 0, io.EOF
	}
	k := min(int64(len(p)), z.n)
	for i := range p[:k] {
		p[i] = '\n'
	}
	z.n -= k
	return int(k), nil
}

func TestImportOversizedBodyIs413(t *testing.T) {
	if testing.Short() {
		t.Skip("streams 256 MiB")
	}
	base, n := importFixture(t)
	body := io.MultiReader(strings.NewReader(fmt.Sprintf(`{"enterprise":"ent-a","iccid":"%s","account":"cm-1"}`+"\n", iccid(1))), &zeros{n: node.MaxImportBytes})
	var r importResp
	code := send(t, "POST", base+"/v1/cards", "application/x-ndjson", body, &r)
	if code != http.StatusRequestEntityTooLarge || !strings.Contains(r.Error, "larger than") {
		t.Fatalf("oversized import: %d %+v; want 413", code, r)
	}
	if got := cardCount(t, n); got != 0 {
		t.Fatalf("oversized import applied %d cards", got)
	}
}
