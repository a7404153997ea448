package agent

import (
	"fmt"
	"time"

	"cardsync/carrier"
	"cardsync/carrier/sim"
	"cardsync/fsm"
)

// devEnterprises is how many sample enterprises dev mode creates.
const devEnterprises = 24

// devTTL is how long synced data stays valid in dev mode: short, so re-syncs are visible.
const DevTTL = 5 * time.Minute

// DevCatalog builds dev mode's catalog from the simulator's population: one carrier
// account per simulated account, 24 enterprises spread over them, and every simulated
// card assigned to an enterprise that uses its account.
func DevCatalog(s *sim.Sim, specs []sim.AccountSpec) ([]carrier.AccountConfig, Catalog) {
	var cfgs []carrier.AccountConfig
	var accts []fsm.Account
	byCarrier := map[string][]string{}
	for _, sp := range specs {
		cfg := carrier.DefaultAccountConfig()
		cfg.ID, cfg.Carrier, cfg.Endpoint = sp.ID, sp.Carrier, s.URL()
		cfg.AppID, cfg.Secret, cfg.OpenID, cfg.CustNumber = sp.AppID, sp.Secret, sp.OpenID, sp.CustNumber
		cfg.RatePerSec, cfg.Burst, cfg.Concurrency = sp.RatePerSec, max(sp.Burst, 1), max(sp.MaxConcurrent, 1)
		cfgs = append(cfgs, cfg)
		accts = append(accts, fsm.Account{ID: sp.ID, Carrier: sp.Carrier, TTL: DevTTL, RatePerSec: sp.RatePerSec,
			Burst: max(sp.Burst, 1), Concurrency: max(sp.MaxConcurrent, 1), BatchSize: carrier.DefaultBatchSize(sp.Carrier), CredentialsValid: true})
		byCarrier[sp.Carrier] = append(byCarrier[sp.Carrier], sp.ID)
	}
	ents := make([]fsm.UpsertEnterprise, devEnterprises)
	users := map[string][]int{} // account -> enterprises using it
	for i := range ents {
		e := fsm.UpsertEnterprise{ID: fmt.Sprintf("ent-%02d", i+1), Name: fmt.Sprintf("Sample Enterprise %02d", i+1),
			Accounts: map[string]string{}, InventoryReady: true}
		for carrierName, ids := range byCarrier {
			// Every enterprise has Chinese carrier accounts; one in four also has Cisco.
			if carrierName == sim.Cisco && i%4 != 0 {
				continue
			}
			acct := ids[i%len(ids)]
			e.Accounts[carrierName] = acct
			users[acct] = append(users[acct], i)
		}
		ents[i] = e
	}
	var cards []fsm.CardImport
	for _, sp := range specs {
		us := users[sp.ID]
		if len(us) == 0 {
			continue
		}
		for j, c := range s.Cards(sp.ID) {
			e := ents[us[j%len(us)]]
			cards = append(cards, fsm.CardImport{ICCID: c.ICCID, Enterprise: e.ID, Account: sp.ID, MSISDN: c.MSISDN, IMSI: c.IMSI, IMEI: c.IMEI})
		}
	}
	return cfgs, Catalog{Accounts: accts, Enterprises: ents, Cards: cards}
}

// ScaleDevAccounts resizes the dev population to about total cards, keeping proportions.
func ScaleDevAccounts(specs []sim.AccountSpec, total int) {
	sum := 0
	for _, s := range specs {
		sum += s.Cards
	}
	if sum == 0 {
		return
	}
	for i := range specs {
		specs[i].Cards = max(1, specs[i].Cards*total/sum)
	}
}
