package sim

import (
	"crypto/md5"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/emmansun/gmsm/sm3"
)

// ---- China Mobile OneLink v5 ----

var oneLinkDialect = dialect{
	rateLimited: func(w http.ResponseWriter, retryAfter int) {
		w.Header().Set("Retry-After", strconv.Itoa(retryAfter))
		writeJSON(w, nil, http.StatusOK, oneLinkEnv("72", "已超出单位时间客户调用限制", []any{}))
	},
	authInvalid: func(w http.ResponseWriter) {
		writeJSON(w, nil, http.StatusOK, oneLinkEnv("12004", "transid、appid、token校验失败", []any{}))
	},
	authExpired: func(w http.ResponseWriter) {
		writeJSON(w, nil, http.StatusOK, oneLinkEnv("12021", "TOKEN不存在或已过期", []any{}))
	},
}

func oneLinkEnv(status, msg string, result any) map[string]any {
	return map[string]any{"status": status, "message": msg, "result": result}
}

// requestParams merges the query string with a JSON object or form body.
func requestParams(r *http.Request) (map[string]string, bool) {
	out := map[string]string{}
	for k, v := range r.URL.Query() {
		if len(v) > 0 {
			out[k] = v[0]
		}
	}
	if r.Body == nil {
		return out, true
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		return out, false
	}
	body = []byte(strings.TrimSpace(string(body)))
	if len(body) == 0 {
		return out, true
	}
	if body[0] == '{' {
		var m map[string]any
		if err := json.Unmarshal(body, &m); err != nil {
			return out, false
		}
		for k, v := range m {
			if s, ok := v.(string); ok {
				out[k] = s
			} else {
				b, _ := json.Marshal(v)
				out[k] = string(b)
			}
		}
		return out, true
	}
	vals, err := url.ParseQuery(string(body))
	if err != nil {
		return out, false
	}
	for k, v := range vals {
		if len(v) > 0 {
			out[k] = v[0]
		}
	}
	return out, true
}

func (s *Sim) oneLinkToken(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	a := s.byCred[OneLink+"\x00"+q.Get("appid")]
	if a == nil || !secretEqual(q.Get("password"), a.spec.Secret) || !strings.HasPrefix(q.Get("transid"), q.Get("appid")) {
		if a != nil {
			s.w.authFailure(a)
		}
		writeJSON(w, nil, http.StatusOK, oneLinkEnv("12022", "appid或password校验失败", []any{}))
		return
	}
	if f, _ := s.faultsFor(a.spec.ID); f.Outage {
		s.w.fault(a, "outage")
		writeHTML(w, http.StatusServiceUnavailable, "503 Service Unavailable")
		return
	}
	s.w.token(a)
	tok := s.randHex(32)
	a.mu.Lock()
	now := time.Now()
	for t, exp := range a.tokens {
		if now.After(exp) {
			delete(a.tokens, t)
		}
	}
	a.tokens[tok] = now.Add(a.spec.TokenTTL)
	a.mu.Unlock()
	ttl := strconv.Itoa(int(a.spec.TokenTTL / time.Second))
	writeJSON(w, nil, http.StatusOK, oneLinkEnv("0", "正确", []map[string]string{{"token": tok, "ttl": ttl}}))
}

// oneLinkBegin identifies the account from the transid (appid + 14 + 8
// digits), admits the call, and checks the token.
func (s *Sim) oneLinkBegin(w http.ResponseWriter, r *http.Request) (*call, map[string]string) {
	p, ok := requestParams(r)
	if !ok {
		writeJSON(w, nil, http.StatusOK, oneLinkEnv("11000", "请求参数不正确", []any{}))
		return nil, nil
	}
	tid := p["transid"]
	var a *account
	if len(tid) > 22 {
		a = s.byCred[OneLink+"\x00"+tid[:len(tid)-22]]
	}
	if a == nil {
		oneLinkDialect.authInvalid(w)
		return nil, nil
	}
	c := s.begin(w, r, a, oneLinkDialect)
	if c == nil {
		return nil, nil
	}
	a.mu.Lock()
	exp, known := a.tokens[p["token"]]
	a.mu.Unlock()
	if !known || time.Now().After(exp) {
		c.release()
		s.w.authFailure(a)
		oneLinkDialect.authExpired(w)
		return nil, nil
	}
	return c, p
}

