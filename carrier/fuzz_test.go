package carrier

import (
	"net/http"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
)

func fuzzTransport(carrierName string) *transport {
	return &transport{carrier: carrierName, account: "fuzz", logger: hclog.NewNullLogger(), now: time.Now, maxBody: 1 << 20, timeout: time.Second}
}

func fuzzResponse(status int, body []byte) *response {
	if status < 100 || status > 599 {
		status = 200
	}
	h := http.Header{}
	h.Set("Retry-After", "2")
	return &response{status: status, header: h, body: body}
}

var fuzzICCIDs = []string{"89860012345678901234", "898604821221D0121000"}

// Each target feeds arbitrary bodies to every decoder of one adapter; the
// property is "no panic, and either an error or well-formed cards".
func checkCards(t *testing.T, cards map[string]*Card) {
	for id, c := range cards {
		if c == nil || c.ICCID != id || c.DataUsedBytes < 0 {
			t.Fatalf("bad card %q: %+v", id, c)
		}
	}
}

func FuzzOneLinkDecode(f *testing.F) {
	f.Add(200, []byte(`{"status":"0","message":"正确","result":[{"status":"0","iccid":"89860012345678901234","msisdn":"1440000000001","imsi":"460000000000001","cardStatus":"2","lastChangeDate":"2024-06-01 12:00:00"},{"status":"12009","iccid":"898604821221D0121000"}]}`))
	f.Add(200, []byte(`{"status":"0","result":[{"dataAmountList":[{"iccid":"89860012345678901234","dataAmount":"1024.5"}]}]}`))
	f.Add(200, []byte(`{"status":"0","message":"正确","result":[{"token":"abc","ttl":"3600"}]}`))
	f.Add(200, []byte(`{"status":"12021","message":"TOKEN不存在或已过期","result":[]}`))
	f.Add(200, []byte(`{"status":72,"result":{}}`))
	f.Add(502, []byte(`<html>bad gateway</html>`))
	f.Add(200, []byte(`{"status":"0","result":[{"iccid":"8986`))
	f.Fuzz(func(t *testing.T, status int, body []byte) {
		o := newOneLink(AccountConfig{AppID: "a", Secret: "s"}, fuzzTransport(OneLink))
		r := fuzzResponse(status, body)
		_, _, _ = o.parseToken(r)
		env, err := o.envelope(r)
		if err != nil {
			if KindOf(err) == KindOK {
				t.Fatal("error without kind")
			}
			return
		}
		cards, _, err := o.parseInfo(env, time.Now())
		if err == nil {
			checkCards(t, cards)
			_ = o.applyUsage(env, cards)
			checkCards(t, cards)
		}
	})
}

func FuzzUnicomDecode(f *testing.F) {
	f.Add(200, []byte(`{"status":"0000","message":"success","data":{"terminals":[{"iccid":"89860012345678901234","simStatus":"2","monthToDateDataUsage":"12.5","dateActivated":"2024-01-01 00:00:00"}]}}`))
	f.Add(200, []byte(`{"status":"40000029","message":"接口请求超过限制次数"}`))
	f.Add(200, []byte(`{"data":{"resultCode":"0000","terminals":[{"iccid":"898604821221D0121000","errorCode":"20000001"}]}}`))
	f.Add(200, []byte(`{"status":"20000001"}`))
	f.Add(200, []byte(`{"status":"0000","data":{"terminals":[{"iccid":1,"monthToDateDataUsage":1e400}]}}`))
	f.Fuzz(func(t *testing.T, status int, body []byte) {
		u := newUnicom(AccountConfig{AppID: "a", Secret: "s"}, fuzzTransport(Unicom))
		cards, _, err := u.parse(fuzzResponse(status, body), fuzzICCIDs, time.Now())
		if err == nil {
			checkCards(t, cards)
		} else if KindOf(err) == KindOK {
			t.Fatal("error without kind")
		}
	})
}

func FuzzTelecomDecode(f *testing.F) {
	f.Add(200, []byte(`{"code":"0","message":"成功","data":{"qrySimInfoList":[{"accessNumber":"1064900000001","iccid":"89860012345678901234","simStatus":"4","activeTime":"2024-01-01 00:00:00","result":"0"},{"accessNumber":"898604821221D0121000","result":"-4"}]}}`))
	f.Add(200, []byte(`{"code":0,"msg":"查询成功","data":[{"accessNumber":"89860012345678901234","result":"1","unit":"MB","flowAmount":"42118.59","month":"202406","status":"0"}]}`))
	f.Add(200, []byte(`{"code":"101004","msg":"请求过于频繁"}`))
	f.Add(200, []byte(`{"code":"-3"}`))
	f.Add(200, []byte(`{"code":"0","data":null}`))
	f.Fuzz(func(t *testing.T, status int, body []byte) {
		c := newTelecom(AccountConfig{AppID: "a", Secret: "s"}, fuzzTransport(Telecom))
		env, err := c.envelope(fuzzResponse(status, body))
		if err != nil {
			if KindOf(err) == KindOK {
				t.Fatal("error without kind")
			}
			return
		}
		cards, _, err := c.parseInfo(env, time.Now())
		if err == nil {
			checkCards(t, cards)
			_ = c.applyFlow(env, cards)
			checkCards(t, cards)
		}
	})
}

func FuzzCiscoDecode(f *testing.F) {
	f.Add(200, []byte(`{"iccid":"89860012345678901234","imsi":"460010000000001","status":"ACTIVATED","dateActivated":"2016-07-06 22:33:29.920+0000"}`))
	f.Add(200, []byte(`{"iccid":"89860012345678901234","ctdDataUsage":123456}`))
	f.Add(401, []byte(`{"errorMessage":"Invalid credentials","errorCode":"10000001"}`))
	f.Add(404, []byte(`{"errorMessage":"Resource not found","errorCode":"20000001"}`))
	f.Add(429, []byte(`{"errorCode":"40000029"}`))
	f.Add(200, []byte(`<html>`))
	f.Fuzz(func(t *testing.T, status int, body []byte) {
		c := newCisco(AccountConfig{AppID: "a", Secret: "s"}, fuzzTransport(Cisco))
		r := fuzzResponse(status, body)
		card, cardErr, err := c.parseDevice(r, time.Now())
		if err == nil && cardErr == nil && (card == nil || card.ICCID == "") {
			t.Fatal("no card and no error")
		}
		used, _, err := c.parseUsage(r)
		if err == nil && used < 0 {
			t.Fatal("negative usage")
		}
	})
}

func TestSignaturesMatchKnownVectors(t *testing.T) {
	if got := UnicomToken("", "", "", ""); len(got) != 64 {
		t.Fatalf("unicom token length %d", len(got))
	}
	if got := TelecomSign("", "{}", "k", "20240601120000"); len(got) != 64 {
		t.Fatalf("telecom sign length %d", len(got))
	}
	cases := []struct {
		amount, unit string
		want         int64
		ok           bool
	}{
		{"1", "KB", 1024, true}, {"1.5", "MB", 1572864, true}, {"2", "GB", 2 << 30, true},
		{"", "MB", 0, true}, {"-1", "MB", 0, false}, {"NaN", "MB", 0, false}, {"1e300", "GB", 0, false}, {"1", "PB", 0, false},
	}
	for _, c := range cases {
		got, ok := unitBytes(c.amount, c.unit)
		if got != c.want || ok != c.ok {
			t.Errorf("unitBytes(%q,%q) = %d,%v", c.amount, c.unit, got, ok)
		}
	}
}
