package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/raft"

	"cardsync/fsm"
)

const maxAdminBody = 1 << 20

// decodeBody reads a bounded JSON body into v, rejecting unknown fields.
func decodeBody(w http.ResponseWriter, r *http.Request, v any) bool {
	r.Body = http.MaxBytesReader(w, r.Body, maxAdminBody)
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeError(w, http.StatusRequestEntityTooLarge, "request body too large")
			return false
		}
		writeError(w, http.StatusBadRequest, "malformed JSON: "+err.Error())
		return false
	}
	return true
}

func (n *Node) dataRoutes() {
	m := n.mux
	m.HandleFunc("GET /v1/cards/{iccid}", n.handleCard)
	m.HandleFunc("GET /v1/cards", n.handleCards)
	m.HandleFunc("POST /v1/cards", n.handleImport)
	m.HandleFunc("GET /v1/shards", n.handleShards)
	m.HandleFunc("GET /v1/shards/{id}", n.handleShard)
	m.HandleFunc("GET /v1/enterprises", n.handleEnterprises)
	m.HandleFunc("GET /v1/accounts", n.handleAccounts)
	m.HandleFunc("POST /v1/enterprises", n.handleUpsertEnterprise)
	m.HandleFunc("POST /v1/accounts", n.handleUpsertAccount)
	m.HandleFunc("GET /v1/changes", n.handleChanges)
	m.HandleFunc("GET /v1/digest", n.handleDigest)
	m.HandleFunc("POST /v1/resync", n.handleResync)
	m.HandleFunc("POST /v1/shards/{id}/release", n.handleForceRelease)
	m.HandleFunc("POST /v1/shards/{id}/checkpoint", n.handleSetCheckpoint)
	m.HandleFunc("POST /v1/maintenance", n.handleMaintenance)
	m.HandleFunc("POST /v1/drain", n.handleDrain)
	m.HandleFunc("POST /v1/operator/raft/remove-peer", n.handleRemovePeer)
	m.HandleFunc("GET /v1/backup", n.handleBackup)
	m.HandleFunc("POST /v1/restore", n.handleRestore)
}

// ProposeEncoded encodes a command payload and proposes it.
func (n *Node) ProposeEncoded(ctx context.Context, t fsm.Type, payload any) (*fsm.Result, error) {
	cmd, err := fsm.Encode(t, payload)
	if err != nil {
		return nil, err
	}
	return n.Propose(ctx, cmd)
}

func (n *Node) proposeAndReply(w http.ResponseWriter, r *http.Request, t fsm.Type, payload any) {
	ctx, cancel := context.WithTimeout(r.Context(), 15*time.Second)
	defer cancel()
	res, err := n.ProposeEncoded(ctx, t, payload)
	if err != nil {
		writeFSMError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"ok": true, "result": res})
}

func (n *Node) handleCard(w http.ResponseWriter, r *http.Request) {
	iccid := strings.ToUpper(strings.TrimSpace(r.PathValue("iccid")))
	if !fsmICCID(iccid) {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("invalid ICCID %q: want 19-20 hex characters", r.PathValue("iccid")))
		return
	}
	c, err := n.fsm.Card(iccid)
	if err != nil {
		writeFSMError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, c)
}

func fsmICCID(s string) bool {
	n, err := fsm.NormalizeICCID(s)
	return err == nil && n == s
}

func queryInt(r *http.Request, key string, def, max int) (int, error) {
	s := r.URL.Query().Get(key)
	if s == "" {
		return def, nil
	}
	v, err := strconv.Atoi(s)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("%s must be a non-negative integer", key)
	}
	if v > max {
		v = max
	}
	return v, nil
}

func (n *Node) handleCards(w http.ResponseWriter, r *http.Request) {
	limit, err := queryInt(r, "limit", 100, 10000)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	q := r.URL.Query()
	idx := n.fsm.AppliedIndex()
	cards, next, err := n.fsm.Cards(fsm.CardFilter{Enterprise: q.Get("enterprise"), Shard: q.Get("shard"), After: strings.ToUpper(q.Get("after")), Limit: limit})
	if err != nil {
		writeFSMError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"cards": cards, "next": next, "applied_index": idx})
}

