package syncer

// ShareWeights exposes the share rule to the package's external tests and benchmarks.
var ShareWeights = shareWeights
