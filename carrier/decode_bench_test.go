package carrier

import (
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
)

// Decoding benchmarks: each op turns one full batch answer of a carrier (the bodies the
// carrier simulator sends, with realistic identifiers, stamps, plans and one card in 25
// unknown to the carrier) into per-card results exactly as the adapter's Query does after
// its HTTP calls: prepare, envelope, card decode, usage decode, fill. Run with -benchmem;
// ns/card divides an op by the cards of the batch.

// decodeBatch is one carrier's batch answer: the ICCIDs asked for and the bodies of the
// calls one Query makes (info first, then usage; Cisco: device, then ctdUsages).
type decodeBatch struct {
	iccids []string
	bodies [][]byte
	status []int
}

var (
	decodeNow   = time.Date(2025, 11, 14, 9, 30, 0, 0, time.UTC)
	decodePlans = []string{"物联网流量30M包月", "IoT-1GB-Monthly", "物联网定向流量1G", "GLOBAL-IOT-50MB"}
)

func decodeICCID(i int) string { return fmt.Sprintf("898600%014d", 31_000_000+i) }

func decodeStamp(i int) time.Time {
	return decodeNow.Add(-time.Duration(24*(i%400)+i%24) * time.Hour)
}

func mustJSON(b *testing.B, v any) []byte {
	b.Helper()
	out, err := json.Marshal(v)
	if err != nil {
		b.Fatal(err)
	}
	return out
}

// missing reports whether the i-th card of a batch is unknown to the carrier.
func missing(i int) bool { return i%25 == 24 }

func oneLinkBatch(b *testing.B, n int) decodeBatch {
	var d decodeBatch
	var info, usage []map[string]any
	for i := 0; i < n; i++ {
		id := decodeICCID(i)
		d.iccids = append(d.iccids, id)
		if missing(i) {
			info = append(info, map[string]any{"status": "12010", "message": "卡号不存在", "iccid": id})
			continue
		}
		cst := decodeStamp(i).In(cst).Format("2006-01-02 15:04:05")
		info = append(info, map[string]any{"status": "0", "message": "正确", "iccid": id,
			"msisdn": fmt.Sprintf("1440%09d", i), "imsi": fmt.Sprintf("46004%010d", i), "cardStatus": "2",
			"lastChangeDate": cst, "activeDate": cst, "openDate": cst, "offeringName": decodePlans[i%len(decodePlans)]})
		kb := fmt.Sprintf("%.2f", float64(i*7919%500000+1)/3)
		usage = append(usage, map[string]any{"msisdn": fmt.Sprintf("1440%09d", i), "imsi": fmt.Sprintf("46004%010d", i),
			"iccid": id, "dataAmount": kb, "apnDataAmountList": []map[string]string{{"apnName": "CMIOT", "apnDataAmount": kb}}})
	}
	d.bodies = [][]byte{
		mustJSON(b, map[string]any{"status": "0", "message": "正确", "result": info}),
		mustJSON(b, map[string]any{"status": "0", "message": "正确", "result": []any{map[string]any{"dataAmountList": usage}}}),
	}
	d.status = []int{http.StatusOK, http.StatusOK}
	return d
}

func unicomBatch(b *testing.B, n int) decodeBatch {
	var d decodeBatch
	var terms []map[string]any
	for i := 0; i < n; i++ {
		id := decodeICCID(i)
		d.iccids = append(d.iccids, id)
		if missing(i) {
			terms = append(terms, map[string]any{"iccid": id, "errorCode": "20000001", "errorMessage": "ICCID不存在"})
			continue
		}
		cst := decodeStamp(i).In(cst).Format("2006-01-02 15:04:05")
		terms = append(terms, map[string]any{"iccid": id, "msisdn": fmt.Sprintf("1460%09d", i),
			"imsi": fmt.Sprintf("46001%010d", i), "imei": fmt.Sprintf("86%013d", i), "simStatus": "2",
			"ratePlan": decodePlans[i%len(decodePlans)], "dateActivated": cst, "dateAdded": cst, "dateModified": cst,
			"monthToDateDataUsage": fmt.Sprintf("%.3f", float64(i*7919%900+1)/7), "realNameStatus": "1"})
	}
	d.bodies = [][]byte{mustJSON(b, map[string]any{"status": "0000", "message": "success", "data": map[string]any{"terminals": terms}})}
	d.status = []int{http.StatusOK}
	return d
}

