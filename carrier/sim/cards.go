package sim

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"math"
	"time"
)

// SimCard is a card's fixed identity, as an enterprise's inventory holds it.
type SimCard struct {
	ICCID  string `json:"iccid"`
	MSISDN string `json:"msisdn"`
	IMSI   string `json:"imsi"`
	IMEI   string `json:"imei"`
}

// CardState is what the carrier says about a card at one moment.
type CardState struct {
	SimCard
	RawStatus       string    `json:"raw_status"` // the carrier's own code
	UsageBytes      int64     `json:"usage_bytes"`
	RatePlan        string    `json:"rate_plan"`
	OpenedAt        time.Time `json:"opened_at"`
	ActivatedAt     time.Time `json:"activated_at"`
	StatusChangedAt time.Time `json:"status_changed_at"`
	NotFound        bool      `json:"not_found"` // the carrier does not know the card
	NotOwned        bool      `json:"not_owned"` // the card belongs to another account (OneLink 12009)
}

type card struct {
	SimCard
	h        uint64
	notFound bool
	notOwned bool
}

// mix is splitmix64.
func mix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

func hashString(seed int64, s string) uint64 {
	f := fnv.New64a()
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], uint64(seed))
	f.Write(b[:])
	f.Write([]byte(s))
	return mix(f.Sum64())
}

func luhnDigit(digits string) byte {
	sum := 0
	double := true
	for i := len(digits) - 1; i >= 0; i-- {
		d := int(digits[i] - '0')
		if double {
			d *= 2
			if d > 9 {
				d -= 9
			}
		}
		sum += d
		double = !double
	}
	return byte('0' + (10-sum%10)%10)
}

type carrierFormat struct {
	prefixes []string
	iccidLen int
	mncs     []string
	msisdn   func(idx, i int) string
	statuses []weighted
	plans    []string
}

type weighted struct {
	raw    string
	weight int
}

var formats = map[string]carrierFormat{
	OneLink: {
		prefixes: []string{"898600", "898602", "898604", "898607", "898608"}, iccidLen: 20,
		mncs:     []string{"00", "02", "04", "07", "08"},
		msisdn:   func(idx, i int) string { return fmt.Sprintf("1440%02d%07d", idx, i) },
		statuses: []weighted{{"2", 70}, {"4", 8}, {"1", 6}, {"6", 5}, {"7", 5}, {"8", 3}, {"9", 3}},
		plans:    []string{"物联网流量30M包月", "物联网流量500M包月", "物联网流量2G包年"},
	},
	Unicom: {
		prefixes: []string{"898601", "898606", "898609"}, iccidLen: 20,
		mncs:     []string{"01", "06", "09"},
		msisdn:   func(idx, i int) string { return fmt.Sprintf("1460%02d%07d", idx, i) },
		statuses: []weighted{{"2", 72}, {"3", 10}, {"1", 6}, {"0", 5}, {"7", 4}, {"4", 3}},
		plans:    []string{"IoT-100MB-Monthly", "IoT-1GB-Monthly", "IoT-Pool-Shared"},
	},
	Telecom: {
		prefixes: []string{"898603", "898611"}, iccidLen: 19,
		mncs:     []string{"03", "11"},
		msisdn:   func(idx, i int) string { return fmt.Sprintf("10649%02d%06d", idx, i) },
		statuses: []weighted{{"4", 78}, {"5", 10}, {"1", 7}, {"2", 5}},
		plans:    []string{"物联网5G流量包100M", "物联网定向流量1G", "物联网共享池套餐"},
	},
	Cisco: {
		prefixes: []string{"898601", "898606"}, iccidLen: 20,
		mncs:     []string{"01", "06"},
		msisdn:   func(idx, i int) string { return fmt.Sprintf("861064%02d%07d", idx, i) },
		statuses: []weighted{{"ACTIVATED", 72}, {"DEACTIVATED", 10}, {"ACTIVATION_READY", 6}, {"TEST_READY", 5}, {"INVENTORY", 4}, {"RETIRED", 3}},
		plans:    []string{"GLOBAL-IOT-5MB", "GLOBAL-IOT-50MB", "GLOBAL-IOT-POOL"},
	},
}

