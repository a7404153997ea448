package carrier

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// OneLink v5 paths (under the endpoint, e.g. https://api.iot.10086.cn).
const (
	OneLinkTokenPath = "/v5/ec/get/token"
	OneLinkInfoPath  = "/v5/ec/query/sim-card-info/batch"          // 25S05, <=100 ICCIDs joined by "_"
	OneLinkUsagePath = "/v5/ec/query/sim-data-usage-monthly/batch" // 25U03, <=100, dataAmount in KB
	oneLinkTokenLead = 0.1                                         // refresh when 10% of the ttl is left
)

// OneLink codes the adapter branches on.
const (
	OneLinkCodeOK           = "0"
	OneLinkCodeTokenExpired = "12021"
)

// oneLinkKind maps a OneLink status code (v5 and v2) to a Kind.
func oneLinkKind(code string) Kind {
	switch code {
	case "0":
		return KindOK
	case "12021":
		return KindAuthExpired
	case "12004", "12022", "7":
		return KindAuthInvalid
	case "12009", "12010", "12", "24", "25":
		return KindNotFound
	case "11000", "10":
		return KindInvalidRequest
	case "72", "75":
		return KindRateLimited
	case "71", "73", "74":
		return KindTransient
	}
	return KindPermanent
}

type oneLink struct {
	t        *transport
	appID    string
	password string
	seq      atomic.Uint32

	mu       sync.Mutex
	token    string
	refresh  time.Time // fetch a new token from here on
	inflight *tokenCall
}

type tokenCall struct {
	done  chan struct{}
	token string
	err   error
}

func newOneLink(cfg AccountConfig, t *transport) *oneLink {
	return &oneLink{t: t, appID: cfg.AppID, password: cfg.Secret}
}

func (o *oneLink) Carrier() string { return OneLink }
func (o *oneLink) BatchSize() int  { return 100 }

// transID is appid + yyyyMMddHHmmss (GMT+8) + an 8-digit sequence.
func (o *oneLink) transID() string {
	n := o.seq.Add(1) % 100000000
	return o.appID + o.t.now().In(cst).Format("20060102150405") + fmt.Sprintf("%08d", n)
}

// getToken returns the cached token, fetching one when there is none, when
// it is due for refresh, or when stale (a token the carrier rejected) is
// still the cached one. Concurrent callers share one fetch.
func (o *oneLink) getToken(ctx context.Context, stale string) (string, error) {
	o.mu.Lock()
	if o.token != "" && o.token != stale && o.t.now().Before(o.refresh) {
		tok := o.token
		o.mu.Unlock()
		return tok, nil
	}
	if c := o.inflight; c != nil {
		o.mu.Unlock()
		select {
		case <-c.done:
			if c.err != nil {
				return "", c.err
			}
			return c.token, nil
		case <-ctx.Done():
			return "", o.t.errorf(KindTransient, "", 0, ctx.Err(), "waiting for token")
		}
	}
	c := &tokenCall{done: make(chan struct{})}
	o.inflight = c
	o.mu.Unlock()

	tok, ttl, err := o.fetchToken(ctx)
	o.mu.Lock()
	o.inflight = nil
	if err == nil {
		o.token = tok
		o.refresh = o.t.now().Add(ttl - time.Duration(float64(ttl)*oneLinkTokenLead))
	}
	c.token, c.err = tok, err
	close(c.done)
	o.mu.Unlock()
	return tok, err
}

func (o *oneLink) fetchToken(ctx context.Context) (string, time.Duration, error) {
	q := url.Values{"appid": {o.appID}, "password": {o.password}, "transid": {o.transID()}}
	r, err := o.t.do(ctx, false, http.MethodGet, OneLinkTokenPath, q, nil, nil)
	if err != nil {
		return "", 0, err
	}
	o.t.logger.Debug("token fetched", "http", r.status)
	return o.parseToken(r)
}

type oneLinkEnvelope struct {
	Status  flexString      `json:"status"`
	Message flexString      `json:"message"`
	Result  json.RawMessage `json:"result"`
}

