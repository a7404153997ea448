package fsm

import (
	"encoding/json"
	"fmt"
	"net/url"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Subscription is a webhook subscription: the change events it selects are POSTed to URL
// in sequence order. Cursor is the last sequence the subscriber acknowledged; the
// deliverer that holds the current Epoch is the only one that can move it.
type Subscription struct {
	ID  string `json:"id"`
	URL string `json:"url"`
	// Enterprise and Kinds select events (empty: all).
	Enterprise string   `json:"enterprise,omitempty"`
	Kinds      []string `json:"kinds,omitempty"`
	// Secret keys the HMAC-SHA256 signature of every delivery.
	Secret string `json:"secret"`

	Cursor uint64 `json:"cursor"`
	// Epoch is the deliverer's fencing token, bumped at every claim and every cursor
	// reset; Owner is the node that holds it.
	Epoch uint64 `json:"epoch"`
	Owner string `json:"owner,omitempty"`

	Paused      bool      `json:"paused"`
	PauseReason string    `json:"pause_reason,omitempty"`
	PausedAt    time.Time `json:"paused_at"`
	// Failures counts delivery attempts failed in a row (reset by an acknowledgement or a
	// resume).
	Failures    int       `json:"failures"`
	LastError   string    `json:"last_error,omitempty"`
	LastErrorAt time.Time `json:"last_error_at"`
	// Delivered counts events acknowledged by the subscriber.
	Delivered      uint64    `json:"delivered"`
	LastDeliveryAt time.Time `json:"last_delivery_at"`
	CreatedAt      time.Time `json:"created_at"`
	UpdatedAt      time.Time `json:"updated_at"`
}

// UpsertSubscription creates or updates a subscription. A new subscription starts after
// the events that exist when it is applied, unless After is set; on an update, After
// moves the cursor (and fences the deliverer) and an empty Secret keeps the old one.
type UpsertSubscription struct {
	ID         string   `json:"id"`
	URL        string   `json:"url"`
	Enterprise string   `json:"enterprise"`
	Kinds      []string `json:"kinds"`
	Secret     string   `json:"secret"`
	After      *uint64  `json:"after,omitempty"`
}

// DeleteSubscription removes a subscription.
type DeleteSubscription struct {
	ID string `json:"id"`
}

// ClaimSubscription makes Node the subscription's deliverer if Epoch is still current
// (compare-and-set); the grant bumps the epoch, which fences the previous deliverer.
type ClaimSubscription struct {
	ID    string `json:"id"`
	Node  string `json:"node"`
	Epoch uint64 `json:"epoch"`
}

// AdvanceSubscription reports a delivery attempt by the deliverer holding Epoch:
// Cursor (never backwards) is the last sequence acknowledged and Delivered the events
// acknowledged by this attempt; Error records a failed attempt; Pause stops delivery
// with Reason.
type AdvanceSubscription struct {
	ID        string `json:"id"`
	Node      string `json:"node"`
	Epoch     uint64 `json:"epoch"`
	Cursor    uint64 `json:"cursor"`
	Delivered uint64 `json:"delivered"`
	Error     string `json:"error,omitempty"`
	Pause     bool   `json:"pause,omitempty"`
	Reason    string `json:"reason,omitempty"`
}

// SetSubscriptionPaused pauses or resumes a subscription (operator action). Resuming
// clears the failure count.
type SetSubscriptionPaused struct {
	ID     string `json:"id"`
	Paused bool   `json:"paused"`
	Reason string `json:"reason"`
}

// Bounds of subscription fields.
const (
	maxURLLen    = 2048
	maxSecretLen = 256
)

func (a *applier) subscription(id string) (*Subscription, error) {
	if err := checkID("subscription", id); err != nil {
		return nil, err
	}
	v := a.subs().Get([]byte(id))
	if v == nil {
		return nil, reject(ErrNotFound, "subscription %s", id)
	}
	s := new(Subscription)
	if err := json.Unmarshal(v, s); err != nil {
		return nil, fmt.Errorf("subscription %s: %w", id, err)
	}
	return s, nil
}

func (a *applier) subs() *bolt.Bucket { return a.tx.Bucket(bucketSubs) }

func (a *applier) putSubscription(s *Subscription) error {
	s.UpdatedAt = fromNanos(a.now)
	v, err := json.Marshal(s)
	if err != nil {
		return err
	}
	return a.subs().Put([]byte(s.ID), v)
}

func checkSubURL(raw string) error {
	if len(raw) > maxURLLen {
		return reject(ErrInvalid, "url is %d bytes, at most %d", len(raw), maxURLLen)
	}
	u, err := url.Parse(raw)
	if err != nil {
		return reject(ErrInvalid, "url %q: %v", raw, err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return reject(ErrInvalid, "url %q: want http:// or https:// with a host", raw)
	}
	return nil
}

func (a *applier) upsertSubscription(p *UpsertSubscription) (*Result, error) {
	if err := checkID("subscription", p.ID); err != nil {
		return nil, err
	}
	if err := checkSubURL(p.URL); err != nil {
		return nil, err
	}
	if p.Enterprise != "" {
		if err := checkID("enterprise", p.Enterprise); err != nil {
			return nil, err
		}
	}
	kinds, err := sortedKinds(p.Kinds)
	if err != nil {
		return nil, reject(ErrInvalid, "subscription %s: %v", p.ID, err)
	}
	if len(p.Secret) > maxSecretLen {
		return nil, reject(ErrInvalid, "secret is %d bytes, at most %d", len(p.Secret), maxSecretLen)
	}
	head := SeqOfIndex(a.index)
	if p.After != nil && *p.After > head {
		return nil, reject(ErrInvalid, "subscription %s: after %d is beyond the feed's head %d", p.ID, *p.After, head)
	}
	var old *Subscription
	if v := a.subs().Get([]byte(p.ID)); v != nil {
		if old, err = a.subscription(p.ID); err != nil {
			return nil, err
		}
	}
	if old == nil {
		if p.Secret == "" {
			return nil, reject(ErrInvalid, "subscription %s: a secret is required to sign deliveries", p.ID)
		}
		s := &Subscription{ID: p.ID, URL: p.URL, Enterprise: p.Enterprise, Kinds: kinds, Secret: p.Secret,
			Cursor: head, Epoch: 1, CreatedAt: fromNanos(a.now)}
		if p.After != nil {
			s.Cursor = *p.After
		}
		if err := a.putSubscription(s); err != nil {
			return nil, err
		}
		return &Result{Added: 1, Epoch: s.Epoch, Message: fmt.Sprintf("subscription %s from sequence %d", s.ID, s.Cursor)}, nil
	}
	s := *old
	s.URL, s.Enterprise, s.Kinds = p.URL, p.Enterprise, kinds
	if p.Secret != "" {
		s.Secret = p.Secret
	}
	if p.After != nil {
		s.Cursor = *p.After
		s.Epoch++
		s.Owner = ""
	}
	if err := a.putSubscription(&s); err != nil {
		return nil, err
	}
	return &Result{Updated: 1, Epoch: s.Epoch, Message: fmt.Sprintf("subscription %s at sequence %d", s.ID, s.Cursor)}, nil
}

func (a *applier) deleteSubscription(p *DeleteSubscription) (*Result, error) {
	if _, err := a.subscription(p.ID); err != nil {
		return nil, err
	}
	if err := a.subs().Delete([]byte(p.ID)); err != nil {
		return nil, err
	}
	return &Result{Updated: 1, Message: fmt.Sprintf("subscription %s deleted", p.ID)}, nil
}

func (a *applier) claimSubscription(p *ClaimSubscription) (*Result, error) {
	if err := checkID("node", p.Node); err != nil {
		return nil, err
	}
	s, err := a.subscription(p.ID)
	if err != nil {
		return nil, err
	}
	if p.Epoch != s.Epoch {
		return nil, reject(ErrStaleEpoch, "subscription %s: epoch %d, current %d", p.ID, p.Epoch, s.Epoch)
	}
	s.Epoch++
	s.Owner = p.Node
	if err := a.putSubscription(s); err != nil {
		return nil, err
	}
	return &Result{Epoch: s.Epoch, Message: fmt.Sprintf("subscription %s delivered by %s", s.ID, s.Owner)}, nil
}

func (a *applier) advanceSubscription(p *AdvanceSubscription) (*Result, error) {
	s, err := a.subscription(p.ID)
	if err != nil {
		return nil, err
	}
	if p.Epoch != s.Epoch {
		return nil, reject(ErrStaleEpoch, "subscription %s: epoch %d, current %d", p.ID, p.Epoch, s.Epoch)
	}
	if p.Node != s.Owner {
		return nil, reject(ErrNotOwner, "subscription %s: delivered by %q, not %q", p.ID, s.Owner, p.Node)
	}
	if p.Cursor < s.Cursor {
		return nil, reject(ErrCursorBack, "subscription %s: cursor %d is before %d", p.ID, p.Cursor, s.Cursor)
	}
	if head := SeqOfIndex(a.index); p.Cursor > head {
		return nil, reject(ErrInvalid, "subscription %s: cursor %d is beyond the feed's head %d", p.ID, p.Cursor, head)
	}
	if err := checkText("error", p.Error); err != nil {
		return nil, err
	}
	if err := checkText("reason", p.Reason); err != nil {
		return nil, err
	}
	s.Cursor = p.Cursor
	if p.Delivered > 0 {
		s.Delivered = satAdd(s.Delivered, p.Delivered)
		s.LastDeliveryAt = fromNanos(a.now)
	}
	if p.Error != "" {
		s.Failures++
		s.LastError = p.Error
		s.LastErrorAt = fromNanos(a.now)
	} else if p.Delivered > 0 {
		s.Failures = 0
	}
	if p.Pause && !s.Paused {
		s.Paused = true
		s.PauseReason = p.Reason
		s.PausedAt = fromNanos(a.now)
	}
	if err := a.putSubscription(s); err != nil {
		return nil, err
	}
	return &Result{Epoch: s.Epoch, Updated: int(min(p.Delivered, 1<<31-1))}, nil
}

func (a *applier) setSubscriptionPaused(p *SetSubscriptionPaused) (*Result, error) {
	if err := checkText("reason", p.Reason); err != nil {
		return nil, err
	}
	s, err := a.subscription(p.ID)
	if err != nil {
		return nil, err
	}
	if p.Paused {
		s.Paused = true
		s.PauseReason = p.Reason
		s.PausedAt = fromNanos(a.now)
	} else {
		s.Paused = false
		s.PauseReason = ""
		s.PausedAt = time.Time{}
		s.Failures = 0
	}
	if err := a.putSubscription(s); err != nil {
		return nil, err
	}
	return &Result{Epoch: s.Epoch, Updated: 1, Message: fmt.Sprintf("subscription %s paused %t", s.ID, s.Paused)}, nil
}

// Subscription returns a subscription by id.
func (f *FSM) Subscription(id string) (Subscription, error) {
	var out Subscription
	err := f.view(func(tx *bolt.Tx) (err error) {
		out, err = getJSON[Subscription](tx, bucketSubs, id, "subscription")
		return err
	})
	return out, err
}

// Subscriptions returns every subscription, ordered by id.
func (f *FSM) Subscriptions() ([]Subscription, error) {
	var out []Subscription
	err := f.view(func(tx *bolt.Tx) (err error) {
		out, err = listJSON[Subscription](tx, bucketSubs, "subscription")
		return err
	})
	return out, err
}