func telecomBatch(b *testing.B, n int) decodeBatch {
	var d decodeBatch
	var info, flow []map[string]string
	month := decodeNow.In(cst).Format("200601")
	for i := 0; i < n; i++ {
		id := decodeICCID(i)
		d.iccids = append(d.iccids, id)
		if missing(i) {
			info = append(info, map[string]string{"accessNumber": id, "result": "-4", "resultMsg": "号码不存在"})
			continue
		}
		cst := decodeStamp(i).In(cst).Format("2006-01-02 15:04:05")
		msisdn := fmt.Sprintf("1064%09d", i)
		info = append(info, map[string]string{"accessNumber": msisdn, "iccid": id, "imsi": fmt.Sprintf("46011%010d", i),
			"simStatus": "1", "activeTime": cst, "createTime": cst, "mainOfferName": decodePlans[i%len(decodePlans)],
			"result": "0", "resultMsg": "成功"})
		flow = append(flow, map[string]string{"accessNumber": id, "result": "1", "unit": "MB",
			"flowAmount": fmt.Sprintf("%.2f", float64(i*7919%90000+1)/9), "month": month, "status": "0", "statusDesc": "查询成功"})
	}
	d.bodies = [][]byte{
		mustJSON(b, map[string]any{"code": "0", "message": "成功", "data": map[string]any{"qrySimInfoList": info}}),
		mustJSON(b, map[string]any{"code": 0, "msg": "查询成功", "data": flow}),
	}
	d.status = []int{http.StatusOK, http.StatusOK}
	return d
}

func ciscoBatch(b *testing.B) decodeBatch {
	id := decodeICCID(0)
	at := decodeStamp(3).UTC().Format("2006-01-02 15:04:05.000-0700")
	device := map[string]any{"iccid": id, "imsi": "204043000000001", "msisdn": "882350000000001", "imei": "352099001761481",
		"status": "ACTIVATED", "ratePlan": "GLOBAL-IOT-50MB", "communicationPlan": "CP-Default", "customer": "",
		"endConsumerId": "", "accountId": "1000001", "dateActivated": at, "dateUpdated": at, "dateShipped": at,
		"fixedIPAddress": "", "deviceID": "", "modemID": "", "globalSIMType": ""}
	usage := map[string]any{"iccid": id, "imsi": "204043000000001", "msisdn": "882350000000001", "ratePlan": "GLOBAL-IOT-50MB",
		"communicationPlan": "CP-Default", "ctdDataUsage": 48_213_377, "ctdSMSUsage": 12, "ctdVoiceUsage": 0,
		"ctdSessionCount": 7, "overageLimitReached": false, "overageLimitOverride": "DEFAULT"}
	return decodeBatch{iccids: []string{id}, bodies: [][]byte{mustJSON(b, device), mustJSON(b, usage)}, status: []int{http.StatusOK, http.StatusOK}}
}

func (d decodeBatch) response(i int) *response {
	return &response{status: d.status[i], header: http.Header{}, body: d.bodies[i]}
}

func (d decodeBatch) size() int64 {
	n := 0
	for _, body := range d.bodies {
		n += len(body)
	}
	return int64(n)
}

func decodeTransport(carrierName string) *transport {
	return &transport{carrier: carrierName, account: "bench", logger: hclog.NewNullLogger(), now: func() time.Time { return decodeNow },
		maxBody: 4 << 20, timeout: time.Second}
}

// decodeCase decodes d once and returns the results.
type decodeCase struct {
	name  string
	batch decodeBatch
	run   func(d decodeBatch) ([]Result, error)
}