func (o *oneLink) envelope(r *response) (*oneLinkEnvelope, error) {
	if e := o.t.httpError(r); e != nil {
		return nil, e
	}
	var env oneLinkEnvelope
	if err := o.t.decode(r, &env); err != nil {
		return nil, err
	}
	code := string(env.Status)
	if code == "" {
		return nil, o.t.errorf(KindTransient, "", r.status, nil, "response without status")
	}
	if k := oneLinkKind(code); k != KindOK {
		e := o.t.errorf(k, code, r.status, nil, "%s", truncate(string(env.Message)))
		if k == KindRateLimited {
			e.RetryAfter = parseRetryAfter(r.header, o.t.now())
		}
		return &env, e
	}
	return &env, nil
}

func (o *oneLink) parseToken(r *response) (string, time.Duration, error) {
	env, err := o.envelope(r)
	if err != nil {
		return "", 0, err
	}
	var items []struct {
		Token flexString `json:"token"`
		TTL   flexString `json:"ttl"`
	}
	if err := json.Unmarshal(env.Result, &items); err != nil || len(items) == 0 || items[0].Token == "" {
		return "", 0, o.t.errorf(KindTransient, "", r.status, nil, "token response without a token")
	}
	ttl := time.Hour
	if s, err := strconv.ParseFloat(string(items[0].TTL), 64); err == nil && s >= 1 && s < 1e7 {
		ttl = time.Duration(s * float64(time.Second))
	}
	return string(items[0].Token), ttl, nil
}

// call makes one data call, refreshing the token once on 12021.
func (o *oneLink) call(ctx context.Context, path string, params map[string]string) (*oneLinkEnvelope, *response, error) {
	stale := ""
	for attempt := 0; ; attempt++ {
		tok, err := o.getToken(ctx, stale)
		if err != nil {
			return nil, nil, err
		}
		body := map[string]string{"transid": o.transID(), "token": tok}
		for k, v := range params {
			body[k] = v
		}
		raw, err := json.Marshal(body)
		if err != nil {
			return nil, nil, o.t.errorf(KindInvalidRequest, "", 0, err, "encode request")
		}
		r, err := o.t.do(ctx, true, http.MethodPost, path, nil, raw, nil)
		if err != nil {
			return nil, nil, err
		}
		env, err := o.envelope(r)
		if KindOf(err) == KindAuthExpired && attempt == 0 {
			o.t.logger.Debug("token expired, refreshing", "path", path)
			stale = tok
			continue
		}
		return env, r, err
	}
}

type oneLinkInfoItem struct {
	Status         flexString `json:"status"`
	Message        flexString `json:"message"`
	ICCID          flexString `json:"iccid"`
	MSISDN         flexString `json:"msisdn"`
	IMSI           flexString `json:"imsi"`
	IMEI           flexString `json:"imei"`
	CardStatus     flexString `json:"cardStatus"`
	LastChangeDate flexString `json:"lastChangeDate"`
	ActiveDate     flexString `json:"activeDate"`
	OpenDate       flexString `json:"openDate"`
	OfferingName   flexString `json:"offeringName"`
}

