package node

import (
	"bufio"
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"time"

	"cardsync/fsm"
)

// MaxImportBytes bounds one bulk-import request body.
const MaxImportBytes = 256 << 20

// ImportBatch is how many cards go into one Raft entry during a bulk import.
const ImportBatch = 4000

// ImportLineError is one rejected line of a bulk import.
type ImportLineError struct {
	Line  int    `json:"line"`
	ICCID string `json:"iccid,omitempty"`
	Error string `json:"error"`
}

// ErrImportInvalid is returned when any line of an import is invalid; nothing is applied.
var ErrImportInvalid = errors.New("import rejected")

// ImportError carries every line error of a rejected import.
type ImportError struct{ Lines []ImportLineError }

func (e *ImportError) Error() string {
	return fmt.Sprintf("%v: %d invalid lines", ErrImportInvalid, len(e.Lines))
}
func (e *ImportError) Unwrap() error { return ErrImportInvalid }

// ParseImport reads CSV (with a header naming the columns enterprise, iccid, account and
// optionally msisdn, imsi, imei) or NDJSON (one JSON object per line with the same keys).
// It returns the cards or an *ImportError listing every bad line; it never panics.
func ParseImport(r io.Reader, format string) ([]fsm.CardImport, []int, error) {
	br := bufio.NewReaderSize(r, 1<<16)
	if format == "" {
		peek, _ := br.Peek(64)
		if t := bytes.TrimSpace(peek); len(t) > 0 && t[0] == '{' {
			format = "ndjson"
		} else {
			format = "csv"
		}
	}
	var cards []fsm.CardImport
	var lines []int // source line of each card
	var lineErrs []ImportLineError
	add := func(line int, c fsm.CardImport) {
		c.ICCID = strings.ToUpper(strings.TrimSpace(c.ICCID))
		c.Enterprise = strings.TrimSpace(c.Enterprise)
		c.Account = strings.TrimSpace(c.Account)
		switch {
		case !fsmICCID(c.ICCID):
			lineErrs = append(lineErrs, ImportLineError{Line: line, ICCID: c.ICCID, Error: "invalid ICCID: want 19-20 hex characters"})
		case c.Enterprise == "":
			lineErrs = append(lineErrs, ImportLineError{Line: line, ICCID: c.ICCID, Error: "enterprise is required"})
		case c.Account == "":
			lineErrs = append(lineErrs, ImportLineError{Line: line, ICCID: c.ICCID, Error: "account is required"})
		default:
			cards = append(cards, c)
			lines = append(lines, line)
		}
	}
	switch format {
	case "ndjson", "jsonl", "json":
		sc := bufio.NewScanner(br)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		line := 0
		for sc.Scan() {
			line++
			b := bytes.TrimSpace(sc.Bytes())
			if len(b) == 0 {
				continue
			}
			var c fsm.CardImport
			dec := json.NewDecoder(bytes.NewReader(b))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&c); err != nil {
				lineErrs = append(lineErrs, ImportLineError{Line: line, Error: "malformed JSON: " + err.Error()})
				continue
			}
			add(line, c)
		}
		if err := sc.Err(); err != nil {
			if !errors.Is(err, bufio.ErrTooLong) {
				return nil, nil, fmt.Errorf("read import: %w", err)
			}
			lineErrs = append(lineErrs, ImportLineError{Line: line + 1, Error: "line longer than 1 MiB"})
		}
	case "csv":
		cr := csv.NewReader(br)
		cr.FieldsPerRecord = -1
		cr.TrimLeadingSpace = true
		header, err := cr.Read()
		if err != nil {
			return nil, nil, &ImportError{Lines: []ImportLineError{{Line: 1, Error: "missing CSV header: " + err.Error()}}}
		}
		col := map[string]int{}
		for i, h := range header {
			col[strings.ToLower(strings.TrimSpace(h))] = i
		}
		for _, need := range []string{"enterprise", "iccid", "account"} {
			if _, ok := col[need]; !ok {
				return nil, nil, &ImportError{Lines: []ImportLineError{{Line: 1, Error: "CSV header lacks column " + need}}}
			}
		}
		get := func(rec []string, name string) string {
			if i, ok := col[name]; ok && i < len(rec) {
				return rec[i]
			}
			return ""
		}
		line := 1
		for {
			rec, err := cr.Read()
			line++
			if err == io.EOF {
				break
			}
			if err != nil {
				var pe *csv.ParseError
				if !errors.As(err, &pe) {
					return nil, nil, fmt.Errorf("read import: %w", err)
				}
				lineErrs = append(lineErrs, ImportLineError{Line: line, Error: err.Error()})
				continue
			}
			add(line, fsm.CardImport{ICCID: get(rec, "iccid"), Enterprise: get(rec, "enterprise"), Account: get(rec, "account"),
				MSISDN: get(rec, "msisdn"), IMSI: get(rec, "imsi"), IMEI: get(rec, "imei")})
		}
	default:
		return nil, nil, fmt.Errorf("%w: unknown format %q (csv or ndjson)", ErrImportInvalid, format)
	}
	if len(lineErrs) > 0 {
		// The well-formed cards come back too, so callers can report every problem of
		// the request at once; nothing may be applied.
		return cards, lines, &ImportError{Lines: lineErrs}
	}
	return cards, lines, nil
}

