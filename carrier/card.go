package carrier

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Carrier names, as used in AccountConfig.Carrier and Client.Carrier.
const (
	OneLink = "onelink"
	Unicom  = "unicom"
	Telecom = "telecom"
	Cisco   = "cisco"
)

// Carriers lists the supported carrier names.
func Carriers() []string { return []string{OneLink, Unicom, Telecom, Cisco} }

// Status is the normalised lifecycle state of a card.
type Status string

// Normalised statuses (research section 6).
const (
	StatusTest            Status = "test"
	StatusInventory       Status = "inventory"
	StatusActivationReady Status = "activation_ready"
	StatusActive          Status = "active"
	StatusSuspended       Status = "suspended"
	StatusPreTerminated   Status = "pre_terminated"
	StatusTerminated      Status = "terminated"
	StatusUnknown         Status = "unknown"
)

// Card is one SIM card's carrier data, normalised across carriers.
type Card struct {
	ICCID, IMSI, MSISDN, IMEI string
	Status                    Status
	RawStatus                 string // the carrier's code verbatim: "2", "ACTIVATED", "4"
	RatePlan                  string
	DataUsedBytes             int64  // usage of the current period, in bytes
	UsagePeriod               string // "2006-01": calendar month (Unicom: the cycle 27th-26th ending in that month)
	ActivatedAt               time.Time
	OpenedAt                  time.Time
	StatusChangedAt           time.Time
	SourceUpdatedAt           time.Time // the carrier's last-modified stamp where it has one
	FetchedAt                 time.Time
}

// Result is the outcome for one requested ICCID.
type Result struct {
	ICCID string
	Card  *Card // nil when Err is set
	Err   error // per-card failure: not found, not owned (KindNotFound), invalid ICCID (KindInvalidRequest)
}

// Client queries one carrier account.
type Client interface {
	Carrier() string // "onelink" | "unicom" | "telecom" | "cisco"
	BatchSize() int  // most ICCIDs one Query accepts
	// Query returns one Result per input ICCID, in input order. A non-nil
	// error means the call as a whole failed and no result is usable.
	Query(ctx context.Context, iccids []string) ([]Result, error)
}

// ErrInvalidICCID is returned by NormalizeICCID.
var ErrInvalidICCID = errors.New("carrier: invalid ICCID")

// NormalizeICCID upper-cases s and checks it is 19-20 hexadecimal characters
// (China Mobile ICCIDs contain letters; the Luhn digit is not checked).
func NormalizeICCID(s string) (string, error) {
	if len(s) < 19 || len(s) > 20 {
		return "", fmt.Errorf("%w: length %d", ErrInvalidICCID, len(s))
	}
	b := []byte(s)
	for i, c := range b {
		switch {
		case c >= '0' && c <= '9', c >= 'A' && c <= 'F':
		case c >= 'a' && c <= 'f':
			b[i] = c - 'a' + 'A'
		default:
			return "", fmt.Errorf("%w: character %d", ErrInvalidICCID, i)
		}
	}
	return string(b), nil
}

// LuhnValid reports whether a numeric string passes the Luhn check. Callers
// treat a failure as a warning only.
func LuhnValid(s string) bool {
	if s == "" {
		return false
	}
	sum := 0
	double := false
	for i := len(s) - 1; i >= 0; i-- {
		c := s[i]
		if c < '0' || c > '9' {
			return false
		}
		d := int(c - '0')
		if double {
			d *= 2
			if d > 9 {
				d -= 9
			}
		}
		sum += d
		double = !double
	}
	return sum%10 == 0
}

// OneLinkStatus maps a OneLink cardStatus code (CT codes 1-9, PB codes 00/07).
func OneLinkStatus(raw string) Status {
	switch raw {
	case "1", "07":
		return StatusActivationReady
	case "2", "00":
		return StatusActive
	case "4":
		return StatusSuspended
	case "6":
		return StatusTest
	case "7":
		return StatusInventory
	case "8":
		return StatusPreTerminated
	case "9":
		return StatusTerminated
	}
	return StatusUnknown
}

// UnicomStatus maps a Unicom CMP simStatus code, or a Jasper-style name.
func UnicomStatus(raw string) Status {
	switch raw {
	case "0":
		return StatusTest
	case "1":
		return StatusActivationReady
	case "2":
		return StatusActive
	case "3":
		return StatusSuspended
	case "4", "5":
		return StatusTerminated
	case "7":
		return StatusInventory
	}
	return CiscoStatus(raw)
}

// TelecomStatus maps a Telecom productMainStatusCd.
func TelecomStatus(raw string) Status {
	switch raw {
	case "1":
		return StatusActivationReady
	case "2", "3":
		return StatusTest
	case "4":
		return StatusActive
	case "5":
		return StatusSuspended
	}
	return StatusUnknown
}

// CiscoStatus maps a Control Center (Jasper) status name; a SOAP-style
// "_NAME" suffix is accepted.
func CiscoStatus(raw string) Status {
	s := raw
	if len(s) > 5 && s[len(s)-5:] == "_NAME" {
		s = s[:len(s)-5]
	}
	switch s {
	case "TEST_READY":
		return StatusTest
	case "INVENTORY":
		return StatusInventory
	case "ACTIVATION_READY":
		return StatusActivationReady
	case "ACTIVATED":
		return StatusActive
	case "DEACTIVATED":
		return StatusSuspended
	case "RETIRED", "PURGED":
		return StatusTerminated
	}
	return StatusUnknown
}
