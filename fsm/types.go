package fsm

import "time"

// Carrier names accepted in Account.Carrier and as keys of Enterprise.Accounts.
const (
	CarrierOneLink = "onelink"
	CarrierUnicom  = "unicom"
	CarrierTelecom = "telecom"
	CarrierCisco   = "cisco"
)

// Task states in Checkpoint.State.
const (
	// StateIdle: no task has started, or an operator reset the task.
	StateIdle = "idle"
	// StateRunning: a task started and has not finished; continue from its cursor.
	StateRunning = "running"
	// StateDone: the last task finished.
	StateDone = "done"
)

// Defaults of the cluster settings fixed by the first import.
const (
	DefaultGroups    = 64
	DefaultShardSize = 500
	// MaxGroups and MaxShardSize bound the cluster settings.
	MaxGroups    = 1 << 16
	MaxShardSize = 100000
	// MaxFlushResults bounds the results of one flush (the change sequence keeps 16 bits
	// for the position inside a log entry).
	MaxFlushResults = 1<<16 - 1
)

// Account is a carrier API account. Credentials are never stored in the FSM.
type Account struct {
	ID      string `json:"id"`
	Carrier string `json:"carrier"`
	// TTL is how long data synced through this account stays valid.
	TTL time.Duration `json:"ttl"`
	// RatePerSec, Burst and Concurrency are the account's cluster-wide quota.
	RatePerSec  float64 `json:"rate_per_sec"`
	Burst       int     `json:"burst"`
	Concurrency int     `json:"concurrency"`
	// BatchSize is the largest batch query the carrier API accepts (0: one card a call).
	BatchSize        int    `json:"batch_size"`
	CredentialsValid bool   `json:"credentials_valid"`
	InvalidReason    string `json:"invalid_reason,omitempty"`
	// Version is bumped by the FSM on every change; the value in a command is ignored.
	Version uint64 `json:"version"`
}

// Enterprise is a customer whose cards cardsync keeps fresh.
type Enterprise struct {
	ID   string `json:"id"`
	Name string `json:"name"`
	// Accounts maps a carrier name to the id of the account used for it.
	Accounts       map[string]string `json:"accounts"`
	InventoryReady bool              `json:"inventory_ready"`
	// InventoryVersion is bumped by every import that adds or changes one of its cards
	// and by every upsert that changes the record.
	InventoryVersion uint64 `json:"inventory_version"`
	// Cards is the number of cards imported for the enterprise.
	Cards int `json:"cards"`
}

// CardData is the carrier's data about a card, normalised.
type CardData struct {
	Status            string    `json:"status"`
	RawStatus         string    `json:"raw_status"`
	RatePlan          string    `json:"rate_plan"`
	DataUsedBytes     int64     `json:"data_used_bytes"`
	UsagePeriod       string    `json:"usage_period"`
	ActivatedAt       time.Time `json:"activated_at"`
	CarrierModifiedAt time.Time `json:"carrier_modified_at"`
}

// Card is one SIM card.
type Card struct {
	ICCID       string    `json:"iccid"`
	Enterprise  string    `json:"enterprise"`
	Account     string    `json:"account"`
	MSISDN      string    `json:"msisdn"`
	IMSI        string    `json:"imsi"`
	IMEI        string    `json:"imei"`
	Shard       string    `json:"shard"`
	Group       int       `json:"group"`
	Data        CardData  `json:"data"`
	ErrKind     string    `json:"err_kind,omitempty"`
	ErrMsg      string    `json:"err_msg,omitempty"`
	SyncedAt    time.Time `json:"synced_at"`
	ValidUntil  time.Time `json:"valid_until"`
	SyncedEpoch uint64    `json:"synced_epoch"`
	SyncCount   uint64    `json:"sync_count"`
}

