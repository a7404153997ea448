package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/hashicorp/go-hclog"

	"cardsync/carrier/sim"
)

func runCarrierSim(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("carriersim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:8800", "listen address")
	configPath := fs.String("config", "", "simulator configuration (JSON); default: the dev accounts")
	seed := fs.Int64("seed", 1, "seed of the card population")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg := sim.DefaultConfig()
	cfg.Seed = *seed
	cfg.Accounts = sim.DevAccounts()
	if *configPath != "" {
		data, err := os.ReadFile(*configPath)
		if err != nil {
			return err
		}
		if cfg, err = sim.LoadConfig(data); err != nil {
			return err
		}
	}
	cfg.Logger = hclog.New(&hclog.LoggerOptions{Name: "carriersim", Output: stderr})
	s, err := sim.New(cfg)
	if err != nil {
		return err
	}
	if err := s.Start(*addr); err != nil {
		return err
	}
	defer s.Close()
	fmt.Fprintf(stdout, "carrier simulator on %s (stats: %s/_sim/stats)\n", s.URL(), s.URL())
	enc := json.NewEncoder(stdout)
	for _, a := range cfg.Accounts {
		_ = enc.Encode(map[string]any{"account": a.ID, "carrier": a.Carrier, "cards": a.Cards, "rate_per_sec": a.RatePerSec})
	}
	<-ctx.Done()
	return nil
}
