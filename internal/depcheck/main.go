package main

import (
	_ "github.com/anishathalye/porcupine"
	_ "github.com/emmansun/gmsm/sm3"
	_ "github.com/hashicorp/go-hclog"
	_ "github.com/hashicorp/memberlist"
	_ "github.com/hashicorp/raft"
	_ "github.com/hashicorp/raft-boltdb/v2"
	_ "github.com/prometheus/client_golang/prometheus"
	_ "github.com/prometheus/client_golang/prometheus/promhttp"
	_ "github.com/prometheus/common/expfmt"
	_ "go.etcd.io/bbolt"
	_ "golang.org/x/time/rate"
	_ "go.yaml.in/yaml/v3"
	_ "github.com/sony/gobreaker/v2"
)

func main() {}
