package carrier

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"strings"
	"time"
)

// Telecom 5GCMP paths.
const (
	TelecomInfoPath = "/api/v1/prod/batchQrySimInfo"         // BQ018, accessNumbers <= 100 (ICCIDs accepted)
	TelecomFlowPath = "/api/v1/batchQry/batchQryFlowByMonth" // monthly usage, accessNumber <= 100
	// TelecomTimestampLayout is the Timestamp header's layout (GMT+8).
	TelecomTimestampLayout = "20060102150405"
)

// TelecomSign computes the 5GCMP Sign header:
// UPPER(hex(ascii(lowerhex(MD5(sortedQuery + body + secretKey + timestamp))))).
func TelecomSign(sortedQuery, body, secret, ts string) string {
	sum := md5.Sum([]byte(sortedQuery + body + secret + ts))
	lower := hex.EncodeToString(sum[:])
	return strings.ToUpper(hex.EncodeToString([]byte(lower)))
}

// telecomKind maps a 5GCMP/DCP code to a Kind.
func telecomKind(code string) Kind {
	switch code {
	case "0", "0000":
		return KindOK
	case "101004":
		return KindRateLimited
	case "-1", "-3":
		return KindAuthInvalid
	case "-4":
		return KindNotFound
	case "-2":
		return KindInvalidRequest
	case "-7":
		return KindTransient
	}
	return KindPermanent
}

type telecom struct {
	t          *transport
	appKey     string
	secret     string
	custNumber string
}

func newTelecom(cfg AccountConfig, t *transport) *telecom {
	return &telecom{t: t, appKey: cfg.AppID, secret: cfg.Secret, custNumber: cfg.CustNumber}
}

func (c *telecom) Carrier() string { return Telecom }
func (c *telecom) BatchSize() int  { return 100 }

type telecomEnvelope struct {
	Code    flexString      `json:"code"`
	Msg     flexString      `json:"msg"`
	Message flexString      `json:"message"`
	Data    json.RawMessage `json:"data"`
}

type telecomSimInfo struct {
	AccessNumber  flexString `json:"accessNumber"`
	ICCID         flexString `json:"iccid"`
	IMSI          flexString `json:"imsi"`
	IMEI          flexString `json:"imei"`
	SimStatus     flexString `json:"simStatus"`
	ActiveTime    flexString `json:"activeTime"`
	CreateTime    flexString `json:"createTime"`
	StatusTime    flexString `json:"statusTime"`
	MainOfferName flexString `json:"mainOfferName"`
	Result        flexString `json:"result"`
	ResultMsg     flexString `json:"resultMsg"`
}

type telecomFlow struct {
	AccessNumber flexString `json:"accessNumber"`
	ICCID        flexString `json:"iccid"`
	Unit         flexString `json:"unit"`
	FlowAmount   flexString `json:"flowAmount"`
	Month        flexString `json:"month"`
	Status       flexString `json:"status"`
}

func (c *telecom) post(ctx context.Context, path string, body any) (*telecomEnvelope, *response, error) {
	raw, err := json.Marshal(body)
	if err != nil {
		return nil, nil, c.t.errorf(KindInvalidRequest, "", 0, err, "encode request")
	}
	ts := c.t.now().In(cst).Format(TelecomTimestampLayout)
	h := http.Header{}
	h.Set("AppKey", c.appKey)
	h.Set("Timestamp", ts)
	h.Set("Sign", TelecomSign("", string(raw), c.secret, ts))
	r, err := c.t.do(ctx, true, http.MethodPost, path, nil, raw, h)
	if err != nil {
		return nil, nil, err
	}
	env, err := c.envelope(r)
	return env, r, err
}

func (c *telecom) envelope(r *response) (*telecomEnvelope, error) {
	if e := c.t.httpError(r); e != nil {
		return nil, e
	}
	var env telecomEnvelope
	if err := c.t.decode(r, &env); err != nil {
		return nil, err
	}
	code := string(env.Code)
	if code == "" {
		return nil, c.t.errorf(KindTransient, "", r.status, nil, "response without code")
	}
	if k := telecomKind(code); k != KindOK {
		msg := string(env.Msg)
		if msg == "" {
			msg = string(env.Message)
		}
		e := c.t.errorf(k, code, r.status, nil, "%s", truncate(msg))
		if k == KindRateLimited {
			e.RetryAfter = parseRetryAfter(r.header, c.t.now())
		}
		return &env, e
	}
	return &env, nil
}