func oneLinkIDs(p map[string]string) ([]string, bool) {
	raw := p["iccids"]
	if raw == "" {
		raw = p["msisdns"]
	}
	if raw == "" {
		return nil, false
	}
	ids := strings.Split(raw, "_")
	return ids, len(ids) <= 100
}

func (s *Sim) oneLinkInfo(w http.ResponseWriter, r *http.Request) {
	c, p := s.oneLinkBegin(w, r)
	if c == nil {
		return
	}
	defer c.release()
	ids, ok := oneLinkIDs(p)
	if !ok {
		writeJSON(w, c, http.StatusOK, oneLinkEnv("11000", "请求参数不正确", []any{}))
		return
	}
	now := time.Now()
	items := make([]map[string]string, 0, len(ids))
	var fetched []string
	for _, id := range ids {
		cd, found := c.a.lookup(id)
		switch {
		case !found || cd.notFound || c.notFound(s):
			items = append(items, map[string]string{"status": "12010", "message": "卡号不存在", "iccid": id})
		case cd.notOwned:
			items = append(items, map[string]string{"status": "12009", "message": "卡号不属于该集团", "iccid": id})
		default:
			st := s.state(c.a, cd, now)
			items = append(items, map[string]string{
				"status": "0", "message": "正确",
				"iccid": st.ICCID, "msisdn": st.MSISDN, "imsi": st.IMSI,
				"cardStatus": st.RawStatus, "lastChangeDate": cstTime(st.StatusChangedAt),
				"activeDate": cstTime(st.ActivatedAt), "openDate": cstTime(st.OpenedAt),
				"offeringName": st.RatePlan,
			})
			fetched = append(fetched, st.ICCID)
		}
	}
	writeJSON(w, c, http.StatusOK, oneLinkEnv("0", "正确", items))
	if !c.truncate {
		s.fetched(c, fetched)
	}
}

func (s *Sim) oneLinkUsage(w http.ResponseWriter, r *http.Request) {
	c, p := s.oneLinkBegin(w, r)
	if c == nil {
		return
	}
	defer c.release()
	ids, ok := oneLinkIDs(p)
	if !ok {
		writeJSON(w, c, http.StatusOK, oneLinkEnv("11000", "请求参数不正确", []any{}))
		return
	}
	now := time.Now()
	list := make([]map[string]any, 0, len(ids))
	for _, id := range ids {
		cd, found := c.a.lookup(id)
		if !found || cd.notFound || cd.notOwned {
			continue
		}
		st := s.state(c.a, cd, now)
		kb := fmt.Sprintf("%.2f", float64(st.UsageBytes)/1024)
		list = append(list, map[string]any{"msisdn": st.MSISDN, "imsi": st.IMSI, "iccid": st.ICCID, "dataAmount": kb,
			"apnDataAmountList": []map[string]string{{"apnName": "CMIOT", "apnDataAmount": kb}}})
	}
	writeJSON(w, c, http.StatusOK, oneLinkEnv("0", "正确", []any{map[string]any{"dataAmountList": list}}))
}

// ---- China Unicom CMP ----

var unicomDialect = dialect{
	rateLimited: func(w http.ResponseWriter, retryAfter int) {
		w.Header().Set("Retry-After", strconv.Itoa(retryAfter))
		writeJSON(w, nil, http.StatusOK, map[string]any{"status": "40000029", "message": "接口请求超过限制次数"})
	},
	authInvalid: func(w http.ResponseWriter) {
		writeJSON(w, nil, http.StatusOK, map[string]any{"status": "10000001", "message": "无效的API凭证"})
	},
}

// unicomSign is lowerhex(SM3("app_id"+id+"timestamp"+ts+"trans_id"+tid+secret)).
func unicomSign(appID, ts, tid, secret string) string {
	return hexSM3([]byte("app_id" + appID + "timestamp" + ts + "trans_id" + tid + secret))
}

func hexSM3(b []byte) string {
	sum := sm3.Sum(b)
	return hex.EncodeToString(sum[:])
}

func unicomTimestampOK(ts string) bool {
	for _, layout := range []string{"2006-01-02 15:04:05.000", "2006-01-02 15:04:05 000"} {
		if _, err := time.ParseInLocation(layout, ts, cst); err == nil {
			return true
		}
	}
	return false
}