// ValidateImport checks cards against the local replica: known enterprise, account of that
// enterprise, no duplicate ICCID in the request, no card of another enterprise.
func (n *Node) ValidateImport(cards []fsm.CardImport, lineOf func(i int) int) []ImportLineError {
	var errs []ImportLineError
	ents := map[string]fsm.Enterprise{}
	if es, err := n.fsm.Enterprises(); err == nil {
		for _, e := range es {
			ents[e.ID] = e
		}
	}
	seen := make(map[string]int, len(cards))
	for i, c := range cards {
		line := lineOf(i)
		bad := func(msg string) { errs = append(errs, ImportLineError{Line: line, ICCID: c.ICCID, Error: msg}) }
		e, ok := ents[c.Enterprise]
		if !ok {
			bad(fmt.Sprintf("unknown enterprise %q", c.Enterprise))
			continue
		}
		owned := false
		for _, a := range e.Accounts {
			if a == c.Account {
				owned = true
			}
		}
		if !owned {
			bad(fmt.Sprintf("account %q is not a carrier account of enterprise %q", c.Account, c.Enterprise))
			continue
		}
		if first, dup := seen[c.ICCID]; dup {
			bad(fmt.Sprintf("duplicate ICCID (first on line %d)", first))
			continue
		}
		seen[c.ICCID] = line
		if old, err := n.fsm.Card(c.ICCID); err == nil && old.Enterprise != c.Enterprise {
			bad(fmt.Sprintf("card already belongs to enterprise %q", old.Enterprise))
		}
	}
	return errs
}

// Import validates cards and applies them through Raft in batches. Validation covers every
// rule the FSM enforces, so a valid import applies whole; a re-run of the same import only
// updates cards, so an import interrupted by a leader change can simply be repeated.
func (n *Node) Import(ctx context.Context, cards []fsm.CardImport, lineOf func(int) int, progress func(done int)) (added, updated int, err error) {
	if lineOf == nil {
		lineOf = func(i int) int { return i + 1 }
	}
	if errs := n.ValidateImport(cards, lineOf); len(errs) > 0 {
		return 0, 0, &ImportError{Lines: errs}
	}
	for start := 0; start < len(cards); start += ImportBatch {
		end := min(start+ImportBatch, len(cards))
		res, err := n.ProposeEncoded(ctx, fsm.TypeImportCards, fsm.ImportCards{Cards: cards[start:end]})
		if err != nil {
			return added, updated, fmt.Errorf("import batch at card %d: %w", start, err)
		}
		added += res.Added
		updated += res.Updated
		if progress != nil {
			progress(end)
		}
	}
	return added, updated, nil
}

func (n *Node) handleImport(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, MaxImportBytes)
	format := r.URL.Query().Get("format")
	if format == "" {
		switch ct := r.Header.Get("Content-Type"); {
		case strings.Contains(ct, "csv"):
			format = "csv"
		case strings.Contains(ct, "ndjson"), strings.Contains(ct, "jsonl"), strings.Contains(ct, "json"):
			format = "ndjson"
		}
	}
	cards, srcLines, err := ParseImport(r.Body, format)
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("import body larger than %d bytes: split the file", MaxImportBytes))
		return
	}
	lineOf := func(i int) int {
		if i < len(srcLines) {
			return srcLines[i]
		}
		return i + 1
	}
	var ie *ImportError
	if errors.As(err, &ie) {
		// Report the format errors together with what is wrong with the well-formed lines.
		all := append(ie.Lines, n.ValidateImport(cards, lineOf)...)
		sort.SliceStable(all, func(i, j int) bool { return all[i].Line < all[j].Line })
		writeImportError(w, &ImportError{Lines: all})
		return
	}
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if len(cards) == 0 {
		writeError(w, http.StatusBadRequest, "no cards in the request")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Minute)
	defer cancel()
	start := time.Now()
	added, updated, err := n.Import(ctx, cards, lineOf, nil)
	if errors.As(err, &ie) {
		writeImportError(w, ie)
		return
	}
	if err != nil {
		writeFSMError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"ok": true, "cards": len(cards), "added": added, "updated": updated,
		"seconds": time.Since(start).Seconds()})
}

func writeImportError(w http.ResponseWriter, ie *ImportError) {
	shown := ie.Lines
	if len(shown) > 1000 {
		shown = shown[:1000]
	}
	writeJSON(w, http.StatusBadRequest, map[string]any{
		"error":         fmt.Sprintf("import rejected: %d invalid lines; nothing was applied", len(ie.Lines)),
		"invalid_lines": len(ie.Lines),
		"lines":         shown,
	})
}
