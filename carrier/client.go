package carrier

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
)

// gateFunc is called before every data call an adapter makes; an Account
// uses it to wait for its rate limiter, so every HTTP call costs one token.
type gateFunc func(ctx context.Context) error

// NewClient builds the raw adapter for cfg.Carrier: no limiter, no
// concurrency cap, no breaker (see NewAccount). hc may be nil
// (a dedicated client with pooled keep-alive connections is made).
func NewClient(cfg AccountConfig, hc *http.Client, logger hclog.Logger) (Client, error) {
	return newAdapter(cfg, hc, logger, nil)
}

func newAdapter(cfg AccountConfig, hc *http.Client, logger hclog.Logger, gate gateFunc) (Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if hc == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.MaxIdleConnsPerHost = 64
		hc = &http.Client{Transport: tr}
	}
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	t := &transport{
		carrier: cfg.Carrier,
		account: cfg.ID,
		base:    strings.TrimRight(cfg.Endpoint, "/"),
		hc:      hc,
		logger:  logger.Named(cfg.Carrier).With("account", cfg.ID),
		gate:    gate,
		timeout: cfg.Timeout,
		maxBody: cfg.MaxBodyBytes,
		now:     time.Now,
	}
	switch cfg.Carrier {
	case OneLink:
		return newOneLink(cfg, t), nil
	case Unicom:
		return newUnicom(cfg, t), nil
	case Telecom:
		return newTelecom(cfg, t), nil
	case Cisco:
		return newCisco(cfg, t), nil
	}
	return nil, fmt.Errorf("%w: unknown carrier", ErrInvalidConfig)
}

// transport is the HTTP plumbing the adapters share.
type transport struct {
	carrier, account string
	base             string
	hc               *http.Client
	logger           hclog.Logger
	gate             gateFunc
	timeout          time.Duration
	maxBody          int64
	now              func() time.Time
}

// response is what came back from one HTTP call.
type response struct {
	status int
	header http.Header
	body   []byte
}

func (t *transport) errorf(kind Kind, code string, httpStatus int, cause error, format string, a ...any) *Error {
	return &Error{Carrier: t.carrier, Account: t.account, Kind: kind, Code: code, HTTPStatus: httpStatus,
		Message: fmt.Sprintf(format, a...), Err: cause}
}

// do sends one request. gated calls wait for the gate first. The request's
// URL may carry credentials (the OneLink token call): it never reaches an
// error or a log line, only method and path do.
func (t *transport) do(ctx context.Context, gated bool, method, path string, query url.Values, body []byte, header http.Header) (*response, error) {
	if gated && t.gate != nil {
		if err := t.gate(ctx); err != nil {
			return nil, err
		}
	}
	u := t.base + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	cctx, cancel := context.WithTimeout(ctx, t.timeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(cctx, method, u, rd)
	if err != nil {
		return nil, t.errorf(KindInvalidRequest, "", 0, nil, "%s %s: cannot build request", method, path)
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	if body != nil && req.Header.Get("Content-Type") == "" {
		req.Header.Set("Content-Type", "application/json;charset=UTF-8")
	}
	req.Header.Set("Accept", "application/json")
	start := t.now()
	resp, err := t.hc.Do(req)
	if err != nil {
		cause := sanitize(err)
		if ctx.Err() != nil {
			// The caller gave up: report its context error, classified transient.
			return nil, t.errorf(KindTransient, "", 0, ctx.Err(), "%s %s: canceled", method, path)
		}
		return nil, t.errorf(KindTransient, "", 0, cause, "%s %s: %s", method, path, describe(cause))
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, t.maxBody+1))
	if err != nil {
		return nil, t.errorf(KindTransient, "", resp.StatusCode, sanitize(err), "%s %s: truncated body after %d bytes", method, path, len(data))
	}
	if int64(len(data)) > t.maxBody {
		return nil, t.errorf(KindTransient, "", resp.StatusCode, nil, "%s %s: body larger than %d bytes", method, path, t.maxBody)
	}
	t.logger.Trace("call", "method", method, "path", path, "http", resp.StatusCode, "bytes", len(data), "took", t.now().Sub(start))
	r := &response{status: resp.StatusCode, header: resp.Header, body: data}
	return r, nil
}

// httpError classifies a response by its HTTP status alone; nil for 2xx and
// for statuses the adapter decodes itself (4xx other than 401/403/429).
func (t *transport) httpError(r *response) *Error {
	switch {
	case r.status >= 200 && r.status < 300:
		return nil
	case r.status == http.StatusTooManyRequests:
		e := t.errorf(KindRateLimited, strconv.Itoa(r.status), r.status, nil, "too many requests")
		e.RetryAfter = parseRetryAfter(r.header, t.now())
		return e
	case r.status == http.StatusUnauthorized || r.status == http.StatusForbidden:
		return t.errorf(KindAuthInvalid, strconv.Itoa(r.status), r.status, nil, "%s", http.StatusText(r.status))
	case r.status >= 500:
		return t.errorf(KindTransient, strconv.Itoa(r.status), r.status, nil, "%s", http.StatusText(r.status))
	case r.status == http.StatusRequestTimeout:
		return t.errorf(KindTransient, strconv.Itoa(r.status), r.status, nil, "%s", http.StatusText(r.status))
	}
	return nil
}

// sanitize strips the URL (which may hold a token or password) from a
// transport error, keeping its cause.
func sanitize(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

func describe(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	}
	return "connection failed"
}

// parseRetryAfter reads a Retry-After header in seconds or as an HTTP date.
func parseRetryAfter(h http.Header, now time.Time) time.Duration {
	v := strings.TrimSpace(h.Get("Retry-After"))
	if v == "" {
		return 0
	}
	if s, err := strconv.ParseFloat(v, 64); err == nil {
		if s <= 0 || s > 86400 {
			return 0
		}
		return time.Duration(s * float64(time.Second))
	}
	if at, err := http.ParseTime(v); err == nil && at.After(now) {
		d := at.Sub(now)
		if d > 24*time.Hour {
			return 0
		}
		return d
	}
	return 0
}

// decodeJSON unmarshals a carrier body; HTML and malformed bodies are transient.
func (t *transport) decode(r *response, v any) error {
	trimmed := bytes.TrimSpace(r.body)
	if len(trimmed) == 0 {
		return t.errorf(KindTransient, "", r.status, nil, "empty body")
	}
	if trimmed[0] == '<' {
		return t.errorf(KindTransient, "", r.status, nil, "HTML body instead of JSON")
	}
	if err := json.Unmarshal(trimmed, v); err != nil {
		return t.errorf(KindTransient, "", r.status, err, "malformed JSON body")
	}
	return nil
}

// flexString unmarshals a JSON string, number, bool or null into a string.
type flexString string

func (f *flexString) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if len(b) == 0 || string(b) == "null" {
		*f = ""
		return nil
	}
	if b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		*f = flexString(s)
		return nil
	}
	if b[0] == '{' || b[0] == '[' {
		return fmt.Errorf("expected a scalar")
	}
	*f = flexString(b)
	return nil
}