// parseInfo reads a batchQrySimInfo answer; rows are matched to the request
// by their iccid, else by the accessNumber echoed back.
func (c *telecom) parseInfo(env *telecomEnvelope, now time.Time) (map[string]*Card, map[string]error, error) {
	var data struct {
		List []telecomSimInfo `json:"qrySimInfoList"`
	}
	if len(env.Data) > 0 && string(env.Data) != "null" {
		if err := json.Unmarshal(env.Data, &data); err != nil {
			return nil, nil, c.t.errorf(KindTransient, "", 0, err, "malformed data")
		}
	}
	cards := make(map[string]*Card, len(data.List))
	errs := make(map[string]error)
	for _, row := range data.List {
		iccid, err := NormalizeICCID(string(row.ICCID))
		if err != nil {
			if iccid, err = NormalizeICCID(string(row.AccessNumber)); err != nil {
				continue
			}
		}
		if res := string(row.Result); res != "" {
			if k := telecomKind(res); k != KindOK {
				errs[iccid] = &Error{Carrier: Telecom, Account: c.t.account, Kind: k, Code: res, Message: truncate(string(row.ResultMsg))}
				continue
			}
		}
		raw := string(row.SimStatus)
		msisdn := string(row.AccessNumber)
		if _, err := NormalizeICCID(msisdn); err == nil {
			msisdn = ""
		}
		cards[iccid] = &Card{
			ICCID: iccid, MSISDN: msisdn, IMSI: string(row.IMSI), IMEI: string(row.IMEI),
			Status: TelecomStatus(raw), RawStatus: raw, RatePlan: string(row.MainOfferName),
			ActivatedAt:     parseTime(string(row.ActiveTime)),
			OpenedAt:        parseTime(string(row.CreateTime)),
			StatusChangedAt: parseTime(string(row.StatusTime)),
			UsagePeriod:     usagePeriod(now),
			FetchedAt:       now,
		}
	}
	return cards, errs, nil
}

// applyFlow reads a batchQryFlowByMonth answer into cards.
func (c *telecom) applyFlow(env *telecomEnvelope, cards map[string]*Card) error {
	var rows []telecomFlow
	if len(env.Data) > 0 && string(env.Data) != "null" {
		if err := json.Unmarshal(env.Data, &rows); err != nil {
			return c.t.errorf(KindTransient, "", 0, err, "malformed usage data")
		}
	}
	for _, row := range rows {
		if s := string(row.Status); s != "" && s != "0" {
			continue
		}
		iccid, err := NormalizeICCID(string(row.ICCID))
		if err != nil {
			if iccid, err = NormalizeICCID(string(row.AccessNumber)); err != nil {
				continue
			}
		}
		card := cards[iccid]
		if card == nil {
			continue
		}
		if b, ok := unitBytes(string(row.FlowAmount), string(row.Unit)); ok {
			card.DataUsedBytes = b
		}
	}
	return nil
}

// Query costs two gated calls per batch of up to 100: batchQrySimInfo and,
// for the cards found, batchQryFlowByMonth. ICCIDs go in accessNumbers.
func (c *telecom) Query(ctx context.Context, iccids []string) ([]Result, error) {
	if err := checkBatch(c.t, len(iccids), c.BatchSize()); err != nil {
		return nil, err
	}
	norm, distinct, results := prepare(Telecom, c.t.account, iccids)
	if len(distinct) == 0 {
		return results, nil
	}
	now := c.t.now()
	env, _, err := c.post(ctx, TelecomInfoPath, map[string]any{"custNumber": c.custNumber, "accessNumbers": distinct})
	var cards map[string]*Card
	var errs map[string]error
	switch {
	case KindOf(err) == KindNotFound:
		cards, errs = map[string]*Card{}, map[string]error{}
		for _, id := range distinct {
			errs[id] = &Error{Carrier: Telecom, Account: c.t.account, Kind: KindNotFound, Code: "-4", Message: "not found"}
		}
	case err != nil:
		return nil, err
	default:
		if cards, errs, err = c.parseInfo(env, now); err != nil {
			return nil, err
		}
	}
	found := make([]string, 0, len(cards))
	for _, id := range distinct {
		if cards[id] != nil {
			found = append(found, id)
		}
	}
	if len(found) > 0 {
		body := map[string]any{"custNumber": c.custNumber, "accessNumber": found, "month": now.In(cst).Format("200601")}
		env, _, err := c.post(ctx, TelecomFlowPath, body)
		if err != nil && KindOf(err) != KindNotFound {
			return nil, err
		}
		if err == nil {
			if err := c.applyFlow(env, cards); err != nil {
				return nil, err
			}
		}
	}
	return fill(Telecom, c.t.account, norm, results, cards, errs), nil
}
