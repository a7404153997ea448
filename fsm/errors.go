package fsm

import (
	"errors"
	"fmt"
)

// Sentinel errors. A command that breaks a rule returns, as its Raft response, an error
// wrapping exactly one of them; callers branch with errors.Is.
var (
	// ErrStaleEpoch: the command carries an epoch that is not the shard's current one.
	ErrStaleEpoch = errors.New("stale epoch")
	// ErrNotOwner: the shard's claim is not held by the proposing node.
	ErrNotOwner = errors.New("not the claim owner")
	// ErrClaimedElsewhere: another node holds a live claim on the shard.
	ErrClaimedElsewhere = errors.New("claimed elsewhere")
	// ErrGroupBusy: another shard of the same group holds a live claim.
	ErrGroupBusy = errors.New("group busy")
	// ErrMaintenance: the cluster is in maintenance mode; no new claims or tasks.
	ErrMaintenance = errors.New("maintenance")
	// ErrNotFound: a named record does not exist.
	ErrNotFound = errors.New("not found")
	// ErrInvalid: the payload is well-formed but its values break a rule.
	ErrInvalid = errors.New("invalid")
	// ErrUnknownCommand: the command type or format version is unknown.
	ErrUnknownCommand = errors.New("unknown command")
	// ErrBadCommand: the command is truncated, corrupt or unstamped.
	ErrBadCommand = errors.New("bad command")
	// ErrCursorBack: a flush would move the task cursor backwards.
	ErrCursorBack = errors.New("cursor moved back")
)

var codeTable = []struct {
	code string
	err  error
}{
	{"stale_epoch", ErrStaleEpoch},
	{"not_owner", ErrNotOwner},
	{"claimed_elsewhere", ErrClaimedElsewhere},
	{"group_busy", ErrGroupBusy},
	{"maintenance", ErrMaintenance},
	{"not_found", ErrNotFound},
	{"invalid", ErrInvalid},
	{"unknown_command", ErrUnknownCommand},
	{"bad_command", ErrBadCommand},
	{"cursor_back", ErrCursorBack},
}

// CodeInternal is the code of an error that wraps none of the sentinel errors.
const CodeInternal = "internal"

// ErrorCode returns a stable code for err so that it can cross the network: "" for nil,
// one code per sentinel error ("stale_epoch", "not_owner", ...), or CodeInternal.
func ErrorCode(err error) string {
	if err == nil {
		return ""
	}
	for _, c := range codeTable {
		if errors.Is(err, c.err) {
			return c.code
		}
	}
	return CodeInternal
}

// ErrorFromCode rebuilds an error from a code and message produced by ErrorCode and
// err.Error(). The result satisfies errors.Is for the sentinel named by code and prints
// msg. An empty code gives nil; an unknown code gives a plain error.
func ErrorFromCode(code, msg string) error {
	if code == "" {
		return nil
	}
	for _, c := range codeTable {
		if c.code == code {
			if msg == "" {
				msg = c.err.Error()
			}
			return &codedError{sentinel: c.err, msg: msg}
		}
	}
	if msg == "" {
		msg = code
	}
	return errors.New(msg)
}

type codedError struct {
	sentinel error
	msg      string
}

func (e *codedError) Error() string { return e.msg }
func (e *codedError) Unwrap() error { return e.sentinel }

// ruleError marks an error as a rule violation of one command: the command is rejected
// but the transaction applying its batch goes on. Any other error from a handler is a
// storage failure that aborts the batch.
type ruleError struct{ err error }

func (e *ruleError) Error() string { return e.err.Error() }
func (e *ruleError) Unwrap() error { return e.err }

// reject builds a rule violation wrapping sentinel.
func reject(sentinel error, format string, args ...any) error {
	return &ruleError{err: fmt.Errorf("%w: "+format, append([]any{sentinel}, args...)...)}
}