// cst is China Standard Time (GMT+8), used by the Chinese carriers' stamps.
var cst = time.FixedZone("CST", 8*3600)

// parseTime accepts the stamp formats the carriers use; zero when empty or unknown.
func parseTime(s string) time.Time {
	s = strings.TrimSpace(s)
	if s == "" {
		return time.Time{}
	}
	for _, layout := range []string{
		time.RFC3339Nano,
		"2006-01-02 15:04:05.000-0700",
		"2006-01-02 15:04:05-0700",
		"2006-01-02T15:04:05.000-0700",
		"2006-01-02T15:04:05-0700",
	} {
		if t, err := time.Parse(layout, s); err == nil {
			return t.UTC()
		}
	}
	for _, layout := range []string{
		"2006-01-02 15:04:05",
		"2006-01-02 15:04:05.000",
		"20060102150405",
		"2006-01-02",
		"20060102",
	} {
		if t, err := time.ParseInLocation(layout, s, cst); err == nil {
			return t.UTC()
		}
	}
	return time.Time{}
}

// unitBytes converts an amount in unit ("B", "KB", "MB", "GB"; 1024-based) to bytes.
func unitBytes(amount, unit string) (int64, bool) {
	amount = strings.TrimSpace(amount)
	if amount == "" {
		return 0, true
	}
	v, err := strconv.ParseFloat(amount, 64)
	if err != nil || v < 0 || v != v {
		return 0, false
	}
	var mul float64
	switch strings.ToUpper(strings.TrimSpace(unit)) {
	case "B", "BYTE", "BYTES":
		mul = 1
	case "K", "KB":
		mul = 1 << 10
	case "M", "MB", "":
		mul = 1 << 20
	case "G", "GB":
		mul = 1 << 30
	default:
		return 0, false
	}
	b := v * mul
	if b > 9e18 {
		return 0, false
	}
	return int64(b + 0.5), true
}

// usagePeriod is the calendar month of t in GMT+8, "2006-01".
func usagePeriod(t time.Time) string { return t.In(cst).Format("2006-01") }

// prepare normalises the requested ICCIDs: it returns the distinct valid
// ones in first-seen order, and pre-fills results for invalid ones.
func prepare(carrierName, account string, iccids []string) (norm []string, distinct []string, results []Result) {
	results = make([]Result, len(iccids))
	norm = make([]string, len(iccids))
	seen := make(map[string]bool, len(iccids))
	for i, raw := range iccids {
		results[i].ICCID = raw
		n, err := NormalizeICCID(raw)
		if err != nil {
			results[i].Err = &Error{Carrier: carrierName, Account: account, Kind: KindInvalidRequest, Message: "invalid ICCID", Err: err}
			continue
		}
		norm[i] = n
		if !seen[n] {
			seen[n] = true
			distinct = append(distinct, n)
		}
	}
	return norm, distinct, results
}

// fill copies per-ICCID outcomes into results (skipping pre-filled errors).
// ICCIDs the carrier did not mention get a not-found error.
func fill(carrierName, account string, norm []string, results []Result, cards map[string]*Card, errs map[string]error) []Result {
	for i := range results {
		if results[i].Err != nil {
			continue
		}
		n := norm[i]
		if e, ok := errs[n]; ok {
			results[i].Err = e
			continue
		}
		if c, ok := cards[n]; ok {
			cp := *c
			results[i].Card = &cp
			continue
		}
		results[i].Err = &Error{Carrier: carrierName, Account: account, Kind: KindNotFound, Message: "card missing from the carrier's answer"}
	}
	return results
}

func checkBatch(t *transport, n, max int) error {
	if n > max {
		return t.errorf(KindInvalidRequest, "", 0, nil, "batch of %d ICCIDs exceeds the limit of %d", n, max)
	}
	return nil
}