// Checkpoint is a shard's task progress.
type Checkpoint struct {
	TaskID     uint64    `json:"task_id"`
	State      string    `json:"state"`
	Cursor     string    `json:"cursor"`
	Synced     uint64    `json:"synced"`
	Skipped    uint64    `json:"skipped"`
	Failed     uint64    `json:"failed"`
	DepVersion uint64    `json:"dep_version"`
	StartedAt  time.Time `json:"started_at"`
	UpdatedAt  time.Time `json:"updated_at"`
	NextRunAt  time.Time `json:"next_run_at"`
	// Reason says why the shard is not running now (release reason, revocation, ...).
	Reason string `json:"reason,omitempty"`
}

// Round is one finished task of a shard.
type Round struct {
	TaskID    uint64    `json:"task_id"`
	Epoch     uint64    `json:"epoch"`
	Owner     string    `json:"owner"`
	StartedAt time.Time `json:"started_at"`
	EndedAt   time.Time `json:"ended_at"`
	Synced    uint64    `json:"synced"`
	Skipped   uint64    `json:"skipped"`
	Failed    uint64    `json:"failed"`
}

// ShardState is a shard with its claim and checkpoint.
type ShardState struct {
	ID          string   `json:"id"`
	Group       int      `json:"group"`
	Cards       int      `json:"cards"`
	Enterprises []string `json:"enterprises"`
	// Accounts counts the shard's cards per carrier account, sorted by account; every
	// card is counted. It is empty for a shard whose record was written before the
	// counts were kept.
	Accounts []AccountCards `json:"accounts,omitempty"`
	// Epoch is the fencing token, bumped at every grant and every forced takeover.
	Epoch      uint64     `json:"epoch"`
	Owner      string     `json:"owner,omitempty"`
	LeaseUntil time.Time  `json:"lease_until"`
	Checkpoint Checkpoint `json:"checkpoint"`
	// History holds the latest finished rounds, oldest first; only Shard fills it.
	History []Round `json:"history,omitempty"`
}

// AccountCards is how many of a shard's cards belong to one carrier account.
type AccountCards struct {
	Account string `json:"account"`
	Cards   int    `json:"cards"`
}

// LiveClaim reports whether the shard has an owner whose lease runs past now.
func (s ShardState) LiveClaim(now time.Time) bool {
	return s.Owner != "" && s.LeaseUntil.After(now)
}

// Change is a change of a card's carrier data recorded by a flush.
type Change struct {
	// Seq is raft index<<16 | position of the card in the flush's results.
	Seq        uint64    `json:"seq"`
	ICCID      string    `json:"iccid"`
	Enterprise string    `json:"enterprise"`
	Before     CardData  `json:"before"`
	After      CardData  `json:"after"`
	BeforeErr  string    `json:"before_err,omitempty"`
	AfterErr   string    `json:"after_err,omitempty"`
	Time       time.Time `json:"time"`
	// Kinds says what changed: KindStatus, KindRatePlan, KindUsage, KindError.
	Kinds []string `json:"kinds"`
}

// Counts are record counts.
type Counts struct {
	Cards       int `json:"cards"`
	Shards      int `json:"shards"`
	Enterprises int `json:"enterprises"`
	Accounts    int `json:"accounts"`
	// Claims counts shards with an owner, live or expired.
	Claims int `json:"claims"`
}

// CardFilter selects cards. Enterprise and Shard narrow the set; After is the ICCID to
// continue after; Limit bounds the page (0 or above MaxPage: MaxPage).
type CardFilter struct {
	Enterprise string `json:"enterprise,omitempty"`
	Shard      string `json:"shard,omitempty"`
	After      string `json:"after,omitempty"`
	Limit      int    `json:"limit,omitempty"`
}

// MaxPage bounds the size of a page of cards or changes.
const MaxPage = 10000

// ShardFilter selects shards; zero fields match everything.
type ShardFilter struct {
	Group *int   `json:"group,omitempty"`
	Owner string `json:"owner,omitempty"`
	State string `json:"state,omitempty"`
}

// Result is the response of a successfully applied command.
type Result struct {
	Epoch   uint64 `json:"epoch,omitempty"`
	TaskID  uint64 `json:"task_id,omitempty"`
	Added   int    `json:"added,omitempty"`
	Updated int    `json:"updated,omitempty"`
	Message string `json:"message,omitempty"`
}
