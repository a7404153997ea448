package carrier

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Kind classifies a carrier failure by what the caller should do about it.
type Kind int

// The error kinds. KindOK is the zero value and means "no error".
const (
	KindOK             Kind = iota // no error
	KindRateLimited                // quota exceeded: back off (Retry-After where given)
	KindAuthExpired                // token expired: refresh once and retry
	KindAuthInvalid                // credentials rejected: do not retry, disable the account
	KindTransient                  // 5xx, timeouts, connection errors, garbled bodies: retry with backoff
	KindNotFound                   // card unknown to the carrier or not owned by the account
	KindInvalidRequest             // the request was malformed: fix it, do not retry
	KindPermanent                  // any other carrier-side refusal: do not retry
)

var kindNames = [...]string{
	KindOK:             "ok",
	KindRateLimited:    "rate_limited",
	KindAuthExpired:    "auth_expired",
	KindAuthInvalid:    "auth_invalid",
	KindTransient:      "transient",
	KindNotFound:       "not_found",
	KindInvalidRequest: "invalid_request",
	KindPermanent:      "permanent",
}

// NumKinds is the number of defined kinds, for arrays indexed by Kind.
const NumKinds = int(KindPermanent) + 1

// String gives the snake_case name of the kind ("rate_limited" etc.).
func (k Kind) String() string {
	if k < 0 || int(k) >= len(kindNames) {
		return fmt.Sprintf("kind(%d)", int(k))
	}
	return kindNames[k]
}

// ParseKind is the inverse of Kind.String.
func ParseKind(s string) (Kind, error) {
	for i, n := range kindNames {
		if n == s {
			return Kind(i), nil
		}
	}
	return KindOK, fmt.Errorf("carrier: unknown error kind %q", s)
}

// MarshalText encodes the kind by name.
func (k Kind) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// UnmarshalText decodes a kind name.
func (k *Kind) UnmarshalText(b []byte) error {
	v, err := ParseKind(string(b))
	if err != nil {
		return err
	}
	*k = v
	return nil
}

// Sentinel errors, one per kind; *Error matches the one of its kind with errors.Is.
var (
	ErrRateLimited    = errors.New("carrier: rate limited")
	ErrAuthExpired    = errors.New("carrier: authentication expired")
	ErrAuthInvalid    = errors.New("carrier: authentication invalid")
	ErrTransient      = errors.New("carrier: transient failure")
	ErrNotFound       = errors.New("carrier: card not found")
	ErrInvalidRequest = errors.New("carrier: invalid request")
	ErrPermanent      = errors.New("carrier: permanent failure")
	// ErrCircuitOpen is wrapped by the KindTransient error an Account returns
	// while its circuit breaker is open.
	ErrCircuitOpen = errors.New("carrier: circuit open")
	// ErrAbandoned: the query was given up (WithAbandon) while it waited for a
	// concurrency slot or its call tokens; nothing was sent to the carrier.
	ErrAbandoned = errors.New("carrier: query abandoned before its call")
)

func (k Kind) sentinel() error {
	switch k {
	case KindRateLimited:
		return ErrRateLimited
	case KindAuthExpired:
		return ErrAuthExpired
	case KindAuthInvalid:
		return ErrAuthInvalid
	case KindTransient:
		return ErrTransient
	case KindNotFound:
		return ErrNotFound
	case KindInvalidRequest:
		return ErrInvalidRequest
	case KindPermanent:
		return ErrPermanent
	}
	return nil
}

// Error is a classified carrier failure, either of a whole call or of one card.
// It never carries credentials: messages come from the carrier's response or
// from a sanitised transport error (method and path, no query string).
type Error struct {
	Carrier    string        // "onelink" | "unicom" | "telecom" | "cisco"
	Account    string        // account id from configuration
	Code       string        // the carrier's code verbatim ("12021", "40000029", "-4", HTTP status for bare HTTP errors)
	Message    string        // the carrier's message or a description
	Kind       Kind          // what to do about it
	HTTPStatus int           // 0 when no response arrived
	RetryAfter time.Duration // from a Retry-After header, 0 if none
	Err        error         // underlying cause, if any
}

// Error implements error.
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("carrier")
	if e.Carrier != "" {
		b.WriteString(" " + e.Carrier)
	}
	if e.Account != "" {
		b.WriteString(" account " + e.Account)
	}
	b.WriteString(": " + e.Kind.String())
	if e.Code != "" || e.HTTPStatus != 0 {
		b.WriteString(" (")
		if e.Code != "" {
			b.WriteString("code " + e.Code)
			if e.HTTPStatus != 0 {
				b.WriteString(", ")
			}
		}
		if e.HTTPStatus != 0 {
			fmt.Fprintf(&b, "http %d", e.HTTPStatus)
		}
		b.WriteString(")")
	}
	if e.Message != "" {
		b.WriteString(": " + e.Message)
	}
	if e.RetryAfter > 0 {
		fmt.Fprintf(&b, " (retry after %s)", e.RetryAfter)
	}
	if e.Err != nil {
		b.WriteString(": " + e.Err.Error())
	}
	return b.String()
}

// Unwrap gives the underlying cause.
func (e *Error) Unwrap() error { return e.Err }

// Is reports whether target is the sentinel of e's kind.
func (e *Error) Is(target error) bool {
	s := e.Kind.sentinel()
	return s != nil && target == s
}

// KindOf classifies any error: KindOK for nil, the Kind of a wrapped *Error,
// the kind of a wrapped sentinel, KindTransient for context errors and an
// open circuit, KindPermanent otherwise.
func KindOf(err error) Kind {
	if err == nil {
		return KindOK
	}
	var ce *Error
	if errors.As(err, &ce) {
		return ce.Kind
	}
	for k := KindRateLimited; k <= KindPermanent; k++ {
		if errors.Is(err, k.sentinel()) {
			return k
		}
	}
	if errors.Is(err, ErrCircuitOpen) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return KindTransient
	}
	return KindPermanent
}

// RetryAfter gives the Retry-After the carrier sent with err, or 0.
func RetryAfter(err error) time.Duration {
	var ce *Error
	if errors.As(err, &ce) {
		return ce.RetryAfter
	}
	return 0
}
