package fsm

import (
	"encoding/binary"
	"fmt"
	"time"
)

// FormatVersion is the envelope format written by Encode.
const FormatVersion = 1

// headerLen is the envelope header: version, type, int64 stamp.
const headerLen = 10

// Type identifies a command.
type Type uint8

// Command types. The values are part of the replicated log format: never renumber.
const (
	TypeUpsertAccount    Type = 1
	TypeUpsertEnterprise Type = 2
	TypeImportCards      Type = 3
	TypeClaim            Type = 4
	TypeStartTask        Type = 5
	TypeFlush            Type = 6
	TypeRelease          Type = 7
	TypeRevokeNode       Type = 8
	TypeForceRelease     Type = 9
	TypeResync           Type = 10
	TypeSetCheckpoint    Type = 11
	TypeSetMaintenance   Type = 12
	TypeSetAccountStatus Type = 13
	// Change feed and webhook subscriptions.
	TypeSetFeedSettings       Type = 14
	TypeUpsertSubscription    Type = 15
	TypeDeleteSubscription    Type = 16
	TypeClaimSubscription     Type = 17
	TypeAdvanceSubscription   Type = 18
	TypeSetSubscriptionPaused Type = 19
	// The join order the ring's assignment replays.
	TypeSetSeat Type = 20

	lastType = TypeSetSeat
)

var typeNames = [...]string{
	TypeUpsertAccount:    "upsert_account",
	TypeUpsertEnterprise: "upsert_enterprise",
	TypeImportCards:      "import_cards",
	TypeClaim:            "claim",
	TypeStartTask:        "start_task",
	TypeFlush:            "flush",
	TypeRelease:          "release",
	TypeRevokeNode:       "revoke_node",
	TypeForceRelease:     "force_release",
	TypeResync:           "resync",
	TypeSetCheckpoint:    "set_checkpoint",
	TypeSetMaintenance:   "set_maintenance",
	TypeSetAccountStatus: "set_account_status",

	TypeSetFeedSettings:       "set_feed_settings",
	TypeUpsertSubscription:    "upsert_subscription",
	TypeDeleteSubscription:    "delete_subscription",
	TypeClaimSubscription:     "claim_subscription",
	TypeAdvanceSubscription:   "advance_subscription",
	TypeSetSubscriptionPaused: "set_subscription_paused",
	TypeSetSeat:               "set_seat",
}

// Valid reports whether t is a known command type.
func (t Type) Valid() bool {
	return t >= TypeUpsertAccount && t <= lastType
}