// ShardView is a shard as the API shows it: its replicated state plus why it is (not) running.
type ShardView struct {
	fsm.ShardState
	Running   bool   `json:"running"`
	Due       bool   `json:"due"`
	Reason    string `json:"reason"`
	RingOwner string `json:"ring_owner"`
}

// ShardViews returns every shard (filtered) with its derived state at time now.
func (n *Node) ShardViews(filter fsm.ShardFilter, reason string, now time.Time) ([]ShardView, error) {
	all, err := n.fsm.Shards(fsm.ShardFilter{})
	if err != nil {
		return nil, err
	}
	maint, _, _ := n.fsm.Maintenance()
	ids := make([]string, len(all))
	busy := map[int]string{}
	for i, s := range all {
		ids[i] = s.ID
		if s.Owner != "" && s.LeaseUntil.After(now) {
			busy[s.Group] = s.ID
		}
	}
	owners := n.Ring().Assign(ids)
	var out []ShardView
	for _, s := range all {
		if filter.Group != nil && s.Group != *filter.Group {
			continue
		}
		if filter.Owner != "" && s.Owner != filter.Owner {
			continue
		}
		v := ShardView{ShardState: s, RingOwner: owners[s.ID]}
		v.Running = s.Owner != "" && s.LeaseUntil.After(now)
		v.Due = s.Checkpoint.State == "running" || !s.Checkpoint.NextRunAt.After(now)
		switch {
		case v.Running:
			v.Reason = "running on " + s.Owner
		case !v.Due:
			v.Reason = "idle until " + s.Checkpoint.NextRunAt.UTC().Format(time.RFC3339)
			if s.Checkpoint.Reason != "" {
				v.Reason += ": " + s.Checkpoint.Reason
			}
		case maint:
			v.Reason = "maintenance"
		case busy[s.Group] != "" && busy[s.Group] != s.ID:
			v.Reason = "group busy: " + busy[s.Group] + " is running"
		case s.Checkpoint.Reason != "":
			v.Reason = s.Checkpoint.Reason
		case v.RingOwner == "":
			v.Reason = "no ready member on the ring"
		default:
			v.Reason = "due: waiting for " + v.RingOwner
		}
		if filter.State != "" && filter.State != s.Checkpoint.State && !(filter.State == "running" && v.Running) && !(filter.State == "due" && v.Due && !v.Running) {
			continue
		}
		if reason != "" && !strings.Contains(v.Reason, reason) {
			continue
		}
		out = append(out, v)
	}
	return out, nil
}

func (n *Node) handleShards(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var f fsm.ShardFilter
	if g := q.Get("group"); g != "" {
		v, err := strconv.Atoi(g)
		if err != nil {
			writeError(w, http.StatusBadRequest, "group must be an integer")
			return
		}
		f.Group = &v
	}
	f.Owner = q.Get("owner")
	f.State = q.Get("state")
	views, err := n.ShardViews(f, q.Get("reason"), time.Now())
	if err != nil {
		writeFSMError(w, err)
		return
	}
	var synced, cards uint64
	for _, v := range views {
		synced += v.Checkpoint.Synced
		cards += uint64(v.Cards)
	}
	writeJSON(w, http.StatusOK, map[string]any{"shards": views, "count": len(views), "cards": cards})
}

func (n *Node) handleShard(w http.ResponseWriter, r *http.Request) {
	s, err := n.fsm.Shard(r.PathValue("id"))
	if err != nil {
		writeFSMError(w, err)
		return
	}
	views, err := n.ShardViews(fsm.ShardFilter{Group: &s.Group}, "", time.Now())
	if err != nil {
		writeFSMError(w, err)
		return
	}
	for _, v := range views {
		if v.ID == s.ID {
			v.History = s.History
			writeJSON(w, http.StatusOK, v)
			return
		}
	}
	writeJSON(w, http.StatusOK, s)
}

func (n *Node) handleEnterprises(w http.ResponseWriter, r *http.Request) {
	es, err := n.fsm.Enterprises()
	if err != nil {
		writeFSMError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"enterprises": es})
}

