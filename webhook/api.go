package webhook

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"time"

	"cardsync/fsm"
)

// Status is a subscription as GET /v1/webhooks shows it. The secret is never shown.
type Status struct {
	ID         string   `json:"id"`
	URL        string   `json:"url"`
	Enterprise string   `json:"enterprise,omitempty"`
	Kinds      []string `json:"kinds,omitempty"`
	// Cursor is the last sequence the subscriber acknowledged (replicated).
	Cursor uint64 `json:"cursor"`
	Epoch  uint64 `json:"epoch"`
	// Owner holds the delivery epoch; RingOwner is the node that should.
	Owner     string `json:"owner,omitempty"`
	RingOwner string `json:"ring_owner,omitempty"`
	// Pending counts the selected events after the cursor (at most MaxPending;
	// PendingCapped says the count stopped there). LagSeconds is the age of the oldest.
	Pending       int     `json:"pending"`
	PendingCapped bool    `json:"pending_capped,omitempty"`
	LagSeconds    float64 `json:"lag_seconds"`
	// CursorTrimmed: retention dropped events the subscriber has not acknowledged.
	CursorTrimmed  bool        `json:"cursor_trimmed,omitempty"`
	Paused         bool        `json:"paused"`
	PauseReason    string      `json:"pause_reason,omitempty"`
	PausedAt       time.Time   `json:"paused_at"`
	Failures       int         `json:"failures"`
	LastError      string      `json:"last_error,omitempty"`
	LastErrorAt    time.Time   `json:"last_error_at"`
	Delivered      uint64      `json:"delivered"`
	LastDeliveryAt time.Time   `json:"last_delivery_at"`
	CreatedAt      time.Time   `json:"created_at"`
	Local          *LocalState `json:"local,omitempty"`
}

// MaxPending bounds the events counted for Status.Pending.
const MaxPending = 10000

// CreateRequest is the body of POST /v1/webhooks. An empty ID gets a random one; After
// (a change sequence) sets where delivery starts, default: after the events that exist
// now. On an existing ID it updates the subscription (an empty Secret keeps the old one).
type CreateRequest struct {
	ID         string   `json:"id"`
	URL        string   `json:"url"`
	Enterprise string   `json:"enterprise"`
	Kinds      []string `json:"kinds"`
	Secret     string   `json:"secret"`
	After      *uint64  `json:"after,omitempty"`
}

// Statuses returns every subscription with its delivery status at time now.
func (d *Deliverer) Statuses(now time.Time) ([]Status, error) {
	subs, err := d.cl.FSM().Subscriptions()
	if err != nil {
		return nil, err
	}
	local := d.Local()
	out := make([]Status, 0, len(subs))
	for _, s := range subs {
		out = append(out, d.status(s, local, now))
	}
	return out, nil
}

func (d *Deliverer) status(s fsm.Subscription, local map[string]LocalState, now time.Time) Status {
	st := Status{ID: s.ID, URL: s.URL, Enterprise: s.Enterprise, Kinds: s.Kinds, Cursor: s.Cursor, Epoch: s.Epoch,
		Owner: s.Owner, Paused: s.Paused, PauseReason: s.PauseReason, PausedAt: s.PausedAt, Failures: s.Failures,
		LastError: s.LastError, LastErrorAt: s.LastErrorAt, Delivered: s.Delivered, LastDeliveryAt: s.LastDeliveryAt,
		CreatedAt: s.CreatedAt}
	if r := d.cl.Ring(); r != nil {
		st.RingOwner = r.Owner(s.ID)
	}
	if l, ok := local[s.ID]; ok {
		st.Local = &l
	}
	after := s.Cursor
	for st.Pending < MaxPending {
		page, err := d.cl.FSM().Feed(fsm.FeedQuery{After: after, Limit: MaxPending - st.Pending, Enterprise: s.Enterprise, Kinds: s.Kinds})
		if errors.Is(err, fsm.ErrFeedTrimmed) {
			st.CursorTrimmed = true
			break
		}
		if err != nil || page.Next == after {
			break
		}
		if st.Pending == 0 && len(page.Changes) > 0 {
			st.LagSeconds = max(0, now.Sub(page.Changes[0].Time).Seconds())
		}
		st.Pending += len(page.Changes)
		if page.Next >= fsm.SeqOfIndex(page.AppliedIndex) {
			break
		}
		after = page.Next
	}
	st.PendingCapped = st.Pending >= MaxPending
	return st
}

