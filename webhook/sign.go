package webhook

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"strings"
)

// Headers of a delivery.
const (
	// HeaderSignature carries "sha256=" + hex(HMAC-SHA256(secret, body)).
	HeaderSignature = "X-Cardsync-Signature"
	// HeaderSubscription names the subscription.
	HeaderSubscription = "X-Cardsync-Subscription"
	// HeaderEpoch carries the deliverer's epoch: a receiver that has seen a higher epoch
	// can drop a late batch from a deliverer that was replaced.
	HeaderEpoch = "X-Cardsync-Epoch"
	// HeaderDelivery identifies the batch: "<subscription>-<first seq>-<last seq>".
	HeaderDelivery = "X-Cardsync-Delivery"
)

// Sign returns the HeaderSignature value for body.
func Sign(secret, body []byte) string {
	m := hmac.New(sha256.New, secret)
	_, _ = m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// Verify reports whether header is the signature of body under secret (constant time).
func Verify(secret, body []byte, header string) bool {
	hexSig, ok := strings.CutPrefix(header, "sha256=")
	if !ok {
		return false
	}
	got, err := hex.DecodeString(hexSig)
	if err != nil {
		return false
	}
	m := hmac.New(sha256.New, secret)
	_, _ = m.Write(body)
	return hmac.Equal(got, m.Sum(nil))
}