func (n *Node) handleAccounts(w http.ResponseWriter, r *http.Request) {
	as, err := n.fsm.Accounts()
	if err != nil {
		writeFSMError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"accounts": as})
}

// handleChanges serves the change feed: events after a sequence (after=SEQ, or
// after_index=N for SeqOfIndex(N), the position a GET /v1/cards page's applied_index
// stands for), in order, filtered by enterprise and kinds (comma-separated). With
// wait=D it long-polls: it answers as soon as an event arrives, woken by the FSM's apply
// path. A reader whose position retention has passed gets 410 and must resynchronise from
// GET /v1/cards?enterprise=ID. "next" is the after of the following request.
func (n *Node) handleChanges(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var after uint64
	if s := q.Get("after"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			writeError(w, http.StatusBadRequest, "after must be a sequence number")
			return
		}
		after = v
	}
	if s := q.Get("after_index"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil || v >= 1<<48 || q.Get("after") != "" {
			writeError(w, http.StatusBadRequest, "after_index must be a raft index, and not given with after")
			return
		}
		after = fsm.SeqOfIndex(v)
	}
	limit, err := queryInt(r, "limit", 100, fsm.MaxPage)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	var kinds []string
	if ks := q.Get("kinds"); ks != "" {
		kinds = strings.Split(ks, ",")
	}
	var wait time.Duration
	if ws := q.Get("wait"); ws != "" {
		if wait, err = time.ParseDuration(ws); err != nil || wait < 0 {
			writeError(w, http.StatusBadRequest, "wait must be a duration such as 30s")
			return
		}
		wait = min(wait, 5*time.Minute)
	}
	ctx, cancel := context.WithTimeout(r.Context(), wait)
	defer cancel()
	fq := fsm.FeedQuery{After: after, Limit: limit, Enterprise: q.Get("enterprise"), Kinds: kinds}
	for {
		page, err := n.fsm.Feed(fq)
		if errors.Is(err, fsm.ErrFeedTrimmed) {
			writeJSON(w, http.StatusGone, map[string]any{
				"error":   fmt.Sprintf("sequence %d is older than the retained change feed (oldest %d, dropped up to %d): resynchronise from GET /v1/cards?enterprise=ID, then continue with after_index=<its applied_index>", after, page.Oldest, page.Trimmed),
				"code":    "resync_required",
				"oldest":  page.Oldest,
				"trimmed": page.Trimmed,
			})
			return
		}
		if err != nil {
			writeFSMError(w, err)
			return
		}
		if len(page.Changes) > 0 || ctx.Err() != nil {
			last := after
			if len(page.Changes) > 0 {
				last = page.Changes[len(page.Changes)-1].Seq
			}
			if page.Changes == nil {
				page.Changes = []fsm.Change{}
			}
			writeJSON(w, http.StatusOK, map[string]any{"changes": page.Changes, "last": last, "next": page.Next,
				"oldest": page.Oldest, "applied_index": page.AppliedIndex})
			return
		}
		// Nothing yet: continue from where this read stopped once something is applied.
		fq.After = page.Next
		if _, err := n.fsm.WaitApplied(ctx, page.AppliedIndex); err != nil && r.Context().Err() != nil {
			return
		}
	}
}

func (n *Node) handleDigest(w http.ResponseWriter, r *http.Request) {
	idx, d, err := n.fsm.Digest()
	if err != nil {
		writeFSMError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"applied_index": idx, "digest": d})
}

func (n *Node) handleResync(w http.ResponseWriter, r *http.Request) {
	var req fsm.Resync
	if !decodeBody(w, r, &req) {
		return
	}
	if len(req.ICCIDs) == 0 && req.Shard == "" && req.Enterprise == "" {
		writeError(w, http.StatusBadRequest, "name iccids, a shard or an enterprise")
		return
	}
	for i, c := range req.ICCIDs {
		req.ICCIDs[i] = strings.ToUpper(strings.TrimSpace(c))
		if !fsmICCID(req.ICCIDs[i]) {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("invalid ICCID %q", c))
			return
		}
	}
	n.proposeAndReply(w, r, fsm.TypeResync, req)
}

