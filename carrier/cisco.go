package carrier

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strconv"
	"time"
)

// CiscoDevicesPath is the Control Center REST prefix; a card costs
// GET {prefix}/{iccid} and GET {prefix}/{iccid}/ctdUsages.
const CiscoDevicesPath = "/rws/api/v1/devices/"

// ciscoKind maps a Control Center errorCode to a Kind.
func ciscoKind(code string) Kind {
	switch code {
	case "10000001":
		return KindAuthInvalid
	case "20000001":
		return KindNotFound
	case "40000029":
		return KindRateLimited
	case "10000021":
		return KindInvalidRequest
	}
	return KindOK
}

type cisco struct {
	t    *transport
	auth string
}

func newCisco(cfg AccountConfig, t *transport) *cisco {
	return &cisco{t: t, auth: "Basic " + base64.StdEncoding.EncodeToString([]byte(cfg.AppID+":"+cfg.Secret))}
}

func (c *cisco) Carrier() string { return Cisco }
func (c *cisco) BatchSize() int  { return 1 }

type ciscoDevice struct {
	ICCID         flexString `json:"iccid"`
	IMSI          flexString `json:"imsi"`
	MSISDN        flexString `json:"msisdn"`
	IMEI          flexString `json:"imei"`
	Status        flexString `json:"status"`
	RatePlan      flexString `json:"ratePlan"`
	DateActivated flexString `json:"dateActivated"`
	DateShipped   flexString `json:"dateShipped"`
	DateAdded     flexString `json:"dateAdded"`
	DateUpdated   flexString `json:"dateUpdated"`
}

type ciscoUsage struct {
	ICCID        flexString `json:"iccid"`
	CtdDataUsage flexString `json:"ctdDataUsage"`
}

type ciscoError struct {
	ErrorMessage flexString `json:"errorMessage"`
	ErrorCode    flexString `json:"errorCode"`
}

// classify turns a non-2xx answer into a whole-call error (returned as
// err) or a per-card error (returned as cardErr).
func (c *cisco) classify(r *response) (cardErr, err error) {
	if r.status >= 200 && r.status < 300 {
		return nil, nil
	}
	var body ciscoError
	_ = json.Unmarshal(r.body, &body)
	code, msg := string(body.ErrorCode), truncate(string(body.ErrorMessage))
	k := ciscoKind(code)
	if k == KindOK {
		switch {
		case r.status == http.StatusNotFound:
			k = KindNotFound
		case r.status == http.StatusBadRequest:
			k = KindInvalidRequest
		case r.status == http.StatusTooManyRequests:
			k = KindRateLimited
		case r.status == http.StatusUnauthorized || r.status == http.StatusForbidden:
			k = KindAuthInvalid
		case r.status >= 500 || r.status == http.StatusRequestTimeout:
			k = KindTransient
		default:
			k = KindPermanent
		}
	}
	if code == "" {
		code = strconv.Itoa(r.status)
		if msg == "" {
			msg = http.StatusText(r.status)
		}
	}
	e := c.t.errorf(k, code, r.status, nil, "%s", msg)
	switch k {
	case KindNotFound, KindInvalidRequest:
		return e, nil
	case KindRateLimited:
		e.RetryAfter = parseRetryAfter(r.header, c.t.now())
	}
	return nil, e
}

func (c *cisco) get(ctx context.Context, path string) (*response, error) {
	h := http.Header{}
	h.Set("Authorization", c.auth)
	return c.t.do(ctx, true, http.MethodGet, path, nil, nil, h)
}

// parseDevice decodes a Get Device Details answer.
func (c *cisco) parseDevice(r *response, now time.Time) (*Card, error, error) {
	if cardErr, err := c.classify(r); cardErr != nil || err != nil {
		return nil, cardErr, err
	}
	var d ciscoDevice
	if err := c.t.decode(r, &d); err != nil {
		return nil, nil, err
	}
	iccid, err := NormalizeICCID(string(d.ICCID))
	if err != nil {
		return nil, nil, c.t.errorf(KindTransient, "", r.status, nil, "device answer without a valid iccid")
	}
	opened := parseTime(string(d.DateShipped))
	if opened.IsZero() {
		opened = parseTime(string(d.DateAdded))
	}
	raw := string(d.Status)
	return &Card{
		ICCID: iccid, IMSI: string(d.IMSI), MSISDN: string(d.MSISDN), IMEI: string(d.IMEI),
		Status: CiscoStatus(raw), RawStatus: raw, RatePlan: string(d.RatePlan),
		ActivatedAt:     parseTime(string(d.DateActivated)),
		OpenedAt:        opened,
		SourceUpdatedAt: parseTime(string(d.DateUpdated)),
		UsagePeriod:     usagePeriod(now),
		FetchedAt:       now,
	}, nil, nil
}

// parseUsage decodes a ctdUsages answer (bytes).
func (c *cisco) parseUsage(r *response) (int64, error, error) {
	if cardErr, err := c.classify(r); cardErr != nil || err != nil {
		return 0, cardErr, err
	}
	var u ciscoUsage
	if err := c.t.decode(r, &u); err != nil {
		return 0, nil, err
	}
	b, ok := unitBytes(string(u.CtdDataUsage), "B")
	if !ok {
		return 0, nil, c.t.errorf(KindTransient, "", r.status, nil, "unreadable ctdDataUsage")
	}
	return b, nil, nil
}

// Query costs two gated calls per card: device details and ctdUsages.
func (c *cisco) Query(ctx context.Context, iccids []string) ([]Result, error) {
	if err := checkBatch(c.t, len(iccids), c.BatchSize()); err != nil {
		return nil, err
	}
	norm, distinct, results := prepare(Cisco, c.t.account, iccids)
	if len(distinct) == 0 {
		return results, nil
	}
	id := distinct[0]
	now := c.t.now()
	r, err := c.get(ctx, CiscoDevicesPath+id)
	if err != nil {
		return nil, err
	}
	card, cardErr, err := c.parseDevice(r, now)
	if err != nil {
		return nil, err
	}
	errs := map[string]error{}
	cards := map[string]*Card{}
	if cardErr != nil {
		errs[id] = cardErr
	} else {
		r, err := c.get(ctx, CiscoDevicesPath+id+"/ctdUsages")
		if err != nil {
			return nil, err
		}
		used, cardErr, err := c.parseUsage(r)
		if err != nil {
			return nil, err
		}
		if cardErr != nil {
			errs[id] = cardErr
		} else {
			card.DataUsedBytes = used
			card.ICCID = id
			cards[id] = card
		}
	}
	return fill(Cisco, c.t.account, norm, results, cards, errs), nil
}