// parseInfo reads a 25S05 batch answer: per-item status, identifiers and,
// where present, cardStatus/lastChangeDate/activeDate/openDate.
func (o *oneLink) parseInfo(env *oneLinkEnvelope, now time.Time) (map[string]*Card, map[string]error, error) {
	var items []oneLinkInfoItem
	if err := json.Unmarshal(env.Result, &items); err != nil {
		return nil, nil, o.t.errorf(KindTransient, "", 0, err, "malformed result list")
	}
	cards := make(map[string]*Card, len(items))
	errs := make(map[string]error)
	for _, it := range items {
		iccid, err := NormalizeICCID(string(it.ICCID))
		if err != nil {
			continue
		}
		code := string(it.Status)
		if code == "" {
			code = "0"
		}
		if k := oneLinkKind(code); k != KindOK {
			errs[iccid] = &Error{Carrier: OneLink, Account: o.t.account, Kind: k, Code: code, Message: truncate(string(it.Message))}
			continue
		}
		raw := string(it.CardStatus)
		if raw == "99" {
			errs[iccid] = &Error{Carrier: OneLink, Account: o.t.account, Kind: KindNotFound, Code: "99", Message: "number does not exist"}
			continue
		}
		st := StatusUnknown
		if raw != "" {
			st = OneLinkStatus(raw)
		}
		cards[iccid] = &Card{
			ICCID: iccid, MSISDN: string(it.MSISDN), IMSI: string(it.IMSI), IMEI: string(it.IMEI),
			Status: st, RawStatus: raw, RatePlan: string(it.OfferingName),
			StatusChangedAt: parseTime(string(it.LastChangeDate)),
			ActivatedAt:     parseTime(string(it.ActiveDate)),
			OpenedAt:        parseTime(string(it.OpenDate)),
			UsagePeriod:     usagePeriod(now),
			FetchedAt:       now,
		}
	}
	return cards, errs, nil
}

type oneLinkUsageItem struct {
	Status         flexString         `json:"status"`
	ICCID          flexString         `json:"iccid"`
	DataAmount     flexString         `json:"dataAmount"`
	DataAmountList []oneLinkUsageItem `json:"dataAmountList"`
}

// applyUsage reads a 25U03 monthly batch answer (KB) into cards.
func (o *oneLink) applyUsage(env *oneLinkEnvelope, cards map[string]*Card) error {
	var items []oneLinkUsageItem
	if err := json.Unmarshal(env.Result, &items); err != nil {
		return o.t.errorf(KindTransient, "", 0, err, "malformed usage list")
	}
	var walk func(list []oneLinkUsageItem, depth int)
	walk = func(list []oneLinkUsageItem, depth int) {
		for _, it := range list {
			if len(it.DataAmountList) > 0 && depth == 0 {
				walk(it.DataAmountList, depth+1)
				continue
			}
			if s := string(it.Status); s != "" && s != "0" {
				continue
			}
			iccid, err := NormalizeICCID(string(it.ICCID))
			if err != nil {
				continue
			}
			c := cards[iccid]
			if c == nil {
				continue
			}
			if b, ok := unitBytes(string(it.DataAmount), "KB"); ok {
				c.DataUsedBytes = b
			}
		}
	}
	walk(items, 0)
	return nil
}

// Query costs two gated calls per batch of up to 100: 25S05 (identifiers,
// status) and 25U03 (this month's usage) for the cards found.
func (o *oneLink) Query(ctx context.Context, iccids []string) ([]Result, error) {
	if err := checkBatch(o.t, len(iccids), o.BatchSize()); err != nil {
		return nil, err
	}
	norm, distinct, results := prepare(OneLink, o.t.account, iccids)
	if len(distinct) == 0 {
		return results, nil
	}
	now := o.t.now()
	env, _, err := o.call(ctx, OneLinkInfoPath, map[string]string{"iccids": strings.Join(distinct, "_")})
	if err != nil {
		return nil, err
	}
	cards, errs, err := o.parseInfo(env, now)
	if err != nil {
		return nil, err
	}
	found := make([]string, 0, len(cards))
	for _, id := range distinct {
		if cards[id] != nil {
			found = append(found, id)
		}
	}
	if len(found) > 0 {
		params := map[string]string{"iccids": strings.Join(found, "_"), "queryDate": now.In(cst).Format("200601")}
		env, _, err := o.call(ctx, OneLinkUsagePath, params)
		if err != nil {
			return nil, err
		}
		if err := o.applyUsage(env, cards); err != nil {
			return nil, err
		}
	}
	return fill(OneLink, o.t.account, norm, results, cards, errs), nil
}

// truncate keeps carrier messages short in errors.
func truncate(s string) string {
	const max = 200
	if len(s) <= max {
		return s
	}
	cut := max
	for cut > 0 && !utf8RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}

func utf8RuneStart(b byte) bool { return b&0xC0 != 0x80 }