// population builds an account's deterministic cards. idx (0-99) keeps
// ICCIDs of different accounts apart.
func population(seed int64, spec AccountSpec, idx int) []card {
	f := formats[spec.Carrier]
	ah := hashString(seed, spec.ID)
	prefix := f.prefixes[ah%uint64(len(f.prefixes))]
	mnc := f.mncs[ah%uint64(len(f.mncs))]
	serialDigits := f.iccidLen - len(prefix) - 2 - 1
	mod := uint64(math.Pow10(serialDigits))
	base := (ah >> 8) % (mod / 2)
	cards := make([]card, spec.Cards)
	for i := range cards {
		body := fmt.Sprintf("%s%02d%0*d", prefix, idx, serialDigits, (base+uint64(i))%mod)
		h := hashString(seed, body)
		iccid := body + string(luhnDigit(body))
		if spec.Carrier == OneLink && h%10 == 0 {
			// Some CMCC ICCIDs carry a hex letter, e.g. 898604821221D0121000.
			b := []byte(iccid)
			b[len(prefix)+2] = byte('A' + (h>>12)%6)
			iccid = string(b)
		}
		tac := fmt.Sprintf("86%06d%06d", (h>>20)%1000000, (h>>40)%1000000)
		c := card{
			SimCard: SimCard{
				ICCID:  iccid,
				IMSI:   fmt.Sprintf("460%s%02d%08d", mnc, idx, i),
				MSISDN: f.msisdn(idx, i),
				IMEI:   tac + string(luhnDigit(tac)),
			},
			h: h,
		}
		switch (h >> 32) % 1000 {
		case 0, 1, 2, 3, 4:
			c.notFound = true
		case 5, 6, 7, 8, 9:
			c.notOwned = true
		}
		cards[i] = c
	}
	return cards
}

// state computes a card's carrier-side data at time at. Status changes every
// few ChangeEvery buckets per card; usage grows with time within the month
// (Unicom: within the billing cycle starting on the 27th).
func (s *Sim) state(a *account, c *card, at time.Time) CardState {
	f := formats[a.spec.Carrier]
	every := s.cfg.ChangeEvery
	bucket := at.UnixNano() / int64(every)
	period := int64(1 + c.h%6)
	off := int64((c.h >> 8) % uint64(period))
	epoch := (bucket + off) / period
	sh := mix(c.h ^ uint64(epoch)*0x2545f4914f6cdd1d ^ uint64(s.cfg.Seed))
	total := 0
	for _, w := range f.statuses {
		total += w.weight
	}
	pick := int(sh % uint64(total))
	raw := f.statuses[0].raw
	for _, w := range f.statuses {
		if pick < w.weight {
			raw = w.raw
			break
		}
		pick -= w.weight
	}
	changed := time.Unix(0, (epoch*period-off)*int64(every)).UTC()
	opened := time.Date(2021, 1, 1, 0, 0, 0, 0, cst).Add(time.Duration(c.h%(3*365*24)) * time.Hour).UTC()
	activated := opened.Add(time.Duration(1+(c.h>>16)%90) * 24 * time.Hour)
	st := CardState{
		SimCard:         c.SimCard,
		RawStatus:       raw,
		RatePlan:        f.plans[(c.h>>24)%uint64(len(f.plans))],
		OpenedAt:        opened,
		StatusChangedAt: changed,
		NotFound:        c.notFound,
		NotOwned:        c.notOwned,
	}
	if activated.Before(at) {
		st.ActivatedAt = activated
	}
	// Usage: a per-card byte rate (up to ~4 KB/s, ~10 GB a month) times the
	// time since the period start, sampled at the bucket start.
	sample := time.Unix(0, bucket*int64(every))
	start := periodStart(a.spec.Carrier, sample)
	if sample.After(start) {
		bps := int64((c.h >> 36) % 4096)
		st.UsageBytes = bps * int64(sample.Sub(start)/time.Second)
	}
	return st
}

var cst = time.FixedZone("CST", 8*3600)

// periodStart is the start of the usage period containing t (GMT+8).
func periodStart(carrierName string, t time.Time) time.Time {
	l := t.In(cst)
	if carrierName == Unicom {
		start := time.Date(l.Year(), l.Month(), 27, 0, 0, 0, 0, cst)
		if l.Day() < 27 {
			start = start.AddDate(0, -1, 0)
		}
		return start
	}
	return time.Date(l.Year(), l.Month(), 1, 0, 0, 0, 0, cst)
}