func (n *Node) handleForceRelease(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Reason string `json:"reason"`
	}
	if r.ContentLength != 0 && !decodeBody(w, r, &req) {
		return
	}
	if req.Reason == "" {
		req.Reason = "force-released by operator"
	}
	n.proposeAndReply(w, r, fsm.TypeForceRelease, fsm.ForceRelease{Shard: r.PathValue("id"), Reason: req.Reason})
}

func (n *Node) handleSetCheckpoint(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Cursor    *string    `json:"cursor"`
		NextRunAt *time.Time `json:"next_run_at"`
		NewTask   bool       `json:"new_task"`
	}
	if !decodeBody(w, r, &req) {
		return
	}
	n.proposeAndReply(w, r, fsm.TypeSetCheckpoint, fsm.SetCheckpoint{Shard: r.PathValue("id"), Cursor: req.Cursor, NextRunAt: req.NextRunAt, NewTask: req.NewTask})
}

func (n *Node) handleMaintenance(w http.ResponseWriter, r *http.Request) {
	var req fsm.SetMaintenance
	if !decodeBody(w, r, &req) {
		return
	}
	n.proposeAndReply(w, r, fsm.TypeSetMaintenance, req)
}

func (n *Node) handleDrain(w http.ResponseWriter, r *http.Request) {
	var req struct {
		On bool `json:"on"`
	}
	if !decodeBody(w, r, &req) {
		return
	}
	if err := n.Drain(req.On); err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"ok": true, "node": n.name, "draining": req.On})
}

func (n *Node) handleRemovePeer(w http.ResponseWriter, r *http.Request) {
	var req struct {
		ID string `json:"id"`
	}
	if !decodeBody(w, r, &req) {
		return
	}
	if req.ID == "" {
		writeError(w, http.StatusBadRequest, "id is required")
		return
	}
	if n.raft.State() != raft.Leader {
		writeError(w, http.StatusConflict, "not the leader: send this to the leader's HTTP address")
		return
	}
	if err := n.raft.RemoveServer(raft.ServerID(req.ID), 0, 0).Error(); err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"ok": true, "removed": req.ID})
}

// handleBackup streams a consistent copy of the replicated state (the FSM's bbolt file).
func (n *Node) handleBackup(w http.ResponseWriter, r *http.Request) {
	snap, err := n.fsm.Snapshot()
	if err != nil {
		writeFSMError(w, err)
		return
	}
	defer snap.Release()
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", `attachment; filename="cardsync-backup.db"`)
	if err := snap.Persist(&backupSink{Writer: w}); err != nil {
		n.logger.Warn("backup stream", "error", err)
	}
}

type backupSink struct{ io.Writer }

func (b *backupSink) ID() string    { return "backup" }
func (b *backupSink) Cancel() error { return nil }
func (b *backupSink) Close() error  { return nil }

func (n *Node) handleUpsertEnterprise(w http.ResponseWriter, r *http.Request) {
	var req fsm.UpsertEnterprise
	if !decodeBody(w, r, &req) {
		return
	}
	if strings.TrimSpace(req.ID) == "" {
		writeError(w, http.StatusBadRequest, "id is required")
		return
	}
	n.proposeAndReply(w, r, fsm.TypeUpsertEnterprise, req)
}

func (n *Node) handleUpsertAccount(w http.ResponseWriter, r *http.Request) {
	var req fsm.Account
	if !decodeBody(w, r, &req) {
		return
	}
	if strings.TrimSpace(req.ID) == "" {
		writeError(w, http.StatusBadRequest, "id is required")
		return
	}
	switch req.Carrier {
	case "onelink", "unicom", "telecom", "cisco":
	default:
		writeError(w, http.StatusBadRequest, fmt.Sprintf("carrier %q: want onelink, unicom, telecom or cisco", req.Carrier))
		return
	}
	n.proposeAndReply(w, r, fsm.TypeUpsertAccount, fsm.UpsertAccount{Account: req})
}