func decodeCases(b *testing.B) []decodeCase {
	o := newOneLink(AccountConfig{AppID: "a", Secret: "s"}, decodeTransport(OneLink))
	u := newUnicom(AccountConfig{AppID: "a", Secret: "s"}, decodeTransport(Unicom))
	t := newTelecom(AccountConfig{AppID: "a", Secret: "s"}, decodeTransport(Telecom))
	c := newCisco(AccountConfig{AppID: "a", Secret: "s"}, decodeTransport(Cisco))
	return []decodeCase{
		{"onelink", oneLinkBatch(b, o.BatchSize()), func(d decodeBatch) ([]Result, error) {
			norm, _, results := prepare(OneLink, "bench", d.iccids)
			env, err := o.envelope(d.response(0))
			if err != nil {
				return nil, err
			}
			cards, errs, err := o.parseInfo(env, decodeNow)
			if err != nil {
				return nil, err
			}
			env, err = o.envelope(d.response(1))
			if err != nil {
				return nil, err
			}
			if err := o.applyUsage(env, cards); err != nil {
				return nil, err
			}
			return fill(OneLink, "bench", norm, results, cards, errs), nil
		}},
		{"unicom", unicomBatch(b, u.BatchSize()), func(d decodeBatch) ([]Result, error) {
			norm, distinct, results := prepare(Unicom, "bench", d.iccids)
			cards, errs, err := u.parse(d.response(0), distinct, decodeNow)
			if err != nil {
				return nil, err
			}
			return fill(Unicom, "bench", norm, results, cards, errs), nil
		}},
		{"telecom", telecomBatch(b, t.BatchSize()), func(d decodeBatch) ([]Result, error) {
			norm, _, results := prepare(Telecom, "bench", d.iccids)
			env, err := t.envelope(d.response(0))
			if err != nil {
				return nil, err
			}
			cards, errs, err := t.parseInfo(env, decodeNow)
			if err != nil {
				return nil, err
			}
			env, err = t.envelope(d.response(1))
			if err != nil {
				return nil, err
			}
			if err := t.applyFlow(env, cards); err != nil {
				return nil, err
			}
			return fill(Telecom, "bench", norm, results, cards, errs), nil
		}},
		{"cisco", ciscoBatch(b), func(d decodeBatch) ([]Result, error) {
			norm, distinct, results := prepare(Cisco, "bench", d.iccids)
			card, cardErr, err := c.parseDevice(d.response(0), decodeNow)
			if err != nil || cardErr != nil {
				return nil, fmt.Errorf("device: %v %w", cardErr, err)
			}
			used, cardErr, err := c.parseUsage(d.response(1))
			if err != nil || cardErr != nil {
				return nil, fmt.Errorf("usage: %v %w", cardErr, err)
			}
			card.DataUsedBytes = used
			return fill(Cisco, "bench", norm, results, map[string]*Card{distinct[0]: card}, map[string]error{}), nil
		}},
	}
}

// BenchmarkDecode decodes one full batch answer per op for each carrier adapter.
func BenchmarkDecode(b *testing.B) {
	for _, tc := range decodeCases(b) {
		b.Run(tc.name, func(b *testing.B) {
			// The answer must decode into one result per card, each a card with usage or
			// the carrier's not-found error.
			results, err := tc.run(tc.batch)
			if err != nil {
				b.Fatalf("decode: %v", err)
			}
			if len(results) != len(tc.batch.iccids) {
				b.Fatalf("%d results for %d cards", len(results), len(tc.batch.iccids))
			}
			for i, r := range results {
				wantMissing := missing(i) && len(results) > 1
				if (r.Err != nil) != wantMissing || (r.Card == nil) == (r.Err == nil) {
					b.Fatalf("result %d: card %+v, error %v", i, r.Card, r.Err)
				}
				if r.Card != nil && (r.Card.DataUsedBytes <= 0 || r.Card.ActivatedAt.IsZero()) {
					b.Fatalf("result %d: card without usage or activation: %+v", i, r.Card)
				}
			}
			b.SetBytes(tc.batch.size())
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := tc.run(tc.batch); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			perOp := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
			b.ReportMetric(perOp/float64(len(tc.batch.iccids)), "ns/card")
		})
	}
}