func (s *Sim) unicomDetails(w http.ResponseWriter, r *http.Request) {
	var req struct {
		AppID     string `json:"app_id"`
		Timestamp string `json:"timestamp"`
		TransID   string `json:"trans_id"`
		Token     string `json:"token"`
		Data      struct {
			OpenID string   `json:"openId"`
			ICCIDs []string `json:"iccids"`
		} `json:"data"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil {
		writeJSON(w, nil, http.StatusOK, map[string]any{"status": "10000021", "message": "请求参数错误"})
		return
	}
	a := s.byCred[Unicom+"\x00"+req.AppID]
	if a == nil {
		unicomDialect.authInvalid(w)
		return
	}
	c := s.begin(w, r, a, unicomDialect)
	if c == nil {
		return
	}
	defer c.release()
	if !unicomTimestampOK(req.Timestamp) || req.TransID == "" ||
		!strings.EqualFold(req.Token, unicomSign(req.AppID, req.Timestamp, req.TransID, a.spec.Secret)) ||
		(a.spec.OpenID != "" && req.Data.OpenID != a.spec.OpenID) {
		s.w.authFailure(a)
		unicomDialect.authInvalid(w)
		return
	}
	if len(req.Data.ICCIDs) == 0 || len(req.Data.ICCIDs) > 50 {
		writeJSON(w, c, http.StatusOK, map[string]any{"status": "10000021", "message": "ICCID数量不正确"})
		return
	}
	now := time.Now()
	terms := make([]map[string]string, 0, len(req.Data.ICCIDs))
	var fetched []string
	for _, id := range req.Data.ICCIDs {
		cd, found := a.lookup(id)
		if !found || cd.notFound || cd.notOwned || c.notFound(s) {
			continue
		}
		st := s.state(a, cd, now)
		terms = append(terms, map[string]string{
			"iccid": st.ICCID, "msisdn": st.MSISDN, "imsi": st.IMSI, "imei": st.IMEI,
			"simStatus": st.RawStatus, "ratePlan": st.RatePlan,
			"dateActivated": cstTime(st.ActivatedAt), "dateAdded": cstTime(st.OpenedAt),
			"dateModified":         cstTime(st.StatusChangedAt),
			"monthToDateDataUsage": fmt.Sprintf("%.3f", float64(st.UsageBytes)/(1<<20)),
			"realNameStatus":       "1",
		})
		fetched = append(fetched, st.ICCID)
	}
	if len(terms) == 0 {
		writeJSON(w, c, http.StatusOK, map[string]any{"status": "20000001", "message": "ICCID不存在"})
		return
	}
	writeJSON(w, c, http.StatusOK, map[string]any{"status": "0000", "message": "success", "data": map[string]any{"terminals": terms}})
	if !c.truncate {
		s.fetched(c, fetched)
	}
}

// ---- China Telecom 5GCMP ----

var telecomDialect = dialect{
	rateLimited: func(w http.ResponseWriter, retryAfter int) {
		w.Header().Set("Retry-After", strconv.Itoa(retryAfter))
		writeJSON(w, nil, http.StatusOK, map[string]any{"code": "101004", "msg": "请求过于频繁"})
	},
	authInvalid: func(w http.ResponseWriter) {
		writeJSON(w, nil, http.StatusOK, map[string]any{"code": "-1", "msg": "鉴权失败"})
	},
}

// telecomSign is UPPER(hex(ascii(lowerhex(MD5(sortedQuery+body+secret+ts))))).
func telecomSign(sortedQuery, body, secret, ts string) string {
	sum := md5.Sum([]byte(sortedQuery + body + secret + ts))
	return strings.ToUpper(hex.EncodeToString([]byte(hex.EncodeToString(sum[:]))))
}

// sortedQuery renders query parameters as k=v&... sorted by key.
func sortedQuery(vals map[string]string) string {
	keys := make([]string, 0, len(vals))
	for k := range vals {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, k+"="+vals[k])
	}
	return strings.Join(parts, "&")
}

// telecomBegin identifies the account by AppKey, admits the call, and
// checks Timestamp and Sign. Both signing variants in the wild are
// accepted: raw body, or the body's top-level keys as sorted k=v pairs.
func (s *Sim) telecomBegin(w http.ResponseWriter, r *http.Request) (*call, []byte) {
	a := s.byCred[Telecom+"\x00"+r.Header.Get("AppKey")]
	if a == nil {
		telecomDialect.authInvalid(w)
		return nil, nil
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	c := s.begin(w, r, a, telecomDialect)
	if c == nil {
		return nil, nil
	}
	if err != nil {
		c.release()
		writeJSON(w, nil, http.StatusOK, map[string]any{"code": "-2", "msg": "参数缺失"})
		return nil, nil
	}
	ts := r.Header.Get("Timestamp")
	if _, err := time.Parse("20060102150405", ts); err != nil {
		c.release()
		s.w.authFailure(a)
		telecomDialect.authInvalid(w)
		return nil, nil
	}
	q := map[string]string{}
	for k, v := range r.URL.Query() {
		if len(v) > 0 {
			q[k] = v[0]
		}
	}
	sq := sortedQuery(q)
	sign := r.Header.Get("Sign")
	ok := strings.EqualFold(sign, telecomSign(sq, string(body), a.spec.Secret, ts))
	if !ok {
		var m map[string]any
		if json.Unmarshal(body, &m) == nil {
			flat := map[string]string{}
			for k, v := range m {
				if s, isStr := v.(string); isStr {
					flat[k] = s
				} else {
					b, _ := json.Marshal(v)
					flat[k] = string(b)
				}
			}
			ok = strings.EqualFold(sign, telecomSign(sq, sortedQuery(flat), a.spec.Secret, ts))
		}
	}
	if !ok {
		c.release()
		s.w.authFailure(a)
		writeJSON(w, nil, http.StatusOK, map[string]any{"code": "-3", "msg": "签名错误"})
		return nil, nil
	}
	return c, body
}

func (s *Sim) telecomInfo(w http.ResponseWriter, r *http.Request) {
	c, body := s.telecomBegin(w, r)
	if c == nil {
		return
	}
	defer c.release()
	var req struct {
		CustNumber    string   `json:"custNumber"`
		AccessNumbers []string `json:"accessNumbers"`
	}
	if err := json.Unmarshal(body, &req); err != nil || len(req.AccessNumbers) == 0 || len(req.AccessNumbers) > 100 {
		writeJSON(w, c, http.StatusOK, map[string]any{"code": "-2", "msg": "参数错误"})
		return
	}
	if c.a.spec.CustNumber != "" && req.CustNumber != c.a.spec.CustNumber {
		s.w.authFailure(c.a)
		writeJSON(w, c, http.StatusOK, map[string]any{"code": "-1", "msg": "客户编码不匹配"})
		return
	}
	now := time.Now()
	rows := make([]map[string]string, 0, len(req.AccessNumbers))
	var fetched []string
	for _, id := range req.AccessNumbers {
		cd, found := c.a.lookup(id)
		if !found || cd.notFound || cd.notOwned || c.notFound(s) {
			rows = append(rows, map[string]string{"accessNumber": id, "result": "-4", "resultMsg": "号码不存在"})
			continue
		}
		st := s.state(c.a, cd, now)
		rows = append(rows, map[string]string{
			"accessNumber": st.MSISDN, "iccid": st.ICCID, "imsi": st.IMSI, "simStatus": st.RawStatus,
			"activeTime": cstTime(st.ActivatedAt), "createTime": cstTime(st.OpenedAt),
			"mainOfferName": st.RatePlan, "result": "0", "resultMsg": "成功",
		})
		fetched = append(fetched, st.ICCID)
	}
	if len(fetched) == 0 {
		writeJSON(w, c, http.StatusOK, map[string]any{"code": "-4", "msg": "号码不存在"})
		return
	}
	writeJSON(w, c, http.StatusOK, map[string]any{"code": "0", "message": "成功", "data": map[string]any{"qrySimInfoList": rows}})
	if !c.truncate {
		s.fetched(c, fetched)
	}
}

func (s *Sim) telecomFlow(w http.ResponseWriter, r *http.Request) {
	c, body := s.telecomBegin(w, r)
	if c == nil {
		return
	}
	defer c.release()
	var req struct {
		CustNumber   string   `json:"custNumber"`
		AccessNumber []string `json:"accessNumber"`
		Month        string   `json:"month"`
	}
	if err := json.Unmarshal(body, &req); err != nil || len(req.AccessNumber) == 0 || len(req.AccessNumber) > 100 {
		writeJSON(w, c, http.StatusOK, map[string]any{"code": -2, "msg": "参数错误"})
		return
	}
	if c.a.spec.CustNumber != "" && req.CustNumber != c.a.spec.CustNumber {
		s.w.authFailure(c.a)
		writeJSON(w, c, http.StatusOK, map[string]any{"code": -1, "msg": "客户编码不匹配"})
		return
	}
	now := time.Now()
	month := now.In(cst).Format("200601")
	rows := make([]map[string]string, 0, len(req.AccessNumber))
	for _, id := range req.AccessNumber {
		cd, found := c.a.lookup(id)
		if !found || cd.notFound || cd.notOwned {
			rows = append(rows, map[string]string{"accessNumber": id, "result": "0", "month": month, "status": "-4", "statusDesc": "号码不存在"})
			continue
		}
		st := s.state(c.a, cd, now)
		rows = append(rows, map[string]string{"accessNumber": id, "result": "1", "unit": "MB",
			"flowAmount": fmt.Sprintf("%.2f", float64(st.UsageBytes)/(1<<20)), "month": month, "status": "0", "statusDesc": "查询成功"})
	}
	writeJSON(w, c, http.StatusOK, map[string]any{"code": 0, "msg": "查询成功", "data": rows})
}

// ---- Cisco Control Center ----

var ciscoDialect = dialect{
	rateLimited: func(w http.ResponseWriter, _ int) {
		// Control Center does not signal limits in headers: no Retry-After.
		writeJSON(w, nil, http.StatusTooManyRequests, map[string]string{"errorMessage": "Rate limit exceeded", "errorCode": "40000029"})
	},
	authInvalid: func(w http.ResponseWriter) {
		writeJSON(w, nil, http.StatusUnauthorized, map[string]string{"errorMessage": "Invalid credentials", "errorCode": "10000001"})
	},
}

func (s *Sim) ciscoBegin(w http.ResponseWriter, r *http.Request) (*call, *card, bool) {
	user, key, ok := r.BasicAuth()
	a := s.byCred[Cisco+"\x00"+user]
	if !ok || a == nil {
		ciscoDialect.authInvalid(w)
		return nil, nil, false
	}
	c := s.begin(w, r, a, ciscoDialect)
	if c == nil {
		return nil, nil, false
	}
	if !secretEqual(key, a.spec.Secret) {
		c.release()
		s.w.authFailure(a)
		ciscoDialect.authInvalid(w)
		return nil, nil, false
	}
	id := r.PathValue("iccid")
	if len(id) < 19 || len(id) > 20 {
		writeJSON(w, c, http.StatusBadRequest, map[string]string{"errorMessage": "Invalid iccid", "errorCode": "10000021"})
		c.release()
		return nil, nil, false
	}
	cd, found := a.lookup(id)
	if !found || cd.notFound || cd.notOwned || c.notFound(s) {
		writeJSON(w, c, http.StatusNotFound, map[string]string{"errorMessage": "Resource not found - Invalid ICCID", "errorCode": "20000001"})
		c.release()
		return nil, nil, false
	}
	return c, cd, true
}

func ciscoTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format("2006-01-02 15:04:05.000-0700")
}

func (s *Sim) ciscoDevice(w http.ResponseWriter, r *http.Request) {
	c, cd, ok := s.ciscoBegin(w, r)
	if !ok {
		return
	}
	defer c.release()
	st := s.state(c.a, cd, time.Now())
	writeJSON(w, c, http.StatusOK, map[string]any{
		"iccid": st.ICCID, "imsi": st.IMSI, "msisdn": st.MSISDN, "imei": st.IMEI,
		"status": st.RawStatus, "ratePlan": st.RatePlan, "communicationPlan": "CP-Default",
		"customer": "", "endConsumerId": "", "accountId": fmt.Sprintf("1000%03d", c.a.idx),
		"dateActivated": ciscoTime(st.ActivatedAt), "dateUpdated": ciscoTime(st.StatusChangedAt),
		"dateShipped": ciscoTime(st.OpenedAt), "fixedIPAddress": "", "deviceID": "", "modemID": "", "globalSIMType": "",
	})
	if !c.truncate {
		s.fetched(c, []string{st.ICCID})
	}
}

func (s *Sim) ciscoUsage(w http.ResponseWriter, r *http.Request) {
	c, cd, ok := s.ciscoBegin(w, r)
	if !ok {
		return
	}
	defer c.release()
	st := s.state(c.a, cd, time.Now())
	writeJSON(w, c, http.StatusOK, map[string]any{
		"iccid": st.ICCID, "imsi": st.IMSI, "msisdn": st.MSISDN, "ratePlan": st.RatePlan, "communicationPlan": "CP-Default",
		"ctdDataUsage": st.UsageBytes, "ctdSMSUsage": (cd.h >> 50) % 40, "ctdVoiceUsage": 0, "ctdSessionCount": 1 + (cd.h>>44)%30,
		"overageLimitReached": false, "overageLimitOverride": "DEFAULT",
	})
}
