package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

const usage = `cardsync keeps enterprise SIM-card data fresh by pulling it from the carriers' APIs.

Usage:
  cardsync agent [flags]          run a cluster node (-dev: single node with simulator and sample data)
  cardsync carriersim [flags]     run the carrier simulator (all four carrier APIs) on its own
  cardsync status                 this node's view of the cluster
  cardsync members                gossip members, Raft suffrage and ring shares
  cardsync operator raft list-peers
  cardsync operator raft remove-peer ID
  cardsync operator keyring -install KEY | -use KEY | -remove KEY | -list [-local-only]
  cardsync keygen                 print a new gossip encryption key (base64, 32 bytes)
  cardsync ring                   ring members, shares and shard owners
  cardsync shards [-group G] [-owner N] [-state S] [-reason R]
  cardsync shard ID               one shard in full (claim, epoch, checkpoint, history)
  cardsync card ICCID             one card
  cardsync import FILE            bulk import (CSV with header, or NDJSON)
  cardsync resync (-iccid X | -shard ID | -enterprise ID)
  cardsync release SHARD          force-release a shard (bumps its epoch)
  cardsync checkpoint SHARD [-cursor C] [-next-run RFC3339] [-new-task]
  cardsync maintenance on|off [-reason R]
  cardsync drain on|off           move this node's shards to the others
  cardsync changes [-after SEQ] [-follow]
  cardsync webhooks [list | add -id ID -url URL ... | delete ID | pause ID | resume ID]
  cardsync backup FILE            download a consistent backup of the replicated state
  cardsync restore FILE [-force]  replace a (new) cluster's replicated state with a backup (send to the leader)

Client commands talk to -http-addr (default $CARDSYNC_HTTP_ADDR or 127.0.0.1:8700), send
-token (default $CARDSYNC_ADMIN_TOKEN) as a bearer token, and use https with -tls-ca
(default $CARDSYNC_TLS_CA; client certificate: -tls-cert/-tls-key).
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "cardsync:", err)
		os.Exit(1)
	}
}

// run dispatches a subcommand; tests call it directly.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errors.New("missing subcommand")
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "agent":
		return runAgent(ctx, rest, stdout, stderr)
	case "carriersim":
		return runCarrierSim(ctx, rest, stdout, stderr)
	case "keygen":
		return runKeygen(stdout)
	case "operator":
		if len(rest) > 0 && rest[0] == "keyring" {
			return runKeyring(ctx, rest[1:], stdout, stderr)
		}
	case "help", "-h", "--help", "-help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	return runClient(ctx, cmd, rest, stdout, stderr)
}