// Register adds the subscription API to mux: GET/POST /v1/webhooks,
// GET/DELETE /v1/webhooks/{id}, POST /v1/webhooks/{id}/pause and /resume.
func (d *Deliverer) Register(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/webhooks", d.handleList)
	mux.HandleFunc("POST /v1/webhooks", d.handleCreate)
	mux.HandleFunc("GET /v1/webhooks/{id}", d.handleGet)
	mux.HandleFunc("DELETE /v1/webhooks/{id}", d.handleDelete)
	mux.HandleFunc("POST /v1/webhooks/{id}/pause", d.handlePause)
	mux.HandleFunc("POST /v1/webhooks/{id}/resume", d.handleResume)
}

func (d *Deliverer) handleList(w http.ResponseWriter, r *http.Request) {
	sts, err := d.Statuses(time.Now())
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"webhooks": sts, "count": len(sts), "node": d.cl.Name()})
}

func (d *Deliverer) handleGet(w http.ResponseWriter, r *http.Request) {
	s, err := d.cl.FSM().Subscription(r.PathValue("id"))
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, d.status(s, d.Local(), time.Now()))
}

func (d *Deliverer) handleCreate(w http.ResponseWriter, r *http.Request) {
	var req CreateRequest
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "malformed JSON: " + err.Error(), "code": "invalid"})
		return
	}
	if req.ID == "" {
		var b [8]byte
		_, _ = rand.Read(b[:])
		req.ID = "wh-" + hex.EncodeToString(b[:])
	}
	if len(req.Kinds) == 1 && strings.Contains(req.Kinds[0], ",") {
		req.Kinds = strings.Split(req.Kinds[0], ",")
	}
	d.propose(w, r, fsm.TypeUpsertSubscription, fsm.UpsertSubscription{ID: req.ID, URL: req.URL, Enterprise: req.Enterprise,
		Kinds: req.Kinds, Secret: req.Secret, After: req.After}, req.ID)
}

func (d *Deliverer) handleDelete(w http.ResponseWriter, r *http.Request) {
	d.propose(w, r, fsm.TypeDeleteSubscription, fsm.DeleteSubscription{ID: r.PathValue("id")}, r.PathValue("id"))
}

func (d *Deliverer) handlePause(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Reason string `json:"reason"`
	}
	if r.ContentLength != 0 {
		r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "malformed JSON: " + err.Error(), "code": "invalid"})
			return
		}
	}
	if req.Reason == "" {
		req.Reason = "paused by operator"
	}
	d.propose(w, r, fsm.TypeSetSubscriptionPaused, fsm.SetSubscriptionPaused{ID: r.PathValue("id"), Paused: true, Reason: req.Reason}, r.PathValue("id"))
}

func (d *Deliverer) handleResume(w http.ResponseWriter, r *http.Request) {
	d.propose(w, r, fsm.TypeSetSubscriptionPaused, fsm.SetSubscriptionPaused{ID: r.PathValue("id"), Paused: false}, r.PathValue("id"))
}

func (d *Deliverer) propose(w http.ResponseWriter, r *http.Request, t fsm.Type, payload any, id string) {
	ctx, cancel := context.WithTimeout(r.Context(), 15*time.Second)
	defer cancel()
	res, err := d.cl.ProposeEncoded(ctx, t, payload)
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"ok": true, "id": id, "result": res})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeErr(w http.ResponseWriter, err error) {
	code := http.StatusInternalServerError
	switch {
	case errors.Is(err, fsm.ErrNotFound):
		code = http.StatusNotFound
	case errors.Is(err, fsm.ErrInvalid), errors.Is(err, fsm.ErrBadCommand):
		code = http.StatusBadRequest
	case errors.Is(err, fsm.ErrStaleEpoch), errors.Is(err, fsm.ErrNotOwner), errors.Is(err, fsm.ErrCursorBack):
		code = http.StatusConflict
	case errors.Is(err, context.DeadlineExceeded):
		code = http.StatusServiceUnavailable
	}
	writeJSON(w, code, map[string]string{"error": err.Error(), "code": fsm.ErrorCode(err)})
}
