package carrier

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/emmansun/gmsm/sm3"
)

// UnicomDetailsPath is the CMP gateway's wsGetTerminalDetails (<=50 ICCIDs).
const UnicomDetailsPath = "/api/wsGetTerminalDetails/V1/1Main/vV1.1"

// Unicom timestamp layouts: the adapter sends the first; the second is seen
// in some clients and accepted by the simulator.
const (
	UnicomTimestampLayout    = "2006-01-02 15:04:05.000"
	UnicomTimestampLayoutAlt = "2006-01-02 15:04:05 000"
)

// UnicomToken computes the CMP gateway token:
// lowerhex(SM3("app_id"+appID+"timestamp"+ts+"trans_id"+transID+secret)).
func UnicomToken(appID, ts, transID, secret string) string {
	sum := sm3.Sum([]byte("app_id" + appID + "timestamp" + ts + "trans_id" + transID + secret))
	return hex.EncodeToString(sum[:])
}

// unicomKind maps a CMP/Jasper code to a Kind.
func unicomKind(code string) Kind {
	switch code {
	case "0000", "0":
		return KindOK
	case "40000029":
		return KindRateLimited
	case "10000001", "10000002", "10000003":
		return KindAuthInvalid
	case "20000001":
		return KindNotFound
	case "10000021":
		return KindInvalidRequest
	}
	return KindPermanent
}

type unicom struct {
	t      *transport
	appID  string
	secret string
	openID string
	seq    atomic.Uint32
}

func newUnicom(cfg AccountConfig, t *transport) *unicom {
	return &unicom{t: t, appID: cfg.AppID, secret: cfg.Secret, openID: cfg.OpenID}
}

func (u *unicom) Carrier() string { return Unicom }
func (u *unicom) BatchSize() int  { return 50 }

type unicomRequest struct {
	AppID     string     `json:"app_id"`
	Timestamp string     `json:"timestamp"`
	TransID   string     `json:"trans_id"`
	Token     string     `json:"token"`
	Data      unicomData `json:"data"`
}

type unicomData struct {
	MessageID string   `json:"messageId"`
	OpenID    string   `json:"openId"`
	Version   string   `json:"version"`
	ICCIDs    []string `json:"iccids"`
}

type unicomTerminal struct {
	ICCID                flexString `json:"iccid"`
	MSISDN               flexString `json:"msisdn"`
	IMSI                 flexString `json:"imsi"`
	IMEI                 flexString `json:"imei"`
	SimStatus            flexString `json:"simStatus"`
	Status               flexString `json:"status"`
	RatePlan             flexString `json:"ratePlan"`
	DateActivated        flexString `json:"dateActivated"`
	DateAdded            flexString `json:"dateAdded"`
	DateModified         flexString `json:"dateModified"`
	MonthToDateDataUsage flexString `json:"monthToDateDataUsage"`
	ErrorCode            flexString `json:"errorCode"`
	ErrorMessage         flexString `json:"errorMessage"`
}

type unicomResponse struct {
	Status  flexString `json:"status"`
	Message flexString `json:"message"`
	Data    struct {
		ResultCode flexString       `json:"resultCode"`
		ResultDesc flexString       `json:"resultDesc"`
		Terminals  []unicomTerminal `json:"terminals"`
	} `json:"data"`
}

// unicomPeriod labels the billing cycle (27th to 26th) by the month it ends in.
func unicomPeriod(now time.Time) string {
	t := now.In(cst)
	if t.Day() >= 27 {
		t = time.Date(t.Year(), t.Month()+1, 1, 0, 0, 0, 0, cst)
	}
	return t.Format("2006-01")
}

// Query costs one gated call per batch of up to 50.
func (u *unicom) Query(ctx context.Context, iccids []string) ([]Result, error) {
	if err := checkBatch(u.t, len(iccids), u.BatchSize()); err != nil {
		return nil, err
	}
	norm, distinct, results := prepare(Unicom, u.t.account, iccids)
	if len(distinct) == 0 {
		return results, nil
	}
	now := u.t.now()
	ts := now.In(cst).Format(UnicomTimestampLayout)
	tid := now.In(cst).Format("20060102150405000") + fmt.Sprintf("%06d", u.seq.Add(1)%1000000)
	req := unicomRequest{
		AppID: u.appID, Timestamp: ts, TransID: tid,
		Token: UnicomToken(u.appID, ts, tid, u.secret),
		Data:  unicomData{MessageID: tid, OpenID: u.openID, Version: "1.0", ICCIDs: distinct},
	}
	raw, err := json.Marshal(req)
	if err != nil {
		return nil, u.t.errorf(KindInvalidRequest, "", 0, err, "encode request")
	}
	r, err := u.t.do(ctx, true, http.MethodPost, UnicomDetailsPath, nil, raw, nil)
	if err != nil {
		return nil, err
	}
	cards, errs, err := u.parse(r, distinct, now)
	if err != nil {
		return nil, err
	}
	return fill(Unicom, u.t.account, norm, results, cards, errs), nil
}

// parse decodes a wsGetTerminalDetails answer. A whole-call 20000001 marks
// every requested card not found; it does not fail the call.
func (u *unicom) parse(r *response, requested []string, now time.Time) (map[string]*Card, map[string]error, error) {
	if e := u.t.httpError(r); e != nil {
		return nil, nil, e
	}
	var resp unicomResponse
	if err := u.t.decode(r, &resp); err != nil {
		return nil, nil, err
	}
	code, msg := string(resp.Status), string(resp.Message)
	if code == "" {
		code, msg = string(resp.Data.ResultCode), string(resp.Data.ResultDesc)
	}
	if code == "" {
		return nil, nil, u.t.errorf(KindTransient, "", r.status, nil, "response without status")
	}
	cards := make(map[string]*Card)
	errs := make(map[string]error)
	switch k := unicomKind(code); k {
	case KindOK:
	case KindNotFound:
		for _, id := range requested {
			errs[id] = &Error{Carrier: Unicom, Account: u.t.account, Kind: KindNotFound, Code: code, Message: truncate(msg)}
		}
		return cards, errs, nil
	default:
		e := u.t.errorf(k, code, r.status, nil, "%s", truncate(msg))
		if k == KindRateLimited {
			e.RetryAfter = parseRetryAfter(r.header, u.t.now())
		}
		return nil, nil, e
	}
	period := unicomPeriod(now)
	for _, tm := range resp.Data.Terminals {
		iccid, err := NormalizeICCID(string(tm.ICCID))
		if err != nil {
			continue
		}
		if ec := string(tm.ErrorCode); ec != "" {
			if k := unicomKind(ec); k != KindOK {
				errs[iccid] = &Error{Carrier: Unicom, Account: u.t.account, Kind: k, Code: ec, Message: truncate(string(tm.ErrorMessage))}
				continue
			}
		}
		raw := string(tm.SimStatus)
		if raw == "" {
			raw = string(tm.Status)
		}
		used, _ := unitBytes(string(tm.MonthToDateDataUsage), "MB")
		cards[iccid] = &Card{
			ICCID: iccid, MSISDN: string(tm.MSISDN), IMSI: string(tm.IMSI), IMEI: string(tm.IMEI),
			Status: UnicomStatus(raw), RawStatus: raw, RatePlan: string(tm.RatePlan),
			DataUsedBytes: used, UsagePeriod: period,
			ActivatedAt:     parseTime(string(tm.DateActivated)),
			OpenedAt:        parseTime(string(tm.DateAdded)),
			SourceUpdatedAt: parseTime(string(tm.DateModified)),
			FetchedAt:       now,
		}
	}
	return cards, errs, nil
}