// String returns the command's name, or "type(N)" for an unknown type.
func (t Type) String() string {
	if t.Valid() {
		return typeNames[t]
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// Command is a decoded envelope.
type Command struct {
	Type Type
	// Time is the leader's stamp (zero if unstamped).
	Time time.Time
	// Payload is the encoded payload; see DecodePayload.
	Payload []byte
}

// UpsertAccount creates or replaces a carrier account record.
type UpsertAccount struct {
	Account Account `json:"account"`
}

// UpsertEnterprise creates or replaces an enterprise record (its inventory version and
// card count are kept by the FSM).
type UpsertEnterprise struct {
	ID             string            `json:"id"`
	Name           string            `json:"name"`
	Accounts       map[string]string `json:"accounts"`
	InventoryReady bool              `json:"inventory_ready"`
}

// CardImport is one card of an import.
type CardImport struct {
	ICCID      string `json:"iccid"`
	Enterprise string `json:"enterprise"`
	// Account may be empty when the enterprise has exactly one account.
	Account string `json:"account"`
	MSISDN  string `json:"msisdn"`
	IMSI    string `json:"imsi"`
	IMEI    string `json:"imei"`
}

// ImportCards adds cards (all or nothing). Groups and ShardSize are used by the first
// import only (0: defaults); afterwards the stored settings win.
type ImportCards struct {
	Groups    int          `json:"groups"`
	ShardSize int          `json:"shard_size"`
	Cards     []CardImport `json:"cards"`
}

// Claim asks for a shard's claim. Epoch is the epoch the proposer read.
type Claim struct {
	Shard string        `json:"shard"`
	Node  string        `json:"node"`
	Epoch uint64        `json:"epoch"`
	Lease time.Duration `json:"lease"`
	// StartTask also starts a new task (as StartTask would) when the shard has no
	// unfinished one, saving a round trip; DepVersion is the task's dependency version.
	StartTask  bool   `json:"start_task,omitempty"`
	DepVersion uint64 `json:"dep_version,omitempty"`
}

// StartTask begins a new task on a claimed shard.
type StartTask struct {
	Shard string `json:"shard"`
	Node  string `json:"node"`
	Epoch uint64 `json:"epoch"`
	// DepVersion is the dependency version the proposer saw (a hash of the shard's
	// enterprises' inventory versions and accounts' versions).
	DepVersion uint64 `json:"dep_version"`
}

// CardResult is the outcome of syncing one card.
type CardResult struct {
	ICCID string `json:"iccid"`
	// Data replaces the card's data when non-nil.
	Data    *CardData `json:"data,omitempty"`
	ErrKind string    `json:"err_kind,omitempty"`
	ErrMsg  string    `json:"err_msg,omitempty"`
}

// Flush checkpoints a task: card results, cursor and counters, and renews the lease.
type Flush struct {
	Shard   string       `json:"shard"`
	Node    string       `json:"node"`
	Epoch   uint64       `json:"epoch"`
	TaskID  uint64       `json:"task_id"`
	Cursor  string       `json:"cursor"`
	Results []CardResult `json:"results"`
	Skipped uint64       `json:"skipped"`
	Failed  uint64       `json:"failed"`
	Done    bool         `json:"done"`
	Release bool         `json:"release"`
	Reason  string       `json:"reason"`
	// NextRunAt, when non-zero, overrides the shard's next run (e.g. carrier backoff).
	NextRunAt time.Time     `json:"next_run_at"`
	Lease     time.Duration `json:"lease"`
}

// Release gives up a claim.
type Release struct {
	Shard     string    `json:"shard"`
	Node      string    `json:"node"`
	Epoch     uint64    `json:"epoch"`
	Reason    string    `json:"reason"`
	NextRunAt time.Time `json:"next_run_at"`
}

// RevokeNode fences every claim held by a node (used when membership declares it dead).
type RevokeNode struct {
	Node   string `json:"node"`
	Reason string `json:"reason"`
}

// ForceRelease fences and clears a shard's claim (operator action).
type ForceRelease struct {
	Shard  string `json:"shard"`
	Reason string `json:"reason"`
}

// Resync makes cards due now: the listed ICCIDs, every card of Shard and every card of
// Enterprise (any combination, at least one).
type Resync struct {
	ICCIDs     []string `json:"iccids"`
	Shard      string   `json:"shard"`
	Enterprise string   `json:"enterprise"`
}

// SetCheckpoint edits a shard's checkpoint (operator action). A claimed shard is fenced
// (epoch+1, owner cleared).
type SetCheckpoint struct {
	Shard     string     `json:"shard"`
	Cursor    *string    `json:"cursor,omitempty"`
	NextRunAt *time.Time `json:"next_run_at,omitempty"`
	// NewTask resets the task (state idle, cursor and counters cleared) so that the next
	// owner starts a new one.
	NewTask bool `json:"new_task"`
}

// SetMaintenance switches maintenance mode (no claims or new tasks while on).
type SetMaintenance struct {
	On     bool   `json:"on"`
	Reason string `json:"reason"`
}

// SetAccountStatus records whether an account's credentials work.
type SetAccountStatus struct {
	Account string `json:"account"`
	Valid   bool   `json:"valid"`
	Reason  string `json:"reason"`
}

// newPayload returns a pointer to a zero payload of type t.
func newPayload(t Type) any {
	switch t {
	case TypeUpsertAccount:
		return new(UpsertAccount)
	case TypeUpsertEnterprise:
		return new(UpsertEnterprise)
	case TypeImportCards:
		return new(ImportCards)
	case TypeClaim:
		return new(Claim)
	case TypeStartTask:
		return new(StartTask)
	case TypeFlush:
		return new(Flush)
	case TypeRelease:
		return new(Release)
	case TypeRevokeNode:
		return new(RevokeNode)
	case TypeForceRelease:
		return new(ForceRelease)
	case TypeResync:
		return new(Resync)
	case TypeSetCheckpoint:
		return new(SetCheckpoint)
	case TypeSetMaintenance:
		return new(SetMaintenance)
	case TypeSetAccountStatus:
		return new(SetAccountStatus)
	case TypeSetFeedSettings:
		return new(SetFeedSettings)
	case TypeUpsertSubscription:
		return new(UpsertSubscription)
	case TypeDeleteSubscription:
		return new(DeleteSubscription)
	case TypeClaimSubscription:
		return new(ClaimSubscription)
	case TypeAdvanceSubscription:
		return new(AdvanceSubscription)
	case TypeSetSubscriptionPaused:
		return new(SetSubscriptionPaused)
	case TypeSetSeat:
		return new(SetSeat)
	}
	return nil
}

// payloadType returns the command type of a payload value or pointer.
func payloadType(p any) (Type, bool) {
	switch p.(type) {
	case UpsertAccount, *UpsertAccount:
		return TypeUpsertAccount, true
	case UpsertEnterprise, *UpsertEnterprise:
		return TypeUpsertEnterprise, true
	case ImportCards, *ImportCards:
		return TypeImportCards, true
	case Claim, *Claim:
		return TypeClaim, true
	case StartTask, *StartTask:
		return TypeStartTask, true
	case Flush, *Flush:
		return TypeFlush, true
	case Release, *Release:
		return TypeRelease, true
	case RevokeNode, *RevokeNode:
		return TypeRevokeNode, true
	case ForceRelease, *ForceRelease:
		return TypeForceRelease, true
	case Resync, *Resync:
		return TypeResync, true
	case SetCheckpoint, *SetCheckpoint:
		return TypeSetCheckpoint, true
	case SetMaintenance, *SetMaintenance:
		return TypeSetMaintenance, true
	case SetAccountStatus, *SetAccountStatus:
		return TypeSetAccountStatus, true
	case SetFeedSettings, *SetFeedSettings:
		return TypeSetFeedSettings, true
	case UpsertSubscription, *UpsertSubscription:
		return TypeUpsertSubscription, true
	case DeleteSubscription, *DeleteSubscription:
		return TypeDeleteSubscription, true
	case ClaimSubscription, *ClaimSubscription:
		return TypeClaimSubscription, true
	case AdvanceSubscription, *AdvanceSubscription:
		return TypeAdvanceSubscription, true
	case SetSubscriptionPaused, *SetSubscriptionPaused:
		return TypeSetSubscriptionPaused, true
	case SetSeat, *SetSeat:
		return TypeSetSeat, true
	}
	return 0, false
}

// Encode builds an unstamped command of type t. payload must be t's payload struct (a
// value or a pointer).
func Encode(t Type, payload any) ([]byte, error) {
	if !t.Valid() {
		return nil, fmt.Errorf("%w: %s", ErrUnknownCommand, t)
	}
	pt, ok := payloadType(payload)
	if !ok || pt != t {
		return nil, fmt.Errorf("%w: payload %T does not belong to %s", ErrInvalid, payload, t)
	}
	buf := make([]byte, headerLen, headerLen+256)
	buf[0] = FormatVersion
	buf[1] = byte(t)
	out, err := marshalPayload(buf, payload)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", t, err)
	}
	return out, nil
}

// Stamp writes now into the command's header, in place. The leader calls it right before
// raft.Apply; Apply judges leases and stamps records with this time.
func Stamp(cmd []byte, now time.Time) error {
	if len(cmd) < headerLen {
		return fmt.Errorf("%w: %d bytes, header needs %d", ErrBadCommand, len(cmd), headerLen)
	}
	if cmd[0] != FormatVersion {
		return fmt.Errorf("%w: format version %d", ErrUnknownCommand, cmd[0])
	}
	binary.BigEndian.PutUint64(cmd[2:10], uint64(now.UnixNano()))
	return nil
}

// Decode parses a command's envelope. The payload is not decoded; see DecodePayload.
func Decode(b []byte) (Command, error) {
	if len(b) < headerLen {
		return Command{}, fmt.Errorf("%w: %d bytes, header needs %d", ErrBadCommand, len(b), headerLen)
	}
	if b[0] != FormatVersion {
		return Command{}, fmt.Errorf("%w: format version %d", ErrUnknownCommand, b[0])
	}
	t := Type(b[1])
	if !t.Valid() {
		return Command{}, fmt.Errorf("%w: %s", ErrUnknownCommand, t)
	}
	c := Command{Type: t, Payload: b[headerLen:]}
	if ns := int64(binary.BigEndian.Uint64(b[2:10])); ns != 0 {
		c.Time = time.Unix(0, ns).UTC()
	}
	return c, nil
}

// DecodePayload decodes the command's payload into a pointer to its payload struct
// (*Claim for TypeClaim, and so on).
func DecodePayload(c Command) (any, error) {
	p := newPayload(c.Type)
	if p == nil {
		return nil, fmt.Errorf("%w: %s", ErrUnknownCommand, c.Type)
	}
	if err := unmarshalPayload(c.Payload, p); err != nil {
		return nil, fmt.Errorf("%w: %s payload: %v", ErrBadCommand, c.Type, err)
	}
	return p, nil
}
