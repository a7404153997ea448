package fsm

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Bucket names. Composite keys join their parts with a 0x00 byte, which no id contains.
var (
	bucketMeta        = []byte("meta")          // settings, counters, applied index, maintenance
	bucketAccounts    = []byte("accounts")      // account id -> JSON Account
	bucketEnterprises = []byte("enterprises")   // enterprise id -> JSON Enterprise
	bucketCards       = []byte("cards")         // shard \x00 ICCID -> cardRec
	bucketICCIDs      = []byte("iccids")        // ICCID -> shard id
	bucketEntCards    = []byte("ent_cards")     // enterprise \x00 ICCID -> empty
	bucketShards      = []byte("shards")        // shard id -> shardRec
	bucketGroups      = []byte("groups")        // group (4-byte big-endian) -> groupRec
	bucketClaims      = []byte("claims")        // node \x00 shard -> empty
	bucketHistory     = []byte("history")       // shard \x00 task id (8-byte BE) -> Round
	bucketChanges     = []byte("changes")       // seq (8-byte BE) -> changeRec
	bucketSubs        = []byte("subscriptions") // subscription id -> JSON Subscription

	allBuckets = [][]byte{bucketMeta, bucketAccounts, bucketEnterprises, bucketCards,
		bucketICCIDs, bucketEntCards, bucketShards, bucketGroups, bucketClaims,
		bucketHistory, bucketChanges, bucketSubs}
)

// Keys of the meta bucket.
var (
	keyApplied     = []byte("applied_index")
	keySettings    = []byte("settings")
	keyMaintenance = []byte("maintenance")
	keyNumCards    = []byte("n_cards")
	keyNumShards   = []byte("n_shards")
	keyNumChanges  = []byte("n_changes")
	keyTrimmed     = []byte("changes_trimmed")
	keyFeed        = []byte("feed_settings")
	keyFeedClock   = []byte("feed_clock")
	// revoked \x00 node -> revocation time (8-byte BE Unix nanos), until the node's
	// next granted claim.
	keyRevokedPrefix = []byte("revoked\x00")
)

func revokedKey(node string) []byte {
	return append(append([]byte(nil), keyRevokedPrefix...), node...)
}

// maxIDLen bounds ids of accounts, enterprises, nodes and shards; maxTextLen bounds
// free text (names, reasons, error messages).
const (
	maxIDLen   = 128
	maxTextLen = 1024
)

func joinKey(a, b string) []byte {
	k := make([]byte, 0, len(a)+1+len(b))
	k = append(k, a...)
	k = append(k, 0)
	return append(k, b...)
}

func prefixKey(a string) []byte {
	k := make([]byte, 0, len(a)+1)
	k = append(k, a...)
	return append(k, 0)
}

func u64Key(v uint64) []byte {
	return binary.BigEndian.AppendUint64(nil, v)
}

func groupKey(g int) []byte {
	return binary.BigEndian.AppendUint32(nil, uint32(g))
}

func historyKey(shard string, task uint64) []byte {
	return binary.BigEndian.AppendUint64(prefixKey(shard), task)
}

// checkID validates an id: 1 to 128 bytes of printable UTF-8 without spaces or
// control characters.
func checkID(what, id string) error {
	if id == "" {
		return reject(ErrInvalid, "%s id is empty", what)
	}
	if len(id) > maxIDLen {
		return reject(ErrInvalid, "%s id is %d bytes, at most %d", what, len(id), maxIDLen)
	}
	if !utf8.ValidString(id) {
		return reject(ErrInvalid, "%s id %q is not UTF-8", what, id)
	}
	for _, r := range id {
		if r <= ' ' || r == 0x7f {
			return reject(ErrInvalid, "%s id %q contains a space or control character", what, id)
		}
	}
	return nil
}

// checkText validates free text.
func checkText(what, s string) error {
	if len(s) > maxTextLen {
		return reject(ErrInvalid, "%s is %d bytes, at most %d", what, len(s), maxTextLen)
	}
	if !utf8.ValidString(s) {
		return reject(ErrInvalid, "%s is not UTF-8", what)
	}
	return nil
}

// clipText cuts free text that comes from carriers to maxTextLen bytes on a rune
// boundary and replaces invalid UTF-8, instead of rejecting it.
func clipText(s string) string {
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	if len(s) <= maxTextLen {
		return s
	}
	cut := maxTextLen
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut]
}

// NormalizeICCID upper-cases and trims an ICCID and checks it is 19 or 20 hex digits.
// (Real China Mobile ICCIDs contain letters, so Luhn is not checked.)
func NormalizeICCID(s string) (string, error) {
	s = strings.ToUpper(strings.TrimSpace(s))
	if !validICCID(s) {
		return "", fmt.Errorf("%w: ICCID %q is not 19-20 hex digits", ErrInvalid, s)
	}
	return s, nil
}

func validICCID(s string) bool {
	if len(s) < 19 || len(s) > 20 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'A' || c > 'F') {
			return false
		}
	}
	return true
}

// normICCID is NormalizeICCID without allocation for the common already-normal case.
func normICCID(s string) (string, bool) {
	if validICCID(s) {
		return s, true
	}
	n, err := NormalizeICCID(s)
	return n, err == nil
}

// GroupOf returns the group of an enterprise: fnv32a(enterprise id) mod groups.
func GroupOf(enterprise string, groups int) int {
	if groups <= 0 {
		return 0
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(enterprise))
	return int(h.Sum32() % uint32(groups))
}

// ShardID returns the id of the n-th shard (from 0) of a group: "g<group>-<n>".
func ShardID(group, n int) string {
	return "g" + strconv.Itoa(group) + "-" + strconv.Itoa(n)
}

// ParseShardID splits a shard id into its group and sequence number.
func ParseShardID(id string) (group, n int, err error) {
	rest, ok := strings.CutPrefix(id, "g")
	if !ok {
		return 0, 0, fmt.Errorf("%w: shard id %q does not start with g", ErrInvalid, id)
	}
	gs, ns, ok := strings.Cut(rest, "-")
	if !ok {
		return 0, 0, fmt.Errorf("%w: shard id %q has no dash", ErrInvalid, id)
	}
	group, err1 := strconv.Atoi(gs)
	n, err2 := strconv.Atoi(ns)
	if err1 != nil || err2 != nil || group < 0 || n < 0 || ShardID(group, n) != id {
		return 0, 0, fmt.Errorf("%w: shard id %q is not g<group>-<n>", ErrInvalid, id)
	}
	return group, n, nil
}
